"""In napari: a routine H&E image (no spots) opened, predicted on virtual spots, looked at.

The slide is HER2ST C3 written as a pyramidal OME-TIFF (conftest ``her2st_slide``); the
model is the bundled one, as a user would run it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_flag import layers as L  # noqa: E402

PLUGIN = "napari-flag"
FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch):
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(FEATURE_DIR))


def _dock(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def _roles(viewer):
    return {lyr.metadata.get(L.ROLE): lyr for lyr in viewer.layers if L.ROLE in lyr.metadata}


def _predict(viewer, qtbot, w, steps=2, samples=2, timeout=240_000):
    w.form.device.value = "cpu"
    w.form.steps.value = steps
    w.form.samples.value = samples
    with qtbot.waitSignal(w.run_finished, timeout=timeout) as done:
        w.predict_btn.click()
    return done.args[0]


def _cancel_after(qtbot, w, signal, timeout=240_000) -> str:
    """Click Predict, then Cancel once ``signal`` fires; the run's outcome."""
    with qtbot.waitSignal(w.run_finished, timeout=timeout) as done:
        with qtbot.waitSignal(signal, timeout=timeout // 2):
            w.predict_btn.click()
        w.cancel_btn.click()
    return done.args[0]


def test_image_only_slide_predict_gene_maps_morans_metrics(make_napari_viewer, qtbot, her2st_slide, tmp_path):
    path, _ = her2st_slide("C3", 2)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    opened = viewer.open(str(path), plugin=PLUGIN)
    assert [type(lyr).__name__ for lyr in opened] == ["Image"]  # no spots on a routine H&E
    w = _dock(viewer, "Predict expression")
    assert w.selected_layers() == [opened[0]]
    assert _predict(viewer, qtbot, w) == "finished"
    r = _roles(viewer)
    assert {"virtual_spots", "pred", "std"} <= set(r) and "truth" not in r
    assert len(r["pred"].data) == len(r["virtual_spots"].data) > 150
    ad = w.session.prediction
    assert ad.uns["flag"]["virtual_spots"] and "spatial" in ad.uns
    # Gene maps: predicted | uncertainty side by side, no empty measured panel
    gm = _dock(viewer, "Gene maps")
    gene = ad.var_names[3]
    w.session.set_gene(gene)
    assert "no measured expression here" in gm.info.text()  # the legend is the prediction's alone
    gm.side.setChecked(True)
    panels = {lyr.metadata.get("panel") or lyr.metadata.get(L.ROLE) for lyr in viewer.layers if lyr.visible}
    assert "truth" not in panels
    gm.side.setChecked(False)
    # Moran's I on the prediction alone: a sortable table of the predicted global I
    mo = _dock(viewer, "Moran's I")
    with qtbot.waitSignal(mo.computed, timeout=120_000):
        mo.compute()
    assert mo.table.rowCount() == ad.n_vars
    assert mo.table.horizontalHeaderItem(1).text() == "I predicted"
    assert "no measured expression" in mo.title.text() or "virtual spots" in mo.title.text()
    mo.local.setChecked(True)
    assert "lisa_pred" in _roles(viewer) and "lisa_truth" not in _roles(viewer)
    # Metrics says exactly what is missing
    me = _dock(viewer, "Metrics")
    with qtbot.waitSignal(me.computed, timeout=60_000):
        me.compute(force=True)
    assert "No metrics" in me.title.text() and "virtual spots" in me.title.text()
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=False)
    from imageio.v3 import imwrite

    imwrite(tmp_path / "routine.png", shot)
    import os

    if os.environ.get("NAPARI_FLAG_SHOTS"):  # keep it to look at
        imwrite(Path(os.environ["NAPARI_FLAG_SHOTS"]) / "routine_he.png", shot)
    assert shot.shape[0] > 0 and np.asarray(shot)[..., :3].std() > 5  # something was drawn


def test_image_only_slide_cancel_leaves_nothing(make_napari_viewer, qtbot, her2st_slide):
    path, _ = her2st_slide("C3", 2)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin=PLUGIN)
    before = [lyr.name for lyr in viewer.layers]
    w = _dock(viewer, "Predict expression")
    w.form.device.value = "cpu"
    w.form.steps.value = 60
    assert _cancel_after(qtbot, w, w.progress) == "cancelled"
    assert [lyr.name for lyr in viewer.layers] == before


def test_detect_tissue_paint_out_and_exclude_then_predict(make_napari_viewer, qtbot, her2st_slide, tmp_path):
    """Detect tissue -> erase the left half, exclude a polygon -> Predict lays no spot there (1920 x 1080)."""
    path, _ = her2st_slide("C3", 4)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    viewer.open(str(path), plugin=PLUGIN)
    w = _dock(viewer, "Predict expression")
    w.detect_btn.click()
    tissue = viewer.layers["tissue"]
    assert tissue.metadata[L.ROLE] == "tissue" and tissue.data.any()
    assert "edit the 'tissue' layer" in w.status.text()
    h, wd = tissue.data.shape
    data = np.array(tissue.data)
    data[:, : wd // 2] = 0  # the user erases the left half
    tissue.data = data
    f, ps = tissue.metadata["fullres_per_px"], tissue.metadata["pixel_size_um"]
    rows, cols = np.nonzero(data)
    y0, y1 = rows.min() * f * ps, (rows.min() + (rows.max() - rows.min()) / 3) * f * ps  # the top third: excluded
    viewer.add_shapes([[[y0 - 1, 0], [y0 - 1, wd * f * ps], [y1, wd * f * ps], [y1, 0]]], shape_type="polygon",
                      name=L.TISSUE_EXCLUDE, opacity=0.3)
    viewer.layers.selection.active = tissue
    assert _predict(viewer, qtbot, w, steps=1, samples=1) == "finished"
    ad = w.session.prediction
    xy = ad.obsm["spatial"]
    assert len(xy) > 10
    assert (xy[:, 0] >= (wd // 2) * f - ad.uns["flag"]["spot_diameter_px"] / 2).all()  # nothing on the erased half
    assert (xy[:, 1] > y1 / ps - ad.uns["flag"]["spot_diameter_px"] / 2).all()  # nothing in the excluded polygon
    assert ad.uns["flag"]["tissue"]["params"]["from"] == "edited in napari"
    qtbot.wait(300)
    shot = np.asarray(viewer.screenshot(canvas_only=False))
    assert shot.shape[1] >= 1900 and shot[..., :3].std() > 5
    import os

    if os.environ.get("NAPARI_FLAG_SHOTS"):
        from imageio.v3 import imwrite

        imwrite(Path(os.environ["NAPARI_FLAG_SHOTS"]) / "tissue_edited.png", shot)


def test_whole_slide_fills_in_tile_by_tile_and_cancel_keeps_tiles_when_asked(make_napari_viewer, qtbot, her2st_slide,
                                                                              monkeypatch):
    from napari_flag import inference

    monkeypatch.setattr(inference, "TILE_SPOTS", 64)  # this small slide in several tiles
    monkeypatch.setattr(inference, "FIRST_TILE_SPOTS", 32)
    path, _ = her2st_slide("C3", 4)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin=PLUGIN)
    w = _dock(viewer, "Predict expression")
    shown = []
    w.tile_shown.connect(lambda i: shown.append((i, len(viewer.layers), w.running)))
    assert _predict(viewer, qtbot, w, steps=1, samples=1) == "finished"
    assert len(shown) >= 3 and all(running for *_, running in shown)  # drawn while the run went on
    r = _roles(viewer)
    assert "partial_prediction" not in r and {"pred", "std"} <= set(r)  # the finished slide replaced its tiles
    assert w.session.prediction.uns["flag"]["timings"]["tiles"]["tiles"] >= 3
    # cancelled after the first tiles, with "keep finished tiles": they stay, as a layer of their own
    w.keep_tiles.setChecked(True)
    w.form.steps.value = 30
    assert _cancel_after(qtbot, w, w.tile_shown) == "cancelled"
    kept = [lyr for lyr in viewer.layers if "cancelled, kept" in lyr.name]
    assert len(kept) == 1 and 0 < len(kept[0].data) < w.session.prediction.n_obs
