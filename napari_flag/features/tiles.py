"""Decode each stored tile of a slide once while its patches are read.

A tiled TIFF or zarr level decodes every chunk a slice touches, on every
slice.  Neighbouring spots' patches overlap (at the 100 um pitch a 280 um
context window shares ~85% of its pixels with the next one), so reading them
one by one decodes the same JPEG tiles many times.  :class:`TileCachedLevel`
wraps a chunked level and keeps recently decoded chunks in a byte-bounded LRU;
slices are assembled from the cached chunks, so the pixels are exactly those
of the level itself.  Levels without chunks (in-memory arrays) are left as
they are.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np

__all__ = ["TileCachedLevel", "tile_cached", "DEFAULT_CACHE_MB"]

#: bound of the decoded tiles kept per image: a band three 256-px tile rows
#: high of a 150,000 px wide slide (the widest a context window needs)
DEFAULT_CACHE_MB = 384


class TileCachedLevel:
    """A chunked ``(Y, X, C)`` array whose chunks are decoded once and kept (LRU, ``max_bytes``)."""

    def __init__(self, arr, max_bytes: int):
        self._arr = arr
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(c) for c in arr.chunks[:2])
        self.max_bytes = int(max_bytes)
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.decoded = 0  # chunks decoded so far (for benchmarks and tests)

    def __len__(self) -> int:
        return self.shape[0]

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        key = (ty, tx)
        with self._lock:
            hit = self._tiles.get(key)
            if hit is not None:
                self._tiles.move_to_end(key)
                return hit
        th, tw = self.chunks
        tile = np.asarray(self._arr[ty * th : min((ty + 1) * th, self.shape[0]),
                                    tx * tw : min((tx + 1) * tw, self.shape[1])])
        with self._lock:
            self.decoded += 1
            self._tiles[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and len(self._tiles) > 1:
                _, old = self._tiles.popitem(last=False)
                self._bytes -= old.nbytes
        return tile

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)
                and all(k.step in (None, 1) for k in key)):
            return np.asarray(self._arr[key])  # anything but a plain 2-d window: no caching
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key, self.shape[:2]))
        y1, x1 = max(y1, y0), max(x1, x0)
        out = np.empty((y1 - y0, x1 - x0, *self.shape[2:]), dtype=self.dtype)
        th, tw = self.chunks
        for ty in range(y0 // th, -(-y1 // th)):
            for tx in range(x0 // tw, -(-x1 // tw)):
                tile = self._tile(ty, tx)
                ya, yb = max(y0, ty * th), min(y1, (ty + 1) * th)
                xa, xb = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[ya - ty * th : yb - ty * th,
                                                                 xa - tx * tw : xb - tx * tw]
        return out

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self._arr[...])
        return a.astype(dtype) if dtype is not None else a


def _chunked(arr) -> bool:
    chunks = getattr(arr, "chunks", None)
    if not chunks or len(chunks) < 2 or isinstance(arr, np.ndarray):
        return False
    return tuple(int(c) for c in chunks[:2]) != tuple(int(s) for s in arr.shape[:2])


def tile_cached(image, cache_mb: float = DEFAULT_CACHE_MB):
    """A copy of a :class:`~napari_flag.data.sample.SlideImage` whose chunked levels decode each tile once.

    The budget is shared out over the chunked levels (usually only level 0 is
    read for patches).  Unchunked levels, and an image already tile-cached, are
    returned as they are (its decoded tiles are kept across calls).
    """
    levels = list(image.levels)
    if any(isinstance(lv, TileCachedLevel) for lv in levels):
        return image
    chunked = [i for i, lv in enumerate(levels) if _chunked(lv)]
    if not chunked:
        return image
    per = int(cache_mb * 2**20) // len(chunked)
    for i in chunked:
        levels[i] = TileCachedLevel(levels[i], per)
    return replace(image, levels=levels, downsamples=list(image.downsamples))
