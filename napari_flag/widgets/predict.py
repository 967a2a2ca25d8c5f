"""Predict widget: slide layer(s) + checkpoint -> prediction, truth and uncertainty layers.

The work is :func:`napari_flag.inference.iter_predict` in a napari thread
worker; its progress events drive the progress bar.  Layers are added only
when a slide's result arrives, so Cancel (honoured at the next sampler or
feature batch) never leaves half-made layers behind.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from .. import layers as L
from ..inference import Notice, Progress, Result, TileResult, iter_predict
from ..profiling import StageEta
from ..record import PredictionRecord
from .base import FlagWidget
from .jobs import Cancelled, Failed, run_worker
from .lookup import (
    flag_meta,
    layer_sample,
    layer_source,
    present_prediction,
    sample_for_layer,
    show_scale_bar,
    slide_layers,
)
from .notify import report_errors, show_error, show_warning
from .partial import PartialPrediction
from .session import get_session
from .tissue import detect_into_layer, edited_mask

DEVICES = ("auto", "cpu", "cuda")
#: the stain normalisation control's choices and what iter_predict gets for each
STAIN_NORM = {"as the model says": None, "on": True, "off": False}


def _default_checkpoint() -> str:
    from ..checkpoint import default_checkpoint_path

    p = default_checkpoint_path()
    return str(p) if p.is_file() else ""


@dataclass(frozen=True)
class SlideEvent:
    """An event of slide ``index`` of ``count`` (``meta``: its layer's napari-flag metadata)."""

    index: int
    count: int
    meta: dict
    event: Progress | Notice | Result


def _predict_jobs(jobs, checkpoint, steps, samples, device, stain_norm=None):
    """Worker body: every slide in turn, through the one inference path."""
    n = len(jobs)
    for i, (meta, sample, source, tissue) in enumerate(jobs):
        for ev in iter_predict(sample if sample is not None else source, checkpoint=checkpoint or None,
                               steps=steps or None, samples=samples or None, device=device, tissue=tissue,
                               stain_norm=stain_norm):
            yield SlideEvent(i, n, meta, ev)


def add_prediction_layers(viewer, adata, slide_meta: dict | None = None) -> str:
    """Add the layers of a prediction AnnData (prediction, truth, uncertainty; each
    carries the AnnData); it becomes the session's current prediction.  Returns its key."""
    from napari.layers import Layer

    meta = dict(slide_meta or {})
    info = PredictionRecord.of(adata)
    for k in ("pixel_size_um", "spot_diameter_px", "grid", "sample_id"):
        v, recorded = meta.get(k), getattr(info, k)
        unknown = v is None or (isinstance(v, float) and not np.isfinite(v))
        # virtual spots: their geometry is the prediction's, the image layer has none
        if (unknown or info.virtual_spots) and recorded not in (None, "", 0.0):
            meta[k] = recorded
    session = get_session(viewer)
    key = L.new_prediction_key(adata)
    gene = session.gene if session.gene in adata.var_names else None
    for data, kwargs, ltype in L.prediction_to_layer_data(adata, gene=gene, meta=meta, key=key):
        viewer.add_layer(Layer.create(data, kwargs, ltype))
    present_prediction(viewer, key)
    session.add_prediction(key)
    return key


class PredictWidget(FlagWidget):
    """Choose slides, a checkpoint and sampler settings; Predict / Cancel."""

    #: (done, total, message) of the running slide's current stage
    progress = Signal(int, int, str)
    #: key of each finished prediction
    prediction_added = Signal(str)
    #: index of a tile whose predictions were just drawn
    tile_shown = Signal(int)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self._cancel = threading.Event()
        self._eta = StageEta()
        self._partial = PartialPrediction(napari_viewer)

        self.slides = QListWidget()
        self.slides.setMaximumHeight(110)
        self.slides.setToolTip("Slides to predict (H&E image layers opened with napari-flag)")
        self.form = Container(
            widgets=[
                FileEdit(name="checkpoint", label="checkpoint", mode="r", filter="*.pt",
                         value=_default_checkpoint(),
                         tooltip="Trained model (.pt); the bundled default model is preselected"),
                ComboBox(name="device", label="device", choices=DEVICES, value="auto"),
                SpinBox(name="steps", label="sampler steps (0 = model's)", min=0, max=1000, value=0,
                        tooltip="Denoising steps (0 = the checkpoint's default)"),
                SpinBox(name="samples", label="samples / spot (0 = model's)", min=0, max=64, value=0,
                        tooltip="Samples averaged per spot; their spread is the uncertainty (0 = default)"),
                ComboBox(name="stain_norm", label="stain normalisation", choices=list(STAIN_NORM),
                         value="as the model says",
                         tooltip="Map the slide's haematoxylin and eosin onto the stains the model was trained on "
                                 "(Macenko, estimated once per slide) before its patches are encoded; the bundled "
                                 "model does this by default"),
            ],
            labels=True,
        )
        self._job_controls("Predict", "Cancel")
        self.predict_btn, self.cancel_btn = self.go_btn, self.halt_btn
        self.keep_tiles = QCheckBox("keep finished tiles if cancelled")
        self.keep_tiles.setToolTip("A whole slide is predicted tile by tile; on Cancel, keep what is done as a layer")
        self.detect_btn = QPushButton("Detect tissue")
        self.detect_btn.setToolTip(
            "Add the detected tissue of the chosen slide as a 'tissue' Labels layer: paint or erase it, or draw "
            f"polygons in Shapes layers named '{L.TISSUE_INCLUDE}' / '{L.TISSUE_EXCLUDE}'; Predict lays virtual "
            "spots on the edited mask")

        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Slides"))
        lay.addWidget(self.slides)
        lay.addWidget(self.form.native)
        lay.addWidget(self.detect_btn)
        lay.addWidget(self.keep_tiles)
        self._place_job_controls(lay)
        lay.addStretch(1)

        self.session.checkpoint_chosen.connect(self._use_checkpoint)
        self.predict_btn.clicked.connect(lambda *_: self.start())
        self.detect_btn.clicked.connect(lambda *_: self.detect_tissue())
        self.cancel_btn.clicked.connect(lambda *_: self.cancel())
        ev = self.viewer.layers.events
        ev.inserted.connect(self.refresh_slides)
        ev.removed.connect(self.refresh_slides)
        self.refresh_slides()

    def _use_checkpoint(self, path: str) -> None:
        self.form.checkpoint.value = path
        self.status.setText(f"checkpoint: {Path(path).name}")

    # -- slides list
    def refresh_slides(self, event=None) -> None:
        checked = {self.slides.item(i).text() for i in range(self.slides.count())
                   if self.slides.item(i).checkState() == Qt.Checked}
        fresh = self.slides.count() == 0
        self.slides.clear()
        for j, lyr in enumerate(slide_layers(self.viewer)):
            it = QListWidgetItem(lyr.name)
            it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
            on = lyr.name in checked or (fresh and j == 0) or (not checked and j == 0)
            it.setCheckState(Qt.Checked if on else Qt.Unchecked)
            self.slides.addItem(it)

    def set_slides(self, names) -> None:
        names = set(names)
        for i in range(self.slides.count()):
            it = self.slides.item(i)
            it.setCheckState(Qt.Checked if it.text() in names else Qt.Unchecked)

    def selected_layers(self) -> list:
        names = [self.slides.item(i).text() for i in range(self.slides.count())
                 if self.slides.item(i).checkState() == Qt.Checked]
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]


    # -- tissue
    @report_errors
    def detect_tissue(self) -> None:
        """Add the chosen slide's detected tissue as an editable ``tissue`` layer."""
        chosen = self.selected_layers()
        if not chosen:
            show_error("Choose a slide layer first (open an H&E image: File > Open)")
            return
        lyr, mask = detect_into_layer(self.viewer, chosen[0])
        area = mask.to_dict().get("area_mm2")
        self.status.setText(f"tissue: {mask.fraction:.0%} of the slide" + (f", {area:.1f} mm²" if area else "")
                            + f"; edit the '{lyr.name}' layer, then Predict")

    # -- run
    @report_errors
    def start(self) -> None:
        if self.running:
            return
        chosen = self.selected_layers()
        if not chosen:
            show_error("Choose at least one slide layer (open a slide first: File > Open or the sample data menu)")
            return
        ckpt = str(self.form.checkpoint.value) if str(self.form.checkpoint.value) not in ("", ".") else ""
        if ckpt and not Path(ckpt).is_file():
            show_error(f"{ckpt}: checkpoint not found")
            return
        jobs = []
        for lyr in chosen:
            md = dict(flag_meta(lyr))
            sample = layer_sample(lyr)
            src = None if sample is not None else layer_source(lyr)
            if sample is None and not src:
                sample = sample_for_layer(lyr)  # raises a clear error
            md.setdefault("slide_layer", lyr.name)
            jobs.append((md, sample, src, edited_mask(self.viewer, lyr)))
        self._cancel.clear()
        self._eta = StageEta()
        self._outcome = "finished"
        show_scale_bar(self.viewer)
        self._run_job(run_worker(
            _predict_jobs, jobs, ckpt, int(self.form.steps.value), int(self.form.samples.value),
            str(self.form.device.value), STAIN_NORM[str(self.form.stain_norm.value)], cancel=self._cancel,
        ), "starting…")

    def cancel(self) -> None:
        """Stop at the next step; whatever is unfinished is dropped."""
        self._halt(self._cancel, "cancelling after the current step…")

    def _on_event(self, ev) -> None:
        if isinstance(ev, SlideEvent) and isinstance(ev.event, Progress):
            p = ev.event
            total = max(p.total, 1)
            self.bar.setRange(0, total)
            self.bar.setValue(min(p.done, total))
            prefix = f"slide {ev.index + 1}/{ev.count}: " if ev.count > 1 else ""
            text = self._eta.update(p.stage, p.done, total)
            if p.stage == "features" and p.done == 0:  # the spots are laid: say how many
                text = f"{total:,} spots on the tissue; {text}"
            self.status.setText(f"{prefix}{text}")
            self.progress.emit(p.done, total, p.stage)
        elif isinstance(ev, SlideEvent) and isinstance(ev.event, Notice):
            show_warning(f"{ev.meta.get('sample_id') or 'slide'}: {ev.event.message}")
        elif isinstance(ev, SlideEvent) and isinstance(ev.event, TileResult):
            self._partial.add(ev.meta, ev.event)
            self.tile_shown.emit(ev.event.index)
        elif isinstance(ev, SlideEvent):
            self._partial.remove()  # the finished slide replaces its tiles
            self._add_result(ev.meta, ev.event.adata)
        elif isinstance(ev, Failed):
            self._outcome = "error"
            self._partial.remove()
            show_error(ev.error)
        elif isinstance(ev, Cancelled):
            self._outcome = "cancelled"
            if self.keep_tiles.isChecked():
                self._partial.keep()
            else:
                self._partial.remove()

    @report_errors
    def _add_result(self, meta: dict, adata) -> None:
        key = add_prediction_layers(self.viewer, adata, meta)
        self.prediction_added.emit(key)

    def _finished_text(self) -> str:
        return {"finished": "done", "cancelled": "cancelled: nothing unfinished was added",
                "error": "failed (see notification)"}[self._outcome]
