"""FLAG model: configuration, network, EDM diffusion and per-spot baselines."""
from __future__ import annotations

from .baselines import MLPBaseline, RidgeBaseline
from .config import FlagConfig
from .diffusion import EDM
from .flag import FlagModel

__all__ = ["FlagConfig", "FlagModel", "EDM", "RidgeBaseline", "MLPBaseline"]
