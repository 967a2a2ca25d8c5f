"""The viewer after Stop / a refused overwrite: layers as they were, files complete and resumable."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-flag"
FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"  # shared with the other tests
TINY_MODEL = dict(
    preset="cpu", feat_dim_proj=32, cond_dim=16, graph_layers=1, graph_heads=2, depth=1, width=16,
    heads=2, align_block=1, align_hidden=[16], sample_steps=2, sample_count=2,
)


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch):
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(FEATURE_DIR))


def tiny_config(out_dir: Path, **kw):
    from napari_flag.training import TrainConfig

    d = dict(train=["her2st:C3"], val=[], n_genes=12, model=dict(TINY_MODEL), steps=10_000, batch_spots=32,
             lr=1e-3, val_every=0, device="cpu", feature_cache=str(FEATURE_DIR), log_every=1, out_dir=str(out_dir))
    d.update(kw)
    return TrainConfig(**d)


def trainer(viewer):
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Train FLAG")
    return w


def test_trainer_asks_before_replacing_a_run(make_napari_viewer, tmp_path, monkeypatch):
    import napari_flag.widgets.notify as C

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"an earlier run")
    (run / "train_log.jsonl").write_text('{"event": "step", "step": 1}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    asked = []
    monkeypatch.setattr(C, "confirm_overwrite", lambda p, parent=None: asked.append(Path(p)) or False)
    w = trainer(make_napari_viewer())
    w.start(tiny_config(run))
    assert asked == [run / "last.pt"]
    assert not w.running and w.train_btn.isEnabled()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_trainer_stop_leaves_viewer_and_files_consistent(make_napari_viewer, qtbot, tmp_path, her2st_dir):
    from napari_flag.checkpoint import load_checkpoint
    from napari_flag.training import train

    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "her2st-C2")
    before = [(lyr.name, type(lyr).__name__, lyr.data.shape) for lyr in layers]
    w = trainer(viewer)
    run = tmp_path / "run"
    steps = []
    w.step_done.connect(lambda s, losses: steps.append(s))
    with qtbot.waitSignal(w.run_finished, timeout=300_000) as done:
        w.start(tiny_config(run))
        qtbot.waitUntil(lambda: len(steps) >= 3, timeout=240_000)
        w.stop_btn.click()
    assert done.args == ["stopped"]
    # the viewer: same layers, no half-added ones; the widget ready for another run
    assert [(lyr.name, type(lyr).__name__, lyr.data.shape) for lyr in viewer.layers] == before
    assert not w.running and w.train_btn.isEnabled() and not w.stop_btn.isEnabled()
    # the files: a complete checkpoint at the step the run reports, a log that ends there, no temp files
    stopped = w.result["step"]
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == stopped >= 3 and ck["train_state"]["status"] == "stopped"
    logged = [json.loads(ln)["step"] for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, stopped + 1))
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt", "train_log.jsonl"]
    # ... and it resumes where it stopped
    res = train(tiny_config(run, steps=stopped + 1), resume=True)
    assert res.step == stopped + 1 and res.status == "finished"
