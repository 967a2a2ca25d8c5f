"""Turning samples into model inputs; shared by training, validation and prediction.

Everything that must be identical at training and prediction time lives here
(spot coordinates in microns, the graph, the target matrix), so a checkpoint
applied to a new slide sees its inputs built exactly as during training.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import FlagInputError

__all__ = [
    "SlideData",
    "PreparedData",
    "prepare_data",
    "load_samples",
    "spot_coords_um",
    "slide_graph",
    "target_matrix",
    "encoder_identity",
    "make_encoder",
]

Progress = Callable[[str, int, int], None]


@dataclass
class SlideData:
    """One slide, ready for the model.  ``targets`` are standardised; ``truth`` is on the target scale."""

    sample_id: str
    feats: torch.Tensor  # (S, D) float32
    graph: Any  # SpatialGraph
    coords: np.ndarray  # (S, 2) full-resolution pixels (isotropic; used for metrics)
    grid: str | None
    targets: torch.Tensor | None = None  # (S, G) standardised, finite
    truth: np.ndarray | None = None  # (S, G) target scale, NaN for genes the slide lacks
    gene_ok: np.ndarray | None = None  # (G,) bool, genes present in the slide

    @property
    def n_spots(self) -> int:
        return int(self.feats.shape[0])

    def to(self, device) -> "SlideData":
        return SlideData(
            self.sample_id,
            self.feats.to(device),
            self.graph.to(device) if self.graph is not None else None,
            self.coords,
            self.grid,
            None if self.targets is None else self.targets.to(device),
            self.truth,
            self.gene_ok,
        )


@dataclass
class PreparedData:
    train: list[SlideData]
    val: list[SlideData]
    genes: list[str]
    mean: np.ndarray  # (G,) per-gene mean of the transformed training targets
    std: np.ndarray  # (G,) per-gene std (floored), same scale
    transform: str
    encoder: dict  # identity: name, dim, patch_um, patch_px, weights_id, kw
    feat_dim: int
    graph: dict = field(default_factory=dict)  # k, radius_um
    gene_prior: torch.Tensor | None = None
    prior_mask: torch.Tensor | None = None

    def to(self, device) -> "PreparedData":
        return PreparedData(
            [s.to(device) for s in self.train],
            [s.to(device) for s in self.val],
            self.genes, self.mean, self.std, self.transform, self.encoder, self.feat_dim,
            self.graph, self.gene_prior, self.prior_mask,
        )


# ----------------------------------------------------------------------------- helpers
def load_samples(sources, progress: Progress | None = None) -> list:
    from ..data import load_sample

    out = []
    for i, src in enumerate(sources):
        if progress:
            progress("load", i, len(sources))
        out.append(src if hasattr(src, "adata") else load_sample(src))
    if progress:
        progress("load", len(sources), len(sources))
    return out


def spot_coords_um(sample) -> np.ndarray:
    """Spot centres in microns; pixels when the pixel size is unknown (the graph's
    distance weight is scale-free, so only ``radius_um`` is then off)."""
    c = sample.coords_um
    if c is None:
        warnings.warn(
            f"{sample.source or sample.sample_id}: pixel size unknown; graph distances in pixels",
            RuntimeWarning, stacklevel=2,
        )
        c = sample.coords
    return np.asarray(c, dtype=np.float64)


def slide_graph(sample, feats, k: int = 8, radius_um: float | None = None):
    from ..graph import build_spatial_graph

    return build_spatial_graph(spot_coords_um(sample), feats, k=int(k), radius_um=radius_um)


def target_matrix(sample, genes: list[str], transform: str) -> tuple[np.ndarray, np.ndarray]:
    """``(truth (S, G) float32 with NaN columns for absent genes, present mask (G,))``."""
    from ..data.panel import panel_matrix

    names = set(map(str, sample.adata.var_names))
    ok = np.array([g in names for g in genes], dtype=bool)
    out = np.full((sample.n_spots, len(genes)), np.nan, dtype=np.float32)
    if ok.any():
        out[:, ok] = panel_matrix(sample.adata, [g for g, o in zip(genes, ok) if o], transform)
    return out, ok


def _jsonable_kw(kw: dict) -> dict:
    out = {}
    for k, v in (kw or {}).items():
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, (list, tuple)):
            out[str(k)] = list(v)
        else:
            out[str(k)] = str(v)
    return out


def make_encoder(name: str, device="auto", kw: dict | None = None):
    from ..features import get_encoder

    kw = dict(kw or {})
    kw.pop("device", None)
    return get_encoder(name, device=device, **kw)


def encoder_identity(encoder, kw: dict | None = None) -> dict:
    """What a checkpoint records so prediction rebuilds the same encoder (and can check it)."""
    return {
        "name": str(encoder.name),
        "dim": int(encoder.dim),
        "patch_um": float(encoder.patch_um),
        "patch_px": int(encoder.patch_px),
        "weights_id": str(getattr(encoder, "weights_id", "") or ""),
        "kw": _jsonable_kw(kw or {}),
    }


def _features(sample, encoder, cfg, progress: Progress | None):
    from ..features import compute_features

    def cb(done, total, _sid=sample.sample_id):
        if progress:
            progress(f"features {_sid}", done, total)

    return compute_features(sample, encoder, batch_size=cfg.feature_batch, cache=cfg.feature_cache, progress=cb)


def _slide(sample, feats, cfg, genes, transform, mean=None, std=None) -> SlideData:
    graph = slide_graph(sample, feats, cfg.graph_k, cfg.graph_radius_um)
    truth, ok = (None, None)
    targets = None
    if sample.has_counts:
        truth, ok = target_matrix(sample, genes, transform)
        if mean is not None:
            z = (np.nan_to_num(truth, nan=0.0) - mean) / std
            z[:, ~ok] = 0.0
            targets = torch.from_numpy(z.astype(np.float32))
    return SlideData(
        str(sample.sample_id),
        torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
        graph,
        sample.coords,
        sample.grid,
        targets,
        truth,
        ok,
    )


def _gene_prior(cfg, genes: list[str]):
    """``(table (G, d_e), mask (G,))`` for the alignment loss, or ``(None, None)``.

    Only looked up when the model aligns.  ``gene_prior: null`` means the bundled
    table (a missing bundled table then just turns alignment off, with a warning);
    ``"none"`` turns it off; anything else is a file a user asked for, so
    problems with it are errors.
    """
    flag_cfg = cfg.flag_config() if not cfg.is_baseline else None
    if flag_cfg is None or not flag_cfg.align:
        return None, None
    spec = cfg.gene_prior
    if isinstance(spec, str) and spec.strip().lower() in ("none", "off", "false", ""):
        return None, None
    from ..gene_prior import load_gene_prior

    try:
        prior = load_gene_prior(spec)
    except FlagInputError:
        if spec is not None:
            raise
        warnings.warn("bundled gene prior table missing; training without the alignment loss",
                      RuntimeWarning, stacklevel=2)
        return None, None
    table, mask = prior.for_panel(genes)
    if not mask.any():
        warnings.warn(f"gene prior {prior.name!r} covers none of the panel genes; no alignment loss",
                      RuntimeWarning, stacklevel=2)
        return None, None
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)), torch.from_numpy(mask.astype(bool))


def prepare_data(
    cfg,
    progress: Progress | None = None,
    genes: list[str] | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    encoder=None,
    device="cpu",
) -> PreparedData:
    """Load the config's slides and build features, graphs, panel and standardised targets.

    The panel (HMHVG) and the standardisation statistics come from the TRAIN
    slides only; pass ``genes``/``stats`` to reuse a checkpoint's (resuming).
    """
    from ..data.panel import select_hmhvg

    if not cfg.train:
        raise FlagInputError("training config: 'train' lists no slides")
    train_s = load_samples(cfg.train, progress)
    val_s = load_samples(cfg.val, progress)
    for s in train_s + val_s:
        if not s.has_counts:
            raise FlagInputError(f"{s.source or s.sample_id}: no expression counts; cannot train or validate on it")
        if s.image is None:
            raise FlagInputError(f"{s.source or s.sample_id}: no H&E image; features need one")
    if genes is None:
        genes = list(cfg.genes) if cfg.genes else list(select_hmhvg([s.adata for s in train_s], n_genes=cfg.n_genes))
    genes = [str(g) for g in genes]
    if not genes:
        raise FlagInputError("training slides share no genes for a panel")
    for s in train_s:
        missing = [g for g in genes if g not in set(map(str, s.adata.var_names))]
        if missing:
            raise FlagInputError(
                f"{s.source or s.sample_id}: lacks {len(missing)} panel gene(s) (e.g. {missing[0]})"
            )
    if encoder is None:
        encoder = make_encoder(cfg.encoder, device, cfg.encoder_kw)
    feats_train = [_features(s, encoder, cfg, progress) for s in train_s]
    feats_val = [_features(s, encoder, cfg, progress) for s in val_s]

    if stats is None:
        from ..data.panel import panel_matrix

        y = np.concatenate([panel_matrix(s.adata, genes, cfg.transform) for s in train_s], axis=0).astype(np.float64)
        mean = y.mean(axis=0)
        std = y.std(axis=0)
    else:
        mean, std = (np.asarray(a, dtype=np.float64) for a in stats)
    std = np.maximum(std, 1e-3)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)

    if progress:
        progress("graphs", 0, len(train_s) + len(val_s))
    train = [_slide(s, f, cfg, genes, cfg.transform, mean32, std32) for s, f in zip(train_s, feats_train)]
    val = [_slide(s, f, cfg, genes, cfg.transform, mean32, std32) for s, f in zip(val_s, feats_val)]
    if progress:
        progress("graphs", len(train_s) + len(val_s), len(train_s) + len(val_s))
    prior, mask = _gene_prior(cfg, genes)
    return PreparedData(
        train=train,
        val=val,
        genes=genes,
        mean=mean32,
        std=std32,
        transform=cfg.transform,
        encoder=encoder_identity(encoder, cfg.encoder_kw),
        feat_dim=int(encoder.dim),
        graph={"k": int(cfg.graph_k), "radius_um": cfg.graph_radius_um},
        gene_prior=prior,
        prior_mask=mask,
    )
