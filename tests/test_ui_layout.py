"""The demo window as a user sees it on a 1920 x 1080 screen (pytest-xvfb's
display, see ``xvfb_width``/``xvfb_height`` in pyproject.toml).

Layout facts are asserted (window within the screen, docks within the window,
canvas share, tab and panel titles, what is selected after Predict) and each
screenshot is written to the test's ``tmp_path`` for a look.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_flag import layers as L  # noqa: E402

SCREEN = (1920, 1080)


@pytest.fixture
def demo(make_napari_viewer, qtbot, her2st_dir):
    from napari_flag._demo import run_demo

    viewer = make_napari_viewer(show=True)
    run_demo("her2st:C2", viewer=viewer, run=False)
    qtbot.wait(300)
    return viewer


def _win(viewer):
    return viewer.window._qt_window


def _flag_docks(viewer):
    from napari_flag._demo import DEMO_WIDGETS, _dock

    return {name: _dock(viewer, name) for name, *_ in DEMO_WIDGETS}


def _in_front(dock) -> bool:
    return dock.isVisible() and not dock.visibleRegion().isEmpty()


def _canvas_share(viewer) -> float:
    return viewer.window._qt_viewer.canvas.native.width() / _win(viewer).width()


def _assert_fits(viewer) -> None:
    """Window within the screen; every dock in front lies inside the window."""
    from qtpy.QtWidgets import QDockWidget

    win = _win(viewer)
    screen = win.screen().availableGeometry()
    assert (screen.width(), screen.height()) == SCREEN
    assert screen.contains(win.frameGeometry()), (win.frameGeometry(), screen)
    inside = win.rect()
    for d in win.findChildren(QDockWidget):
        if _in_front(d):
            assert inside.contains(d.geometry()), (d.windowTitle(), d.geometry(), inside)


def _shot(viewer, qtbot, path):
    qtbot.wait(200)
    img = viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    return np.asarray(img)


def test_demo_fits_1080p_with_gene_maps_in_front(demo, qtbot, tmp_path):
    from qtpy.QtWidgets import QTabBar

    viewer = demo
    _assert_fits(viewer)
    assert _canvas_share(viewer) >= 0.5
    docks = _flag_docks(viewer)
    assert _in_front(docks["Gene maps"]) and _in_front(docks["Predict expression"])
    assert not _in_front(docks["Train FLAG"]) and not _in_front(docks["Metrics"])
    # every tab, brought to the front, fits as well: no dock sets the window's height
    for name, d in docks.items():
        d.raise_()
        qtbot.wait(50)
        assert _in_front(d), name
        _assert_fits(viewer)
    for name in ("Predict expression", "Gene maps"):
        docks[name].raise_()
    # tab labels are whole
    for bar in _win(viewer).findChildren(QTabBar):
        for i in range(bar.count()):
            text = bar.tabText(i)
            assert bar.tabRect(i).width() >= bar.fontMetrics().horizontalAdvance(text), text
    # the legend says what the first colouring is
    maps = docks["Gene maps"].inner_widget()
    assert maps.colorbar.titles() == ["C2 spots: total counts per spot"]
    _shot(viewer, qtbot, tmp_path / "demo_1080p.png")


def test_after_predict_side_by_side_and_export(demo, qtbot, tmp_path):
    from napari_flag._demo import docked_widget
    from napari_flag.checkpoint import default_checkpoint_path
    from napari_flag.widgets._grid import grid_model
    from napari_flag.widgets.export import write_figure
    from napari_flag.widgets.session import get_session

    viewer = demo
    assert default_checkpoint_path().is_file()
    predict = docked_widget(viewer, "Predict expression")
    predict.form.steps.value = 2  # the picture, not the model's quality, is under test
    predict.form.samples.value = 2
    with qtbot.waitSignal(predict.run_finished, timeout=300_000) as done:
        predict.predict_btn.click()
    assert done.args == ["finished"]
    session = get_session(viewer)
    key = session.prediction_key
    lyrs = {lyr.metadata.get(L.ROLE): lyr for lyr in viewer.layers if lyr.metadata.get("prediction_key") == key}

    # the predicted map is what the user sees and what is selected
    assert viewer.layers.selection.active is lyrs["pred"]
    assert list(viewer.layers)[-1] is lyrs["pred"] and lyrs["pred"].visible
    assert not lyrs["std"].visible and not lyrs["truth"].visible  # one click away
    maps = docked_widget(viewer, "Gene maps")
    assert maps.pred_combo.currentText() == "C2 · flag_default.pt"
    maps.colorbar.redraw()
    assert maps.colorbar.titles()[0].endswith("predicted & measured, log2(1+count)")
    _assert_fits(viewer)
    assert _canvas_share(viewer) >= 0.5
    _shot(viewer, qtbot, tmp_path / "predicted_1080p.png")

    # side by side: titled panels framed on the tissue
    gene = "ERBB2" if "ERBB2" in session.genes() else session.genes()[0]
    maps.set_gene(gene)
    maps.side.setChecked(True)
    grid = grid_model(viewer)
    assert grid.enabled
    for role, title in (("pred", "predicted"), ("truth", "measured"), ("std", "uncertainty")):
        lyr = lyrs[role]
        assert lyr.visible and lyr.name_overlay.visible and lyr.name == f"C2 {title} · {gene}"
    assert viewer.layers.selection.active is lyrs["pred"]
    _assert_fits(viewer)
    assert _canvas_share(viewer) >= 0.5
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    rows, cols = grid.shape
    h, w = canvas.shape[:2]
    for i in range(3):
        cell = canvas[(i // cols) * h // rows:(i // cols + 1) * h // rows,
                      (i % cols) * w // cols:(i % cols + 1) * w // cols, :3].astype(float)
        dark = (cell.sum(axis=2) < 60).mean()
        assert dark < 0.25, f"panel {i} is {dark:.0%} black: not framed on the tissue"
    # spots stay visible: at least a few screen pixels across in each panel
    zoom = viewer.camera.zoom
    assert float(np.mean(lyrs["pred"].size)) * float(lyrs["pred"].scale[-1]) * zoom >= 4
    _shot(viewer, qtbot, tmp_path / "side_by_side_1080p.png")

    # the PNG export: framed, titled figure at the chosen scale, not a dark grab
    from PIL import Image

    png = write_figure(viewer, key, tmp_path / "figure.png", scale=1)
    fig = np.asarray(Image.open(png).convert("RGB")).astype(float)
    assert fig.shape[1] == 3 * 400
    assert (fig.sum(axis=2) < 60).mean() < 0.05 and fig.mean() > 150
    big = np.asarray(Image.open(write_figure(viewer, key, tmp_path / "figure2.png", scale=2)))
    assert big.shape[1] == 2 * fig.shape[1]

    # leaving side by side re-fits one full-size view on the tissue
    maps.side.setChecked(False)
    qtbot.wait(100)
    assert not grid.enabled and viewer.layers.selection.active is lyrs["pred"]
    ch, cw = viewer.canvas.size if hasattr(viewer, "canvas") else viewer._canvas_size
    ext = np.asarray(lyrs["pred"].extent.world)[:, -2:]
    span_px = (ext[1] - ext[0]) * viewer.camera.zoom
    assert max(span_px[0] / ch, span_px[1] / cw) > 0.8  # the tissue fills the canvas
    assert span_px[0] <= ch and span_px[1] <= cw  # ... and is not cut off
    _shot(viewer, qtbot, tmp_path / "left_side_by_side_1080p.png")
