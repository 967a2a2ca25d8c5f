"""Square image patches centred on spots, at a fixed physical size."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ..errors import FlagInputError

__all__ = ["patch_side_px", "extract_patches", "reading_order", "read_views"]


def patch_side_px(sample, patch_um: float = 112.0) -> float:
    """Patch side in full-resolution pixels.

    ``patch_um`` converted with the sample's pixel size; when the pixel size is
    unknown the spot diameter stands in, so the patch still covers the spot.
    """
    if sample.pixel_size_um:
        return float(patch_um) / float(sample.pixel_size_um)
    side = float(sample.spot_diameter_px or 0.0)
    if not side > 0:
        raise FlagInputError(
            f"{sample.source or sample.sample_id}: neither pixel size nor spot diameter known; "
            "cannot size the patches"
        )
    return side


def extract_patches(sample, centres_idx: Sequence[int] | np.ndarray | None = None,
                    patch_um: float = 112.0, patch_px: int = 224,
                    batch_size: int = 32) -> Iterator[np.ndarray]:
    """Yield ``uint8 (B, patch_px, patch_px, 3)`` batches of patches around the spots.

    ``centres_idx`` selects spots (default: all, in order).  Regions reaching past
    the image edge are padded white, like slide background.
    """
    if sample.image is None:
        raise FlagInputError(f"{sample.source or sample.sample_id}: no H&E image; patches need one")
    coords = sample.coords
    idx = np.arange(len(coords)) if centres_idx is None else np.asarray(centres_idx, dtype=np.int64)
    side = patch_side_px(sample, patch_um)
    half = side / 2.0
    batch_size = max(int(batch_size), 1)
    for s in range(0, len(idx), batch_size):
        sel = idx[s : s + batch_size]
        out = np.empty((len(sel), patch_px, patch_px, 3), dtype=np.uint8)
        for j, i in enumerate(sel):
            x, y = coords[i]
            out[j] = sample.image.read_region(x - half, y - half, side, patch_px)
        yield out


def reading_order(sample, band_px: float) -> np.ndarray:
    """Spot indices in bands ``band_px`` high, left to right within a band.

    Read in this order, consecutive patches share image tiles, so a tile
    cache of a few bands holds every tile a patch needs (measured spots come
    in any order; virtual ones already are in raster order).
    """
    xy = sample.coords
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    band = np.floor(xy[:, 1] / max(float(band_px), 1.0))
    return np.lexsort((xy[:, 0], band)).astype(np.int64)


def read_views(sample, idx: np.ndarray, views_um: Sequence[float], patch_px: int | Sequence[int] = 224,
               batch_size: int = 32) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield ``(spot indices, [uint8 (B, px, px, 3) per view])`` for batches of ``idx``.

    ``patch_px``: one input side for every view, or one per view.  Every view
    of a batch of spots is read together, so the tiles they share are decoded
    once when the image is :func:`~napari_flag.features.tiles.tile_cached`; a
    view with fewer pixels than the image has is read from the coarsest
    pyramid level that still covers it (:meth:`SlideImage.read_region`).
    """
    idx = np.asarray(idx, dtype=np.int64)
    pxs = [int(patch_px)] * len(views_um) if np.isscalar(patch_px) else [int(p) for p in patch_px]
    batch_size = max(int(batch_size), 1)
    for s in range(0, len(idx), batch_size):
        sel = idx[s : s + batch_size]
        yield sel, [next(extract_patches(sample, sel, side_um, px, len(sel)))
                    for side_um, px in zip(views_um, pxs)]
