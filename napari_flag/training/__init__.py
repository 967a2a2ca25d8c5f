"""Training: one loop for the command line and the napari trainer widget.

``TrainConfig`` (YAML + ``key=value`` overrides) -> :func:`prepare_data` ->
:func:`train` with callbacks and a stop flag -> atomic checkpoints that
:mod:`napari_flag.inference` reads.
"""
from __future__ import annotations

from .config import TrainConfig, apply_overrides, parse_overrides
from .data import PreparedData, prepare_data
from .loop import TrainCallbacks, TrainEvent, TrainResult, event_callbacks, train, validate

__all__ = [
    "TrainConfig",
    "parse_overrides",
    "apply_overrides",
    "PreparedData",
    "prepare_data",
    "TrainCallbacks",
    "TrainEvent",
    "event_callbacks",
    "TrainResult",
    "train",
    "validate",
]
