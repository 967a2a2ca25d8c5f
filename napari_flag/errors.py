"""Exceptions that carry a one-line, user-facing message."""
from __future__ import annotations


class FlagInputError(ValueError):
    """Bad input: the message names the file (or id) and the problem, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class FlagCancelled(Exception):
    """A run was cancelled by the user; nothing half-made is left behind."""
