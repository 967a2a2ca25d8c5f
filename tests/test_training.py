"""Training loop on real HER2ST sections (C3, C4 train; C2 validation) with a tiny model.

Features come from the real built-in encoder; they are cached in a folder under
the system temp dir keyed by content, so only the first run ever pays for them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_flag.errors import FlagInputError
from napari_flag.training import TrainCallbacks, TrainConfig, prepare_data, train

FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"

TINY_MODEL = dict(
    preset="cpu", feat_dim_proj=32, cond_dim=16, graph_layers=1, graph_heads=2, depth=1, width=16,
    heads=2, align_block=1, align_hidden=[16], sample_steps=2, sample_count=2,
)


def tiny_config(out_dir, **kw) -> TrainConfig:
    d = dict(
        train=["her2st:C3", "her2st:C4"], val=["her2st:C2"], n_genes=30, model=dict(TINY_MODEL),
        steps=6, batch_spots=64, lr=1e-3, val_every=3, val_steps=2, val_samples=1, device="cpu",
        feature_cache=str(FEATURE_DIR), out_dir=str(out_dir),
    )
    d.update(kw)
    return TrainConfig(**d)


class Recorder(TrainCallbacks):
    def __init__(self, stop_at=None, stop=None):
        self.steps, self.vals, self.ckpts, self.epochs = [], [], [], []
        self.stop_at, self.stop = stop_at, stop

    def on_step(self, step, losses):
        self.steps.append(step)
        assert set(losses) >= {"loss", "denoise", "align", "lr", "grad_norm"}
        if self.stop_at is not None and step == self.stop_at:
            self.stop.set()

    def on_validation(self, step, metrics):
        self.vals.append((step, metrics))

    def on_checkpoint(self, path):
        self.ckpts.append(path)

    def on_epoch(self, epoch, info):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def prepared(her2st_dir, tmp_path_factory):
    return prepare_data(tiny_config(tmp_path_factory.mktemp("prep")))


@pytest.fixture(scope="module")
def full_run(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    rec = Recorder()
    res = train(tiny_config(out), callbacks=rec, data=prepared)
    return res, rec, out


# ----------------------------------------------------------------------------- config
def test_config_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [her2st:C3]\nval: her2st:C2\nmodel:\n  preset: cpu\n  depth: 2\nsteps: 10\n")
    cfg = TrainConfig.from_yaml(p, ["steps=7", "model.width=32", "lr=1e-3", "method=no_graph",
                                    "train=[her2st:C3,her2st:C4]"])
    assert cfg.steps == 7 and cfg.lr == 1e-3 and cfg.val == ["her2st:C2"]
    assert cfg.train == ["her2st:C3", "her2st:C4"]
    fc = cfg.flag_config()
    assert fc.network.depth == 2 and fc.network.width == 32 and fc.network.graph is False
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(method="regression").flag_config().network.mode == "regression"
    assert TrainConfig(method="no_align").flag_config().network.align is False
    with pytest.raises(FlagInputError, match="stepz"):
        TrainConfig.from_yaml(p, ["stepz=3"])
    with pytest.raises(FlagInputError, match="key=value"):
        TrainConfig.from_yaml(p, ["steps"])
    with pytest.raises(FlagInputError, match="widht"):
        TrainConfig.from_yaml(p, ["model.widht=3"]).flag_config()
    with pytest.raises(FlagInputError, match="method"):
        TrainConfig(method="magic")
    with pytest.raises(FlagInputError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_flat_model_overrides_reach_their_part(tmp_path):
    """model.key=value overrides and YAML model sections keep their flat keys; each lands in its part."""
    p = tmp_path / "c.yaml"
    p.write_text("train: [her2st:C3]\nmodel:\n  preset: cpu\n  sample_mean_like: 8\n  rho: 6.0\n")
    over = ["model.sample_temperature=0.6", "model.joint=false", "model.P_max=0.1", "model.heads=2",
            "model.sample_count=3", "model.guidance=1.5"]
    fc = TrainConfig.from_yaml(p, over).flag_config()
    assert (fc.network.joint, fc.network.heads) == (False, 2)
    assert (fc.noise.P_max, fc.noise.rho) == (0.1, 6.0)
    assert (fc.sampler.temperature, fc.sampler.samples, fc.sampler.mean_like, fc.sampler.guidance) == (0.6, 3, 8, 1.5)
    # the nested form names the part
    nested = TrainConfig.from_yaml(p, ["model.sampler.temperature=0.6", "model.network.heads=2"]).flag_config()
    assert (nested.sampler.temperature, nested.network.heads, nested.sampler.mean_like) == (0.6, 2, 8)
    # the method's switches still win over the overrides
    reg = TrainConfig.from_yaml(p, ["method=regression", "model.joint=true"]).flag_config()
    assert (reg.network.mode, reg.network.joint) == ("regression", False)
    assert TrainConfig(model={"preset": "paper", "preset_name": "mine"}).flag_config().preset_name == "mine"


@pytest.mark.parametrize("override, key", [("model.sample_temprature=0.7", "'sample_temprature'"),
                                           ("model.warp_drive=1", "'warp_drive'"),
                                           ("model.sampler.temprature=0.7", "'sampler.temprature'")])
def test_unknown_model_key_is_one_line_naming_it(tmp_path, override, key):
    p = tmp_path / "c.yaml"
    p.write_text("train: [her2st:C3]\n")
    with pytest.raises(FlagInputError) as err:
        TrainConfig.from_yaml(p, [override])  # at once, before any data are read
    text = str(err.value)
    assert text.startswith(f"{p}: model: unknown FlagConfig key") and key in text and "\n" not in text


def test_resume_compares_network_and_noise_not_sampler():
    from napari_flag.model import FlagConfig
    from napari_flag.training.loop import _model_mismatch

    base = FlagConfig()
    assert _model_mismatch(base, base.replace(sample_temperature=0.3, guidance=2.0)) is None
    assert _model_mismatch(base, base.replace(depth=4, align_block=1)) == \
        "model align_block=2 in the checkpoint, 1 in the config (and 1 more)"
    assert _model_mismatch(base, base.replace(P_max=0.0)) == "model P_max=0.25 in the checkpoint, 0.0 in the config"


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for held in ("C2", "C3", "C4", "C5", "C6"):
        cfg = TrainConfig.from_yaml(root / f"her2st_loso_{held}.yaml")
        assert cfg.val == [f"her2st:{held}"] and len(cfg.train) == 4
        assert f"her2st:{held}" not in cfg.train
        cfg.flag_config()
    TrainConfig.from_yaml(root / "tiny.yaml").flag_config()


# ----------------------------------------------------------------------------- data
def test_prepare_data(prepared):
    d = prepared
    assert len(d.genes) == 30 and len(d.train) == 2 and len(d.val) == 1
    assert [s.sample_id for s in d.train] == ["C3", "C4"]
    y = np.concatenate([s.targets.numpy() for s in d.train])
    # standardisation from the training spots: zero mean, unit std per gene
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
    for s in d.train + d.val:
        assert s.feats.shape == (s.n_spots, d.feat_dim)
        assert s.graph.num_nodes == s.n_spots and s.graph.edge_index.shape[0] == 2
        assert np.isfinite(s.truth).all() and (s.truth >= 0).all()
    assert d.encoder["name"] == "efficientnet_lite0" and d.encoder["dim"] == 1280


# ----------------------------------------------------------------------------- loop
def test_train_end_to_end(full_run, prepared):
    from napari_flag.checkpoint import load_checkpoint, load_model

    res, rec, out = full_run
    assert res.status == "finished" and res.step == 6
    assert rec.steps == [1, 2, 3, 4, 5, 6]
    assert rec.epochs == [1, 2, 3]  # two slides -> an epoch every 2 steps
    assert [s for s, _ in rec.vals] == [3, 6]
    for _, m in rec.vals:
        assert set(m) >= {"PCC", "MSE", "GSC", "SSC", "per_slide"} and "C2" in m["per_slide"]
    assert Path(res.last_path).is_file() and Path(res.best_path).name == "best.pt"
    assert (out / "train_log.jsonl").is_file() and (out / "config.yaml").is_file()
    assert str(out / "last.pt") in rec.ckpts
    assert not list(out.glob("*.tmp"))

    ck = torch.load(res.last_path, map_location="cpu", weights_only=True)  # plain data only
    assert ck["step"] == 6 and ck["genes"] == prepared.genes and ck["transform"] == "log2p1"
    assert ck["mean"].shape == (30,) and ck["std"].shape == (30,)
    assert ck["encoder"]["name"] == "efficientnet_lite0" and ck["encoder"]["patch_px"] > 0
    assert ck["version"] and ck["optimizer"] is not None and ck["rng"]["torch"].dtype == torch.uint8
    assert ck["train_config"]["steps"] == 6
    # the training slides' pooled stains, for stain normalisation at prediction
    assert ck["stain"]["normalise"] is True and ck["stain"]["method"] == "macenko"
    assert ck["stain"] == {**prepared.stain} and len(ck["stain"]["h"]) == 3
    load_checkpoint(res.best_path)
    model, meta = load_model(res.last_path, "cpu")
    assert meta.genes == prepared.genes and model.n_genes == 30
    # the checkpoint's model is the EMA model the run returned
    for (k, a), b in zip(res.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_stop_then_resume_continues_exactly(full_run, prepared, tmp_path):
    res_full, _, _ = full_run
    out = tmp_path / "run"
    stop = threading.Event()
    rec = Recorder(stop_at=4, stop=stop)
    res = train(tiny_config(out), callbacks=rec, stop=stop, data=prepared)
    assert res.status == "stopped" and res.step == 4 and rec.steps == [1, 2, 3, 4]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4

    rec2 = Recorder()
    res2 = train(tiny_config(out), callbacks=rec2, resume=True)  # prepares data from the checkpoint's panel
    assert rec2.steps == [5, 6] and res2.step == 6 and res2.status == "finished"
    assert res2.genes == prepared.genes
    # per-step reseeding: resumed weights equal the uninterrupted run's
    a = torch.load(res_full.last_path, weights_only=True)
    b = torch.load(res2.last_path, weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)

    # resuming a finished run is a no-op that keeps the step count
    rec3 = Recorder()
    res3 = train(tiny_config(out), callbacks=rec3, resume=True, data=prepared)
    assert rec3.steps == [] and res3.step == 6


def test_stop_before_first_step_saves(prepared, tmp_path):
    stop = threading.Event()
    stop.set()
    res = train(tiny_config(tmp_path, val=[]), stop=stop, data=prepared)
    assert res.status == "stopped" and res.step == 0 and Path(res.last_path).is_file()


def test_early_stopping(prepared, tmp_path):
    # lr=0: the weights never change, so the (seeded) validation cannot improve
    # after the first one and patience 1 stops at the second.
    cfg = tiny_config(tmp_path, steps=12, val_every=2, patience=1, val_metric="MSE", lr=0.0)
    rec = Recorder()
    res = train(cfg, callbacks=rec, data=prepared)
    assert res.status == "early_stopped" and res.step == 4
    assert [s for s, _ in rec.vals] == [2, 4]


@pytest.mark.parametrize("method", ["ridge", "regression"])
def test_baselines_and_ablations_share_the_harness(prepared, tmp_path, method):
    from napari_flag.checkpoint import load_model

    res = train(tiny_config(tmp_path, method=method, steps=2, val_every=0), data=prepared)
    assert res.status == "finished" and len(res.history) == 1
    assert np.isfinite(res.history[0]["PCC"])
    model, meta = load_model(res.last_path)
    assert meta.method == method


def test_resume_refuses_other_method(full_run, tmp_path):
    import shutil

    _, _, out = full_run
    shutil.copy(out / "last.pt", tmp_path / "last.pt")
    with pytest.raises(FlagInputError, match="method"):
        train(tiny_config(tmp_path, method="no_graph"), resume=True)


# ----------------------------------------------------------------------------- DDP
DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from napari_flag.training import TrainConfig, train

    cfg = TrainConfig(**json.loads(sys.argv[1]))
    res = train(cfg)
    total = sum(float(v.double().sum()) for v in res.model.state_dict().values() if v.is_floating_point())
    rank = int(os.environ["RANK"])
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as fh:
        json.dump({"step": res.step, "epoch": res.epoch, "checksum": total,
                   "world": int(os.environ["WORLD_SIZE"])}, fh)
    """
)


def test_ddp_two_processes_gloo(prepared, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    out = tmp_path / "run"
    cfg = tiny_config(out, val=[], steps=3, batch_spots=32).to_dict()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), json.dumps(cfg), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == 2 and r0["step"] == r1["step"] == 3
    assert r0["epoch"] == 3  # 2 ranks x 3 steps over 2 slides
    # gradients were averaged: both ranks hold the same weights
    assert r0["checksum"] == pytest.approx(r1["checksum"], rel=1e-6)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 3
    assert not list(out.glob("*.tmp"))


def test_joint_denoising_trains_validates_and_predicts(prepared, tmp_path):
    """model.joint=true: the loop feeds every slide's neighbour matrix, validation and the CLI's
    predict path sample the whole slide together, and the checkpoint says it is joint."""
    from napari_flag.checkpoint import load_model
    from napari_flag.inference import predict_sample

    cfg = tiny_config(tmp_path, model=dict(TINY_MODEL, joint=True), steps=4, val_every=2)
    res = train(cfg, data=prepared)
    assert res.status == "finished" and len(res.history) == 2
    assert all(np.isfinite(v["PCC"]) for v in res.history)
    model, _ = load_model(res.last_path)
    assert model.is_joint and model.cfg.network.joint
    out = predict_sample("her2st:C2", checkpoint=res.last_path, device="cpu", feature_cache=str(FEATURE_DIR))
    assert out.n_obs > 100 and np.isfinite(out.X).all() and np.isfinite(out.layers["std"]).all()


def test_stain_augmentation_prepares_restained_copies_and_trains(tmp_path):
    """augment_views: each training slide gets that many re-stained copies (features and graph of
    their own, drawn the same way again), validation slides none; the loop trains on them."""
    from napari_flag.features.stain import StainJitter, draw_jitters, restain

    cfg = tiny_config(tmp_path, train=["her2st:C3"], augment_views=2, augment_range={"blur": 0.0, "jpeg": 0},
                      steps=4, val_every=0)
    data = prepare_data(cfg)
    sl = data.train[0]
    assert len(sl.views) == 2 and data.val[0].views is None
    for feats, graph in sl.views:
        assert feats.shape == sl.feats.shape and graph.num_nodes == sl.n_spots
        assert not np.allclose(feats.numpy(), sl.feats.numpy())  # another stain, other features
    again = prepare_data(cfg)  # the same draws, read back from the feature cache
    np.testing.assert_array_equal(again.train[0].views[1][0].numpy(), sl.views[1][0].numpy())
    rec = Recorder()
    res = train(cfg, data=data, callbacks=rec)
    assert res.status == "finished" and rec.steps == [1, 2, 3, 4]
    # the re-staining itself: identity at scale 1, white stays white, and the draws stay in range
    px = np.random.default_rng(0).integers(40, 255, (2, 8, 8, 3)).astype(np.uint8)
    assert restain(px, 1.0, 1.0) is px and (restain(np.full((1, 2, 2, 3), 255, np.uint8), 0.6, 1.4) == 255).all()
    js = draw_jitters(16, seed=1)
    assert js == draw_jitters(16, seed=1) and all(1 / 1.4 - 1e-3 <= j.h <= 1.4 + 1e-3 for j in js)
    assert StainJitter(h=0.7).key != StainJitter(h=0.8).key
    with pytest.raises(FlagInputError, match="augment_range: unknown key"):
        tiny_config(tmp_path, augment_views=2, augment_range={"stian": 0.2})
