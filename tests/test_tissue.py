"""Tissue masks on real H&E (HER2ST), blank images, and the low-resolution overview they use."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_flag.data import load_sample
from napari_flag.data.images import write_ome_tiff
from napari_flag.data.lattice import ST_LEGACY, virtual_spots
from napari_flag.data.overview import read_overview
from napari_flag.data.sample import SlideImage
from napari_flag.data.tissue import detect_tissue
from napari_flag.errors import FlagInputError


def test_overview_reads_a_coarse_level(c2_slide, guarded):
    _, m = c2_slide
    img = guarded(m.image)
    rgb, f = read_overview(img, 8.0 / m.pixel_size_um)
    assert f == pytest.approx(2.0) and rgb.shape[:2] == img.levels[1].shape[:2]


def test_overview_of_an_image_without_pyramid_is_averaged_in_stripes(her2st_tile, monkeypatch):
    import napari_flag.data.overview as ov

    monkeypatch.setattr(ov, "_STRIPE_BYTES", 100_000)  # many stripes
    img = SlideImage([her2st_tile[:509, :510]])
    rgb, f = read_overview(img, None, max_px=120 * 120)
    assert f == 5 and rgb.shape == (102, 102, 3)
    exp = her2st_tile[:505, :510].astype(float).reshape(101, 5, 102, 5, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(rgb[:101].astype(float), exp, atol=0.51)
    # the partial bottom row of blocks is averaged with white background
    assert (rgb[101].astype(float) >= her2st_tile[505:509, :510:5].min()).all()


def test_overview_stripes_cost_about_one_stripe_of_memory(her2st_tile, monkeypatch):
    """On a whole-slide level without a pyramid the stripes are what memory holds: a float copy of
    each (4x its bytes, twice with the white padding) would cost a 40,000 px slide half a gigabyte."""
    import tracemalloc

    import napari_flag.data.overview as ov

    stripe = 1 << 20
    monkeypatch.setattr(ov, "_STRIPE_BYTES", stripe)
    img = SlideImage([np.tile(her2st_tile, (3, 3, 1))[:1530, :1522]])  # edges need white padding
    tracemalloc.start()
    try:
        rgb, f = read_overview(img, None, max_px=300 * 300)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f > 1 and peak <= rgb.nbytes + 2 * stripe


@pytest.mark.parametrize("section", ["C2", "C5"])  # white and pink-tinted background
def test_tissue_on_her2st_sections(her2st_slide, guarded, section):
    _, m = her2st_slide(section, 4)
    t = detect_tissue(guarded(m.image), m.pixel_size_um, source=m.source)
    assert 0.1 < t.fraction < 0.3
    assert t.level > 0 and 5.0 < t.to_dict()["um_per_px"] < 12.0
    # the spots the experiment marked as under tissue are on the mask
    assert t.contains(m.coords).mean() > 0.97
    assert 2 < t.area_mm2 < 15
    json.dumps(t.to_dict())


@pytest.mark.parametrize("kind", ["white", "black", "grey", "pink"])
def test_blank_images_have_no_tissue(tmp_path, kind):
    rng = np.random.default_rng(0)
    colour = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "pink": (240, 215, 232)}[kind]
    arr = np.clip(np.array(colour) + rng.normal(0, 3, (600, 700, 3)), 0, 255).astype(np.uint8)
    p = write_ome_tiff(arr, tmp_path / f"{kind}.ome.tif", pixel_size_um=2.0)
    s = load_sample(p)
    with pytest.raises(FlagInputError) as e:
        detect_tissue(s.image, s.pixel_size_um, source=p)
    assert str(e.value) == f"{p}: no tissue found"
    with pytest.raises(FlagInputError, match="no tissue found"):
        virtual_spots(s, ST_LEGACY)


def test_tissue_mask_drops_specks_and_fills_holes_in_the_section(her2st_tile):
    arr = np.full((800, 800, 3), 245, np.uint8)
    arr[100:612, 100:612] = her2st_tile  # 512 px of tissue at 2 um/px, ~1 mm
    arr[300:450, 300:450] = 245  # a 300 um hole (a lumen, a tear): part of the section as a pathologist sees it
    arr[700:730, 700:730] = her2st_tile[:30, :30]  # a 60 um speck: dropped
    t = detect_tissue(SlideImage([arr]), pixel_size_um=2.0)
    assert not t.contains(np.array([[715.0, 715.0], [760.0, 60.0]])).any()
    assert t.contains(np.array([[200.0, 200.0], [550.0, 550.0], [375.0, 375.0]])).all()


@pytest.mark.parametrize("section", ["C2", "C3", "C4", "C5", "C6"])
def test_every_measured_spot_lies_inside_the_mask(her2st_dir, section):
    """The HER2ST images are cropped to dense tumour, with pale stroma and holes at their edges."""
    s = load_sample(f"her2st:{section}")
    t = detect_tissue(s.image, s.pixel_size_um, source=s.source)
    assert t.contains(s.coords).all()
    assert 0.1 < t.fraction < 0.35  # and the glass around it stays out


def test_every_visium_spot_lies_inside_the_mask(visium_dir):
    s = load_sample(visium_dir)
    t = detect_tissue(s.image, s.pixel_size_um, source=s.source)
    assert t.contains(s.coords).all()
    # the fiducial frame (grey dots on glass, all round the capture area) is not tissue
    h, w = s.image.fullres_shape
    frame = np.array([[w * 0.04, h * 0.5], [w * 0.5, h * 0.04], [w * 0.96, h * 0.5], [w * 0.5, h * 0.96]])
    assert not t.contains(frame).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_fat_loose_stroma_and_holes_kept_ink_and_margins_dropped(seed):
    """Synthetic slides (tests/synthetic_slides.py) with what the HER2ST crops lack, ground truth known."""
    from synthetic_slides import breast_like

    d = breast_like(1600, seed=seed)
    t = detect_tissue(SlideImage([d["image"]]), d["pixel_size_um"], source="synthetic")
    yy, xx = np.mgrid[0:1600:4, 0:1600:4]
    got = t.contains(np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]).reshape(yy.shape)
    sub = {k: d[k][::4, ::4] for k in ("truth", "fat", "ink", "margin")}
    assert got[sub["fat"]].mean() > 0.97 and got[sub["truth"]].mean() > 0.97
    assert not got[sub["ink"]].any() and not got[sub["margin"]].any()
    glass = ~sub["truth"] & ~sub["ink"] & ~sub["margin"]
    assert got[glass].mean() < 0.05  # only the margin grown around the section


def test_glass_with_only_pen_ink_has_no_tissue(tmp_path):
    from synthetic_slides import breast_like

    d = breast_like(1000, seed=2)
    img = d["image"].copy()
    img[d["truth"]] = (238, 236, 240)  # the section wiped off: glass, ink and the margin are left
    with pytest.raises(FlagInputError, match="no tissue found"):
        detect_tissue(SlideImage([img]), d["pixel_size_um"], source="ink-only")
