"""Sizes and switches of the FLAG model, in one JSON-safe dataclass.

Two presets: ``"cpu"`` (the default; small enough to train a fold in minutes
and predict a section in about a second on a 2-core laptop) and ``"paper"``
(the sizes of the published model, for a GPU).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["FlagConfig", "SAMPLER_KEYS", "LEGACY_KEYS"]

#: keys that only change sampling (prediction, validation), not what is trained: a checkpoint's
#: sampler can be set after training (``scripts/set_sampler.py``)
SAMPLER_KEYS = ("sample_solver", "sample_steps", "sample_count", "sample_temperature", "sample_antithetic",
                "sample_mean", "sample_mean_like", "sample_share_first", "guidance")
#: keys older checkpoints carry that no longer describe the network, with what became of them
#: (``None``: dropped, its value is not used any more; a name: renamed to that key)
LEGACY_KEYS: dict[str, str | None] = {"align_dim": None}

_MODES = ("diffusion", "regression")
_GRAPH_KINDS = ("transformer", "gatv2")
# heun: 2nd order, 2 calls per step (last step 1); euler: 1st order;
# dpm2m: DPM-Solver++(2M), 2nd order multistep, 1 call per step.
SOLVERS = ("heun", "euler", "dpm2m")


@dataclass
class FlagConfig:
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
    # one head: CPU attention over G x G scores costs per score, not per FLOP (exp and
    # bookkeeping), so 1 head of 32 runs the forward ~1.6x faster than 2 of 16
    # (benchmarks/results/kernel_profile.json)
    heads: int = 1
    mlp_ratio: float = 2.0
    value_fourier: int = 16  # Fourier frequencies in the embedding of a token's scalar value
    dropout: float = 0.0  # inside DiT blocks
    # Spatially joint denoising: every token also embeds the distance-weighted
    # mean of its gene's *noisy* value over the spot's graph neighbours at the
    # same noise level, so all spots of a slide are denoised together (the
    # sampler steps the whole slide at once; cost stays linear in spots).
    # False: the graph is a condition computed once (the paper's description, and
    # the "paper" preset).  True: chosen over it on the nested HER2ST benchmark's
    # validation sections (README, Fidelity).
    joint: bool = True

    # --- GFM alignment -----------------------------------------------------
    align_block: int = 2  # hidden states after this block (1-based) are aligned
    align_hidden: tuple[int, ...] = (128,)  # projector hidden widths
    lambda_align: float = 0.5

    # --- EDM noise (Karras et al. 2022), data in standardised units -------
    # sigma_data = 1 for standardised genes; P_mean is EDM's -1.2 shifted by
    # ln 2 for that scale.  sigma_max 10 / rho 5 measured best for 4-8 Heun steps.
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    sigma_data: float = 1.0
    P_mean: float = -0.5
    P_std: float = 1.2
    rho: float = 5.0
    # Share of training noise levels drawn at exactly sigma_max, where every sample's
    # first call (the posterior-mean estimate) is made; EDM's log-normal alone draws
    # about 1% of them above sigma_max / 2.  0.25 raised validation PCC and SSC of the
    # default prediction on a nested fold's validation section (README, Fidelity).
    P_max: float = 0.25
    regression_sigma: float = 1.0  # fixed noise level fed to the trunk in regression mode

    # --- classifier-free guidance (off by default) ------------------------
    cond_dropout: float = 0.0  # probability of replacing H_spatial by a learned null vector
    guidance: float = 1.0  # >1 extrapolates away from the unconditional prediction

    # --- sampler defaults --------------------------------------------------
    # DPM-Solver++(2M) at 4 steps lands as close to a 64-step Heun solution as
    # Heun at 8 steps (15 calls), 1 call per step (benchmarks/sampler_nfe.py).
    sample_solver: str = "dpm2m"  # "dpm2m" (1 call/step) | "heun" (2 steps - 1 calls) | "euler"
    sample_steps: int = 4
    # 2 samples x 4 steps in the fast mode (sample_mean="blend", count <= mean_like):
    # the call at sigma_min skipped and the first call, at sigma_max, shared by the
    # samples: 5 network calls per spot (see sample_expression).
    sample_count: int = 2
    # "blend": the posterior-mean estimate every sample's first call gives for
    # free, plus sqrt(count / mean_like) of the samples' deviation from it, which
    # imitates a mean_like-sample mean (more PCC, less spatial structure as it
    # grows); "samples": the plain mean of the samples.  Equal when count >= mean_like.
    # mean_like 6: the median of the five nested HER2ST folds' choices (6, 16, 32, 6, 2) on
    # their validation sections, each the N whose mean best cleared both fidelity targets
    # there (PCC within 0.01 of the regression twin's, SSC at least ridge's; grid 2..32,
    # benchmarks/her2st_loso.py --nested --select targets).  N = 2, the samples' plain
    # mean, keeps more spatial structure at less PCC.
    sample_mean: str = "blend"
    sample_mean_like: int = 6
    # Fast mode: the samples share their first call, at sigma_max, where the
    # denoiser is nearly blind to its pure-noise input (see sample_expression).
    sample_share_first: bool = True
    # Scale of the initial noise (1 = the model's distribution).  Below 1 the ODE
    # starts nearer the conditional mean, and one sample of a small model keeps the
    # truth's gene-gene correlations (at 1 its per-gene noise washes them out).
    # 0.7: the median of the five nested folds' choices on their validation sections
    # (0.5-0.8; grid 0.5..1.0 by GSC-CCC + SSC of one sample).
    sample_temperature: float = 0.7
    # Antithetic initial noise: samples come in pairs (z, -z).  Each sample is
    # still an exact draw of the model, but where the ODE's map from noise to
    # expression is near-linear the pair's noise cancels in the mean, so two
    # samples average like many independent ones.
    # Off by default: the pair's mean approaches the posterior mean, which
    # scores regression's PCC but also shares its loss of spatial and gene-gene
    # structure (benchmarks/results/her2st.json, ``flag_antithetic``).
    sample_antithetic: bool = False

    preset_name: str = field(default="cpu")

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.graph_kind not in _GRAPH_KINDS:
            raise ValueError(f"graph_kind must be one of {_GRAPH_KINDS}, got {self.graph_kind!r}")
        if self.sample_solver not in SOLVERS:
            raise ValueError(f"sample_solver must be one of {SOLVERS}, got {self.sample_solver!r}")
        if self.sample_mean not in ("samples", "blend"):
            raise ValueError(f"sample_mean must be 'samples' or 'blend', got {self.sample_mean!r}")
        if self.joint and self.mode != "diffusion":
            raise ValueError("joint denoising needs mode='diffusion'")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} not divisible by heads {self.heads}")
        if self.feat_dim_proj % self.graph_heads:
            raise ValueError(
                f"feat_dim_proj {self.feat_dim_proj} not divisible by graph_heads {self.graph_heads}"
            )
        if not 1 <= self.align_block <= self.depth:
            raise ValueError(f"align_block must be in 1..depth={self.depth}, got {self.align_block}")
        self.align_hidden = tuple(int(h) for h in self.align_hidden)

    @classmethod
    def preset(cls, name: str = "cpu", **overrides: Any) -> "FlagConfig":
        """``"cpu"`` (default) or ``"paper"``; keyword overrides win."""
        if name == "cpu":
            base: dict[str, Any] = {}
        elif name == "paper":
            base = dict(
                joint=False,  # the paper's graph: a condition computed once
                feat_dim_proj=384,
                cond_dim=384,
                graph_layers=6,
                graph_heads=6,
                depth=12,
                width=384,
                heads=6,
                mlp_ratio=4.0,
                value_fourier=32,
                align_block=8,
                align_hidden=(2048, 2048),
                lambda_align=0.5,
                sigma_min=0.002,
                sigma_max=80.0,
                rho=7.0,
                sample_steps=16,
                sample_count=8,
                sample_temperature=1.0,
            )
        else:
            raise ValueError(f"unknown preset {name!r}; use 'cpu' or 'paper'")
        base.update(overrides)
        base.setdefault("preset_name", name)
        return cls(**base)

    def replace(self, **changes: Any) -> "FlagConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["align_hidden"] = list(self.align_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FlagConfig":
        """A stored config (a checkpoint's): keys added since read as their defaults, keys of older
        versions migrated by name (:data:`LEGACY_KEYS`); any other unknown key is an error naming it."""
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in dict(d).items():
            if k in LEGACY_KEYS:
                if LEGACY_KEYS[k] is not None:
                    kw.setdefault(LEGACY_KEYS[k], v)
            elif k in names:
                kw[k] = v
            else:
                raise ValueError(f"unknown FlagConfig key {k!r} (a checkpoint from a newer version?)")
        if "align_hidden" in kw:
            kw["align_hidden"] = tuple(kw["align_hidden"])
        return cls(**kw)
