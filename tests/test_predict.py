"""Prediction and checkpoints on real HER2ST sections with a tiny freshly trained model."""
from __future__ import annotations

import dataclasses
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_flag.errors import FlagInputError

FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"
TINY_MODEL = dict(
    preset="cpu", feat_dim_proj=32, cond_dim=16, graph_layers=1, graph_heads=2, depth=1, width=16,
    heads=2, align_block=1, align_hidden=[16], sample_steps=2, sample_count=2,
)


def _train(out, **kw):
    from napari_flag.training import TrainConfig, train

    d = dict(
        train=["her2st:C3", "her2st:C4"], val=[], n_genes=30, model=dict(TINY_MODEL), steps=4,
        batch_spots=64, lr=1e-3, val_every=0, device="cpu", feature_cache=str(FEATURE_DIR), out_dir=str(out),
    )
    d.update(kw)
    return train(TrainConfig(**d))


@pytest.fixture(scope="module")
def ckpt(her2st_dir, tmp_path_factory):
    return Path(_train(tmp_path_factory.mktemp("flag")).last_path)


@pytest.fixture(scope="module")
def c2(her2st_dir):
    from napari_flag.data import load_sample

    return load_sample("her2st:C2")


def _run(sample, ckpt, **kw):
    from napari_flag.inference import iter_predict

    kw.setdefault("feature_cache", str(FEATURE_DIR))
    kw.setdefault("device", "cpu")
    events = list(iter_predict(sample, checkpoint=ckpt, **kw))
    return events[:-1], events[-1]


def test_iter_predict_events_and_result(ckpt, c2):
    from napari_flag.checkpoint import load_checkpoint
    from napari_flag.data.panel import panel_matrix

    from napari_flag.inference import Progress, Result

    progress, last = _run(c2, ckpt, steps=3, samples=2)
    assert isinstance(last, Result)
    assert all(isinstance(e, Progress) and 0 <= e.done <= e.total for e in progress)
    stages = [e.stage for e in progress]
    assert {"loading model", "features", "graph", "sampling"} <= set(stages)
    sampling = [e for e in progress if e.stage == "sampling"]
    # one event per network call and chunk of spots (the joint model steps the whole slide per call):
    # 3 steps with the last call skipped and the first shared are 2 calls, over 3 chunks of 64 spots x 2 samples
    assert sampling[-1].done == sampling[-1].total == 6
    assert [e.done for e in sampling[-3:]] == list(range(sampling[-1].total - 2, sampling[-1].total + 1))

    a = last.adata
    ck = load_checkpoint(ckpt)
    assert a.shape == (c2.n_spots, 30) and list(a.var_names) == ck["genes"]
    assert list(a.obs_names) == list(map(str, c2.spot_ids))
    assert np.isfinite(a.X).all() and (a.X >= 0).all()
    assert set(a.layers) == {"std", "sample", "truth"}
    assert (a.layers["std"] >= 0).all() and a.layers["std"].max() > 0
    np.testing.assert_allclose(a.obsm["spatial"], c2.coords)
    np.testing.assert_allclose(a.layers["truth"], panel_matrix(c2.adata, ck["genes"], "log2p1"), rtol=1e-6)
    info = a.uns["flag"]
    assert info["checkpoint"] == str(ckpt) and info["steps"] == 3 and info["samples"] == 2
    assert info["mean_rule"] == "blend of 2 imitating 6" and info["temperature"] == 0.7
    assert info["network_calls_per_spot"] == 1 + 2 * 1  # 3 steps: the shared first call, then one each
    assert info["transform"] == "log2p1" and info["sample_id"] == "C2"
    assert info["encoder"] == "efficientnet_lite0" and info["version"] and info["method"] == "flag"
    assert "truth_missing_genes" not in info

    # seeded: same seed, same prediction; another seed, another one
    _, again = _run(c2, ckpt, steps=3, samples=2)
    np.testing.assert_array_equal(again.adata.X, a.X)
    _, other = _run(c2, ckpt, steps=3, samples=2, seed=1)
    assert not np.array_equal(other.adata.X, a.X)


def test_prediction_defaults_to_model_sampler(ckpt, c2):
    from napari_flag.inference import predict_sample

    seen = []
    a = predict_sample(c2, checkpoint=ckpt, device="cpu", feature_cache=str(FEATURE_DIR),
                       progress=lambda ev: seen.append(ev.stage))
    assert a.uns["flag"]["steps"] == TINY_MODEL["sample_steps"]
    assert a.uns["flag"]["samples"] == TINY_MODEL["sample_count"]
    assert "sampling" in seen


def test_cancel_between_events_stops_cleanly(ckpt, c2):
    from napari_flag.inference import iter_predict

    gen = iter_predict(c2, checkpoint=ckpt, steps=200, samples=2, device="cpu", feature_cache=str(FEATURE_DIR))
    for ev in gen:
        assert getattr(ev, "stage", None) is not None, "a result arrived before the cancel"
        if ev.stage == "sampling" and ev.done >= 1:
            break
    gen.close()  # what a cancelled napari worker does
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-flag")]


def test_cancel_before_the_model_is_built_leaves_no_thread(ckpt, c2):
    from napari_flag.inference import iter_predict

    gen = iter_predict(c2, checkpoint=ckpt, device="cpu", feature_cache=str(FEATURE_DIR))
    first = next(gen)  # the model may still be building on its helper thread
    assert first.stage != "sampling"
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("napari-flag")]


def test_missing_panel_genes_give_nan_truth(ckpt, c2, tmp_path):
    from napari_flag.checkpoint import load_checkpoint

    genes = load_checkpoint(ckpt)["genes"]
    drop = set(genes[:3])
    keep = [g for g in c2.adata.var_names if g not in drop]
    s = dataclasses.replace(c2, adata=c2.adata[:, keep].copy())
    a = _run(s, ckpt, steps=2, samples=1)[1].adata
    t = a.layers["truth"]
    assert np.isnan(t[:, :3]).all() and np.isfinite(t[:, 3:]).all()
    assert list(a.uns["flag"]["truth_missing_genes"]) == genes[:3]
    assert "sample" in a.layers  # one sample is still kept with samples=1
    from napari_flag.inference import write_prediction
    import anndata as ad

    b = ad.read_h5ad(write_prediction(a, tmp_path / "p.h5ad"))
    assert list(b.uns["flag"]["truth_missing_genes"]) == genes[:3]


def test_sample_without_counts_or_image(ckpt, c2):
    s = dataclasses.replace(c2, adata=c2.adata[:, []].copy())
    a = _run(s, ckpt, steps=2, samples=1)[1].adata
    assert "truth" not in a.layers and a.n_obs == c2.n_spots
    with pytest.raises(FlagInputError, match="image"):
        _run(dataclasses.replace(c2, image=None), ckpt)


def test_no_default_model(monkeypatch, tmp_path, c2):
    import napari_flag.checkpoint as ckmod
    from napari_flag.inference import NO_DEFAULT_MODEL, iter_predict

    monkeypatch.setattr(ckmod, "default_checkpoint_path", lambda: tmp_path / "none.pt")
    with pytest.raises(FlagInputError, match="no bundled default model yet") as e:
        next(iter_predict(c2))
    assert NO_DEFAULT_MODEL == "no bundled default model yet"
    assert e.value.setting == "checkpoint"  # the CLI says "pass --checkpoint", the widget names its control


def test_default_checkpoint_path():
    import napari_flag
    from napari_flag.checkpoint import default_checkpoint_path

    assert default_checkpoint_path() == napari_flag.resources_dir() / "flag_default.pt"


def test_bad_checkpoints_are_one_line_errors(ckpt, tmp_path):
    from napari_flag.checkpoint import load_checkpoint, load_model, start_model_load

    cases = {}
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    cases["garbage.pt"] = "not a napari-flag checkpoint$"
    data = ckpt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated.pt"] = r"not a napari-flag checkpoint \(truncated or corrupt file\)"
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    cases["foreign.pt"] = "not a napari-flag checkpoint"
    torch.save({"obj": threading.Lock}, tmp_path / "unsafe.pt")  # needs pickle of a class: refused
    cases["unsafe.pt"] = "not a napari-flag checkpoint .refused"
    ck = torch.load(ckpt, weights_only=True)
    ck["model"] = {"nope": torch.zeros(1)}
    torch.save(ck, tmp_path / "mismatch.pt")
    for name, msg in cases.items():
        with pytest.raises(FlagInputError, match=msg) as ei:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(FlagInputError, match="does not fit") as ei:
        load_model(tmp_path / "mismatch.pt")
    assert "mismatch.pt" in str(ei.value) and "\n" not in str(ei.value)
    building, meta = start_model_load(tmp_path / "mismatch.pt")  # built on a helper thread: same error, later
    assert meta.genes == ck["genes"]
    with pytest.raises(FlagInputError, match="does not fit.*mismatch.pt|mismatch.pt.*does not fit"):
        building.result()
    with pytest.raises(FlagInputError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_export_strips_training_state(ckpt, tmp_path, c2):
    from napari_flag.checkpoint import export_checkpoint, load_checkpoint

    out = export_checkpoint(ckpt, tmp_path / "small.pt")
    ck = load_checkpoint(out)
    assert ck["optimizer"] is None and ck["model_raw"] is None
    assert out.stat().st_size < ckpt.stat().st_size
    a = _run(c2, out, steps=2, samples=1)[1].adata
    b = _run(c2, ckpt, steps=2, samples=1)[1].adata
    np.testing.assert_array_equal(a.X, b.X)


def test_baseline_checkpoint_predicts(her2st_dir, tmp_path, c2):
    res = _train(tmp_path, method="ridge")
    a = _run(c2, res.last_path)[1].adata
    assert a.uns["flag"]["method"] == "ridge" and "sample" not in a.layers
    assert (a.layers["std"] == 0).all() and (a.X >= 0).all()


def test_write_prediction_refuses_overwrite(ckpt, c2, tmp_path):
    import anndata as ad

    from napari_flag.inference import write_prediction

    a = _run(c2, ckpt, steps=2, samples=1)[1].adata
    out = write_prediction(a, tmp_path / "p.h5ad")
    b = ad.read_h5ad(out)
    np.testing.assert_array_equal(b.X, a.X)
    assert b.uns["flag"]["sample_id"] == "C2"
    with pytest.raises(FlagInputError, match="exists"):
        write_prediction(a, out)
    write_prediction(a, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5ad"]
