"""The FLAG model's settings in three parts, each field defined once, with its default.

* :class:`NetworkConfig`: the network's sizes and switches (what is trained; a change needs a new run);
* :class:`NoiseConfig`: the EDM noise schedule (fixed with the weights: training and sampling share it);
* :class:`SamplerConfig`: how predictions are sampled (can be set after training, ``scripts/set_sampler.py``).

:class:`FlagConfig` composes them (``cfg.network``, ``cfg.noise``, ``cfg.sampler``).  Two presets:
``"cpu"`` (the default; small enough to train a fold in minutes and predict a section in about a
second on a 2-core laptop) and ``"paper"`` (the sizes of the published model, for a GPU).

Users name fields by **flat keys**, as in YAML ``model:`` sections, ``model.key=value`` overrides
and checkpoints written before the split: a field's flat key is its name (``depth``, ``P_max``)
or, for the sampler, the ``sample_``-prefixed name in its metadata (``sample_temperature`` is
``sampler.temperature``, ``sample_count`` is ``sampler.samples``).  :func:`route` sends each flat
key to the part that owns it; the nested form (``sampler={"temperature": 0.7}``) names the part.
Why each default was chosen, with the measurements: docs/history.md.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["FLAT_KEYS", "LEGACY_KEYS", "MEAN_RULES", "PARTS", "SOLVERS", "FlagConfig", "NetworkConfig", "NoiseConfig",
           "SamplerConfig", "route"]

_MODES = ("diffusion", "regression")
_GRAPH_KINDS = ("transformer", "gatv2")
# heun: 2nd order, 2 calls per step (last step 1); euler: 1st order;
# dpm2m: DPM-Solver++(2M), 2nd order multistep, 1 call per step.
SOLVERS = ("heun", "euler", "dpm2m")
#: how the returned mean is formed (see :class:`SamplerConfig`)
MEAN_RULES = ("samples", "blend")


class _Part:
    """What the three parts share: ``replace`` (an unknown field is an error naming it) and ``to_dict``."""

    def replace(self, **changes: Any):
        names = {f.name for f in fields(self)}
        for k in changes:
            if k not in names:
                raise ValueError(f"unknown {type(self).__name__} field {k!r}{_did_you_mean(k, names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class NetworkConfig(_Part):
    """Sizes and switches of the network: what a checkpoint's weights were trained with."""

    # --- ablation switches -------------------------------------------------
    mode: str = "diffusion"  # "diffusion" (EDM denoiser) | "regression" (same trunk, MSE)
    graph: bool = True  # spatial graph encoder; False = per-spot MLP only
    align: bool = True  # GFM alignment loss (needs a gene prior table)

    # --- slide encoder (visual features -> H_spatial) ----------------------
    feat_dim_proj: int = 128  # width of the feature MLP and of the graph layers
    feat_dropout: float = 0.1  # dropout on the input features (they are few and noisy)
    cond_dim: int = 64  # width of H_spatial, one vector per spot
    graph_kind: str = "transformer"  # "transformer" (TransformerConv) | "gatv2" (GATv2Conv)
    graph_layers: int = 2
    graph_heads: int = 4
    graph_dropout: float = 0.0

    # --- DiT over gene tokens ----------------------------------------------
    depth: int = 3
    width: int = 32
    # one head: CPU attention over G x G scores costs per score, not per FLOP, so one head of 32
    # runs the forward faster than two of 16
    heads: int = 1
    mlp_ratio: float = 2.0
    value_fourier: int = 16  # Fourier frequencies in the embedding of a token's scalar value
    dropout: float = 0.0  # inside DiT blocks
    # Spatially joint denoising: every token also embeds the distance-weighted mean of its gene's
    # *noisy* value over the spot's graph neighbours at the same noise level, so all spots of a
    # slide are denoised together (cost stays linear in spots).  False: the graph is a condition
    # computed once (the paper's description and the "paper" preset); True was chosen on
    # validation sections.
    joint: bool = True

    # --- GFM alignment -----------------------------------------------------
    align_block: int = 2  # hidden states after this block (1-based) are aligned
    align_hidden: tuple[int, ...] = (128,)  # projector hidden widths
    lambda_align: float = 0.5

    # --- classifier-free guidance, training side (off by default) ---------
    # probability of replacing H_spatial by a learned null vector (> 0 adds that vector to the
    # network); the sampler's ``guidance`` uses it
    cond_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.graph_kind not in _GRAPH_KINDS:
            raise ValueError(f"graph_kind must be one of {_GRAPH_KINDS}, got {self.graph_kind!r}")
        if self.joint and self.mode != "diffusion":
            raise ValueError("joint denoising needs mode='diffusion'")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} not divisible by heads {self.heads}")
        if self.feat_dim_proj % self.graph_heads:
            raise ValueError(f"feat_dim_proj {self.feat_dim_proj} not divisible by graph_heads {self.graph_heads}")
        if not 1 <= self.align_block <= self.depth:
            raise ValueError(f"align_block must be in 1..depth={self.depth}, got {self.align_block}")
        object.__setattr__(self, "align_hidden", tuple(int(h) for h in self.align_hidden))


@dataclass(frozen=True)
class NoiseConfig(_Part):
    """EDM noise schedule (Karras et al. 2022), data in standardised units; also
    :class:`~napari_flag.model.diffusion.EDM`'s defaults."""

    # sigma_data = 1 for standardised genes; P_mean is EDM's -1.2 shifted by ln 2 for that scale;
    # sigma_max 10 and rho 5 were measured best for 4-8 Heun steps
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    sigma_data: float = 1.0
    P_mean: float = -0.5
    P_std: float = 1.2
    rho: float = 5.0
    # Share of training noise levels drawn at exactly sigma_max, where every sample's first call
    # (the posterior-mean estimate) is made; EDM's log-normal alone draws about 1% of them above
    # sigma_max / 2.  0.25 raised validation PCC and SSC of the default prediction.
    P_max: float = 0.25
    regression_sigma: float = 1.0  # fixed noise level fed to the trunk in regression mode


def _flat(name: str) -> dict[str, str]:
    """Field metadata naming the field's flat key (the name users and older checkpoints write)."""
    return {"flat": name}


@dataclass(frozen=True)
class SamplerConfig(_Part):
    """How :func:`~napari_flag.model.sample_expression` samples: the one set of sampler defaults.

    A model's defaults are its ``cfg.sampler``; a call changes any of them by keyword (same names).

    ``mean`` is how the returned mean is formed:

    * ``"samples"``: the mean of the M samples, ``std`` their std.
    * ``"blend"``: imitates the mean of ``mean_like`` (N) samples at the cost of M.  The first
      network call of every sample, ``D(x_T; sigma_max)``, is already an estimate of the
      posterior mean ``mu`` (the one-shot denoiser); their average ``mu`` plus ``sqrt(M/N)``
      times the samples' mean deviation from it has the same residual sample variance
      (``Sigma/N``) as an N-sample mean, so it keeps that mean's balance between PCC (pulled up
      by ``mu``) and spatial/gene-gene structure (kept by the residual), and costs no extra
      network call.  ``std`` is the RMS deviation of the samples from ``mu`` (M degrees of
      freedom, not M-1; on a training section it matched a 32-sample std in scale, where the
      2-sample std is 20% low).  At ``M == N`` the mean is the samples' plain mean, with that
      ``std``; with ``M > N`` it is the plain rule.  This fast mode also stops each sample at
      ``sigma_min`` (``EDM.sample(final_call=False)``): 2 samples x 4 steps cost 6 calls (5
      with ``share_first``).  ``std`` is zero for one sample under both rules.

    ``share_first`` (fast mode only): the M samples share one network call at ``sigma_max``.
    There ``D(x; sigma_max) = c_skip x + c_out F`` with ``c_skip`` about 0.01 and F nearly blind
    to its pure-noise input, so every sample's first denoised estimate is taken as
    ``c_skip x_k + (D(x_1) - c_skip x_1)``: one call instead of M (2 samples x 4 steps: 5 calls
    per spot, see :func:`~napari_flag.model.calls_per_spot`).
    """

    # DPM-Solver++(2M) at 4 steps lands as close to a many-step Heun solution as Heun at 8 steps
    # (15 calls), with 1 call per step
    solver: str = field(default="dpm2m", metadata=_flat("sample_solver"))  # "dpm2m" | "heun" | "euler"
    steps: int = field(default=4, metadata=_flat("sample_steps"))
    # 2 samples x 4 steps in the fast mode (mean "blend", samples <= mean_like): the call at
    # sigma_min skipped and the first call, at sigma_max, shared: 5 network calls per spot
    samples: int = field(default=2, metadata=_flat("sample_count"))
    mean: str = field(default="blend", metadata=_flat("sample_mean"))  # "blend" | "samples" (see above)
    # N of the imitated N-sample mean: more PCC, less spatial structure as it grows; 6 was chosen
    # on validation sections (N = 2, the samples' plain mean, keeps more structure at less PCC)
    mean_like: int = field(default=6, metadata=_flat("sample_mean_like"))
    share_first: bool = field(default=True, metadata=_flat("sample_share_first"))  # fast mode (see above)
    # Scale of the initial noise (1 = the model's distribution).  Below 1 the ODE starts nearer
    # the conditional mean, and one sample of a small model keeps the truth's gene-gene
    # correlations (at 1 its per-gene noise washes them out); 0.7 was chosen on validation sections.
    temperature: float = field(default=0.7, metadata=_flat("sample_temperature"))
    # Antithetic initial noise: samples in pairs (z, -z); each is still an exact draw, but the
    # pair's noise cancels in the mean, so the mean approaches the posterior mean: off, since it
    # then shares regression's loss of spatial and gene-gene structure
    antithetic: bool = field(default=False, metadata=_flat("sample_antithetic"))
    # classifier-free guidance: > 1 extrapolates away from the unconditional prediction (needs a
    # network trained with cond_dropout > 0); 1 = off
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"sample_solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.mean not in MEAN_RULES:
            raise ValueError(f"sample_mean must be one of {MEAN_RULES}, got {self.mean!r}")
        for name in ("steps", "samples", "mean_like"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampler {name} must be >= 1, got {getattr(self, name)!r}")


#: the parts of a :class:`FlagConfig`, by attribute name
PARTS: dict[str, type] = {"network": NetworkConfig, "noise": NoiseConfig, "sampler": SamplerConfig}
#: flat key -> (part, field): where each flat key a user or an older checkpoint writes lives now
FLAT_KEYS: dict[str, tuple[str, str]] = {
    f.metadata.get("flat", f.name): (part, f.name) for part, cls in PARTS.items() for f in fields(cls)
}
assert len(FLAT_KEYS) == sum(len(fields(c)) for c in PARTS.values()), "two parts claim one flat key"
#: keys older checkpoints carry that name no field, with what became of them: renamed (the flat
#: key now holding the value) or ``None``, no longer stored.  ``align_dim``: the projector's output
#: width is the gene prior's width, read from the checkpoint's prior table, not from the config.
LEGACY_KEYS: dict[str, str | None] = {"align_dim": None}

_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {},
    "paper": {
        "network": {
            "joint": False,  # the paper's graph: a condition computed once
            "feat_dim_proj": 384, "cond_dim": 384, "graph_layers": 6, "graph_heads": 6, "depth": 12, "width": 384,
            "heads": 6, "mlp_ratio": 4.0, "value_fourier": 32, "align_block": 8, "align_hidden": (2048, 2048),
            "lambda_align": 0.5,
        },
        "noise": {"sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0},
        "sampler": {"steps": 16, "samples": 8, "temperature": 1.0},
    },
}


def route(changes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{part: {field: value}}`` of flat keys (``depth``, ``P_max``, ``sample_temperature``) and
    nested parts (``sampler={"temperature": 0.7}``, or a whole ``sampler=SamplerConfig(...)``).  An
    unknown key, or one field given two different values, is a one-line ``ValueError`` naming the key."""
    out: dict[str, dict[str, Any]] = {p: {} for p in PARTS}
    said: dict[tuple[str, str], str] = {}
    for key, value in changes.items():
        if key in PARTS:
            if isinstance(value, PARTS[key]):
                value = {f.name: getattr(value, f.name) for f in fields(value)}
            if not isinstance(value, Mapping):
                raise ValueError(f"FlagConfig key {key!r} takes a mapping of {PARTS[key].__name__} fields, "
                                 f"got {value!r}")
            items = [(f"{key}.{k}", key, k, v) for k, v in value.items()]
        elif key in FLAT_KEYS:
            items = [(key, *FLAT_KEYS[key], value)]
        else:
            raise ValueError(f"unknown FlagConfig key {key!r}{_did_you_mean(key, [*FLAT_KEYS, *PARTS])}")
        for label, part, name, v in items:
            if name not in {f.name for f in fields(PARTS[part])}:
                raise ValueError(f"unknown FlagConfig key {label!r}"
                                 f"{_did_you_mean(name, [f.name for f in fields(PARTS[part])], part + '.')}")
            if (part, name) in said and out[part][name] != v:
                raise ValueError(f"FlagConfig key {label!r} given twice: {said[part, name]}={out[part][name]!r}, "
                                 f"{label}={v!r}")
            out[part][name] = v
            said[part, name] = label
    return out


@dataclass(frozen=True)
class FlagConfig:
    """The model's settings: :class:`NetworkConfig`, :class:`NoiseConfig` and :class:`SamplerConfig`.

    Build one with :meth:`preset` (flat or nested overrides), change it with :meth:`replace`;
    :meth:`to_dict` / :meth:`from_dict` store it (nested; flat dicts of older checkpoints load too).
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    preset_name: str = "cpu"

    def __post_init__(self) -> None:
        for part, cls in PARTS.items():
            if not isinstance(getattr(self, part), cls):
                raise TypeError(f"FlagConfig.{part} must be a {cls.__name__}, got {type(getattr(self, part)).__name__}")

    @classmethod
    def preset(cls, name: str = "cpu", **overrides: Any) -> FlagConfig:
        """``"cpu"`` (default) or ``"paper"``; overrides (flat keys or nested parts, see :func:`route`) win."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; use 'cpu' or 'paper'")
        kw = route(_PRESETS[name])
        for part, values in route({k: v for k, v in overrides.items() if k != "preset_name"}).items():
            kw[part].update(values)
        return cls(**{p: PARTS[p](**kw[p]) for p in PARTS}, preset_name=overrides.get("preset_name", name))

    def replace(self, **changes: Any) -> FlagConfig:
        """A copy with ``changes``: flat keys, nested parts as mappings (merged into the part) or whole
        part objects (``sampler=SamplerConfig(...)``), and ``preset_name``."""
        name = changes.pop("preset_name", self.preset_name)
        parts = {p: getattr(self, p).replace(**values) if values else getattr(self, p)
                 for p, values in route(changes).items()}
        return dataclasses.replace(self, **parts, preset_name=name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, nested by part: ``{"network": {...}, "noise": {...}, "sampler": {...},
        "preset_name": ...}``."""
        return {**{p: getattr(self, p).to_dict() for p in PARTS}, "preset_name": self.preset_name}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlagConfig:
        """A stored config (a checkpoint's), nested or flat (checkpoints written before the parts):
        fields it lacks read as their defaults, flat keys go to their part (:data:`FLAT_KEYS`),
        keys of older versions are migrated by name (:data:`LEGACY_KEYS`); any other key is an
        error naming it."""
        kw: dict[str, Any] = {}
        for k, v in dict(d).items():
            if k in LEGACY_KEYS:
                if LEGACY_KEYS[k] is not None:
                    kw.setdefault(LEGACY_KEYS[k], v)
            else:
                kw[k] = v
        try:
            return cls().replace(**kw)
        except ValueError as exc:
            if str(exc).startswith("unknown"):
                raise ValueError(f"{exc} (a checkpoint from a newer version?)") from None
            raise


def _did_you_mean(key: str, names, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
