"""Tiles of a whole slide: every spot predicted by exactly one tile, its halo around it; tiled = whole-slide."""
from __future__ import annotations

import numpy as np

from napari_flag import inference
from napari_flag.inference import Progress, Result, TileResult, iter_predict
from napari_flag.streaming import plan_tiles


def test_tiles_partition_the_spots_with_a_halo():
    rng = np.random.default_rng(0)
    xy = np.c_[np.repeat(np.arange(60), 50), np.tile(np.arange(50), 60)] * 10.0 + rng.normal(0, 0.5, (3000, 2))
    tiles = plan_tiles(xy, pitch=10.0, tile_spots=100, halo_pitches=2)
    core = np.concatenate([t.core for t in tiles])
    assert np.array_equal(np.sort(core), np.arange(len(xy)))  # each spot in one tile's core
    for t in tiles:
        assert np.array_equal(t.spots[: len(t.core)], t.core)
        halo = t.spots[len(t.core):]
        lo, hi = xy[t.core].min(0), xy[t.core].max(0)
        # the halo is everything within two pitches of the tile, and nothing farther
        d = np.maximum(np.maximum(lo - xy, xy - hi), 0).max(axis=1)
        want = np.setdiff1d(np.flatnonzero(d <= 19.0), t.core)
        assert set(want) <= set(halo) and (d[halo] <= 2 * 10 + 10 + 2).all()  # cell edge: a pitch past the spots
    centres = [xy[t.core].mean(0) for t in tiles]
    assert centres[0][1] < centres[-1][1]  # raster order: top rows first


def test_tiled_prediction_streams_tiles_and_matches_the_whole_slide(her2st_slide, tmp_path, monkeypatch):
    path, _ = her2st_slide("C3", 4)
    monkeypatch.setattr(inference, "TILE_SPOTS", 64)
    monkeypatch.setattr(inference, "FIRST_TILE_SPOTS", 32)
    events = list(iter_predict(str(path), steps=2, samples=2, device="cpu", feature_cache=tmp_path))
    tiles = [e for e in events if isinstance(e, TileResult)]
    out = events[-1].adata
    assert isinstance(events[-1], Result) and len(tiles) >= 3
    assert sorted(np.concatenate([t.spots for t in tiles]).tolist()) == list(range(out.n_obs))
    for t in tiles:  # what was streamed is what was written
        np.testing.assert_array_equal(out.X[t.spots], t.mean)
        np.testing.assert_array_equal(out.layers["std"][t.spots], t.std)
    prog = [e for e in events if isinstance(e, Progress) and e.stage == "predicting"]
    assert prog[-1].done == prog[-1].total == out.n_obs and [p.done for p in prog] == sorted(p.done for p in prog)
    at_once = list(iter_predict(str(path), steps=2, samples=2, device="cpu", feature_cache=tmp_path, tiles=False))
    assert not any(isinstance(e, TileResult) for e in at_once)
    whole = at_once[-1].adata
    np.testing.assert_array_equal(whole.obsm["spatial"], out.obsm["spatial"])
    # same spots, same features (from the cache the tiled run wrote); the samplers' noise differs per tile,
    # so the maps agree as two seeds of the whole slide do
    r = [np.corrcoef(out.X[:, j], whole.X[:, j])[0, 1] for j in range(out.n_vars)
         if out.X[:, j].std() > 0 and whole.X[:, j].std() > 0]
    again = list(iter_predict(str(path), steps=2, samples=2, device="cpu", feature_cache=tmp_path,
                              tiles=False, seed=1))[-1].adata
    r_seed = [np.corrcoef(again.X[:, j], whole.X[:, j])[0, 1] for j in range(out.n_vars)
              if again.X[:, j].std() > 0 and whole.X[:, j].std() > 0]
    assert np.mean(r) > np.mean(r_seed) - 0.02


def test_tile_features_hold_a_band_not_the_slide():
    from types import SimpleNamespace

    from napari_flag.tile_features import TileFeatures

    xy = np.c_[np.tile(np.arange(60), 60), np.repeat(np.arange(60), 60)] * 10.0  # 3,600 spots, raster order
    tiles = plan_tiles(xy, pitch=10.0, tile_spots=100, halo_pitches=2)
    sample = SimpleNamespace(n_spots=len(xy))
    store = TileFeatures(sample, SimpleNamespace(dim=8), False, tiles)
    feats = np.random.default_rng(0).random((len(xy), 8)).astype(np.float32)
    held = []
    for t, tile in enumerate(tiles):
        need = store.missing(tile.spots)
        store.put(need, feats[need], t)
        np.testing.assert_array_equal(store.get(tile.spots), feats[tile.spots])
        store.release(t)
        held.append(store.held_bytes)
    assert max(held) < 0.3 * feats.nbytes and held[-1] == 0  # a band of tiles at most, nothing at the end


def test_cancelled_tiled_run_leaves_no_half_cache_entry(her2st_slide, tmp_path, monkeypatch):
    path, _ = her2st_slide("C3", 4)
    monkeypatch.setattr(inference, "TILE_SPOTS", 64)
    monkeypatch.setattr(inference, "FIRST_TILE_SPOTS", 32)
    run = iter_predict(str(path), steps=1, samples=1, device="cpu", feature_cache=tmp_path)
    for ev in run:
        if isinstance(ev, TileResult):
            break
    run.close()  # the user cancels after the first tile
    assert not list(tmp_path.iterdir())  # neither an entry nor a temporary one
