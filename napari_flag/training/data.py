"""Training data: the config's slides prepared for the model, with the panel chosen on them.

Slides are prepared by :func:`napari_flag.inference.prepare_slide`, the same
function prediction uses, so a checkpoint applied to a new slide sees its
inputs built exactly as during training.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..data import load_sample
from ..data.lattice import training_geometry
from ..data.panel import GenePanel, select_hmhvg
from ..errors import FlagInputError
from ..features.stain_norm import checkpoint_reference, normalised_encoder
from ..gene_prior import load_gene_prior
from ..inference import SlideData, encoder_identity, make_encoder, prepare_slide

__all__ = ["PreparedData", "prepare_data", "load_samples"]

StageProgress = Callable[[str, int, int], None]


@dataclass
class PreparedData:
    train: list[SlideData]
    val: list[SlideData]
    panel: GenePanel  # genes, transform and standardisation, from the training slides only
    encoder: dict  # identity: name, dim, patch_um, patch_px, weights_id, kw
    feat_dim: int
    graph: dict = field(default_factory=dict)  # k, radius_um
    gene_prior: torch.Tensor | None = None
    prior_mask: torch.Tensor | None = None
    spot_geometry: dict | None = None  # diameter, pitch, lattice of the training slides (virtual spots)
    training_slides: list[str] = field(default_factory=list)
    stain: dict | None = None  # the training slides' stain reference (normalisation at prediction)

    @property
    def genes(self) -> list[str]:
        return list(self.panel.genes)


# ----------------------------------------------------------------------------- helpers
def load_samples(sources, progress: StageProgress | None = None) -> list:
    out = []
    for i, src in enumerate(sources):
        if progress:
            progress("load", i, len(sources))
        out.append(src if hasattr(src, "adata") else load_sample(src))
    if progress:
        progress("load", len(sources), len(sources))
    return out


def _prepare(sample, encoder, cfg, panel: GenePanel | None, progress: StageProgress | None,
             augment: bool = False) -> SlideData:
    def cb(done, total, _sid=sample.sample_id):
        if progress:
            progress(f"features {_sid}", done, total)

    graph = {"k": cfg.graph_k, "radius_um": cfg.graph_radius_um}
    slide = prepare_slide(sample, encoder, graph, panel, feature_cache=cfg.feature_cache,
                          batch_size=cfg.feature_batch, progress=cb)
    if augment and cfg.augment_views > 0:
        slide.views = _stain_views(sample, encoder, cfg, graph, progress)
    return slide


def _stain_views(sample, encoder, cfg, graph: dict, progress: StageProgress | None) -> list:
    """``[(feats, graph)]`` of ``cfg.augment_views`` re-stained copies of a training slide.

    Each copy is one stain and scanner variation of the whole slide (a lab's
    protocol shifts every patch alike); the draws depend on the seed and the
    slide, so the feature cache serves every run with the same settings.
    """
    from ..features import compute_features
    from ..features.stain import draw_jitters
    from ..graph import build_spatial_graph
    from ..inference import spot_coords_um

    seed = int.from_bytes(f"{cfg.seed}:{sample.sample_id}".encode(), "little") % (2**32)
    coords_um = spot_coords_um(sample)
    views = []
    for k, jit in enumerate(draw_jitters(cfg.augment_views, seed, cfg.jitter_ranges())):
        def cb(done, total, _k=k):
            if progress:
                progress(f"re-stained copy {_k + 1} of {sample.sample_id}", done, total)

        f = np.ascontiguousarray(compute_features(sample, encoder, batch_size=cfg.feature_batch,
                                                  cache=cfg.feature_cache, progress=cb, augment=jit),
                                 dtype=np.float32)
        g = build_spatial_graph(coords_um, f, k=int(graph["k"]), radius_um=graph["radius_um"])
        views.append((torch.from_numpy(f), g))
    return views


def _gene_prior(cfg, genes: list[str]):
    """``(table (G, d_e), mask (G,))`` for the alignment loss, or ``(None, None)``.

    Only looked up when the model aligns.  ``gene_prior: null`` means the bundled
    table (a missing bundled table then just turns alignment off, with a warning);
    ``"none"`` turns it off; anything else is a file a user asked for, so
    problems with it are errors.
    """
    flag_cfg = cfg.flag_config() if not cfg.is_baseline else None
    if flag_cfg is None or not flag_cfg.network.align:
        return None, None
    spec = cfg.gene_prior
    if isinstance(spec, str) and spec.strip().lower() in ("none", "off", "false", ""):
        return None, None
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


def _require_genes(samples, genes) -> None:
    for s in samples:
        missing = [g for g in genes if g not in set(map(str, s.adata.var_names))]
        if missing:
            raise FlagInputError(f"{s.source or s.sample_id}: lacks {len(missing)} panel gene(s) (e.g. {missing[0]})")


def prepare_data(
    cfg,
    progress: StageProgress | None = None,
    panel: GenePanel | None = None,
    encoder=None,
    device="cpu",
) -> PreparedData:
    """Load the config's slides and build features, graphs, panel and standardised targets.

    The panel (HMHVG) and the standardisation come from the TRAIN slides only;
    pass ``panel`` to reuse a checkpoint's (resuming).
    """
    if not cfg.train:
        raise FlagInputError("training config: 'train' lists no slides")
    train_s = load_samples(cfg.train, progress)
    val_s = load_samples(cfg.val, progress)
    for s in train_s + val_s:
        if not s.has_counts:
            raise FlagInputError(f"{s.source or s.sample_id}: no expression counts; cannot train or validate on it")
        if s.image is None:
            raise FlagInputError(f"{s.source or s.sample_id}: no H&E image; features need one")
    if panel is None:
        genes = list(cfg.genes) if cfg.genes else list(select_hmhvg([s.adata for s in train_s], n_genes=cfg.n_genes))
        if not genes:
            raise FlagInputError("training slides share no genes for a panel")
        _require_genes(train_s, genes)
        panel = GenePanel.fit([s.adata for s in train_s], genes, cfg.transform)
    else:
        _require_genes(train_s, panel.genes)
    if encoder is None:
        encoder = make_encoder(cfg.encoder, device, cfg.encoder_kw)
    stain = checkpoint_reference(train_s, encoder) if cfg.stain_norm else None
    train = [_prepare(s, encoder, cfg, panel, progress, augment=True) for s in train_s]
    # validation slides are seen as predictions will see them: normalised to the training stains
    val = [_prepare(s, _normalised(encoder, s, stain), cfg, panel, progress) for s in val_s]
    prior, mask = _gene_prior(cfg, list(panel.genes))
    return PreparedData(
        train=train,
        val=val,
        panel=panel,
        encoder=encoder_identity(encoder, cfg.encoder_kw),
        feat_dim=int(encoder.dim),
        graph={"k": int(cfg.graph_k), "radius_um": cfg.graph_radius_um},
        gene_prior=prior,
        prior_mask=mask,
        spot_geometry=(g.to_dict() if (g := training_geometry(train_s)) is not None else None),
        training_slides=[str(s.sample_id) for s in train_s],
        stain=stain,
    )


def _normalised(encoder, sample, stain: dict | None):
    """``encoder`` seeing ``sample`` normalised to the reference ``stain`` (unchanged without one)."""
    return encoder if stain is None else normalised_encoder(encoder, sample, stain)
