"""Spot geometry measured on real arrays (HER2ST, Visium) and virtual spots laid on tissue."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_flag.data import load_sample, with_pixel_size
from napari_flag.data.lattice import ST_LEGACY, VISIUM, SpotGeometry, geometry_of, lattice_points, virtual_spots
from napari_flag.data.tissue import detect_tissue
from napari_flag.errors import FlagInputError


@pytest.fixture(scope="module")
def visium(visium_dir):
    return load_sample(visium_dir)


def test_geometry_of_her2st(c2_slide):
    _, m = c2_slide
    g = geometry_of(m)
    assert g.lattice == "square"
    assert g.diameter_um == pytest.approx(100.0, rel=0.02) and g.spacing_um == pytest.approx(200.0, rel=0.02)
    assert SpotGeometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_geometry_of_visium(visium):
    from napari_flag.data._util import grid_step_px

    g = geometry_of(visium)
    assert g.lattice == "hex" and g.diameter_um == pytest.approx(55.0)
    step = grid_step_px(visium.adata.obs[["array_row", "array_col"]].to_numpy(), visium.coords, "hex")
    assert g.spacing_um == pytest.approx(step * visium.pixel_size_um)
    assert g.spacing_um == pytest.approx(100.0, rel=0.01)  # Visium's pitch by design


def test_geometry_without_array_indices(c2_slide, visium):
    for s, lattice in ((c2_slide[1], "square"), (visium, "hex")):
        a = s.adata.copy()
        del a.obs["array_row"], a.obs["array_col"]
        g = geometry_of(dataclasses.replace(s, adata=a, grid=None))
        assert g.lattice == lattice and g.spacing_um == pytest.approx(geometry_of(s).spacing_um, rel=0.03)


def test_geometry_errors(visium):
    for bad in (dict(diameter_um=0, spacing_um=200, lattice="square"),
                dict(diameter_um=100, spacing_um=-1, lattice="square"),
                dict(diameter_um=100, spacing_um=200, lattice="triangle"),
                dict(diameter_um=100, lattice="hex"), [1, 2]):
        with pytest.raises(FlagInputError):
            SpotGeometry.from_dict(bad)
    assert ST_LEGACY.to_dict() == {"diameter_um": 100.0, "spacing_um": 200.0, "lattice": "square"}
    assert VISIUM.to_dict() == {"diameter_um": 55.0, "spacing_um": 100.0, "lattice": "hex"}
    with pytest.raises(FlagInputError, match="pixel size unknown"):
        geometry_of(dataclasses.replace(visium, pixel_size_um=None))


def test_hex_lattice_points():
    rows, cols, xy = lattice_points("hex", 10.0, (0, 100), (0, 100))
    assert ((rows + cols) % 2 == 0).all()
    d, _ = cKDTree(xy).query(xy, k=7)
    inner = (xy[:, 0] > 15) & (xy[:, 0] < 85) & (xy[:, 1] > 15) & (xy[:, 1] < 85)
    np.testing.assert_allclose(d[inner, 1:], 10.0, rtol=1e-9)  # six neighbours at the pitch


def test_virtual_spots_match_measured_her2st(c2_slide):
    path, m = c2_slide
    s = load_sample(path)
    v = virtual_spots(s, geometry_of(m))
    assert v.n_spots > 150 and v.adata.n_vars == 0 and v.grid == "square"
    obs = v.adata.obs
    assert (obs["in_tissue"] == 1).all()
    assert [f"r{r}_c{c}" for r, c in zip(obs["array_row"], obs["array_col"])] == list(v.adata.obs_names)
    assert v.spot_diameter_px == pytest.approx(100.0 / s.pixel_size_um, rel=0.02)
    sp = geometry_of(m).spacing_px(s.pixel_size_um)
    xy = v.coords
    d, _ = cKDTree(xy).query(xy, k=2)
    assert np.median(d[:, 1]) == pytest.approx(sp)
    # each measured spot has a virtual one nearby, and few virtual spots lie far from measured ones
    dm, _ = cKDTree(xy).query(m.coords)
    assert (dm <= 0.75 * sp).mean() >= 0.97
    dv, _ = cKDTree(m.coords).query(xy)
    assert (dv > sp + v.spot_diameter_px / 2).mean() <= 0.10
    assert v.metadata["tissue_mask"].mask.any()
    json.dumps(v.metadata["tissue"])
    json.dumps(v.metadata["spot_geometry"])


def test_virtual_spots_hex_and_denser(c2_slide):
    path, _ = c2_slide
    s = load_sample(path)
    t = detect_tissue(s.image, s.pixel_size_um, source=path)
    v = virtual_spots(s, VISIUM, tissue=t)
    obs = v.adata.obs
    assert v.grid == "hex" and ((obs["array_row"] + obs["array_col"]) % 2 == 0).all()
    d, _ = cKDTree(v.coords).query(v.coords, k=7)
    assert np.median(d[:, 1:]) * s.pixel_size_um == pytest.approx(100.0, rel=1e-6)
    sq = virtual_spots(s, ST_LEGACY, tissue=t)
    dense = virtual_spots(s, ST_LEGACY, spacing_um=100.0, tissue=t)
    assert 3.3 < dense.n_spots / sq.n_spots < 4.7
    assert dense.metadata["spot_geometry"]["spacing_um"] == 100.0
    assert dense.spot_diameter_px == sq.spot_diameter_px


def test_virtual_spots_errors(tmp_path, c2_slide, her2st_tile):
    import tifffile

    path, _ = c2_slide
    s = load_sample(path)
    for bad in (0, -50.0):
        with pytest.raises(FlagInputError) as e:
            virtual_spots(s, ST_LEGACY, spacing_um=bad)
        assert str(e.value).startswith(f"{path}: spot spacing must be a positive number")
    p = tmp_path / "nopx.tif"
    tifffile.imwrite(p, her2st_tile, photometric="rgb")
    nopx = load_sample(p)
    with pytest.raises(FlagInputError) as e:
        virtual_spots(nopx, ST_LEGACY)
    assert str(e.value) == f"{p}: pixel size unknown" and e.value.setting == "pixel_size_um"  # the CLI adds its flag
    assert virtual_spots(with_pixel_size(nopx, 2.8), ST_LEGACY).n_spots > 0


def test_default_virtual_pitch_lets_patches_tile_the_tissue():
    """Legacy ST's 200 um pitch is halved for 112 um patches; Visium's 100 um stays; the factor is whole."""
    assert ST_LEGACY.covering(112.0) == SpotGeometry(100.0, 100.0, "square")
    assert VISIUM.covering(112.0) is VISIUM
    assert SpotGeometry(100.0, 300.0, "square").covering(112.0).spacing_um == pytest.approx(100.0)
    assert SpotGeometry(100.0, 224.0, "square").covering(112.0).spacing_um == pytest.approx(112.0)
    with pytest.raises(FlagInputError):
        ST_LEGACY.covering(0)
