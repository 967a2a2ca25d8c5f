"""The base of every napari-flag dock widget: its viewer and the viewer's
session, and for the widgets that run long jobs (Predict, Train) the start and
stop buttons, progress bar and status line, one worker at a time and the
``run_finished`` signal that reports how the job ended.
"""
from __future__ import annotations

import threading

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from .session import get_session, unwrap_viewer


class FlagWidget(QWidget):
    """Base of the dock widgets: the viewer, its session, and at most one worker at a time.

    A widget that runs jobs (Predict, Train) sets ``go_btn``, ``halt_btn``, ``bar``
    and ``status``, starts with :meth:`_run_job`, stops with :meth:`_halt`, handles
    the worker's events in ``_on_event`` and may override :meth:`_finished_text`;
    the outcome (``self._outcome``) is emitted by ``run_finished``.
    """

    #: how a job ended: "finished" | "cancelled" | "error" (Predict), or the
    #: training's status, "finished" | "stopped" | "early_stopped" | "error" (Train)
    run_finished = Signal(str)

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

    def _on_event(self, ev) -> None:
        """One event of the running job (a job-running widget handles them)."""

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
