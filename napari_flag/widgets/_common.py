"""What every napari-flag widget shares: the per-viewer session, error reporting,
slide lookup, overwrite questions and the gene recolouring of prediction layers.

The session is the one place that knows the *current prediction* and the
*current gene*; widgets only listen to it, so a click in the metrics table, the
Moran's I scatter or the gene picker all end in :meth:`FlagSession.set_gene`.
"""
from __future__ import annotations

import functools
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from psygnal import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from .. import layers as L
from . import _analysis
from ..errors import FlagInputError, with_remedy
from ..record import PredictionRecord

log = logging.getLogger("napari_flag")

PRED_ROLES = ("pred", "truth", "std")


# ---------------------------------------------------------------------------
# errors


#: what a widget user does about an error's setting (the CLI says it with flags)
WIDGET_REMEDIES = {
    "checkpoint": "choose a checkpoint file in Predict expression",
    "pixel_size_um": "the image records no pixel size: write one into it, or predict from Python with "
                     "napari_flag.predict(..., pixel_size_um=...)",
    "spacing_um": "use a checkpoint that records its spot geometry",
    "overwrite": "choose another file name, or confirm replacing it",
    "truth": "open a slide with measured spots to compare with",
}


def error_message(exc: BaseException) -> str:
    """One line for the user: the core's own message with the widget's remedy, or the exception type and text."""
    if isinstance(exc, FlagInputError):
        return with_remedy(exc, WIDGET_REMEDIES)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def show_error(exc: BaseException | str) -> None:
    """A one-line napari notification; the traceback goes to napari's log and, for an unexpected
    error, behind the notification's details view."""
    from napari.utils.notifications import ErrorNotification, notification_manager
    from napari.utils.notifications import show_error as _show

    if isinstance(exc, str):
        _show(exc)
        return
    msg = error_message(exc)
    log.error("napari-flag: %s", msg, exc_info=exc)
    if isinstance(exc, FlagInputError):  # the user's input: the line says it all
        _show(msg)
        return
    note = ErrorNotification(exc)
    note.message = msg
    notification_manager.dispatch(note)


def show_warning(message: str) -> None:
    """A napari warning notification (a model that does not fit the slide, ...)."""
    from napari.utils.notifications import show_warning as _show

    _show(message)


def report_errors(fn: Callable) -> Callable:
    """Decorator for widget slots: errors become notifications and the slot returns ``None``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # a widget slot must never raise into Qt
            show_error(exc)
            return None

    return wrapper


def confirm_overwrite(path: str | Path, parent=None) -> bool:
    """Ask before replacing an existing file (tests monkeypatch this)."""
    from qtpy.QtWidgets import QMessageBox

    ans = QMessageBox.question(
        parent,
        "Overwrite?",
        f"{Path(path).name} already exists in {Path(path).parent}.\nReplace it?",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.No,
    )
    return ans == QMessageBox.Yes


def may_write(path: str | Path, parent=None) -> bool:
    p = Path(path)
    return not p.exists() or confirm_overwrite(p, parent)


# ---------------------------------------------------------------------------
# viewer helpers


def scale_bar_model(viewer):
    """``viewer.canvas.overlays.scale_bar`` (napari >= 0.9) or ``viewer.scale_bar``."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = getattr(overlays, "scale_bar", None)
    return bar if bar is not None else viewer.scale_bar


def show_scale_bar(viewer) -> None:
    """Scale bar on, in the layers' physical units (µm when the pixel size is known)."""
    bar = scale_bar_model(viewer)
    bar.visible = True
    try:
        bar.gridded = True  # one bar per panel in side-by-side mode
    except Exception:  # older napari
        pass


def focus_on_spots(viewer, layers=None, margin: float = 0.03) -> None:
    """Fit the view to the spots (the tissue), not to the whole slide image."""
    from napari.layers import Points

    if layers is None:
        layers = [lyr for lyr in viewer.layers if isinstance(lyr, Points) and lyr.visible and len(lyr.data)]
    layers = [lyr for lyr in layers if len(lyr.data)]
    try:
        viewer.reset_view(layers=layers or None, margin=margin)
    except TypeError:  # napari without the layers argument
        viewer.reset_view()


def flag_meta(layer) -> dict:
    md = getattr(layer, "metadata", None) or {}
    return md if L.ROLE in md else {}


def slide_layers(viewer) -> list:
    """Image layers a prediction can run on: slides opened by napari-flag, or any
    RGB image that napari read from a file (the path is handed to ``load_sample``)."""
    from napari.layers import Image

    out = []
    for lyr in viewer.layers:
        if not isinstance(lyr, Image):
            continue
        md = flag_meta(lyr)
        if md.get(L.ROLE) == "slide":
            out.append(lyr)
        elif not md and getattr(lyr, "rgb", False) and getattr(lyr.source, "path", None):
            out.append(lyr)
    return out


def layer_source(layer) -> str | None:
    """What ``load_sample`` needs to re-open the slide of ``layer``."""
    md = flag_meta(layer)
    return md.get("source") or getattr(layer.source, "path", None)


def sample_for_layer(layer):
    """The :class:`Sample` behind a slide layer: from the registry, else re-read from its source."""
    md = flag_meta(layer)
    s = L.get_sample(md.get("sample_key"))
    if s is not None:
        return s
    src = layer_source(layer)
    if not src:
        raise FlagInputError(f"{layer.name}: layer has no source file or dataset id to read spots from")
    from ..data import load_sample

    return load_sample(src)


def prediction_layers(viewer, key: str | None, roles=PRED_ROLES + ("lisa_truth", "lisa_pred")) -> dict:
    """``{role: layer}`` of one prediction."""
    out = {}
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if md and md.get("prediction_key") == key and md.get(L.ROLE) in roles:
            out.setdefault(md[L.ROLE], lyr)
    return out


def prediction_keys(viewer) -> list[str]:
    """Predictions that still have a layer in the viewer, in layer order."""
    keys = []
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        k = md.get("prediction_key")
        if k and md.get(L.ROLE) == "pred" and k not in keys and L.get_prediction(k) is not None:
            keys.append(k)
    return keys


def prediction_label(key: str) -> str:
    """``"C2 · best.pt"``: slide and model file."""
    ad = L.get_prediction(key)
    info = PredictionRecord.of(ad)
    ck = Path(info.checkpoint).name if info.checkpoint else ""
    return f"{info.sample_id or '?'}{' · ' + ck if ck else ''}"


def prediction_labels(keys) -> list[str]:
    """Labels of ``keys``; repeated runs of one slide and model get ``(run 2)``, ``(run 3)``…
    in the order they were made, so the first is never numbered."""
    base = [prediction_label(k) for k in keys]

    def made(k: str) -> int:
        tail = k.rsplit("#", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    out = list(base)
    for label in set(base):
        same = sorted((i for i, b in enumerate(base) if b == label), key=lambda i: made(keys[i]))
        for n, i in enumerate(same[1:], start=2):
            out[i] = f"{label} (run {n})"
    return out


def present_prediction(viewer, key: str) -> None:
    """What a new prediction shows first: the predicted map on top and selected.

    Truth and uncertainty stay in the layer list, hidden (one click on their
    eye), and so do the slide's plain spots: drawn under the prediction they
    would tint its colours.
    """
    lyrs = prediction_layers(viewer, key, PRED_ROLES)
    pred = lyrs.get("pred")
    if pred is None:
        return
    for role in ("truth", "std"):
        if role in lyrs:
            lyrs[role].visible = False
    skey = pred.metadata.get("sample_key")
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if skey and md.get(L.ROLE) == "spots" and md.get("sample_key") == skey:
            lyr.visible = False
    ll = viewer.layers
    ll.move(ll.index(pred), len(ll))
    ll.selection.active = pred


# ---------------------------------------------------------------------------
# recolouring


def recolor_points(layer, values: np.ndarray, clim: tuple[float, float], name: str | None = None) -> None:
    """Put ``values`` into the layer's ``value`` column and repaint with ``clim``.

    Colours are mapped here and set directly: one visual update per layer,
    where napari's colormap mode would rebuild the markers three to four times.
    A hidden layer (e.g. while its panel is drawn as an image, see
    :func:`sync_panel_map`) gets its values, range and name now and its
    colours when it is shown again: rebuilding thousands of markers nobody
    sees would cost most of a gene switch.
    """
    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(clim[0]), float(clim[1])
    layer.features["value"] = v
    layer.metadata["clim"] = (lo, hi)
    if name is not None and layer.name != name:
        layer.name = name
    if layer.visible:
        _paint_points(layer)
        _STALE_COLOURS.discard(layer)
    else:
        _STALE_COLOURS.add(layer)
        layer.events.visible.connect(_repaint_when_shown)  # napari ignores a repeated connect


def _paint_points(layer) -> None:
    v = np.asarray(layer.features["value"], dtype=np.float32)
    lo, hi = layer.metadata["clim"]
    t = np.clip((np.nan_to_num(v, nan=lo) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    rgba = np.asarray(layer.face_colormap.map(t), dtype=np.float32)
    rgba[~np.isfinite(v), 3] = 0.0  # genes missing from the truth: transparent
    # the colour manager already tells the canvas; the layer-level event would
    # make it rebuild the same markers a second time
    with layer.events.face_color.blocker():
        layer.face_color = rgba


def _repaint_when_shown(event) -> None:
    layer = event.source
    if layer.visible and layer in _STALE_COLOURS:
        _STALE_COLOURS.discard(layer)
        _paint_points(layer)


def points_colours_stale(layer) -> bool:
    """Whether a hidden Points layer still shows the previous gene's colours."""
    return layer in _STALE_COLOURS


_STALE_COLOURS: "weakref.WeakSet" = weakref.WeakSet()

#: slides with at least this many spots show their side-by-side panels as
#: images (:class:`~napari_flag.layers.SpotRaster`) instead of Points
RASTER_MIN_SPOTS = 1000
PANEL_MAP = "panel_map"
_RASTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def wants_raster(points) -> bool:
    return len(points.data) >= RASTER_MIN_SPOTS


def find_panel_layer(viewer, kind: str, key: str | None, panel: str | None):
    """The ``kind`` layer (``"panel_image"``: H&E copy, ``PANEL_MAP``: image of
    the spots) made for panel ``panel`` of prediction ``key``, or ``None``."""
    for lyr in viewer.layers:
        md = flag_meta(lyr)
        if md.get(L.ROLE) == kind and md.get("prediction_key") == key and md.get("panel") == panel:
            return lyr
    return None


def panel_map_layer(viewer, points):
    """The image that stands in for the Points panel ``points``, if there is one."""
    md = flag_meta(points)
    return find_panel_layer(viewer, PANEL_MAP, md.get("prediction_key"), md.get(L.ROLE))


def _map_name(points) -> str:
    return f"{points.name} (image)"


def sync_panel_map(viewer, points, create: bool = False):
    """Paint the image panel of ``points`` from its current values and range.

    The image shares the Points' colormap and contrast limits (now napari's
    own ``contrast_limits``, editable in the layer controls) and shows the
    hovered spot's value in the status bar.  ``create`` adds it when missing.
    Returns the image layer or ``None``.
    """
    img = panel_map_layer(viewer, points)
    if img is None and not create:
        return None
    return _paint_map(viewer, img, points)


def _paint_map(viewer, img, points):
    """Paint image panel ``img`` (created when ``None``) from ``points``."""
    values = np.asarray(points.features["value"], dtype=np.float32)
    clim = tuple(points.metadata.get("clim") or L.percentile_limits(values))
    raster = _RASTERS.get(img) if img is not None else None
    if raster is None or raster.n_spots > len(values):
        raster = L.spot_raster(np.asarray(points.data)[:, -2:], float(np.mean(points.size)))
    if img is None:
        from napari.layers import Image

        md = {k: v for k, v in flag_meta(points).items() if k != "clim"}
        md.update({L.ROLE: PANEL_MAP, "panel": md.get(L.ROLE)})
        img = Image(
            raster.render(values), name=_map_name(points), colormap=points.face_colormap,
            contrast_limits=clim, opacity=points.opacity, units=points.units, metadata=md,
            **raster.layer_geometry(points.scale, points.translate),
        )
        img = viewer.add_layer(img)
    else:
        # in place + refresh: a new ``data`` would make napari re-measure the
        # whole viewer's extent, which costs as much as drawing the frame
        buf = img.data
        if isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.shape == raster.shape:
            raster.render(values, out=buf)
            img.refresh()
        else:  # the user replaced the image's data
            img.data = raster.render(values)
        if tuple(img.contrast_limits) != clim:
            img.contrast_limits = clim
        if img.name != _map_name(points):
            img.name = _map_name(points)
    img.metadata["gene"] = points.metadata.get("gene")
    _RASTERS[img] = raster
    return img


def recolor_panel(viewer, points, values, clim, name: str | None = None) -> None:
    """:func:`recolor_points`, and its image panel when that is what is shown."""
    recolor_points(points, values, clim, name=name)
    if not points.visible:
        img = panel_map_layer(viewer, points)
        if img is not None and img.visible:
            _paint_map(viewer, img, points)


def apply_gene(viewer, key: str, gene: str) -> tuple[float, float] | None:
    """Colour prediction, truth and uncertainty layers of ``key`` by ``gene``.

    Prediction and truth share one range (1-99th percentile of their union), so
    a colour means the same value on both panels; uncertainty has its own.
    Returns the shared range.
    """
    adata = L.get_prediction(key)
    lyrs = prediction_layers(viewer, key, PRED_ROLES)
    if adata is None or not lyrs:
        return None
    if gene not in adata.var_names:
        raise FlagInputError(f"{gene}: not in the gene panel of this prediction")
    vals = {r: L.gene_values(adata, gene, r) for r in lyrs}
    shared = L.percentile_limits(*(v for r, v in vals.items() if r != "std"))
    for r, lyr in lyrs.items():
        clim = L.percentile_limits(vals[r]) if r == "std" else shared
        sid = lyr.metadata.get("sample_id", "")
        lyr.metadata["gene"] = gene
        recolor_panel(viewer, lyr, vals[r], clim, name=L.panel_name(sid, r, gene))
    return shared


# ---------------------------------------------------------------------------
# session


class FlagSession:
    """Per-viewer state shared by the widgets: current prediction and gene."""

    gene_changed = Signal(str)
    prediction_changed = Signal(object)
    predictions_updated = Signal()
    #: a checkpoint picked elsewhere (e.g. the trainer's list) for the Predict widget
    checkpoint_chosen = Signal(str)

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        self.prediction_key: str | None = None
        self.gene: str | None = None
        self.clim: tuple[float, float] | None = None
        self._keys: set[str] = set()  # predictions added in this viewer
        self._sample_keys: set[str] = set()  # samples whose layers this viewer shows
        self.evaluations: dict[str, dict] = {}  # per-prediction metrics (widgets/_analysis.py)
        self.lock = threading.Lock()  # evaluations are computed in worker threads
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_layers_changed)

    @property
    def viewer(self):
        """The viewer (held weakly: a session must not keep a closed viewer alive)."""
        return self._viewer()

    # -- predictions
    @property
    def prediction(self):
        return L.get_prediction(self.prediction_key)

    def genes(self) -> list[str]:
        ad = self.prediction
        return [str(g) for g in ad.var_names] if ad is not None else []

    def add_prediction(self, key: str) -> None:
        self._keys.add(key)
        self.predictions_updated.emit()
        self.set_prediction(key)

    def set_prediction(self, key: str | None) -> None:
        if key == self.prediction_key:
            return
        self.prediction_key = key
        self.prediction_changed.emit(key)
        ad = self.prediction
        if ad is not None:
            genes = self.genes()
            gene = self.gene if self.gene in genes else (self._layer_gene(key) or genes[0])
            self.gene = None  # force a repaint for the new prediction
            self.set_gene(gene)

    def _layer_gene(self, key) -> str | None:
        lyr = prediction_layers(self.viewer, key, ("pred",)).get("pred")
        return lyr.metadata.get("gene") if lyr is not None else None

    def _on_inserted(self, event=None) -> None:
        key = flag_meta(getattr(event, "value", None)).get("sample_key") if event is not None else None
        if key:
            self._sample_keys.add(key)

    def _on_layers_changed(self, event=None) -> None:
        keys = prediction_keys(self.viewer)
        for gone in self._keys - set(keys):  # its last layer was deleted: free the arrays
            self._keys.discard(gone)
            L.forget_prediction(gone)
            _analysis.forget(self, gone)
        shown = {flag_meta(lyr).get("sample_key") for lyr in self.viewer.layers}
        for gone in self._sample_keys - shown:  # a slide's last layer is gone: free its image and counts
            L.forget_sample(gone)
        self._sample_keys &= shown
        self.predictions_updated.emit()
        if self.prediction_key is not None and self.prediction_key not in keys:
            self.prediction_key = None
            self.set_prediction(keys[-1] if keys else None)
            if not keys:
                self.prediction_changed.emit(None)

    def use_checkpoint(self, path: str) -> None:
        self.checkpoint_chosen.emit(str(path))

    # -- genes
    def set_gene(self, gene: str) -> None:
        """Recolour the current prediction's layers by ``gene`` and tell the widgets."""
        if not gene or gene == self.gene:
            return
        if self.prediction is not None and gene not in self.prediction.var_names:
            raise FlagInputError(f"{gene}: not in the prediction's gene panel")
        self.gene = gene
        if self.prediction_key is not None:
            self.clim = apply_gene(self.viewer, self.prediction_key, gene)
        self.gene_changed.emit(gene)


_SESSIONS: dict[int, FlagSession] = {}


def _drop_session(vid: int, session_ref) -> None:
    if _SESSIONS.get(vid) is session_ref():
        _SESSIONS.pop(vid, None)


def unwrap_viewer(viewer):
    """The viewer itself: napari hands plugin widgets a public-only proxy, and
    layers fetched through two different proxies do not compare equal."""
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer) -> FlagSession:
    """The session of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = unwrap_viewer(viewer)
    s = _SESSIONS.get(id(viewer))
    if s is None or s.viewer is not viewer:
        s = FlagSession(viewer)
        _SESSIONS[id(viewer)] = s
        try:
            weakref.finalize(viewer, _drop_session, id(viewer), weakref.ref(s))
        except TypeError:  # not weak-referenceable: kept until the process ends
            pass
    return s


@dataclass(frozen=True)
class Failed:
    """A worker's job raised ``error`` (for the job about ``key``, when it has one)."""

    error: BaseException
    key: Any = None


@dataclass(frozen=True)
class Cancelled:
    """A worker stopped at a cancel request; nothing unfinished was delivered."""


@dataclass(frozen=True)
class Done:
    """A worker's job about ``key`` finished with ``value``."""

    key: Any
    value: Any


def run_worker(gen_fn: Callable, *args: Any, cancel=None, **kwargs: Any):
    """A napari ``thread_worker`` over the generator ``gen_fn(*args, **kwargs)``.

    Errors are *yielded* as :class:`Failed` rather than raised, so napari never
    shows a traceback.  ``cancel`` (a ``threading.Event``) is checked at every
    event: once set, the inner generator is closed *in the worker thread* (its
    cleanup, e.g. stopping a sampler after the current step, never blocks the
    UI), nothing more is forwarded and :class:`Cancelled` is yielded.
    """
    from napari.qt.threading import create_worker

    def guarded():
        gen = gen_fn(*args, **kwargs)
        try:
            for ev in gen:
                if cancel is not None and cancel.is_set():
                    break
                yield ev
            if cancel is not None and cancel.is_set():
                gen.close()
                yield Cancelled()
        except Exception as exc:
            yield Failed(exc)
        finally:
            gen.close()

    return create_worker(guarded, _start_thread=False)


class FlagWidget(QWidget):
    """Base of the dock widgets: the viewer, its session, and at most one worker at a time.

    A widget that runs jobs (Predict, Train) sets ``go_btn``, ``halt_btn``, ``bar``
    and ``status``, starts with :meth:`_run_job`, stops with :meth:`_halt`, handles
    the worker's events in ``_on_event`` and may override :meth:`_finished_text`;
    the outcome (``self._outcome``) is emitted by ``run_finished``.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self._worker = None
        self._outcome = "finished"

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _job_controls(self, go: str, halt: str) -> None:
        """The start/stop buttons, progress bar and status line of a job-running widget."""
        self.go_btn, self.halt_btn = QPushButton(go), QPushButton(halt)
        self.halt_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)

    def _place_job_controls(self, lay) -> None:
        row = QHBoxLayout()
        row.addWidget(self.go_btn)
        row.addWidget(self.halt_btn)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)

    def _run_job(self, worker, status: str) -> None:
        self._worker = worker
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._job_finished)
        self.go_btn.setEnabled(False)
        self.halt_btn.setEnabled(True)
        self.bar.setRange(0, 0)
        self.status.setText(status)
        worker.start()

    def _halt(self, flag: threading.Event, text: str) -> None:
        """Ask the running job to stop at its next step (``flag`` is what it checks)."""
        if self.running:
            flag.set()
            self.halt_btn.setEnabled(False)
            self.status.setText(text)

    def _finished_text(self) -> str | None:
        return None

    def _job_finished(self) -> None:
        self._worker = None
        self.go_btn.setEnabled(True)
        self.halt_btn.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(0 if self._outcome in ("error", "cancelled") else 1)
        text = self._finished_text()
        if text:
            self.status.setText(text)
        self.run_finished.emit(self._outcome)


class EvaluationJob:
    """Mixin for panels fed by the shared per-prediction evaluation (``_analysis``).

    The host is a :class:`FlagWidget` that calls :meth:`_init_evaluation` and
    defines ``compute()`` and ``_show(key, ev)``; ``_what`` names the result in
    messages.  A failed prediction is remembered so it is not retried on every
    gene switch.
    """

    _what = "results"

    def _init_evaluation(self) -> None:
        self._failed: set[str] = set()
        self.title = QLabel("Run Predict on a slide first.")
        self.title.setWordWrap(True)

    def _start_evaluation(self, key: str) -> None:
        ev = _analysis.cached(self.session, key)
        if ev is not None:
            self._show(key, ev)
            return
        if self.running or key in self._failed:
            return
        self.title.setText(f"computing {self._what}…")

        def job(k):
            try:
                yield Done(k, _analysis.evaluation(self.session, k))
            except Exception as exc:  # reported in the UI, remembered so it is not retried
                yield Failed(exc, k)

        self._worker = run_worker(job, key)
        self._worker.yielded.connect(self._on_event)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _on_event(self, ev) -> None:
        if isinstance(ev, Done):
            self._show(ev.key, ev.value)
        elif isinstance(ev, Failed):
            exc = ev.error
            if ev.key is not None:
                self._failed.add(ev.key)
            self.title.setText(f"No {self._what}: {error_message(exc)}")
            if not isinstance(exc, FlagInputError):  # expected gaps (no truth) are not errors
                show_error(exc)

    def _on_finished(self) -> None:
        self._worker = None
        key = self.session.prediction_key
        if key and key not in self._failed and _analysis.cached(self.session, key) is None:
            self.compute()  # the prediction changed while computing
