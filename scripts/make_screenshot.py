"""Make docs/screenshot.png: the demo window as a user sees it on a 1920 x 1080 screen.

``napari-flag demo`` on HER2ST section C2, then what a user does: click
Predict (bundled model, or ``--checkpoint``), pick a gene, tick "Side by
side" (predicted | measured | uncertainty, each over the H&E, linked pan/zoom,
one colour scale).  Nothing is hidden or closed for the picture.  Needs a
display; headless::

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/make_screenshot.py

``--quick-train`` trains a small model on C3-C6 first when no checkpoint is
given and none is bundled (``--train-steps``, 200 by default: minutes on a
laptop CPU; the picture is then of an under-trained model).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_train(out: Path, sections, steps: int) -> Path:
    from napari_flag.training import TrainConfig, train

    cfg = TrainConfig(train=[f"her2st:{s}" for s in sections], val=[], n_genes=200, steps=steps,
                      batch_spots=96, lr=1e-3, val_every=0, device="auto", out_dir=str(out))
    res = train(cfg, callbacks={"on_log": lambda m: print("train:", m, flush=True)})
    return Path(res.last_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", default="her2st:C2")
    ap.add_argument("--gene", default="ERBB2")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--quick-train", action="store_true")
    ap.add_argument("--train-steps", type=int, default=200, help="steps of --quick-train")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    ap.add_argument("--samples", type=int, default=None, help="samples per spot (default: the checkpoint's)")
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    args = ap.parse_args(argv)

    from napari_flag._demo import docked_widget, prefer_pyqt6

    prefer_pyqt6()  # as `napari-flag demo` does
    from qtpy.QtWidgets import QApplication

    from napari_flag._demo import run_demo
    from napari_flag.checkpoint import default_checkpoint_path
    from napari_flag.widgets.session import get_session

    ckpt = args.checkpoint
    if ckpt is None and default_checkpoint_path().is_file():
        ckpt = str(default_checkpoint_path())
    if ckpt is None:
        if not args.quick_train:
            print("no bundled model: pass --checkpoint or --quick-train", file=sys.stderr)
            return 2
        out = Path(tempfile.mkdtemp(prefix="flag-shot-"))
        ckpt = str(_quick_train(out, ("C3", "C4", "C5", "C6"), args.train_steps))
    print("checkpoint:", ckpt, flush=True)

    viewer = run_demo(args.sample, run=False)  # the window fills the screen
    app = QApplication.instance()

    def settle(n=20):
        for _ in range(n):
            app.processEvents()
            time.sleep(0.05)

    settle()
    predict = docked_widget(viewer, "Predict expression")
    predict.form.checkpoint.value = ckpt
    if args.steps:
        predict.form.steps.value = args.steps
    if args.samples:
        predict.form.samples.value = args.samples
    t0 = time.time()
    predict.predict_btn.click()
    while predict.running:
        settle(1)
    print(f"predicted in {time.time() - t0:.1f} s: {predict.status.text()}", flush=True)
    session = get_session(viewer)
    if session.prediction is None:
        print("prediction failed", file=sys.stderr)
        return 1
    gene = args.gene if args.gene in session.genes() else session.genes()[0]
    maps = docked_widget(viewer, "Gene maps")
    maps.set_gene(gene)  # = clicking it in the gene list
    maps.side.setChecked(True)  # = ticking "Side by side"
    settle(30)
    maps.colorbar.redraw()
    settle(10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    print("wrote", out)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
