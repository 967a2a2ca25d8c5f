"""Whole-slide streaming: a routine H&E prediction reads level 0 only one patch window at a time.

Level 0 of a whole-slide image is gigabytes, so the only reads it may see are
the patches of the spots (one window each, in batches); tissue detection and
the scanpy image read coarse levels; a second run with the feature cache does
not touch level 0 at all.  Levels are wrapped in read recorders, so a change
that reads a whole level (or a stripe of it) fails here before it fails on a
real slide by running out of memory.  The encoder is a stand-in (colour means)
with the bundled model's patch geometry, so the test costs reading, not a CNN.
"""
from __future__ import annotations

import dataclasses
import math

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
        self.windows: list[tuple[int, int]] = []

    def __getitem__(self, key):
        out = np.asarray(self._arr[key])
        self.windows.append(tuple(out.shape[:2]))
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
    # one window per spot and view (the patch, and the context patch when the model has one),
    # each no larger than its view (plus the pixel the sub-pixel offset needs)
    assert len(lv0) == n * len(views) and max(h * w for h, w in lv0) <= (math.ceil(max(views)) + 1) ** 2
    # tissue (about 8 um/px) and the scanpy image came from coarser levels
    assert out.uns["flag"]["tissue"]["level"] > 0 and sum(len(lv.windows) for lv in levels[1:]) > 0
    # features in batches, with progress all the way to every patch of every spot
    feats = [e for e in events if isinstance(e, Progress) and e.stage == "features"]
    assert len(feats) > 2 and feats[-1].done == feats[-1].total == n * len(views)

    # the same slide again: features come from the cache, level 0 is not read at all
    sample, levels = _recorded(load_sample(path))
    again = list(iter_predict(sample, samples=1, steps=2, device="cpu", feature_cache=tmp_path))
    assert isinstance(again[-1], Result) and again[-1].adata.n_obs == n and levels[0].windows == []
