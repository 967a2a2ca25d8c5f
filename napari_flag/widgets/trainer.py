"""Trainer widget: the same training library as ``napari-flag-train``, in the viewer.

Slides come from open layers (their dataset id or path) or typed ids/paths.
:func:`napari_flag.training.train` runs in a helper thread; its callbacks become
:class:`~napari_flag.training.TrainEvent` s through the same bridge prediction
uses (:func:`napari_flag.inference.callback_events`), which a napari generator
worker yields to the widget (loss curve, validation metrics, checkpoint list).  Stop sets the
training's stop flag: the current step finishes, ``last.pt`` is saved and the
run returns with status ``"stopped"``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    SpinBox,
)
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..inference import callback_events
from ..model import METHODS
from ..training import TrainConfig, TrainEvent, event_callbacks, train
from .base import FlagWidget
from .jobs import Failed, run_worker
from .lookup import flag_meta, layer_source, slide_layers
from .notify import may_write, report_errors, show_error


def _train_events(cfg, stop: threading.Event):
    """Worker body: ``train`` in a helper thread, its reports as :class:`TrainEvent` s, then ``done``."""
    r = yield from callback_events(lambda emit: train(cfg, callbacks=event_callbacks(emit), stop=stop))
    yield TrainEvent("done", r.step, {"status": r.status, "step": r.step, "last_path": r.last_path,
                                      "best_path": r.best_path, "best_metric": r.best_metric, "seconds": r.seconds})


class LossPlot(QWidget):
    """Training loss per step and validation metrics, redrawn at most a few times a second."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.4, 2.8), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax_loss, self.ax_val = self.figure.subplots(2, 1, sharex=True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self._last_draw = 0.0
        self.reset()

    def reset(self) -> None:
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.val: dict[str, list] = {}
        self.redraw(force=True)

    def add_step(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.loss.append(loss)
        self.redraw()

    def add_validation(self, step: int, metrics: dict) -> None:
        for k in ("PCC", "SSC", "GSC"):
            v = metrics.get(k)
            if v is not None:
                self.val.setdefault(k, []).append((step, float(v)))
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.25:
            return
        self._last_draw = now
        a, b = self.ax_loss, self.ax_val
        a.clear()
        b.clear()
        if self.steps:
            a.plot(self.steps, self.loss, lw=0.8, color="#1f77b4")
        a.set_ylabel("loss", fontsize=8)
        a.tick_params(labelsize=7)
        for k, pts in self.val.items():
            xs, ys = zip(*pts)
            b.plot(xs, ys, "o-", ms=3, lw=1, label=k)
        if self.val:
            b.legend(fontsize=7, loc="best")
        b.set_ylabel("validation", fontsize=8)
        b.set_xlabel("step", fontsize=8)
        b.tick_params(labelsize=7)
        self.canvas.draw_idle()


class TrainerWidget(FlagWidget):
    """Pick slides and hyper-parameters, Train / Stop, watch the loss and checkpoints."""

    #: (step, losses)
    step_done = Signal(int, dict)
    checkpoint_written = Signal(str)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._stop = threading.Event()
        self.result: dict | None = None

        self.train_list = QListWidget()
        self.val_list = QListWidget()
        for w in (self.train_list, self.val_list):
            w.setMaximumHeight(80)
        self.train_extra = LineEdit(name="train_extra", label="more training",
                                    tooltip="Dataset ids or paths, comma-separated (e.g. her2st:C3, her2st:C4)")
        self.val_extra = LineEdit(name="val_extra", label="more validation", tooltip="Dataset ids or paths")

        self.form = Container(
            widgets=[
                self.train_extra,
                self.val_extra,
                ComboBox(name="method", label="method", choices=METHODS, value="flag"),
                ComboBox(name="preset", label="model size", choices=("cpu", "paper"), value="cpu"),
                SpinBox(name="n_genes", label="genes", min=2, max=2000, value=200),
                SpinBox(name="steps", label="steps", min=1, max=1_000_000, value=2000),
                FloatSpinBox(name="lr", label="learning rate", min=1e-6, max=1.0, step=1e-4, value=3e-4),
                SpinBox(name="batch_spots", label="spots / step", min=0, max=100_000, value=0,
                        tooltip="0 = every spot of the slide"),
                SpinBox(name="val_every", label="validate every", min=0, max=100_000, value=200),
                ComboBox(name="device", label="device", choices=("auto", "cpu", "cuda"), value="auto"),
                SpinBox(name="seed", label="seed", min=0, max=2**31 - 1, value=0),
                FileEdit(name="out_dir", label="output folder", mode="d", value=str(Path.cwd() / "runs" / "flag")),
            ],
            labels=True,
        )
        self._job_controls("Train", "Stop")
        self.train_btn, self.stop_btn = self.go_btn, self.halt_btn
        self.plot = LossPlot()
        self.ckpts = QListWidget()
        self.ckpts.setMaximumHeight(80)
        self.ckpts.setToolTip("Double-click: use this checkpoint in Predict")

        lay = QVBoxLayout(self)
        cols = QHBoxLayout()
        for title, w in (("Training slides", self.train_list), ("Validation slides", self.val_list)):
            box = QVBoxLayout()
            box.addWidget(QLabel(title))
            box.addWidget(w)
            cols.addLayout(box)
        lay.addLayout(cols)
        lay.addWidget(self.form.native)
        self._place_job_controls(lay)
        lay.addWidget(self.plot)
        lay.addWidget(QLabel("Checkpoints"))
        lay.addWidget(self.ckpts)

        self.train_btn.clicked.connect(lambda *_: self.start())
        self.stop_btn.clicked.connect(lambda *_: self.stop())
        self.ckpts.itemDoubleClicked.connect(lambda it: self.session.use_checkpoint(it.text()))
        ev = self.viewer.layers.events
        ev.inserted.connect(self.refresh_slides)
        ev.removed.connect(self.refresh_slides)
        self.refresh_slides()

    # -- slides
    def refresh_slides(self, event=None) -> None:
        sources = []
        for lyr in slide_layers(self.viewer):
            src = layer_source(lyr)
            if src and src not in sources and (flag_meta(lyr).get("n_spots", 1) or 0) > 0:
                sources.append(src)
        for w in (self.train_list, self.val_list):
            checked = {w.item(i).text() for i in range(w.count()) if w.item(i).checkState() == Qt.Checked}
            w.clear()
            for s in sources:
                it = QListWidgetItem(s)
                it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
                it.setCheckState(Qt.Checked if s in checked else Qt.Unchecked)
                w.addItem(it)

    @staticmethod
    def _chosen(w: QListWidget, extra: str) -> list[str]:
        out = [w.item(i).text() for i in range(w.count()) if w.item(i).checkState() == Qt.Checked]
        out += [s.strip() for s in (extra or "").split(",") if s.strip()]
        return list(dict.fromkeys(out))

    def set_slides(self, train, val=()) -> None:
        """Programmatic choice (dataset ids / paths), as if typed in the boxes."""
        self.train_extra.value = ", ".join(train)
        self.val_extra.value = ", ".join(val)

    def config(self):
        """The :class:`TrainConfig` the form describes."""

        f = self.form
        train = self._chosen(self.train_list, self.train_extra.value)
        val = self._chosen(self.val_list, self.val_extra.value)
        if not train:
            from ..errors import FlagInputError

            raise FlagInputError("choose at least one training slide (open layer or dataset id / path)")
        return TrainConfig(
            train=train, val=val, method=str(f.method.value), model={"preset": str(f.preset.value)},
            n_genes=int(f.n_genes.value), steps=int(f.steps.value), lr=float(f.lr.value),
            batch_spots=int(f.batch_spots.value), val_every=int(f.val_every.value), device=str(f.device.value),
            seed=int(f.seed.value), out_dir=str(f.out_dir.value),
        )


    # -- run
    @report_errors
    def start(self, cfg=None) -> None:
        """Train with ``cfg`` (default: the form)."""
        if self.running:
            return
        cfg = cfg if cfg is not None else self.config()
        if not may_write(Path(cfg.out_dir).expanduser() / "last.pt", self):
            return  # keep the earlier run in that folder
        self._stop.clear()
        self.result = None
        self._outcome = "error"
        self.plot.reset()
        self.ckpts.clear()
        self._total = int(cfg.steps)
        self._run_job(run_worker(_train_events, cfg, self._stop), "preparing data…")

    def stop(self) -> None:
        """Finish the current step, save a checkpoint, stop."""
        self._halt(self._stop, "stopping after the current step…")

    def _on_event(self, ev) -> None:
        if isinstance(ev, Failed):
            self._outcome = "error"
            self.status.setText("failed (see notification)")
            show_error(ev.error)
            return
        if not isinstance(ev, TrainEvent):
            return
        kind = ev.kind
        if kind == "progress":
            stage, done, total = ev.data
            self.bar.setRange(0, max(total, 1))
            self.bar.setValue(min(done, max(total, 1)))
            self.status.setText(f"{stage} {done}/{total}")
        elif kind == "log":
            self.status.setText(ev.data)
        elif kind == "step":
            step, losses = ev.step, ev.data
            self.bar.setRange(0, max(self._total, 1))
            self.bar.setValue(min(step, self._total))
            self.plot.add_step(step, float(losses.get("loss", float("nan"))))
            if not self._stop.is_set():
                self.status.setText(f"step {step}/{self._total}  loss {losses.get('loss', float('nan')):.4f}")
            self.step_done.emit(step, losses)
        elif kind == "validation":
            step, m = ev.step, ev.data
            self.plot.add_validation(step, m)
            txt = "  ".join(f"{k} {m[k]:.3f}" for k in ("PCC", "SSC", "GSC", "MSE") if k in m)
            self.status.setText(f"validation @ {step}: {txt}")
        elif kind == "checkpoint":
            path = ev.data
            if not self.ckpts.findItems(path, Qt.MatchExactly):
                self.ckpts.addItem(path)
            self.checkpoint_written.emit(path)
        elif kind == "done":
            r = ev.data
            self.result = r
            self._outcome = r["status"]
            self.plot.redraw(force=True)
            self.status.setText(
                f"{r['status']} at step {r['step']} in {r['seconds']:.0f} s; "
                f"best: {Path(r['best_path']).name if r['best_path'] else '–'}"
            )
