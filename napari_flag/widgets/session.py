"""The state the widgets of one viewer share, and nothing process-wide: a
:class:`FlagSession` knows the *current prediction*, the *current gene* and
the evaluations computed for the viewer's predictions; it alone changes them,
through its methods, and announces each change with a signal the widgets
listen to (a click in the metrics table, the Moran's I scatter or the gene
picker all end in :meth:`FlagSession.set_gene`).  It holds its viewer weakly
and lives as long as the viewer: it is dropped when the viewer is garbage or
its window closes.
"""
from __future__ import annotations

import types
import weakref

from psygnal import Signal

from ..errors import FlagInputError
from .lookup import predicted_map, prediction_for, prediction_keys
from .painting import apply_gene

#: viewer -> its session; an entry goes with its viewer (and when the window closes)
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class FlagSession:
    """Per-viewer state shared by the widgets: current prediction and gene, evaluations."""

    gene_changed = Signal(str)
    prediction_changed = Signal(object)
    predictions_updated = Signal()
    #: a checkpoint picked elsewhere (e.g. the trainer's list) for the Predict widget
    checkpoint_chosen = Signal(str)
    #: the evaluation of a prediction was stored or dropped (its key)
    evaluation_changed = Signal(str)

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        self._prediction_key: str | None = None
        self._gene: str | None = None
        self._clim: tuple[float, float] | None = None
        self._evaluations: dict[str, dict] = {}  # per-prediction metrics (widgets/_analysis.py)
        viewer.layers.events.removed.connect(self._on_layers_changed)

    @property
    def viewer(self):
        """The viewer (held weakly: a session must not keep a closed viewer alive)."""
        return self._viewer()

    @property
    def prediction_key(self) -> str | None:
        """Key of the current prediction (its layers' ``prediction_key``)."""
        return self._prediction_key

    @property
    def gene(self) -> str | None:
        """The gene the current prediction's maps show."""
        return self._gene

    @property
    def clim(self) -> tuple[float, float] | None:
        """The range shared by the predicted and measured maps of the current gene."""
        return self._clim

    def close(self) -> None:
        """Stop listening to the viewer and drop the evaluations (the viewer's window closed)."""
        viewer = self.viewer
        if viewer is not None:
            viewer.layers.events.removed.disconnect(self._on_layers_changed)
        self._evaluations.clear()

    # -- predictions
    @property
    def prediction(self):
        """The current prediction's AnnData (carried by its layers), or ``None``."""
        return self.prediction_of(self._prediction_key)

    def prediction_of(self, key: str | None):
        """The AnnData of prediction ``key`` while its predicted map is in the viewer."""
        viewer = self.viewer
        return prediction_for(viewer, key) if viewer is not None else None

    def genes(self) -> list[str]:
        ad = self.prediction
        return [str(g) for g in ad.var_names] if ad is not None else []

    def add_prediction(self, key: str) -> None:
        """A prediction's layers were added: list it and make it the current one."""
        self.predictions_updated.emit()
        self.set_prediction(key)

    def set_prediction(self, key: str | None) -> None:
        if key == self._prediction_key:
            return
        self._prediction_key = key
        self.prediction_changed.emit(key)
        ad = self.prediction
        if ad is not None:
            genes = self.genes()
            gene = self._gene if self._gene in genes else (self._layer_gene(key) or genes[0])
            self._gene = None  # force a repaint for the new prediction
            self.set_gene(gene)

    def _layer_gene(self, key) -> str | None:
        lyr = predicted_map(self.viewer, key)
        return lyr.metadata.get("gene") if lyr is not None else None

    def _on_layers_changed(self, event=None) -> None:
        keys = prediction_keys(self.viewer)
        for gone in set(self._evaluations) - set(keys):  # its predicted map was deleted
            self.forget_evaluation(gone)
        self.predictions_updated.emit()
        if self._prediction_key is not None and self._prediction_key not in keys:
            self._prediction_key = None
            self.set_prediction(keys[-1] if keys else None)
            if not keys:
                self.prediction_changed.emit(None)

    def use_checkpoint(self, path: str) -> None:
        self.checkpoint_chosen.emit(str(path))

    # -- genes
    def set_gene(self, gene: str) -> None:
        """Recolour the current prediction's layers by ``gene`` and tell the widgets."""
        if not gene or gene == self._gene:
            return
        if self.prediction is not None and gene not in self.prediction.var_names:
            raise FlagInputError(f"{gene}: not in the prediction's gene panel")
        self._gene = gene
        if self._prediction_key is not None:
            self._clim = apply_gene(self.viewer, self._prediction_key, gene)
        self.gene_changed.emit(gene)

    # -- evaluations (computed in worker threads, stored here from the main thread)
    @property
    def evaluations(self) -> types.MappingProxyType:
        """The stored evaluations by prediction key (read only)."""
        return types.MappingProxyType(self._evaluations)

    def evaluation(self, key: str | None) -> dict | None:
        """The stored evaluation of prediction ``key``, or ``None``."""
        return self._evaluations.get(key) if key else None

    def store_evaluation(self, key: str, evaluation: dict) -> None:
        """Keep the evaluation of prediction ``key`` (ignored once its map is gone)."""
        if self.prediction_of(key) is None:
            return
        self._evaluations[key] = evaluation
        self.evaluation_changed.emit(key)

    def forget_evaluation(self, key: str) -> None:
        """Drop the evaluation of prediction ``key`` (it is computed again when asked for)."""
        if self._evaluations.pop(key, None) is not None:
            self.evaluation_changed.emit(key)


def unwrap_viewer(viewer):
    """The viewer itself: napari hands plugin widgets a public-only proxy, and
    layers fetched through two different proxies do not compare equal."""
    return getattr(viewer, "__wrapped__", viewer)


def _close_session(viewer_ref) -> None:
    viewer = viewer_ref()
    session = _SESSIONS.pop(viewer, None) if viewer is not None else None
    if session is not None:
        session.close()


def _close_with_window(viewer) -> None:
    """Close the viewer's session when its Qt window is destroyed (a headless viewer has none)."""
    try:
        win = viewer.window._qt_window
    except AttributeError:
        return
    ref = weakref.ref(viewer)
    win.destroyed.connect(lambda *_: _close_session(ref))


def get_session(viewer) -> FlagSession:
    """The session of ``viewer`` (created on first use, gone with the viewer or its window)."""
    viewer = unwrap_viewer(viewer)
    s = _SESSIONS.get(viewer)
    if s is None:
        s = _SESSIONS[viewer] = FlagSession(viewer)
        _close_with_window(viewer)
    return s
