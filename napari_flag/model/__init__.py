"""FLAG model: configuration, network, EDM diffusion and per-spot baselines."""
from __future__ import annotations

from .baselines import MLPBaseline, RidgeBaseline
from .config import FlagConfig, NetworkConfig, NoiseConfig, SamplerConfig
from .diffusion import EDM, calls_per_spot, fast_mode, network_calls, sample_expression, sampler_modes
from .flag import FlagModel

# "flag": the full model; "no_graph"/"no_align"/"regression": its ablations;
# "ridge"/"mlp": closed-form / small discriminative baselines on the same data.
BASELINES = {"ridge": RidgeBaseline, "mlp": MLPBaseline}
METHODS = ("flag", "no_graph", "no_align", "regression", *BASELINES)

__all__ = ["FlagConfig", "NetworkConfig", "NoiseConfig", "SamplerConfig", "FlagModel", "EDM", "sample_expression",
           "calls_per_spot", "fast_mode", "network_calls", "sampler_modes", "RidgeBaseline", "MLPBaseline", "BASELINES",
           "METHODS"]
