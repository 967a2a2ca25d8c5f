"""Features of a slide predicted tile by tile: held only while a coming tile needs them.

Tiles go in raster order, so a spot's features are needed by its own tile and
by the halos of the tiles around it; once the last of those is done they are
dropped.  Memory is then a band of tiles, not the slide.  With the feature
cache on, rows are written to the cache entry as they are made (a temporary
entry renamed into place at the end, so a cancelled run leaves no half
entry), and a slide already in the cache is read row by row from it.
"""
from __future__ import annotations

import os
import shutil
import uuid

import numpy as np

from .features import cache_attrs, cache_entry
from .features.cache import CACHE_VERSION

__all__ = ["TileFeatures"]

_CHUNK_ROWS = 256  # cache-entry rows per chunk: a tile's rows touch few chunks, each a few MB


class TileFeatures:
    """Which spots still need features, and the features of those the coming tiles use."""

    def __init__(self, sample, encoder, cache, tiles) -> None:
        n = sample.n_spots
        self.dim = int(encoder.dim)
        self.last = np.full(n, -1, dtype=np.int64)  # the last tile that uses each spot
        for t, tile in enumerate(tiles):
            self.last[tile.spots] = t
        self.block = np.full(n, -1, dtype=np.int64)  # which block holds a spot, and where in it
        self.row = np.full(n, -1, dtype=np.int64)
        self.blocks: dict[int, np.ndarray] = {}
        self.block_last: dict[int, int] = {}
        self.cached = self.writer = self._tmp = self._final = None
        entry = cache_entry(sample, encoder, cache)
        if entry is not None:
            self._open_cache(*entry, n, sample, encoder)

    # -- the cache entry
    def _open_cache(self, root, key, n: int, sample, encoder) -> None:
        import zarr

        final = root / f"{key}.zarr"
        try:
            arr = zarr.open_group(str(final), mode="r")["features"]
            if tuple(arr.shape) == (n, self.dim):
                self.cached = arr
                return
        except Exception:  # absent or damaged: make it anew
            pass
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._tmp, self._final = root / f".{key}.{uuid.uuid4().hex[:8]}.tmp.zarr", final
            group = zarr.open_group(str(self._tmp), mode="w")
            self.writer = group.create_array("features", shape=(n, self.dim), dtype="float32",
                                             chunks=(min(max(n, 1), _CHUNK_ROWS), self.dim))
            group.attrs.update({"cache_version": CACHE_VERSION, **cache_attrs(sample, encoder)})
        except OSError:  # an unwritable cache: predict without it
            self.abort()

    def finish(self) -> None:
        """Put the finished cache entry in place (another run's finished one wins a race)."""
        if self.writer is None:
            return
        self.writer = None
        if self._final.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        else:
            os.replace(self._tmp, self._final)

    def abort(self) -> None:
        """A cancelled or failed run leaves no half entry."""
        self.writer = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # -- features
    def missing(self, idx: np.ndarray) -> np.ndarray:
        """The spots of ``idx`` whose features are neither held nor cached."""
        if self.cached is not None:
            return idx[:0]
        return idx[self.block[idx] < 0]

    def put(self, idx: np.ndarray, feats: np.ndarray, tile: int) -> None:
        b = len(self.block_last)  # blocks are numbered in order and never renumbered
        self.blocks[b], self.block_last[b] = np.ascontiguousarray(feats, np.float32), int(self.last[idx].max())
        self.block[idx], self.row[idx] = b, np.arange(len(idx))
        if self.writer is not None:
            order = np.argsort(idx)
            self.writer.set_orthogonal_selection((idx[order], slice(None)), self.blocks[b][order])

    def get(self, idx: np.ndarray) -> np.ndarray:
        if self.cached is not None:
            order = np.argsort(idx)
            out = np.empty((len(idx), self.dim), np.float32)
            out[order] = self.cached.get_orthogonal_selection((idx[order], slice(None)))
            return out
        out = np.empty((len(idx), self.dim), np.float32)
        for b in np.unique(self.block[idx]):
            at = self.block[idx] == b
            out[at] = self.blocks[int(b)][self.row[idx[at]]]
        return out

    def release(self, tile: int) -> None:
        """Drop every block no tile after ``tile`` uses."""
        for b in [b for b, last in self.block_last.items() if last <= tile and b in self.blocks]:
            del self.blocks[b]

    @property
    def held_bytes(self) -> int:
        return sum(a.nbytes for a in self.blocks.values())
