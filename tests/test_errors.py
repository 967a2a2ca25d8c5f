"""The library names the problem and the setting; each front end words the remedy."""
from __future__ import annotations

import logging

import pytest

from napari_flag.cli import CLI_REMEDIES
from napari_flag.errors import FlagInputError, with_remedy


def test_one_problem_two_remedies():
    pytest.importorskip("napari")
    from napari_flag.widgets.notify import WIDGET_REMEDIES, error_message

    exc = FlagInputError("slide.jpg: pixel size unknown", setting="pixel_size_um")
    assert with_remedy(exc, CLI_REMEDIES) == "slide.jpg: pixel size unknown; pass --pixel-size-um"
    assert error_message(exc).startswith("slide.jpg: pixel size unknown; ") and "--" not in error_message(exc)
    assert set(CLI_REMEDIES) == set(WIDGET_REMEDIES)  # every setting has words in both front ends
    assert with_remedy(FlagInputError("x.h5ad: empty"), CLI_REMEDIES) == "x.h5ad: empty"


def test_widget_errors_keep_their_traceback_in_the_log(caplog, monkeypatch):
    pytest.importorskip("napari")
    from napari.utils.notifications import notification_manager

    from napari_flag.widgets.notify import show_error

    seen = []
    monkeypatch.setattr(notification_manager, "dispatch", lambda n: seen.append(n))
    try:
        raise KeyError("layer vanished")
    except KeyError as exc:
        with caplog.at_level(logging.ERROR, logger="napari_flag"):
            show_error(exc)
    assert seen and seen[0].message == "KeyError: 'layer vanished'"  # one line, details behind it
    assert "Traceback" in seen[0].as_text()
    assert caplog.records and caplog.records[-1].exc_info is not None
