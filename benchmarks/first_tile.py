"""Time to the first tile on screen: Predict on a whole-slide OME-TIFF in napari, empty feature cache.

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/first_tile.py

The slide is :mod:`wsi_profile`'s (HER2ST C2's H&E repeated to SIZE x SIZE px,
pyramidal OME-TIFF).  napari opens it with the plugin's reader, the window is
1920 x 1080, the Predict dock's button is clicked (bundled model, CPU), and
the clock runs from the click to the first tile's layer being drawn (the
widget's ``tile_shown`` signal, after the layer is added) and to the whole
slide's layers.  Screenshots of both moments go to ``--shots``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _result import command, machine, write_json

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default="/tmp/wsi_profile/C2_x20000.ome.tif",
                    help="a whole-slide OME-TIFF (benchmarks/wsi_profile.py builds this one)")
    ap.add_argument("--out", default=str(HERE / "results/first_tile.json"))
    ap.add_argument("--shots", default=str(HERE / "results"), help="folder for first_tile*.png")
    a = ap.parse_args(argv)

    feat = Path(tempfile.mkdtemp(prefix="first-tile-features-"))
    os.environ["NAPARI_FLAG_FEATURE_DIR"] = str(feat)
    from napari_flag._demo import prefer_pyqt6

    prefer_pyqt6()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    viewer.open(a.slide, plugin="napari-flag")
    w = viewer.window.add_plugin_dock_widget("napari-flag", "Predict expression")[1]
    w.form.device.value = "cpu"
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    marks: dict = {}

    def first(i: int) -> None:
        if "first_tile_s" not in marks:
            marks["first_tile_s"] = time.perf_counter() - t0
            app.processEvents()
            viewer.screenshot(path=str(Path(a.shots) / "first_tile.png"), canvas_only=False, flash=False)

    w.tile_shown.connect(first)
    t0 = time.perf_counter()
    w.predict_btn.click()
    while w.running:
        app.processEvents()
        time.sleep(0.01)
    marks["whole_slide_s"] = time.perf_counter() - t0
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(path=str(Path(a.shots) / "first_tile_done.png"), canvas_only=False, flash=False)
    ad = w.session.prediction
    result = {"slide": a.slide, "spots": int(ad.n_obs) if ad is not None else None,
              "tiles": (ad.uns["flag"].get("timings", {}).get("tiles") or {}).get("tiles") if ad is not None else None,
              **{k: round(v, 2) for k, v in marks.items()}, "outcome": w.status.text(),
              "command": command(argv), "machine": machine("napari on Xvfb, 1920 x 1080, cpu")}
    print(result, flush=True)
    write_json(result, a.out)
    viewer.close()
    shutil.rmtree(feat, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
