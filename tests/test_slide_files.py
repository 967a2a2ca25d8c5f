"""Pyramidal OME-TIFF slides built from real H&E, and pixel sizes read from files or given."""
from __future__ import annotations

import numpy as np
import pytest

from napari_flag.data import load_sample, with_pixel_size
from napari_flag.data.images import open_tiff, write_ome_tiff
from napari_flag.errors import FlagInputError


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_ome_tiff_slide_reads_back_as_pyramid(c2_slide):
    import tifffile

    path, m = c2_slide
    s = load_sample(path)
    assert s.n_spots == 0 and s.adata.n_vars == 0 and s.image.is_multiscale
    assert s.pixel_size_um == pytest.approx(m.pixel_size_um, rel=1e-6)
    assert 2.6 < s.pixel_size_um < 2.9  # ~0.69 um/px at 1/4
    assert s.image.downsamples[:3] == [1.0, 2.0, 4.0]
    assert max(s.image.levels[-1].shape[:2]) < 1024
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and 'PhysicalSizeXUnit="µm"' in tf.ome_metadata


def test_ome_tiff_levels_and_bad_pixel_size(tmp_path, her2st_tile):
    p = write_ome_tiff(her2st_tile, tmp_path / "t.ome.tif", pixel_size_um=0.5, tile=128, levels=3)
    img, px = open_tiff(p)
    assert px == pytest.approx(0.5) and [lv.shape[0] for lv in img.levels] == [512, 256, 128]
    np.testing.assert_array_equal(np.asarray(img.levels[0][...]).shape, her2st_tile.shape)
    for bad in (0, -1.0, float("nan"), None):
        with pytest.raises(FlagInputError) as e:
            write_ome_tiff(her2st_tile, tmp_path / "u.ome.tif", pixel_size_um=bad)
        assert "u.ome.tif" in _one_line(e)
    assert not (tmp_path / "u.ome.tif").exists()


@pytest.mark.parametrize(
    "tags, expected",
    [
        (dict(resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER"), 0.25),
        (dict(resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH"), 0.5),
        (dict(resolution=(72, 72), resolutionunit="INCH"), None),  # editors' default, not a scan
        (dict(resolution=(300, 300), resolutionunit="INCH"), None),
        (dict(resolution=(4000, 4000), resolutionunit="NONE"), None),
        (dict(description="Aperio Image Library v12.0.15 \n46000x32914 [0,100 46000x32914] (256x256) "
                          "JPEG/RGB Q=30|AppMag = 40|MPP = 0.2520|Filename = x"), 0.252),
    ],
)
def test_pixel_size_from_tiff_tags(tmp_path, her2st_tile, tags, expected):
    import tifffile

    p = tmp_path / "s.svs" if "description" in tags else tmp_path / "s.tif"
    tifffile.imwrite(p, her2st_tile, photometric="rgb", tile=(256, 256), metadata=None, **tags)
    s = load_sample(p)
    assert s.pixel_size_um == (pytest.approx(expected) if expected else None)


def test_pixel_size_from_ome_units(tmp_path, her2st_tile):
    import tifffile

    p = tmp_path / "nm.ome.tif"
    tifffile.imwrite(p, her2st_tile, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm"})
    assert load_sample(p).pixel_size_um == pytest.approx(0.5)


def test_pixel_size_override(tmp_path, her2st_tile):
    import tifffile

    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, her2st_tile, photometric="rgb")
    s = load_sample(p)
    assert s.pixel_size_um is None
    t = with_pixel_size(s, 0.5)
    assert t.pixel_size_um == 0.5 and t.metadata["pixel_size_source"] == "user" and s.pixel_size_um is None
    assert load_sample(p, pixel_size_um=2).pixel_size_um == 2.0
    for bad in (0, -0.3, float("nan"), float("inf"), "abc", True):
        with pytest.raises(FlagInputError) as e:
            load_sample(p, pixel_size_um=bad)
        assert "plain.tif" in _one_line(e) and "pixel size" in str(e.value)
