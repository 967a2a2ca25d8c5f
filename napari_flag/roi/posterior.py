"""Joint posterior samples of a prediction's spots, drawn again from the model that made it.

A region's average has an uncertainty that per-spot standard deviations
cannot give: neighbouring spots' errors are correlated (the model denoises a
slide jointly, over its spatial graph).  So the region statistics come from
whole joint samples of the spots of the regions and their graph neighbours
(a halo, as a streamed tile has), drawn on demand with the checkpoint and
slide the prediction records.  Nothing extra is stored by ``predict``: a
prediction file stays its size, and the features come from the feature
cache when the prediction's run left them there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import FlagInputError

__all__ = ["DEFAULT_DRAWS", "POSTERIOR_TEMPERATURE", "halo_spots", "posterior_draws"]

#: joint samples per request: region intervals vary by less than 10% between seeds at 64 (median change; 11% at 32)
#: (benchmarks/results/regions.json)
DEFAULT_DRAWS = 64
#: the model's own distribution (the bundled sampler's 0.7 is for single maps)
POSTERIOR_TEMPERATURE = 1.0


def halo_spots(coords: np.ndarray, spots: np.ndarray, reach: float) -> np.ndarray:
    """``spots`` first, then every other spot within ``reach`` (same unit as ``coords``) of one of them."""
    from scipy.spatial import cKDTree

    xy = np.asarray(coords, dtype=np.float64)
    near = cKDTree(xy).query_ball_point(xy[spots], r=float(reach))
    extra = np.setdiff1d(np.unique(np.concatenate([np.asarray(n, dtype=np.int64) for n in near] or [[]])),
                         spots)
    return np.concatenate([np.asarray(spots, dtype=np.int64), extra.astype(np.int64)])


def _slide_sample(adata, rec, sample=None):
    """A :class:`~napari_flag.data.Sample` with the prediction's spots on the recorded slide's image."""
    import anndata as ad
    import pandas as pd

    from ..data import Sample, load_sample

    if sample is None or sample.image is None:
        if not rec.source:
            raise FlagInputError("prediction records no slide to draw samples from; pass the slide")
        sample = load_sample(rec.source)
    if sample.image is None:
        raise FlagInputError(f"{rec.source}: the prediction's slide has no image to draw samples from")
    obs = pd.DataFrame(index=pd.Index([str(s) for s in adata.obs_names]))
    spots = ad.AnnData(obs=obs)
    spots.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    px = rec.pixel_size_um or sample.pixel_size_um
    return Sample(str(rec.sample_id or sample.sample_id), spots, float(rec.spot_diameter_px or sample.spot_diameter_px),
                  px, sample.image, rec.grid or sample.grid, str(rec.source or sample.source or ""),
                  {"technology": "virtual" if rec.virtual_spots else "measured"})


def _features(full, need: np.ndarray, encoder, cache):
    """Features of the spots ``need``: rows of the whole slide's cached features when the prediction's
    run left them, else computed for those spots alone (and cached under them)."""
    from ..features import compute_features, load_cached_features

    hit = load_cached_features(full, encoder, cache)
    if hit is not None:
        return hit[need]
    sub = replace(full, adata=full.adata[need].copy())
    return compute_features(sub, encoder, cache=cache)


def posterior_draws(adata, spots: np.ndarray, n_draws: int = DEFAULT_DRAWS, seed: int = 0, *,
                    sample=None, checkpoint: str | Path | None = None, temperature: float = POSTERIOR_TEMPERATURE,
                    device="cpu", feature_cache=True, progress: Callable[[int, int], None] | None = None,
                    stats: dict | None = None) -> np.ndarray:
    """``float32 (n_draws, len(spots), genes)`` joint samples of the spots ``spots`` (indices into
    ``adata``), on the prediction's target scale.

    The spots are sampled with their neighbours within 4 lattice pitches (the
    reach of the graph and of joint denoising, as in tiled prediction), each
    sample an independent draw of the model (no blend, no shared first call)
    at ``temperature``.  ``checkpoint``/``sample`` override what the
    prediction records (the model file; the slide, e.g. one already open).
    ``stats`` (a dict) receives ``sampled_spots``: the spots and their halo.
    """
    from ..checkpoint import load_model
    from ..data._util import nn_distance_px
    from ..data.panel import GenePanel
    from ..inference import (
        _resolve_checkpoint,
        predict_arrays,
        prepare_slide,
        slide_encoder,
    )
    from ..record import PredictionRecord
    from ..streaming import HALO_PITCHES

    rec = PredictionRecord.from_uns(adata.uns.get("flag"))
    path = _resolve_checkpoint(checkpoint or rec.checkpoint or None)
    model, meta = load_model(path, device)
    if not hasattr(model, "cfg") or model.cfg.network.mode != "diffusion":
        raise FlagInputError(f"{path}: a {rec.method or 'non-generative'} model draws no posterior samples")
    if list(meta.genes) != [str(g) for g in adata.var_names]:
        raise FlagInputError(f"{path}: its genes are not the prediction's; pass the checkpoint that made it")
    panel = GenePanel.from_checkpoint(meta)
    full = _slide_sample(adata, rec, sample)
    spots = np.asarray(spots, dtype=np.int64)
    need = halo_spots(full.coords, spots, HALO_PITCHES * (nn_distance_px(full.coords) or 1.0))
    if stats is not None:
        stats["sampled_spots"] = len(need)
    norm = rec.stain_norm or {}  # the prediction's own patches: normalised as they were, or not
    encoder = slide_encoder(meta, full, device, stain_norm=bool(norm), slide_stains=norm.get("slide"))
    feats = _features(full, need, encoder, feature_cache)
    slide = prepare_slide(replace(full, adata=full.adata[need].copy()), encoder, meta.get("graph"), panel, feats=feats)
    _, _, draws = predict_arrays(model, slide, panel, samples=int(n_draws), seed=seed, return_samples=True,
                                 keep_samples=int(n_draws), mean="samples", share_first=False,
                                 temperature=float(temperature), progress=progress)
    return np.ascontiguousarray(draws[:, : len(spots)], dtype=np.float32)
