"""The napari UI on a real HER2ST section with a tiny model trained here.

Every widget is opened the way a user does (Plugins menu ->
``add_plugin_dock_widget``).  Image layers and screenshots need an X server:
pytest-xvfb starts one.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_flag import layers as L  # noqa: E402

PLUGIN = "napari-flag"
FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"  # shared with test_predict
TINY_MODEL = dict(
    preset="cpu", feat_dim_proj=32, cond_dim=16, graph_layers=1, graph_heads=2, depth=1, width=16,
    heads=2, align_block=1, align_hidden=[16], sample_steps=2, sample_count=2,
)
N_GENES = 24


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch):
    # widgets call the core with its default feature cache: point it at the tests' one
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(FEATURE_DIR))


@pytest.fixture(scope="module")
def tiny_ckpt(her2st_dir, tmp_path_factory) -> Path:
    from napari_flag.training import TrainConfig, train

    out = tmp_path_factory.mktemp("ui-model")
    cfg = TrainConfig(
        train=["her2st:C3"], val=[], n_genes=N_GENES, model=dict(TINY_MODEL), steps=3, batch_spots=64,
        lr=1e-3, val_every=0, device="cpu", feature_cache=str(FEATURE_DIR), out_dir=str(out),
    )
    return Path(train(cfg).last_path)


@pytest.fixture(scope="module")
def c2_result(tiny_ckpt):
    """A real prediction of C2 (for the widgets that only display one)."""
    from napari_flag.inference import predict_sample

    return predict_sample("her2st:C2", checkpoint=tiny_ckpt, steps=2, samples=2, device="cpu",
                          feature_cache=str(FEATURE_DIR))


def open_c2(viewer):
    # dataset ids are not paths (napari's File > Open refuses them): sample data menu
    layers = viewer.open_sample(PLUGIN, "her2st-C2")
    assert [type(lyr).__name__ for lyr in layers] == ["Image", "Points"]
    return layers


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def with_prediction(viewer, result):
    from napari_flag.widgets.predict import add_prediction_layers

    slide, _ = open_c2(viewer)
    meta = dict(slide.metadata, slide_layer=slide.name)
    return add_prediction_layers(viewer, result, meta)


def grid_cells(shot, viewer, n=3):
    """The first ``n`` panels of a grid-mode screenshot, in reading order (the
    grid's shape follows the canvas and the tissue's aspect)."""
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    rows, cols = grid.shape
    h, w = shot.shape[:2]
    return [shot[(i // cols) * h // rows:(i // cols + 1) * h // rows,
                 (i % cols) * w // cols:(i % cols + 1) * w // cols, :3].astype(float) for i in range(n)]


def roles(viewer):
    return {lyr.metadata.get(L.ROLE): lyr for lyr in viewer.layers if lyr.metadata.get(L.ROLE)}


# ---------------------------------------------------------------------------- readers / sample data


def test_open_her2st_and_visium(make_napari_viewer, visium_dir):
    viewer = make_napari_viewer()
    img, pts = open_c2(viewer)
    s = img.metadata[L.SAMPLE]
    assert pts.metadata[L.SAMPLE] is s and s.sample_id == "C2"  # both layers carry the one Sample
    assert img.units[0] == pts.units[0] and str(img.units[0]) == "micrometer"
    assert pts.size[0] * pts.scale[0] == pytest.approx(100.0, rel=0.02)  # real spot diameter in um
    assert len(pts.data) == s.n_spots and "ERBB2" in pts.features.columns
    # the status bar shows the hovered spot's values
    status = pts.get_status(tuple(pts.data[0]), world=False)
    assert "spot:" in status["coordinates"] and "ERBB2" in status["coordinates"]
    vis = viewer.open(str(visium_dir), plugin=PLUGIN)
    assert vis[1].metadata["grid"] == "hex"


def test_deleted_slide_layers_free_their_sample(make_napari_viewer, qtbot, visium_dir):
    """The Sample lives in its layers' metadata: deleting them frees it, with or without widgets
    (nothing process-wide keeps a slide), and the viewer's session goes when its window closes."""
    import gc
    import weakref

    def collect():
        qtbot.wait(50)  # napari deletes a removed layer's controls later, in the event loop
        gc.collect()

    viewer = make_napari_viewer()
    refs = []
    for opened in (open_c2(viewer), viewer.open(str(visium_dir), plugin=PLUGIN)):  # sample data, reader
        (sample,) = {id(lyr.metadata[L.SAMPLE]): lyr.metadata[L.SAMPLE] for lyr in opened}.values()
        refs.append(weakref.ref(sample))
        del sample, opened
    collect()
    assert all(r() is not None for r in refs)  # shown: kept
    viewer.layers.remove("C2 H&E")
    collect()
    assert refs[0]() is not None  # the spots layer still shows C2
    viewer.layers.remove("C2 spots")
    collect()
    assert refs[0]() is None and refs[1]() is not None  # no widget yet: C2 freed all the same
    session = weakref.ref(dock(viewer, "Gene maps").session)  # a widget and the session hold no slide either
    viewer.layers.clear()
    collect()
    assert refs[1]() is None
    viewer.close()  # and the session goes with the viewer's window
    collect()
    assert session() is None


def test_sample_data_menu(make_napari_viewer, tmp_path, monkeypatch):
    from napari_flag.errors import FlagInputError

    viewer = make_napari_viewer()
    added = viewer.open_sample(PLUGIN, "her2st-C4")
    assert [lyr.metadata[L.ROLE] for lyr in added] == ["slide", "spots"]
    assert added[0].metadata["sample_id"] == "C4"
    # not cached, no network: one clear error (napari shows its message), nothing added
    monkeypatch.setenv("NAPARI_FLAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NAPARI_FLAG_OFFLINE", "1")
    with pytest.raises(FlagInputError, match="HER2ST C5 is not available"):
        viewer.open_sample(PLUGIN, "her2st-C5")
    assert len(viewer.layers) == 2


# ---------------------------------------------------------------------------- predict


def test_predict_real_section_adds_layers(make_napari_viewer, qtbot, tiny_ckpt):
    viewer = make_napari_viewer()
    open_c2(viewer)
    w = dock(viewer, "Predict expression")
    assert w.selected_layers() == [viewer.layers["C2 H&E"]]  # first slide preselected
    w.form.checkpoint.value = str(tiny_ckpt)
    w.form.device.value = "cpu"
    w.form.steps.value = 2
    w.form.samples.value = 2
    assert w.form.stain_norm.value == "as the model says"
    w.form.stain_norm.value = "off"  # reaches the library: nothing normalised, nothing recorded
    progress = []
    w.progress.connect(lambda d, t, m: progress.append((d, t, m)))
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    with qtbot.waitSignal(w.run_finished, timeout=180_000) as done:
        w.predict_btn.click()
        assert w.running
    timer.stop()
    assert done.args == ["finished"]
    assert len(ticks) >= 3  # the event loop kept running while the worker worked
    msgs = {m for _, _, m in progress}
    assert {"features", "sampling"} <= msgs
    r = roles(viewer)
    assert {"pred", "truth", "std"} <= set(r)
    pred, truth = r["pred"], r["truth"]
    assert len(pred.data) == len(viewer.layers["C2 spots"].data)
    assert pred.metadata["clim"] == truth.metadata["clim"]
    gene = pred.metadata["gene"]
    ad = pred.metadata[L.PREDICTION]
    assert ad.n_vars == N_GENES and gene in ad.var_names
    assert "stain_norm" not in ad.uns["flag"]
    np.testing.assert_allclose(pred.features["value"], L.gene_values(ad, gene, "pred"))
    np.testing.assert_allclose(pred.data, viewer.layers["C2 spots"].data)


def test_predict_cancel_leaves_layers_unchanged(make_napari_viewer, qtbot, tiny_ckpt):
    viewer = make_napari_viewer()
    open_c2(viewer)
    before = [lyr.name for lyr in viewer.layers]
    w = dock(viewer, "Predict expression")
    w.form.checkpoint.value = str(tiny_ckpt)
    w.form.device.value = "cpu"
    w.form.steps.value = 50  # long enough to cancel mid-run
    with qtbot.waitSignal(w.run_finished, timeout=180_000) as done:
        with qtbot.waitSignal(w.progress, timeout=60_000):
            w.predict_btn.click()
        w.cancel_btn.click()
    assert done.args == ["cancelled"]
    assert [lyr.name for lyr in viewer.layers] == before
    assert w.predict_btn.isEnabled() and not w.running


def test_predict_reports_bad_checkpoint(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_flag.widgets.predict as P

    viewer = make_napari_viewer()
    open_c2(viewer)
    w = dock(viewer, "Predict expression")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    errors = []
    monkeypatch.setattr("napari_flag.widgets.notify.show_error", lambda e: errors.append(e))
    monkeypatch.setattr(P, "show_error", lambda e: errors.append(e))
    w.form.checkpoint.value = str(bad)
    with qtbot.waitSignal(w.run_finished, timeout=60_000) as done:
        w.predict_btn.click()
    assert done.args == ["error"] and len(errors) == 1
    assert len(viewer.layers) == 2


# ---------------------------------------------------------------------------- gene maps


def test_gene_maps_side_by_side_and_switch(make_napari_viewer, qtbot, c2_result):
    viewer = make_napari_viewer(show=True)
    key = with_prediction(viewer, c2_result)
    w = dock(viewer, "Gene maps")
    assert w.picker.genes() == list(c2_result.var_names)
    w.side.setChecked(True)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled and grid.stride == 2
    order = [lyr.metadata.get(L.ROLE) for lyr in viewer.layers][:6]
    assert order == ["panel_image", "pred", "panel_image", "truth", "panel_image", "std"]
    assert all(lyr.visible for lyr in list(viewer.layers)[:6])
    assert not any(lyr.visible for lyr in list(viewer.layers)[6:])

    # search + pick: both panels recoloured with one shared range
    w.picker.search.setText("erbb")
    assert w.picker.visible_genes() == ["ERBB2"] or "ERBB2" not in c2_result.var_names
    target = "ERBB2" if "ERBB2" in c2_result.var_names else w.picker.genes()[3]
    w.picker.search.setText(target)
    w.picker.search.returnPressed.emit()
    r = roles(viewer)
    assert w.session.gene == target and r["pred"].metadata["gene"] == target
    assert r["pred"].metadata["clim"] == r["truth"].metadata["clim"] == pytest.approx(w.session.clim)
    lo, hi = w.session.clim
    union = np.r_[L.gene_values(c2_result, target, "pred"), L.gene_values(c2_result, target, "truth")]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(union, [1, 99])))
    # same value -> same colour on both panels
    cmap = r["pred"].face_colormap
    mid = (lo + hi) / 2
    np.testing.assert_allclose(cmap.map(np.array([0.5]))[0], cmap.map(np.array([(mid - lo) / (hi - lo)]))[0])
    np.testing.assert_allclose(r["truth"].features["value"], L.gene_values(c2_result, target, "truth"))
    assert target in r["std"].name and target in r["truth"].name

    # the screenshot has the H&E and the spots in each panel
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    for t in grid_cells(shot, viewer):
        assert t.std() > 10  # not a blank panel
        assert (t.sum(axis=2) > 200).mean() > 0.05  # some bright pixels: slide or spots

    w.side.setChecked(False)
    assert not grid.enabled and roles(viewer)["pred"].visible
    assert viewer.layers["C2 H&E"].visible
    assert key == w.session.prediction_key


def test_gene_maps_as_images_on_large_slides(make_napari_viewer, qtbot, c2_result, monkeypatch):
    """Large slides show each panel as an image of the spots (fast to draw); C2 is
    sent down that path here, so the values can be checked against real spots."""
    import napari_flag.widgets.painting as C

    monkeypatch.setattr(C, "RASTER_MIN_SPOTS", 0)
    viewer = make_napari_viewer(show=True)
    with_prediction(viewer, c2_result)
    w = dock(viewer, "Gene maps")
    w.side.setChecked(True)
    top = list(viewer.layers)[:6]
    assert [lyr.metadata.get(L.ROLE) for lyr in top] == ["panel_image", C.PANEL_MAP] * 3
    maps = {lyr.metadata["panel"]: lyr for lyr in top[1::2]}
    assert list(maps) == ["pred", "truth", "std"] and all(lyr.visible for lyr in top)
    r = roles(viewer)
    assert not any(r[k].visible for k in ("pred", "truth", "std"))  # the Points wait, hidden

    genes = w.picker.genes()
    target = "ERBB2" if "ERBB2" in genes else genes[3]
    qtbot.wait(200)
    before = viewer.screenshot(canvas_only=True, flash=False)
    clim_before = tuple(maps["truth"].contrast_limits)
    w.session.set_gene(target)
    for role, img in maps.items():
        pts = r[role]
        vals = L.gene_values(c2_result, target, role)
        # each spot centre, seen through the image, shows that spot's value
        ij = np.rint([img.world_to_data(pts.data_to_world(p)) for p in pts.data]).astype(int)
        np.testing.assert_allclose(img.data[ij[:, 0], ij[:, 1]], vals, rtol=1e-6)
        assert np.isnan(img.data).mean() > 0.2  # between spots: transparent, the H&E shows
        assert tuple(img.contrast_limits) == pytest.approx(pts.metadata["clim"])
        assert target in img.name and img.metadata["gene"] == target
        assert img.colormap.name == pts.face_colormap.name
        assert C.points_colours_stale(pts)  # hidden Points are recoloured only when shown
    assert tuple(maps["pred"].contrast_limits) == tuple(maps["truth"].contrast_limits) == pytest.approx(
        w.session.clim)
    # hovering a spot in the image panel reads its value
    p0 = r["truth"].data[0]
    val = maps["truth"].get_value(maps["truth"].world_to_data(r["truth"].data_to_world(p0)))
    assert float(val) == pytest.approx(float(L.gene_values(c2_result, target, "truth")[0]), rel=1e-6)

    qtbot.wait(300)
    after = viewer.screenshot(canvas_only=True, flash=False)
    change = []
    for b, a in zip(grid_cells(before, viewer), grid_cells(after, viewer)):
        assert a.std() > 10  # drawn: H&E and spots
        change.append(np.abs(a - b).mean())
    assert change[1] > 1.0  # the measured panel was repainted with the new gene
    # ... with its new values, not only its new range
    maps["truth"].contrast_limits = clim_before
    qtbot.wait(300)
    same_range = grid_cells(viewer.screenshot(canvas_only=True, flash=False), viewer)[1]
    assert np.abs(same_range - grid_cells(before, viewer)[1]).mean() > 1.0
    maps["truth"].contrast_limits = w.session.clim

    # local Moran's I panels join the grid as images too, and leave with their Points
    m = dock(viewer, "Moran's I")
    with qtbot.waitSignal(m.computed, timeout=60_000):
        pass
    m.local.setChecked(True)
    lisa = {lyr.metadata["panel"]: lyr for lyr in viewer.layers
            if lyr.metadata.get(L.ROLE) == C.PANEL_MAP and lyr.metadata["panel"].startswith("lisa")}
    assert set(lisa) == {"lisa_pred", "lisa_truth"} and all(lyr.visible for lyr in lisa.values())
    lo, hi = lisa["lisa_truth"].contrast_limits
    assert lo == -hi and lisa["lisa_truth"].colormap.name == L.LISA_COLORMAP
    g2 = genes[4] if genes[4] != target else genes[5]
    w.session.set_gene(g2)
    from napari_flag.widgets import _analysis

    want = _analysis.local_moran(w.session, w.session.prediction_key, g2)["lisa_truth"]
    pts = roles(viewer)["lisa_truth"]
    ij = np.rint([lisa["lisa_truth"].world_to_data(pts.data_to_world(p)) for p in pts.data]).astype(int)
    np.testing.assert_allclose(lisa["lisa_truth"].data[ij[:, 0], ij[:, 1]], want, rtol=1e-5, atol=1e-6)
    m.local.setChecked(False)
    assert not any(lyr.metadata.get(L.ROLE) == C.PANEL_MAP and lyr.metadata["panel"].startswith("lisa")
                   for lyr in viewer.layers)
    w.session.set_gene(target)

    w.side.setChecked(False)
    assert r["pred"].visible and not any(img.visible for img in maps.values())
    assert not C.points_colours_stale(r["pred"])
    vals = L.gene_values(c2_result, target, "pred")
    lo, hi = r["pred"].metadata["clim"]
    want = r["pred"].face_colormap.map(np.clip((vals - lo) / (hi - lo), 0, 1))
    np.testing.assert_allclose(r["pred"].face_color, want, atol=1e-6)


# ---------------------------------------------------------------------------- metrics, Moran's I


def test_metrics_table_drives_gene(make_napari_viewer, qtbot, c2_result):
    viewer = make_napari_viewer()
    with_prediction(viewer, c2_result)
    w = dock(viewer, "Metrics")
    with qtbot.waitSignal(w.computed, timeout=60_000):
        pass
    vals = {w.summary.item(i, 0).text(): w.summary.item(i, 1).text() for i in range(w.summary.rowCount())}
    assert set(vals) >= {"PCC", "MSE", "GSC", "SSC", "ARI", "NMI", "DEG"}
    assert all(v != "–" for k, v in vals.items() if k in ("PCC", "MSE", "GSC"))
    assert w.genes.rowCount() == N_GENES
    # sorted by PCC, best first
    col = [w.genes.item(i, 1).value for i in range(w.genes.rowCount())]
    assert col == sorted(col, reverse=True)
    from qtpy.QtCore import Qt

    w.genes.sortItems(1, Qt.SortOrder.AscendingOrder)
    gene = w.genes.item(0, 0).text()
    w.genes.selectRow(0)
    assert w.session.gene == gene and roles(viewer)["pred"].metadata["gene"] == gene


def test_morans_scatter_and_local_maps(make_napari_viewer, qtbot, c2_result):
    from napari_flag.metrics import evaluate_adata

    viewer = make_napari_viewer()
    with_prediction(viewer, c2_result)
    w = dock(viewer, "Moran's I")
    with qtbot.waitSignal(w.computed, timeout=60_000):
        pass
    title = w.scatter.ax.get_title()
    assert title.startswith("SSC = ")
    m = evaluate_adata(c2_result)
    assert float(title.split("=")[1].split()[0]) == pytest.approx(m["SSC"], abs=1e-3)
    g = w.scatter.genes[2]
    w.scatter.pick_index(2)  # = clicking that dot
    assert w.session.gene == g
    w.local.setChecked(True)
    r = roles(viewer)
    assert {"lisa_pred", "lisa_truth"} <= set(r) and g in r["lisa_pred"].name
    lo, hi = r["lisa_pred"].metadata["clim"]
    assert lo == -hi and r["lisa_truth"].metadata["clim"] == (lo, hi)
    g2 = w.scatter.genes[3]
    w.session.set_gene(g2)
    assert g2 in roles(viewer)["lisa_truth"].name
    w.local.setChecked(False)
    assert "lisa_pred" not in roles(viewer)


# ---------------------------------------------------------------------------- export


def test_export_asks_before_overwriting(make_napari_viewer, qtbot, c2_result, tmp_path, monkeypatch):
    import anndata as ad
    import pandas as pd

    import napari_flag.widgets.notify as C

    viewer = make_napari_viewer(show=True)
    with_prediction(viewer, c2_result)
    w = dock(viewer, "Export")
    w.form.folder.value = str(tmp_path)
    asked = []
    monkeypatch.setattr(C, "confirm_overwrite", lambda p, parent=None: asked.append(p) or False)
    (h5,) = w.save_h5ad()
    back = ad.read_h5ad(h5)
    np.testing.assert_allclose(back.X, c2_result.X)
    assert set(back.layers) >= {"std", "truth"} and not asked
    files = w.save_csv()
    assert {p.name for p in files} == {"C2_flag_pred.csv", "C2_flag_std.csv", "C2_flag_truth.csv"}
    df = pd.read_csv(tmp_path / "C2_flag_pred.csv", index_col=0)
    assert list(df.columns[:2]) == ["x", "y"] and df.shape == (c2_result.n_obs, 2 + c2_result.n_vars)
    qtbot.wait(100)
    (png,) = w.save_png()
    assert png.stat().st_size > 1000
    # second time: the user says no -> every file byte-identical
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert w.save_h5ad() == [] and w.save_png() == [] and w.save_csv() == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before and len(asked) == 3
    # ... and yes -> replaced
    monkeypatch.setattr(C, "confirm_overwrite", lambda p, parent=None: True)
    assert w.save_h5ad() == [h5]


# ---------------------------------------------------------------------------- trainer


def test_trainer_loss_stop_and_checkpoint(make_napari_viewer, qtbot, tmp_path, her2st_dir):
    viewer = make_napari_viewer()
    w = dock(viewer, "Train FLAG")
    w.set_slides(["her2st:C3"])
    f = w.form
    f.n_genes.value = 16
    f.steps.value = 10_000  # only Stop ends this run
    f.batch_spots.value = 32
    f.val_every.value = 0
    f.device.value = "cpu"
    f.out_dir.value = str(tmp_path / "run")
    steps = []
    w.step_done.connect(lambda s, losses: steps.append((s, losses["loss"])))
    ckpts = []
    w.checkpoint_written.connect(ckpts.append)
    with qtbot.waitSignal(w.run_finished, timeout=240_000) as done:
        w.train_btn.click()
        qtbot.waitUntil(lambda: len(steps) >= 3, timeout=180_000)
        w.stop_btn.click()
    assert done.args == ["stopped"]
    assert len(steps) >= 3 and all(np.isfinite(v) for _, v in steps)
    assert w.plot.steps[: len(steps)] == [s for s, _ in steps][: len(w.plot.steps)]
    assert ckpts and Path(ckpts[-1]).is_file() and Path(ckpts[-1]).name == "last.pt"
    assert w.ckpts.count() >= 1 and w.result["status"] == "stopped"
    from napari_flag.checkpoint import load_checkpoint

    assert load_checkpoint(ckpts[-1])["step"] == w.result["step"] < 10_000
    # double-click hands the checkpoint to Predict
    p = dock(viewer, "Predict expression")
    w.ckpts.itemDoubleClicked.emit(w.ckpts.item(0))
    assert str(p.form.checkpoint.value) == ckpts[-1]


# ---------------------------------------------------------------------------- demo


def test_demo_docks_everything(make_napari_viewer):
    from napari_flag._demo import DEMO_WIDGETS, run_demo

    viewer = make_napari_viewer()
    v = run_demo("her2st:C2", viewer=viewer, run=False)
    from napari_flag.widgets.lookup import scale_bar_model

    assert v is viewer and scale_bar_model(viewer).visible
    assert [lyr.name for lyr in viewer.layers] == ["C2 H&E", "C2 spots"]
    docked = set(viewer.window.dock_widgets)
    for name, *_ in DEMO_WIDGETS:
        assert any(name in d for d in docked), name


def test_metrics_widget_and_cli_report_identical_metrics(make_napari_viewer, qtbot, c2_result, tmp_path, capsys):
    """One evaluation function: the Metrics panel shows what ``napari-flag evaluate`` prints."""
    import json

    from napari_flag.cli import main
    from napari_flag.inference import write_prediction

    f = write_prediction(c2_result, tmp_path / "C2.h5ad")
    js = tmp_path / "m.json"
    assert main(["evaluate", str(f), "--json", str(js)]) == 0
    cli = json.loads(js.read_text())["slides"]["C2.h5ad"]
    viewer = make_napari_viewer()
    with_prediction(viewer, c2_result)
    w = dock(viewer, "Metrics")
    with qtbot.waitSignal(w.computed, timeout=60_000):
        w.compute(force=True)
    from napari_flag.widgets.metrics import SUMMARY_ROWS

    shown = {k: w.summary.item(i, 1).text() for i, (k, _) in enumerate(SUMMARY_ROWS)}
    for k, v in cli.items():
        assert shown[k] == f"{v:.3f}", k
    ev = w.session.evaluations[w.session.prediction_key]
    assert ev["metrics"] == pytest.approx(cli, abs=1e-9)


# ---------------------------------------------------------------------------- regions
def _two_halves_geojson(adata, path):
    """Two rectangles splitting the section at its median x, as QuPath writes annotations."""
    import json

    xy = adata.obsm["spatial"]
    xs = np.unique(np.round(xy[:, 0]))
    mid = float(xs[len(xs) // 2] - 37.5)  # between two lattice columns: no centre on the shared edge
    lo, hi = xy.min(0) - 60, xy.max(0) + 60

    def feature(name, x0, x1):
        ring = [[x0, lo[1]], [x1, lo[1]], [x1, hi[1]], [x0, hi[1]], [x0, lo[1]]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": name}}}

    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [feature("Left", lo[0], mid), feature("Right", mid, hi[0])]}))
    return path


def test_regions_dock_matches_the_cli_and_shows_table_and_volcano(make_napari_viewer, qtbot, c2_result, tmp_path):
    """Regions drawn (loaded from QuPath GeoJSON) -> table, comparison and volcano; the same numbers as
    ``napari-flag regions``; a 1920 x 1080 screenshot with the regions and the dock."""
    import pandas as pd

    from napari_flag.cli import main
    from napari_flag.inference import write_prediction
    from napari_flag.roi import read_regions

    f = write_prediction(c2_result, tmp_path / "C2.h5ad")
    gj = _two_halves_geojson(c2_result, tmp_path / "halves.geojson")
    assert main(["regions", str(f), "--regions", str(gj), "--out", str(tmp_path / "s.csv"), "--compare", "Left",
                 "Right", "--de", str(tmp_path / "de.csv"), "--draws", "8"]) == 0
    viewer = make_napari_viewer(show=True)
    with_prediction(viewer, c2_result)
    w = dock(viewer, "Regions")
    lyr = w.add_regions_layer(read_regions(gj), name="halves")
    assert list(lyr.features["name"]) == ["Left", "Right"] and w.regions_layer is lyr
    w.draws.setValue(8)
    with qtbot.waitSignal(w.run_finished, timeout=120_000) as sig:
        w.compute()
    assert sig.args == ["finished"], w.status.text()
    res = w.result
    cli = pd.read_csv(tmp_path / "s.csv")
    assert res.summary()[["region", "gene", "n_spots"]].equals(cli[["region", "gene", "n_spots"]])
    # the same draws; only the order of float32 sums differs between the worker thread and the CLI's
    for col in ("mean", "lower", "upper"):
        np.testing.assert_allclose(res.summary()[col], cli[col], rtol=2e-3)
    assert w.regions_table.rowCount() == 2 and w.region_genes.rowCount() == N_GENES
    w.tabs.setCurrentIndex(1)
    de_cli = pd.read_csv(tmp_path / "de.csv")
    shown = [w.de_table.item(i, 0).text() for i in range(w.de_table.rowCount())]
    assert set(shown) == set(de_cli["gene"]) and len(w.volcano.ax.collections) >= 1
    # a gene picked in the comparison is shown in the maps
    w.de_table.selectRow(0)
    gene = w.de_table.item(0, 0).text()
    assert w.session.gene == gene and roles(viewer)["pred"].metadata["gene"] == gene
    # exported for QuPath: the regions with their measurements
    w._export_geojson(path=str(tmp_path / "out.geojson"))
    assert [r.name for r in read_regions(tmp_path / "out.geojson")] == ["Left", "Right"]
    win = viewer.window._qt_window
    win.setGeometry(win.screen().availableGeometry())  # the whole of pytest-xvfb's 1920 x 1080 screen
    qtbot.wait(400)
    assert (win.screen().availableGeometry().width(), win.screen().availableGeometry().height()) == (1920, 1080)
    shot = np.asarray(viewer.screenshot(path=str(tmp_path / "regions.png"), canvas_only=False, flash=False))
    assert shot.shape[1] >= 1800 and shot.shape[0] >= 950, shot.shape  # the whole window, not a thumbnail
    assert w.volcano.isVisible() and w.de_table.isVisible()
    canvas = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    outline = (canvas[..., 0] > 200) & (canvas[..., 1] > 180) & (canvas[..., 2] < 80)  # the yellow regions
    assert outline.sum() > 200
