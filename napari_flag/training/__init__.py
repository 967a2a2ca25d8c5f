"""Training: one loop for the command line and the napari trainer widget.

``TrainConfig`` (YAML + ``key=value`` overrides) -> :func:`prepare_data` ->
:func:`train` with callbacks and a stop flag -> atomic checkpoints that
:mod:`napari_flag.predict` reads.
"""
from __future__ import annotations

from .config import METHODS, TrainConfig, apply_overrides, parse_overrides
from .data import PreparedData, SlideData, prepare_data
from .loop import TrainCallbacks, TrainResult, predict_slide, train, validate

__all__ = [
    "METHODS",
    "TrainConfig",
    "parse_overrides",
    "apply_overrides",
    "PreparedData",
    "SlideData",
    "prepare_data",
    "TrainCallbacks",
    "TrainResult",
    "train",
    "validate",
    "predict_slide",
]
