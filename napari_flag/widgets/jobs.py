"""Work off the UI thread: what a worker reports (:class:`Done`,
:class:`Failed`, :class:`Cancelled`), :func:`run_worker`, which turns a
generator into a napari thread worker that never raises and honours a cancel
flag, and :class:`EvaluationJob`, the mixin of the panels that show the
evaluation of the current prediction (computed once, kept in the session).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtpy.QtWidgets import QLabel

from ..errors import FlagInputError
from . import _analysis
from .notify import error_message, show_error


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
        except Exception as exc:  # noqa: BLE001 - reported as an event, never raised into Qt
            yield Failed(exc)
        finally:
            gen.close()

    return create_worker(guarded, _start_thread=False)


def _evaluate(key: str, adata):
    """Worker body: the evaluation of one prediction, or why there is none."""
    try:
        yield Done(key, _analysis.evaluation(adata, key))
    except Exception as exc:  # noqa: BLE001 - reported in the UI, remembered so it is not retried
        yield Failed(exc, key)


class EvaluationJob:
    """Mixin for panels fed by the shared per-prediction evaluation (``_analysis``).

    The host is a :class:`~napari_flag.widgets.base.FlagWidget` that calls
    :meth:`_init_evaluation` and defines ``compute()`` and ``_show(key, ev)``;
    ``_what`` names the result in messages.  The evaluation is computed in a
    worker and stored in the session, so the Metrics and Moran's I panels
    share it.  A failed prediction is remembered so it is not retried on
    every gene switch.
    """

    _what = "results"

    def _init_evaluation(self) -> None:
        self._failed: set[str] = set()
        self.title = QLabel("Run Predict on a slide first.")
        self.title.setWordWrap(True)

    def _start_evaluation(self, key: str) -> None:
        ev = self.session.evaluation(key)
        if ev is not None:
            self._show(key, ev)
            return
        if self.running or key in self._failed:
            return
        self.title.setText(f"computing {self._what}…")
        self._worker = run_worker(_evaluate, key, self.session.prediction_of(key))
        self._worker.yielded.connect(self._on_event)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _on_event(self, ev) -> None:
        if isinstance(ev, Done):
            self.session.store_evaluation(ev.key, ev.value)
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
        if key and key not in self._failed and self.session.evaluation(key) is None:
            self.compute()  # the prediction changed while computing
