"""Whole-slide streaming: a routine H&E prediction reads level 0 only one stored tile at a time.

Level 0 of a whole-slide image is gigabytes, so the only reads it may see are
the tiles under the spots' patches (each decoded once, in batches); tissue detection and
the scanpy image read coarse levels; a second run with the feature cache does
not touch level 0 at all.  Levels are wrapped in read recorders, so a change
that reads a whole level (or a stripe of it) fails here before it fails on a
real slide by running out of memory.  The encoder is a stand-in (colour means)
with the bundled model's patch geometry, so the test costs reading, not a CNN.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_flag import inference
from napari_flag.checkpoint import load_model
from napari_flag.data import load_sample
from napari_flag.data.sample import SlideImage
from napari_flag.features.encoders import Encoder
from napari_flag.inference import Progress, Result, iter_predict


class _ColourMeans(Encoder):
    """Patch colour means repeated to the model's feature width: cheap, and still image-driven.

    It reads the same views as the model's encoder (the spot patch and, when the model has
    one, the wider context patch)."""

    name, weights_id = "colour-means", ""

    def __init__(self, meta: dict):
        enc = meta["encoder"]
        self.patch_um, self.patch_px = float(enc["patch_um"]), int(enc["patch_px"])
        self.context = (enc.get("kw") or {}).get("context")
        self.dim = int(meta["feat_dim"])

    def _forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, self.view_dim)[:, : self.view_dim]


@pytest.fixture
def cheap_encoder(monkeypatch):
    monkeypatch.setattr(inference, "encoder_for_checkpoint", lambda meta, device="cpu": _ColourMeans(meta))


class _Recorded:
    """A pyramid level that records the shape of every window read from it."""

    def __init__(self, arr):
        self._arr = arr
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.chunks = arr.chunks  # the stored tiles: patch reading decodes each once
        self.windows: list[tuple[int, int]] = []
        self.origins: list[tuple[int, int]] = []

    def __getitem__(self, key):
        out = np.asarray(self._arr[key])
        self.windows.append(tuple(out.shape[:2]))
        if isinstance(key, tuple) and all(isinstance(k, slice) for k in key[:2]):
            self.origins.append((key[0].start or 0, key[1].start or 0))
        return out


def _recorded(sample):
    img = sample.image
    levels = [_Recorded(lv) for lv in img.levels]
    return dataclasses.replace(sample, image=SlideImage(levels, scale=img.scale, path=img.path,
                                                        downsamples=list(img.downsamples))), levels


def test_routine_prediction_reads_level0_patch_by_patch(her2st_slide, tmp_path, cheap_encoder, one_torch_thread):
    # half size: 1.4 um/px, so a 112 um patch (81 px) comes from level 0, and level 0 (23 Mpx) is larger
    # than anything an overview may read at once (the scanpy image's budget is 16 Mpx)
    path, _ = her2st_slide("C2", 2)
    sample, levels = _recorded(load_sample(path))
    events = list(iter_predict(sample, samples=1, steps=2, device="cpu", feature_cache=tmp_path))
    out = events[-1].adata
    assert isinstance(events[-1], Result) and out.uns["flag"]["virtual_spots"]
    n = out.n_obs
    views = [v / out.uns["flag"]["pixel_size_um"] for v in _ColourMeans(load_model()[1]).views_um]
    lv0 = levels[0].windows
    # level 0 is read one stored tile at a time, each tile once, and only tiles under the
    # spots' views (the patch, and the context patch when the model has one)
    th, tw = (int(c) for c in levels[0].chunks[:2])
    assert lv0 and all(h <= th and w <= tw for h, w in lv0)
    assert len(set(levels[0].origins)) == len(levels[0].origins) == len(lv0)
    reach = max(views) / 2 + max(th, tw) * 1.5
    xy = out.obsm["spatial"]
    for y0, x0 in levels[0].origins:
        assert np.hypot(xy[:, 0] - (x0 + tw / 2), xy[:, 1] - (y0 + th / 2)).min() <= reach
    assert len(lv0) < n * len(views)  # fewer reads than the one window per spot and view of before
    # tissue (about 8 um/px) and the scanpy image came from coarser levels
    assert out.uns["flag"]["tissue"]["level"] > 0 and sum(len(lv.windows) for lv in levels[1:]) > 0
    # features in batches, with progress all the way to every spot
    feats = [e for e in events if isinstance(e, Progress) and e.stage == "features"]
    assert len(feats) > 2 and feats[-1].done == feats[-1].total == n

    # the same slide again: features come from the cache, level 0 is not read at all
    sample, levels = _recorded(load_sample(path))
    again = list(iter_predict(sample, samples=1, steps=2, device="cpu", feature_cache=tmp_path))
    assert isinstance(again[-1], Result) and again[-1].adata.n_obs == n and levels[0].windows == []
