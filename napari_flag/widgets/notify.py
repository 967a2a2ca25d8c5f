"""How a widget tells the user something: one-line error and warning
notifications (the traceback of an unexpected error goes to napari's log and
behind the notification's details view), the remedy a widget user applies for
each setting an error names, the decorator that keeps widget slots from
raising into Qt, and the question asked before a file is replaced.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import FlagInputError, with_remedy

log = logging.getLogger("napari_flag")

#: what a widget user does about an error's setting (the CLI says it with flags)
WIDGET_REMEDIES = {
    "checkpoint": "choose a checkpoint file in Predict expression",
    "pixel_size_um": "the image records no pixel size: write one into it, or predict from Python with "
                     "napari_flag.predict(..., pixel_size_um=...)",
    "spacing_um": "use a checkpoint that records its spot geometry",
    "overwrite": "choose another file name, or confirm replacing it",
    "truth": "open a slide with measured spots to compare with",
    "stain_norm": "set stain normalisation to off in Predict expression",
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
        except Exception as exc:  # noqa: BLE001 - a widget slot must never raise into Qt
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
    """Whether ``path`` may be written: it does not exist, or the user agreed to replace it."""
    p = Path(path)
    return not p.exists() or confirm_overwrite(p, parent)
