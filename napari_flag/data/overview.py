"""Low-resolution views of a slide, read from the coarsest pyramid level that will do.

Tissue detection and thumbnails need the whole slide at a few microns per
pixel, never its full resolution: level 0 of a whole-slide image is gigabytes.
:func:`read_overview` picks the pyramid level nearest the wanted resolution and,
when even that level is too large (an image without a pyramid), averages it
down in horizontal stripes so that only one stripe is in memory at a time.
"""
from __future__ import annotations

import math

import numpy as np

from .sample import SlideImage, _to_uint8

__all__ = ["read_overview", "overview_level"]

#: rows of level pixels averaged at a time when a level has to be reduced
_STRIPE_BYTES = 64 * 2**20


def _level_fullres_per_px(image: SlideImage, i: int) -> float:
    """Full-resolution pixels per pixel of level ``i``."""
    return float(image.downsamples[i]) / float(image.scale)


def overview_level(image: SlideImage, fullres_per_px: float | None, max_px: int) -> tuple[int, int]:
    """``(level, k)``: read ``level`` and average ``k x k`` blocks of it.

    With a target resolution (``fullres_per_px``), the coarsest level that is
    not coarser than the target is read and reduced by the integer factor
    that comes closest to it; without one, the coarsest level that still has
    ``max_px / 4`` pixels.  Either way ``k`` grows until the result holds at
    most ``max_px`` pixels.
    """
    n = len(image.levels)
    sizes = [int(image.levels[i].shape[0]) * int(image.levels[i].shape[1]) for i in range(n)]
    if fullres_per_px is not None and fullres_per_px > 0:
        ok = [i for i in range(n) if _level_fullres_per_px(image, i) <= fullres_per_px * 1.0001]
        level = max(ok, key=lambda i: _level_fullres_per_px(image, i)) if ok else 0
        k = max(1, int(round(fullres_per_px / _level_fullres_per_px(image, level))))
    else:
        ok = [i for i in range(n) if sizes[i] >= max_px / 4]
        level = max(ok, key=lambda i: image.downsamples[i]) if ok else 0
        k = 1
    while sizes[level] / (k * k) > max_px:
        k += 1
    return level, k


def _as_rgb8(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block)
    if block.ndim == 2:
        block = np.repeat(block[..., None], 3, axis=2)
    block = block[..., :3]
    if block.shape[2] == 1:
        block = np.repeat(block, 3, axis=2)
    if block.dtype != np.uint8:
        block = _to_uint8(block)
    return block


def read_overview(
    image: SlideImage,
    fullres_per_px: float | None = None,
    max_px: int = 4_000_000,
) -> tuple[np.ndarray, float]:
    """The whole image as ``uint8 (h, w, 3)`` and its full-res pixels per pixel.

    ``fullres_per_px`` is the wanted resolution (e.g. ``8 / pixel_size_um``
    for 8 um per pixel); the answer may be finer, by less than a factor of
    two, and is never above ``max_px`` pixels.  Pixel ``(i, j)`` of the
    result covers full-resolution ``x`` in ``[j f, (j + 1) f)`` and ``y`` in
    ``[i f, (i + 1) f)``, with ``f`` the returned factor.  Partial blocks at
    the right and bottom edges are padded white, as slide background is.
    """
    level, k = overview_level(image, fullres_per_px, max_px)
    arr = image.levels[level]
    h, w = int(arr.shape[0]), int(arr.shape[1])
    f = _level_fullres_per_px(image, level) * k
    if k == 1:
        return np.ascontiguousarray(_as_rgb8(arr[...])), f
    oh, ow = math.ceil(h / k), math.ceil(w / k)
    out = np.empty((oh, ow, 3), dtype=np.uint8)
    rows_per = max(1, _STRIPE_BYTES // max(1, w * 3 * k)) * k
    for y0 in range(0, h, rows_per):
        y1 = min(h, y0 + rows_per)
        block = _as_rgb8(arr[y0:y1, :])
        bh = math.ceil((y1 - y0) / k) * k
        pad = ((0, bh - (y1 - y0)), (0, ow * k - w), (0, 0))
        if any(p[1] for p in pad):
            block = np.pad(block, pad, constant_values=255)
        # summed as float32 inside the reduction: a float copy of the stripe would be 4x its bytes
        red = block.reshape(bh // k, k, ow, k, 3).mean(axis=(1, 3), dtype=np.float32)
        out[y0 // k : y0 // k + red.shape[0]] = np.clip(np.rint(red), 0, 255).astype(np.uint8)
    return out, f
