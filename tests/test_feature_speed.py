"""The fast feature path gives the features of the plain one: tile cache, reading order, prefetching, fused convs."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_flag._prefetch import prefetch
from napari_flag.data.sample import SlideImage
from napari_flag.features import compute_features, extract_patches, get_encoder
from napari_flag.features.efficientnet_lite import load_lite0
from napari_flag.features.patches import reading_order
from napari_flag.features.tiles import TileCachedLevel, tile_cached


def test_tile_cache_gives_the_levels_pixels_and_decodes_each_tile_once(c2_slide):
    _, m = c2_slide
    level = m.image.levels[0]
    cached = TileCachedLevel(level, 64 * 2**20)
    rng = np.random.default_rng(0)
    h, w = level.shape[:2]
    for _ in range(40):  # windows of every size, some past the tile grid's last (partial) tiles
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = min(h, y0 + int(rng.integers(1, 700))), min(w, x0 + int(rng.integers(1, 700)))
        np.testing.assert_array_equal(cached[y0:y1, x0:x1], np.asarray(level[y0:y1, x0:x1]))
    fresh = TileCachedLevel(level, 64 * 2**20)
    th, tw = fresh.chunks
    fresh[0 : th + 10, 0 : tw + 10]
    assert fresh.decoded == 4
    fresh[5 : th + 5, 3:tw]  # inside tiles already decoded
    assert fresh.decoded == 4


def test_tile_cache_is_bounded_and_leaves_in_memory_images_alone(c2_slide):
    _, m = c2_slide
    level = m.image.levels[0]
    th, tw = (int(c) for c in level.chunks[:2])
    small = TileCachedLevel(level, 3 * th * tw * 3)  # room for three tiles
    small[0 : 2 * th, 0 : 2 * tw]
    assert len(small._tiles) <= 3 and small._bytes <= small.max_bytes
    img = SlideImage([np.zeros((50, 60, 3), np.uint8)])
    assert tile_cached(img) is img


def test_reading_order_is_banded_raster():
    xy = np.array([[50.0, 500.0], [10.0, 20.0], [90.0, 30.0], [5.0, 510.0], [70.0, 90.0]])

    class S:
        coords = xy

    order = reading_order(S(), band_px=100)
    assert order.tolist() == [1, 4, 2, 3, 0]  # band 0 left to right (y < 100), then band 5


def test_prefetch_yields_in_order_reraises_and_leaves_no_thread():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("unreadable tile")

    with pytest.raises(ValueError, match="unreadable tile"):
        list(prefetch(broken()))
    before = threading.active_count()
    gen = prefetch(iter(range(10**6)), depth=2)
    assert next(gen) == 0
    gen.close()  # a cancel: the producer stops and is joined
    assert threading.active_count() == before


def test_fused_lite0_gives_the_same_features():
    plain = load_lite0().fuse_bn().to(memory_format=torch.channels_last)
    fused = load_lite0().fuse_bn().to(memory_format=torch.channels_last)
    if not fused.fuse_activations():
        pytest.skip("oneDNN's fused convolution is not available in this torch build")
    x = torch.rand(3, 3, 224, 224).mul(255).sub(127).div(128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(plain.features(x), fused.features(x))


def test_fast_path_equals_a_direct_encode_of_each_view(c2_slide):
    """Spots out of raster order, context view, tile cache and prefetching: each row is its own spot's."""
    _, m = c2_slide
    rng = np.random.default_rng(1)
    pick = rng.permutation(m.n_spots)[:24]
    sample = type(m)(m.sample_id, m.adata[pick].copy(), m.spot_diameter_px, m.pixel_size_um, m.image,
                     m.grid, m.source, dict(m.metadata))
    enc = get_encoder("efficientnet_lite0", device="cpu", context=2.5)
    stats: dict = {}
    feats = compute_features(sample, enc, batch_size=5, cache=False, stats=stats)
    width = enc.dim // 2
    for v, side_um in enumerate(enc.views_um):
        direct = enc.encode(next(extract_patches(sample, None, side_um, enc.patch_px, sample.n_spots)))
        np.testing.assert_allclose(feats[:, v * width : (v + 1) * width], direct, rtol=1e-5, atol=1e-5)
    assert stats["tiles_decoded"] > 0 and stats["read_cpu_s"] >= 0 and stats["encode_wall_s"] > 0


def test_cpu_batch_keeps_activations_below_the_mmap_threshold():
    from napari_flag._alloc import MMAP_THRESHOLD, keep_buffers_mapped

    enc = get_encoder("efficientnet_lite0", device="cpu")
    assert 96 * 112 * 112 * 4 * enc.batch_size < MMAP_THRESHOLD
    assert keep_buffers_mapped() is keep_buffers_mapped()  # applied once; the answer does not change
