"""A whole slide predicted region by region: spatial tiles with a halo of neighbours, results as they are made.

Each tile's spots are predicted with the spots within ``halo`` of it (its
halo): the spatial graph, the graph encoder and joint denoising of a tile's
own spots see the neighbours they see in a whole-slide run, so the tiles
agree with it (``benchmarks/virtual_spots.py --tile-spots`` measures it).  A
spot's features are computed once, when the first tile that needs it comes;
each tile's predictions are handed out as soon as they are made, and memory
for the features (:mod:`napari_flag.tile_features`), the graph and the sampler
is that of a band of tiles, not of the slide.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

__all__ = ["Tile", "TileResult", "plan_tiles", "predict_tiles", "TILE_SPOTS", "FIRST_TILE_SPOTS", "HALO_PITCHES"]

#: spots a tile predicts (about 48 x 48 at the lattice pitch), and those of the first tiles (24 x 24),
#: which are on screen in seconds
TILE_SPOTS = 2304
FIRST_TILE_SPOTS = 576
#: halo width in lattice pitches: the kNN graph's reach (~1.5 pitches) times the hops the model
#: propagates (graph layers, then one per joint-denoising step), with a margin
HALO_PITCHES = 4


@dataclass(frozen=True)
class Tile:
    """``core``: the spots this tile predicts; ``spots``: core and halo (what the model sees), core first."""

    core: np.ndarray
    spots: np.ndarray


@dataclass(frozen=True)
class TileResult:
    """Tile ``index`` of ``count`` is done: target-scale ``mean`` and ``std`` of its ``spots`` (indices),
    with what a viewer needs to draw them before the slide is done."""

    index: int
    count: int
    spots: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    coords: np.ndarray  # (n, 2) full-res x, y of ``spots``
    genes: tuple
    spot_diameter_px: float
    pixel_size_um: float | None


def plan_tiles(coords: np.ndarray, pitch: float, tile_spots: int = TILE_SPOTS,
               halo_pitches: float = HALO_PITCHES, first_spots: int | None = None) -> list[Tile]:
    """Square tiles of about ``tile_spots`` spots over ``coords`` (any unit, ``pitch`` in it), in raster order.

    ``first_spots``: the first tile is split into tiles this small, so a viewer
    has its first results soon while the later, larger tiles spend less of
    the sampler on halos (a halo of 4 pitches around 24 x 24 spots is 78% more
    spots to sample, around 48 x 48 spots 36%).
    """
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return []
    halo = float(halo_pitches) * float(pitch)
    tiles = _grid_tiles(xy, np.arange(len(xy)), _side(tile_spots, pitch), halo)
    if first_spots and first_spots < tile_spots:
        tiles = _grid_tiles(xy, tiles[0].core, _side(first_spots, pitch), halo) + tiles[1:]
    return tiles


def _side(spots: int, pitch: float) -> float:
    return max(float(np.sqrt(spots)) * float(pitch), 1e-9)


def _grid_tiles(xy: np.ndarray, idx: np.ndarray, side: float, halo: float) -> list[Tile]:
    """Tiles of a square grid (cells ``side`` wide, from the corner of ``idx``'s spots) over the
    spots ``idx``, each with the spots of all of ``xy`` within ``halo`` of its cell."""
    sub = xy[idx]
    lo = sub.min(axis=0)
    cell = np.floor((sub - lo) / side).astype(np.int64)
    order = np.lexsort((cell[:, 0], cell[:, 1]))
    _, starts = np.unique(cell[order, 1] * (cell[:, 0].max() + 1) + cell[order, 0], return_index=True)
    tiles = []
    for a, b in zip(starts, list(starts[1:]) + [len(order)]):
        cx, cy = cell[order[a]]
        x0, y0 = lo + np.array([cx, cy]) * side
        core = np.sort(idx[order[a:b]])
        near = np.flatnonzero((xy[:, 0] >= x0 - halo) & (xy[:, 0] < x0 + side + halo)
                              & (xy[:, 1] >= y0 - halo) & (xy[:, 1] < y0 + side + halo))
        tiles.append(Tile(core, np.concatenate([core, np.setdiff1d(near, core, assume_unique=True)])))
    return tiles


def _subset(sample, idx: np.ndarray):
    return replace(sample, adata=sample.adata[idx].copy())


def predict_tiles(model, sample, encoder, panel, tiles: list[Tile], emit: Callable[[Any], None], *,
                  graph: dict | None, run, feature_cache, stats: dict):
    """``(mean, std, samples | None)`` of every spot, tile by tile, as
    :func:`~napari_flag.inference.predict_arrays` gives them for a whole slide.

    ``run``: the sampler settings (``steps``, ``samples``, ``seed``, ``keep_sample``).
    ``emit`` receives ``Progress("predicting", spots done, spots)`` and each
    :class:`TileResult`; raising from it (a cancel) stops at the next batch.
    Runs in one thread from start to end: the encoder's and the sampler's
    buffers stay in that thread's heap instead of being faulted in again by a
    new thread per tile.
    """
    from .features import compute_features
    from .inference import Progress, predict_arrays, prepare_slide
    from .tile_features import TileFeatures

    from .features.tiles import tile_cached

    n, genes = sample.n_spots, len(panel.genes)
    store = TileFeatures(sample, encoder, feature_cache, tiles)
    # one tile cache for the whole run: a stored tile under two tiles of spots is decoded once
    sample = replace(sample, image=tile_cached(sample.image))
    pred, sd = np.empty((n, genes), np.float32), np.empty((n, genes), np.float32)
    smp = np.empty((1, n, genes), np.float32) if run.keep_sample else None
    done = 0
    emit(Progress("predicting", 0, n))
    try:
        for t, tile in enumerate(tiles):
            core_n = len(tile.core)

            def overall(share0: float, share: float, _base=done, _core=core_n) -> Callable[[int, int], None]:
                return lambda d, tot: emit(Progress("predicting",
                                                    _base + int(_core * (share0 + share * d / max(tot, 1))), n))

            need = store.missing(tile.spots)
            if len(need):
                fs: dict = {}
                store.put(need, compute_features(_subset(sample, need), encoder, cache=False,
                                                 progress=overall(0.0, 0.8), stats=fs), t)
                for k in ("read_cpu_s", "encode_wall_s", "tiles_decoded"):
                    stats[k] = stats.get(k, 0) + fs.get(k, 0)
            t0 = time.perf_counter()
            slide = prepare_slide(_subset(sample, tile.spots), encoder, graph, panel, feats=store.get(tile.spots))
            t1 = time.perf_counter()
            p, s, m = predict_arrays(model, slide, panel, steps=run.steps, samples=run.samples, seed=run.seed + t,
                                     progress=overall(0.8, 0.2), return_samples=run.keep_sample, keep_samples=1)
            stats["graph_wall_s"] = stats.get("graph_wall_s", 0.0) + t1 - t0
            stats["sampling_wall_s"] = stats.get("sampling_wall_s", 0.0) + time.perf_counter() - t1
            stats["spots_with_halo"] = stats.get("spots_with_halo", 0) + len(tile.spots)
            stats["features_held_max_mb"] = max(stats.get("features_held_max_mb", 0.0), store.held_bytes / 2**20)
            store.release(t)
            pred[tile.core], sd[tile.core] = p[:core_n], s[:core_n]
            if smp is not None and m is not None:
                smp[:, tile.core] = m[:, :core_n]
            done += core_n
            emit(TileResult(t, len(tiles), tile.core, pred[tile.core], sd[tile.core], sample.coords[tile.core],
                            tuple(panel.genes), float(sample.spot_diameter_px), sample.pixel_size_um))
            emit(Progress("predicting", done, n))
    except BaseException:
        store.abort()
        raise
    store.finish()
    return pred, sd, smp


