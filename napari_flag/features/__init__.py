"""Visual features of spots: patch extraction, encoders and an on-disk cache.

Headless (no Qt/napari).  ``compute_features(sample)`` is the one call most code
needs; it reads the cache when the same sample, encoder and patch geometry were
encoded before.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import replace
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
from .patches import extract_patches, patch_side_px, read_views, reading_order
from .tiles import tile_cached

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
    "load_cached_features",
    "save_features",
    "cache_entry",
    "cache_attrs",
    "feature_cache_dir",
    "feature_cache_key",
]


def compute_features(sample, encoder: Encoder | str | None = None, batch_size: int = 16,
                     cache: bool | str | Path = True,
                     progress: Callable[[int, int], None] | None = None,
                     stats: dict | None = None, augment=None) -> np.ndarray:
    """``float32 (n_spots, encoder.dim)`` features of the patches around every spot.

    ``encoder``: an :class:`Encoder`, a name for :func:`get_encoder`, or ``None``
    for the built-in one.  ``cache``: ``True`` for the default folder
    (:func:`feature_cache_dir`), a folder path, or ``False`` to neither read nor
    write.  ``batch_size`` spots are read at a time (every view of them), ahead of
    the encoder in a helper thread.  ``progress(done, total)`` counts spots and is
    called after every batch; raising from it (e.g.
    :class:`~napari_flag.errors.FlagCancelled`) aborts without writing.  ``stats``
    (a dict) receives where the time went: ``read_cpu_s`` (the reader thread's
    CPU seconds: tile decoding and resampling), ``encode_wall_s`` and
    ``tiles_decoded``.  ``augment``: a :class:`~napari_flag.features.stain.StainJitter`
    (or any callable on ``uint8 (N, H, W, 3)`` batches with a ``key``) applied
    to every patch before encoding; its key is part of the cache entry's name.
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
    if augment is not None:
        encoder = _Augmented(encoder, augment)
    hit = load_cached_features(sample, encoder, cache)
    if hit is not None:
        if progress is not None:
            progress(n, n)
        return hit
    feats = _encode_spots(sample, encoder, side, batch_size, progress, stats if stats is not None else {})
    save_features(sample, encoder, cache, feats)
    return feats


class _Augmented:
    """An encoder seen through an augmentation: the same encoder, another cache name."""

    def __init__(self, encoder: Encoder, augment):
        self._encoder, self.augment = encoder, augment
        self.name = f"{encoder.name}+{augment.key}"

    def __getattr__(self, attr):
        return getattr(self._encoder, attr)


def cache_entry(sample, encoder: Encoder, cache: bool | str | Path = True) -> tuple[Path, str] | None:
    """``(folder, entry name)`` of ``sample``'s features in the cache, ``None`` when caching is off."""
    if cache is False or cache is None:
        return None
    root = feature_cache_dir() if cache is True else Path(cache).expanduser()
    return root, feature_cache_key(sample, encoder, patch_side_px(sample, encoder.patch_um))


def load_cached_features(sample, encoder: Encoder, cache: bool | str | Path = True) -> np.ndarray | None:
    """The features of every spot of ``sample`` from the cache (``cache`` as in :func:`compute_features`), or ``None``."""
    entry = cache_entry(sample, encoder, cache)
    return None if entry is None else read_cached(*entry, (sample.n_spots, int(encoder.dim)))


def save_features(sample, encoder: Encoder, cache: bool | str | Path, feats: np.ndarray) -> None:
    """Store the features of every spot of ``sample`` (an unwritable cache only warns)."""
    entry = cache_entry(sample, encoder, cache)
    if entry is None:
        return
    root, key = entry
    try:
        write_cached(root, key, feats, cache_attrs(sample, encoder))
    except OSError as exc:  # an unwritable cache must not lose a finished computation
        warnings.warn(f"feature cache not written to {root}: {exc}", RuntimeWarning, stacklevel=3)


def cache_attrs(sample, encoder: Encoder) -> dict:
    """What a cache entry records about where its features came from."""
    return {
        "sample_id": str(sample.sample_id),
        "source": str(sample.source or ""),
        "encoder": encoder.name,
        "weights": getattr(encoder, "weights_id", ""),
        "patch_um": float(encoder.patch_um),
        "patch_px": int(encoder.patch_px),
        "side_px": float(patch_side_px(sample, encoder.patch_um)),
        "pixel_size_um": sample.pixel_size_um,
        "n_spots": int(sample.n_spots),
    }


def _encode_spots(sample, encoder: Encoder, side_px: float, batch_size: int,
                  progress: Callable[[int, int], None] | None, stats: dict) -> np.ndarray:
    """Every view of every spot through the encoder; patches are read ahead in a helper thread.

    Spots are read in bands (:func:`reading_order`) from a tile-cached copy of
    the image, so each stored tile is decoded once; the features land in the
    spots' own rows.
    """
    from .._prefetch import prefetch

    n = sample.n_spots  # glibc's buffers for the encoder: napari_flag._alloc, set at import
    views = getattr(encoder, "views_um", [encoder.patch_um])
    pxs = getattr(encoder, "views_px", [encoder.patch_px] * len(views))
    width = int(encoder.dim) // len(views)
    feats = np.empty((n, width * len(views)), dtype=np.float32)
    # a band is as high as the widest view: consecutive bands share its tiles
    order = reading_order(sample, side_px * max(views) / float(encoder.patch_um))
    cached = replace(sample, image=tile_cached(sample.image))
    decoded_before = _decoded(cached.image)
    done = 0
    if progress is not None:
        progress(0, n)
    stats.update(read_cpu_s=0.0, encode_wall_s=0.0, tiles_decoded=0)
    reads = read_views(cached, order, views, pxs, batch_size)
    augment = getattr(encoder, "augment", None)
    if augment is not None:  # in the reader thread, like the reading
        reads = ((i, [augment(b) for b in batch]) for i, batch in reads)
    batches = prefetch(_thread_timed(reads, stats), depth=3)
    try:
        for idx, patches in batches:
            t0 = time.perf_counter()
            for v, batch in enumerate(patches):
                feats[idx, v * width : (v + 1) * width] = encoder.encode(batch, pxs[v])
            stats["encode_wall_s"] += time.perf_counter() - t0
            done += len(idx)
            if progress is not None:
                progress(done, n)
    finally:
        batches.close()  # a cancel stops and joins the reader
        stats["tiles_decoded"] = _decoded(cached.image) - decoded_before
    return feats


def _decoded(image) -> int:
    """Stored tiles the image's tile caches have decoded so far."""
    return sum(getattr(lv, "decoded", 0) for lv in image.levels)


def _thread_timed(items, stats: dict):
    """``items``, adding the CPU seconds of the thread that draws them to ``stats["read_cpu_s"]``."""
    it = iter(items)
    while True:
        t0 = time.thread_time()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            stats["read_cpu_s"] += time.thread_time() - t0
        yield item
