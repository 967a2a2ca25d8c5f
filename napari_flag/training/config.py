"""Everything a training run needs, in one JSON-safe dataclass loadable from YAML.

The same object drives the command line (``napari-flag-train``) and the napari
trainer widget, so a run started in either can be resumed from the other.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..data.panel import TRANSFORMS
from ..errors import FlagInputError
from ..metrics import METRIC_KEYS
from ..model import BASELINES, METHODS, FlagConfig
from ..model.config import route

__all__ = ["TrainConfig", "parse_overrides", "apply_overrides"]

# Metrics where smaller is better; every other metric is maximised.
LOWER_IS_BETTER = ("MSE", "MAE")


@dataclass
class TrainConfig:
    # --- data --------------------------------------------------------------
    train: list[str] = field(default_factory=list)  # dataset ids ("her2st:C3") or paths
    val: list[str] = field(default_factory=list)  # validation slides (early stopping, best.pt)
    test: list[str] = field(default_factory=list)  # recorded only; evaluated by the benchmark
    n_genes: int = 200  # size of the HMHVG panel chosen on the training slides
    transform: str = "log2p1"  # target scale: "log2p1" | "log1p" | "lognorm" (normalize_total + log1p) | "none"
    genes: list[str] | None = None  # fixed panel; overrides the HMHVG selection when given
    gene_prior: str | None = None  # gene prior spec for the alignment loss (None: none/automatic)

    # --- features and graph ------------------------------------------------
    encoder: str = "efficientnet_lite0"
    encoder_kw: dict = field(default_factory=dict)  # e.g. weights=..., patch_um=..., patch_px=...
    feature_batch: int = 32
    feature_cache: bool | str = True  # True: default cache folder; a path: that folder; False: no cache
    graph_k: int = 8
    graph_radius_um: float | None = None
    # stain augmentation: this many re-stained copies of each training slide (features cached
    # per copy), one drawn per step beside the original; 0 = none.  augment_range: JitterRanges
    # fields (stain, brightness, contrast, blur, jpeg) overriding its defaults.
    augment_views: int = 0
    augment_range: dict = field(default_factory=dict)
    # stain normalisation: the training slides' stains (Macenko, pooled) are recorded in the
    # checkpoint, and predictions map each slide onto them before encoding; False records none.
    # Training features are the slides as scanned (the reference is their own stains).
    stain_norm: bool = True

    # --- model -------------------------------------------------------------
    method: str = "flag"
    # preset name + FlagConfig overrides: flat keys (depth, P_max, sample_temperature) or nested parts
    # (sampler: {temperature: 0.7}); see napari_flag.model.config
    model: dict = field(default_factory=lambda: {"preset": "cpu"})
    baseline: dict = field(default_factory=dict)  # keyword arguments of the ridge/MLP baseline

    # --- optimisation ------------------------------------------------------
    steps: int = 2000  # optimiser steps in all (one slide per step and rank)
    epochs: int | None = None  # when set, steps = epochs * ceil(n_train / world_size)
    batch_spots: int = 0  # spots per loss evaluation; 0 = every spot of the slide
    lr: float = 3e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0
    device: str = "auto"  # "auto" = cuda > mps > cpu

    # --- validation, checkpoints -------------------------------------------
    val_every: int = 200  # steps between validations (0 = only at the end)
    val_steps: int = 4  # sampler steps used for validation predictions
    val_samples: int = 1  # samples per spot for validation predictions
    val_metric: str = "PCC"  # early stopping / best.pt criterion (mean over val slides)
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early
    # last.pt is saved at every validation, on Stop and at the end, and besides: every ckpt_every
    # steps (> 0), once per epoch (0: a killed run loses at most one epoch), or never (< 0).
    ckpt_every: int = 0
    log_every: int = 10
    out_dir: str = "runs/flag"

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            v = getattr(self, name)
            if isinstance(v, (str, Path)):
                v = [v]
            setattr(self, name, [str(x) for x in (v or [])])
        if self.method not in METHODS:
            raise FlagInputError(f"method: unknown {self.method!r}; use one of {', '.join(METHODS)}")
        if self.transform not in TRANSFORMS:
            raise FlagInputError(f"transform: unknown {self.transform!r}; use one of {', '.join(TRANSFORMS)}")
        if isinstance(self.model, str):
            self.model = {"preset": self.model}
        self.model = dict(self.model or {})
        self.model.setdefault("preset", "cpu")
        if self.genes is not None:
            self.genes = [str(g) for g in self.genes]
        for name in ("n_genes", "steps", "batch_spots", "graph_k", "val_every", "val_steps",
                     "val_samples", "patience", "ckpt_every", "log_every", "seed", "feature_batch", "augment_views"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("lr", "weight_decay", "ema_decay", "grad_clip"):
            setattr(self, name, float(getattr(self, name)))
        if self.epochs is not None:
            self.epochs = int(self.epochs)
        self.stain_norm = bool(self.stain_norm)
        self.augment_range = dict(self.augment_range or {})
        if self.augment_views < 0:
            raise FlagInputError(f"augment_views must be >= 0, got {self.augment_views}")
        if self.augment_range:
            self.jitter_ranges()  # an unknown range name fails here, not after the features
        if self.steps < 0 or self.n_genes < 1:
            raise FlagInputError("steps must be >= 0 and n_genes >= 1")
        if self.val_metric not in METRIC_KEYS:
            raise FlagInputError(f"val_metric: unknown {self.val_metric!r}; use one of {', '.join(METRIC_KEYS)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise FlagInputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.is_baseline:
            self.flag_config()  # an unknown or invalid model key fails here, not after the features

    def jitter_ranges(self):
        """The stain augmentation's :class:`~napari_flag.features.stain.JitterRanges`."""
        from ..features.stain import JitterRanges

        names = {f.name for f in fields(JitterRanges)}
        unknown = sorted(set(self.augment_range) - names)
        if unknown:
            raise FlagInputError(f"augment_range: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(names))}")
        return JitterRanges(**self.augment_range)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Strict: an unknown key is an error (a typo in a YAML must not be ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise FlagInputError(f"unknown training config key(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> "TrainConfig":
        """Load ``path`` and apply ``key=value`` overrides (dotted keys reach into ``model``)."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FlagInputError(f"{p}: config file not found")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FlagInputError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(d, dict):
            raise FlagInputError(f"{p}: a training config must be a mapping of keys to values")
        d = apply_overrides(d, parse_overrides(overrides))
        try:
            return cls.from_dict(d)
        except FlagInputError as exc:
            raise FlagInputError(f"{p}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise FlagInputError(f"{p}: {exc}") from exc

    def with_overrides(self, overrides: Iterable[str]) -> "TrainConfig":
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), parse_overrides(overrides)))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only, so it can live in a ``weights_only`` checkpoint."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- derived -----------------------------------------------------------
    def flag_config(self):
        """The model's :class:`FlagConfig`: preset, then overrides, then the method's switches.

        Overrides name fields by flat key or nested part (:func:`~napari_flag.model.config.route`);
        an unknown key is a one-line error naming it."""
        over = dict(self.model)
        preset = over.pop("preset", "cpu")
        name = over.pop("preset_name", preset)
        # no_graph drops every use of the spatial graph (the encoder's and joint denoising's);
        # regression has no noisy values for joint denoising to share
        switches = {
            "flag": {},
            "no_graph": {"graph": False, "joint": False},
            "no_align": {"align": False},
            "regression": {"mode": "regression", "joint": False},
        }.get(self.method, {})
        try:
            parts = route(over)  # the method's switches win over the overrides
            parts["network"].update(switches)
            return FlagConfig.preset(preset, **parts, preset_name=name)
        except (TypeError, ValueError) as exc:
            raise FlagInputError(f"model: {exc}") from exc

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINES


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model.depth=4", "train=[her2st:C3,her2st:C4]"]`` to a dotted-key dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise FlagInputError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise FlagInputError(f"override {item!r}: empty key")
        out[key] = _parse_value(value)
    return out


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``d`` with dotted keys set (intermediate mappings are created)."""
    d = json.loads(json.dumps(d))  # deep copy of plain data
    for key, value in overrides.items():
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
                node[p] = nxt
            if not isinstance(nxt, dict):
                raise FlagInputError(f"override {key}: {p!r} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return d
