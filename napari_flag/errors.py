"""Exceptions that carry a one-line, user-facing message."""
from __future__ import annotations


class FlagInputError(ValueError):
    """Bad input: the message names the file (or id) and the problem, on one line.

    ``setting`` names what the user can set to fix it (``"pixel_size_um"``,
    ``"spacing_um"``, ``"checkpoint"``, ``"overwrite"``, ``"truth"``); the library
    says no more, and each front end phrases the remedy in its own terms
    (:func:`with_remedy`: a flag in the CLI, a control in a widget).
    """

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(" ".join(str(message).split()))
        self.setting = setting


def with_remedy(exc: BaseException, remedies: dict[str, str]) -> str:
    """The error's one line, with the front end's remedy for its setting appended when it has one."""
    msg = " ".join(str(exc).split())
    remedy = remedies.get(getattr(exc, "setting", None) or "")
    return f"{msg}; {remedy}" if remedy else msg


class FlagCancelled(Exception):
    """A run was cancelled by the user; nothing half-made is left behind."""
