"""Stain normalisation on the HER2ST sections: Macenko estimated once per slide, a reference in the checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from napari_flag.errors import FlagInputError
from napari_flag.features.stain import StainJitter
from napari_flag.features.stain_norm import (
    StainBasis,
    StainNormaliser,
    estimate_stains,
    normalised_encoder,
    slide_pixels,
)


class _Geometry:
    """The encoder's spot view without loading the encoder (slide_pixels needs only its geometry)."""

    patch_um, patch_px, name, dim = 112.0, 224, "geometry", 8


@pytest.fixture(scope="module")
def c3(her2st_dir):
    from napari_flag.data import load_sample

    return load_sample("her2st:C3")


@pytest.fixture(scope="module")
def c3_stains(c3):
    return estimate_stains(slide_pixels(c3, _Geometry()), "C3")


def _patches(sample, n=12):
    from napari_flag.features.patches import extract_patches

    idx = np.linspace(0, sample.n_spots - 1, n).round().astype(int)
    return next(extract_patches(sample, idx, 112.0, 224, n))


def test_estimate_on_a_real_section(c3_stains):
    b = c3_stains
    h, e = np.array(b.h), np.array(b.e)
    np.testing.assert_allclose([np.linalg.norm(h), np.linalg.norm(e)], 1.0, atol=1e-6)
    assert (h > 0).all() and (e > 0).all()
    assert h[0] > e[0] and e[1] > h[1]  # haematoxylin absorbs red, eosin green
    assert b.max_c[0] > 0.5 and b.max_c[1] > 0.3
    assert StainBasis.from_dict(b.to_dict()) == b


def test_normalising_undoes_a_restaining(c3, c3_stains):
    """Another lab's stain amounts (H or E optical density x0.7/x1.3) come back to the reference."""
    ref = StainBasis(c3_stains.h, c3_stains.e, (2.8, 1.2))  # any reference: the same target for all
    p = _patches(c3)
    base = StainNormaliser(c3_stains, ref)(p).astype(float)
    for h, e in [(0.7, 1.0), (1.3, 1.0), (1.0, 0.7), (0.7, 1.3)]:
        jit = StainJitter(h=h, e=e)
        shifted = jit(p)
        src = estimate_stains(slide_pixels(c3, _Geometry(), augment=jit), "C3 re-stained")
        back = StainNormaliser(src, ref)(shifted).astype(float)
        raw_gap = np.abs(shifted.astype(float) - p).mean()
        gap = np.abs(back - base).mean()
        assert gap < 4.0, (h, e, gap)
        if h != 1.0:  # haematoxylin changes move the image a lot; normalising takes most of it back
            assert gap < raw_gap / 4, (h, e, gap, raw_gap)


def test_a_few_spots_give_every_pixel_of_their_patches(c3):
    from dataclasses import replace

    few = replace(c3, adata=c3.adata[:5].copy())
    assert len(slide_pixels(few, _Geometry())) == 5 * 224 * 224
    estimate_stains(slide_pixels(few, _Geometry()), "C3, five spots")  # enough to estimate on
    assert len(slide_pixels(c3, _Geometry())) == 180 * 56 * 56  # a section: every 4th pixel


def test_own_stains_change_little_and_glass_stays_white(c3, c3_stains):
    p = _patches(c3)
    same = StainNormaliser(c3_stains, c3_stains)(p)
    assert np.abs(same.astype(float) - p).mean() < 3.0  # only what is neither H nor E is dropped
    white = np.full((1, 8, 8, 3), 255, np.uint8)
    assert (StainNormaliser(c3_stains, c3_stains)(white) >= 254).all()


def test_unstained_or_one_colour_images_are_refused_in_one_line():
    glass = np.full((200, 200, 3), 242, np.uint8)
    with pytest.raises(FlagInputError, match="glass.png: too little stained tissue"):
        estimate_stains(glass, "glass.png")
    rng = np.random.default_rng(0)
    od = np.outer(rng.uniform(0.3, 2.0, 40000), [0.65, 0.70, 0.29])  # haematoxylin only
    one = np.clip(256 * np.exp(-od) - 1, 0, 255).astype(np.uint8)
    with pytest.raises(FlagInputError, match="one.png: its stains cannot be told apart"):
        estimate_stains(one, "one.png")


def test_a_slide_without_stain_says_to_predict_without_normalisation(c3, c3_stains):
    from dataclasses import replace

    class _White:  # a slide whose spots lie on glass
        levels, downsamples, scale = [np.full((64, 64, 3), 250, np.uint8)], [1.0], 1.0

        def read_region(self, x0, y0, size, out_px):
            return np.full((out_px, out_px, 3), 250, np.uint8)

    blank = replace(c3, image=_White())
    enc = normalised_encoder(_Geometry(), blank, c3_stains)
    with pytest.raises(FlagInputError, match="too little stained tissue") as exc:
        enc.augment(np.zeros((1, 8, 8, 3), np.uint8))
    assert exc.value.setting == "stain_norm"


def test_normalised_encoder_estimates_once_per_slide_and_keys_the_cache(c3, c3_stains):
    enc = _Geometry()
    ref = c3_stains.to_dict()
    wrapped = normalised_encoder(enc, c3, ref)
    assert wrapped.name.startswith("geometry+") and "norm:macenko" in wrapped.name
    assert wrapped.augment.estimated is None  # nothing read until a patch needs it
    p = _patches(c3, 4)
    out = wrapped.augment(p)
    assert wrapped.augment.estimated == c3_stains  # the whole slide's estimate, reused by every tile
    known = normalised_encoder(enc, c3, ref, source=c3_stains.to_dict())
    assert known.augment.estimated == c3_stains and known.name == wrapped.name
    np.testing.assert_array_equal(known.augment(p), out)


def test_prediction_records_and_reuses_its_normalisation(her2st_dir, tmp_path):
    """The bundled model normalises by default; off gives the raw features; a model without a
    reference cannot be asked to; the regions' posterior re-uses the recorded slide stains."""
    import torch

    import napari_flag as nf
    from napari_flag.checkpoint import (
        default_checkpoint_path,
        load_checkpoint,
        load_model,
    )
    from napari_flag.inference import slide_encoder

    on = nf.predict("her2st:C3", steps=2, samples=1, feature_cache=tmp_path / "cache")
    rec = on.uns["flag"]["stain_norm"]
    assert rec["method"] == "macenko" and set(rec) == {"method", "reference", "slide", "estimate_s"}
    off = nf.predict("her2st:C3", steps=2, samples=1, feature_cache=tmp_path / "cache", stain_norm=False)
    assert "stain_norm" not in off.uns["flag"]
    assert not np.array_equal(on.X, off.X)
    assert nf.evaluate(on)["PCC"] > 0.5 and nf.evaluate(off)["PCC"] > 0.5

    _, meta = load_model(default_checkpoint_path(), "cpu")
    enc = slide_encoder(meta, None, "cpu", stain_norm=True, slide_stains=rec["slide"])
    assert enc.augment.estimated == StainBasis.from_dict(rec["slide"])

    old = load_checkpoint(default_checkpoint_path())
    old.pop("stain")
    torch.save(old, tmp_path / "old.pt")
    plain = nf.predict("her2st:C3", tmp_path / "old.pt", steps=2, samples=1, feature_cache=tmp_path / "cache")
    np.testing.assert_array_equal(plain.X, off.X)  # no reference recorded: nothing normalised
    with pytest.raises(FlagInputError, match="records no stain reference") as exc:
        nf.predict("her2st:C3", tmp_path / "old.pt", stain_norm=True, feature_cache=False)
    assert exc.value.setting == "stain_norm"
