"""Visual features of spots: patch extraction, encoders and an on-disk cache.

Headless (no Qt/napari).  ``compute_features(sample)`` is the one call most code
needs; it reads the cache when the same sample, encoder and patch geometry were
encoded before.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import FlagInputError
from .cache import feature_cache_dir, feature_cache_key, read_cached, write_cached
from .encoders import (
    DEFAULT_ENCODER,
    EfficientNetLite0Encoder,
    Encoder,
    TimmEncoder,
    get_encoder,
    resolve_device,
)
from .patches import extract_patches, patch_side_px

__all__ = [
    "Encoder",
    "EfficientNetLite0Encoder",
    "TimmEncoder",
    "DEFAULT_ENCODER",
    "get_encoder",
    "resolve_device",
    "extract_patches",
    "patch_side_px",
    "compute_features",
    "feature_cache_dir",
    "feature_cache_key",
]


def compute_features(sample, encoder: Encoder | str | None = None, batch_size: int = 32,
                     cache: bool | str | Path = True,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``float32 (n_spots, encoder.dim)`` features of the patches around every spot.

    ``encoder``: an :class:`Encoder`, a name for :func:`get_encoder`, or ``None``
    for the built-in one.  ``cache``: ``True`` for the default folder
    (:func:`feature_cache_dir`), a folder path, or ``False`` to neither read nor
    write.  ``progress(done, total)`` is called after every batch; raising from it
    (e.g. :class:`~napari_flag.errors.FlagCancelled`) aborts without writing.
    """
    if encoder is None or isinstance(encoder, str):
        encoder = get_encoder(encoder or DEFAULT_ENCODER)
    if sample.image is None:
        raise FlagInputError(f"{sample.source or sample.sample_id}: no H&E image; features need one")
    n = sample.n_spots
    shape = (n, int(encoder.dim))
    if n == 0:
        return np.zeros(shape, dtype=np.float32)
    side = patch_side_px(sample, encoder.patch_um)
    root = key = None
    if cache is not False and cache is not None:
        root = feature_cache_dir() if cache is True else Path(cache).expanduser()
        key = feature_cache_key(sample, encoder, side)
        hit = read_cached(root, key, shape)
        if hit is not None:
            if progress is not None:
                progress(n, n)
            return hit
    feats = np.empty(shape, dtype=np.float32)
    views = getattr(encoder, "views_um", [encoder.patch_um])
    width, total, done = shape[1] // len(views), n * len(views), 0
    if progress is not None:
        progress(0, total)
    for v, side_um in enumerate(views):  # the spot's patch, then (with context) a wider one
        row = 0
        for batch in extract_patches(sample, None, side_um, encoder.patch_px, batch_size):
            feats[row : row + len(batch), v * width : (v + 1) * width] = encoder.encode(batch)
            row += len(batch)
            done += len(batch)
            if progress is not None:
                progress(done, total)
    if root is not None:
        attrs = {
            "sample_id": str(sample.sample_id),
            "source": str(sample.source or ""),
            "encoder": encoder.name,
            "weights": getattr(encoder, "weights_id", ""),
            "patch_um": float(encoder.patch_um),
            "patch_px": int(encoder.patch_px),
            "side_px": float(side),
            "pixel_size_um": sample.pixel_size_um,
            "n_spots": n,
        }
        try:
            write_cached(root, key, feats, attrs)
        except OSError as exc:  # an unwritable cache must not lose a finished computation
            warnings.warn(f"feature cache not written to {root}: {exc}", RuntimeWarning, stacklevel=2)
    return feats
