"""Readers on real data: HER2ST (legacy ST), Visium outs/, HEST layout, h5ad, images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pooch
import pytest
import scipy.sparse as sp

from napari_flag.data import detect_format, load_sample
from napari_flag.data.h5ad import write_h5ad
from napari_flag.data.hest import write_hest_sample
from napari_flag.data.images import ENV_PYRAMID_DIR, AxesView, LazyLevel, write_pyramidal_tiff
from napari_flag.data.registry import ENV_DATA_DIR
from napari_flag.data.st_legacy import read_st_legacy
from napari_flag.errors import FlagInputError

SPOTS = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}


@pytest.fixture(scope="session")
def pyramid_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pyramids")


@pytest.fixture(autouse=True)
def _env(monkeypatch, pyramid_root, her2st_dir):
    """Shared data as the dataset cache, a scratch pyramid cache, no network."""
    monkeypatch.setenv(ENV_DATA_DIR, str(her2st_dir))
    monkeypatch.setenv(ENV_PYRAMID_DIR, str(pyramid_root))

    def refuse(*a, **k):
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(pooch, "retrieve", refuse)


@pytest.fixture(scope="module")
def c2(her2st_dir):
    import os

    old = os.environ.get(ENV_DATA_DIR)
    os.environ[ENV_DATA_DIR] = str(her2st_dir)
    try:
        return load_sample("her2st:C2")
    finally:
        if old is None:
            os.environ.pop(ENV_DATA_DIR, None)
        else:
            os.environ[ENV_DATA_DIR] = old


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------
# HER2ST


@pytest.mark.parametrize("section", sorted(SPOTS))
def test_her2st_sections(section):
    s = load_sample(f"her2st:{section}")
    a = s.adata
    assert s.n_spots == SPOTS[section] and a.n_vars > 15000
    assert sp.isspmatrix_csr(a.X) or sp.issparse(a.X)
    assert a.X.dtype == np.float32 and a.X.sum() > 0
    assert a.var_names.is_unique and a.obs_names.is_unique
    assert s.grid == "square" and s.sample_id == section and s.source == f"her2st:{section}"
    # image ~9,300 x 9,900 px, opened without decoding a pixel
    h, w, c = s.image.shape
    assert 9800 < h < 10000 and 9200 < w < 9400 and c == 3
    assert isinstance(s.image.levels[0], LazyLevel) and not s.image.levels[0].loaded
    assert s.image.is_multiscale and max(s.image.levels[-1].shape[:2]) < 1024
    # geometry from the data: 200 um pitch, 100 um spots
    assert 0.6 < s.pixel_size_um < 0.8
    assert s.spot_diameter_px == pytest.approx(100.0 / s.pixel_size_um)
    assert s.spot_diameter_um == pytest.approx(100.0)
    xy = s.coords
    assert xy.shape == (s.n_spots, 2) and np.isfinite(xy).all()
    assert (xy > 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
    # ids are "<x>x<y>" with x = array column, y = array row
    x, y = a.obs_names[0].split("x")
    assert (int(a.obs["array_col"].iloc[0]), int(a.obs["array_row"].iloc[0])) == (int(x), int(y))


def test_her2st_spots_match_files(her2st_dir, c2):
    pos = pd.read_csv(her2st_dir / "ST-spotfiles/C2_selection.tsv", sep="\t")
    pos.index = pos["x"].astype(str) + "x" + pos["y"].astype(str)
    np.testing.assert_allclose(c2.coords, pos.loc[c2.adata.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    counts = pd.read_csv(her2st_dir / "ST-cnts/C2.tsv.gz", sep="\t", index_col=0, nrows=3)
    np.testing.assert_array_equal(c2.adata[counts.index, counts.columns].X.toarray(), counts.to_numpy())


def test_jpeg_pyramid_converted_once(c2, pyramid_root, her2st_dir):
    im = c2.image
    x, y = c2.coords.mean(axis=0)
    patch = im.read_region(x - 64, y - 64, 128, 64)
    assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
    assert patch.mean() < 215  # tissue, not white glass
    assert im.read_region(0, 0, 300, 16).mean() > patch.mean()
    stores = list(pyramid_root.glob("*.zarr"))
    assert len(stores) == 1 and not list(pyramid_root.glob(".*tmp"))
    assert not list(her2st_dir.rglob("*.zarr"))
    # a fresh load reuses the stored pyramid and reads the same pixels
    again = load_sample("her2st:C2").image
    np.testing.assert_array_equal(again.read_region(x - 64, y - 64, 128, 64), patch)
    assert len(list(pyramid_root.glob("*.zarr"))) == 1
    lv = again.levels[-1]
    assert np.asarray(lv).shape == lv.shape


def test_st_legacy_errors(tmp_path, her2st_dir):
    counts = her2st_dir / "ST-cnts/C2.tsv.gz"
    spots = her2st_dir / "ST-spotfiles/C2_selection.tsv"
    trunc = tmp_path / "C2.tsv.gz"
    trunc.write_bytes(counts.read_bytes()[:50_000])
    with pytest.raises(FlagInputError) as e:
        read_st_legacy(trunc, spots)
    assert str(trunc) in _one_line(e)

    pos = pd.read_csv(spots, sep="\t")
    other = tmp_path / "other.tsv"
    pos.assign(x=pos["x"] + 100).to_csv(other, sep="\t", index=False)
    with pytest.raises(FlagInputError, match="no spots matched"):
        read_st_legacy(counts, other)

    nan = tmp_path / "nan.tsv"
    pos.assign(pixel_x=np.where(np.arange(len(pos)) == 3, np.nan, pos["pixel_x"])).to_csv(nan, sep="\t", index=False)
    with pytest.raises(FlagInputError, match="NaN"):
        read_st_legacy(counts, nan)

    with pytest.raises(FlagInputError, match="not found"):
        read_st_legacy(tmp_path / "absent.tsv.gz", spots)


def test_her2st_folder_path_points_to_dataset_ids(her2st_dir):
    with pytest.raises(FlagInputError) as e:
        load_sample(her2st_dir)
    assert "her2st:<section>" in _one_line(e)


# ---------------------------------------------------------------------------
# Visium (Space Ranger outs/)


def _check_visium(s, visium_dir):
    scalef = json.loads((visium_dir / "spatial/scalefactors_json.json").read_text())
    assert s.n_spots == 2695 and s.adata.n_vars == 100
    assert s.grid == "hex"
    # pixel size from the manufactured 100 um pitch; spot_diameter_fullres spans a 65 um disc
    from scipy.spatial import cKDTree

    step = np.median(cKDTree(s.coords).query(s.coords, k=2)[0][:, 1])  # nearest centre: one pitch
    assert s.pixel_size_um * step == pytest.approx(100.0, rel=0.03)
    assert s.spot_diameter_px * s.pixel_size_um == pytest.approx(55.0)
    assert s.image.scale == pytest.approx(scalef["tissue_lowres_scalef"])
    assert s.image.shape[2] == 3 and max(s.image.shape[:2]) == 600
    pos = pd.read_csv(visium_dir / "spatial/tissue_positions_list.csv", header=None, index_col=0)
    pos = pos.loc[s.adata.obs_names]
    np.testing.assert_allclose(s.coords, pos[[5, 4]].to_numpy())  # (x, y) = (col, row)
    np.testing.assert_array_equal(s.adata.obs["array_row"], pos[2])
    np.testing.assert_array_equal(s.adata.obs["array_col"], pos[3])
    assert s.adata.var_names.is_unique
    # spots land on the tissue of the downscaled image
    fy, fx = s.image.fullres_shape
    assert (s.coords[:, 0] < fx).all() and (s.coords[:, 1] < fy).all()


def test_visium_fixture(visium_dir):
    assert detect_format(visium_dir) == "spaceranger"
    s = load_sample(visium_dir)
    _check_visium(s, visium_dir)
    patch = s.image.read_region(*(s.coords[0] - 48), 96, 8)
    assert patch.shape == (8, 8, 3)


def test_visium_v2_positions(tmp_path, visium_dir):
    outs = tmp_path / "sample1" / "outs"
    shutil.copytree(visium_dir, outs)
    v1 = outs / "spatial/tissue_positions_list.csv"
    pos = pd.read_csv(v1, header=None)
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos.to_csv(outs / "spatial/tissue_positions.csv", index=False)
    v1.unlink()
    s = load_sample(outs.parent)  # the folder holding outs/ works too
    assert s.sample_id == "sample1"
    _check_visium(s, visium_dir)


def test_visium_errors(tmp_path, visium_dir):
    outs = tmp_path / "outs"
    shutil.copytree(visium_dir, outs)
    sf = outs / "spatial/scalefactors_json.json"
    sf.rename(tmp_path / "sf.json")
    with pytest.raises(FlagInputError) as e:
        load_sample(outs)
    assert "scalefactors_json.json" in _one_line(e) and "scale factors" in str(e.value)
    (tmp_path / "sf.json").rename(sf)

    pos_file = outs / "spatial/tissue_positions_list.csv"
    good = pos_file.read_text()
    pos = pd.read_csv(pos_file, header=None)
    pos[0] = "X" + pos[0]
    pos.to_csv(pos_file, header=False, index=False)
    with pytest.raises(FlagInputError, match="no spots matched"):
        load_sample(outs)
    pos_file.write_text(good)

    h5 = outs / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[:20_000])
    with pytest.raises(FlagInputError) as e:
        load_sample(outs)
    assert "filtered_feature_bc_matrix.h5" in _one_line(e)


# ---------------------------------------------------------------------------
# HEST layout and h5ad


def test_hest_roundtrip(tmp_path, c2):
    root = tmp_path / "hest"
    st = write_hest_sample(c2, root, "HER2ST_C2", downsample=8, patches=True, patch_px=32)
    assert st == root / "st/HER2ST_C2.h5ad"
    assert (root / "wsis/HER2ST_C2.tif").is_file() and (root / "patches/HER2ST_C2.h5").is_file()
    meta = json.loads((root / "metadata/HER2ST_C2.json").read_text())
    assert meta["spot_diameter"] == 100.0 and meta["inter_spot_dist"] == 200.0
    assert meta["pixel_size_um_estimated"] == pytest.approx(c2.pixel_size_um * 8, rel=1e-3)

    assert detect_format(root) == "hest" and detect_format(st) == "hest"
    for src in (root, st):
        h = load_sample(src)
        assert h.sample_id == "HER2ST_C2" and h.grid == "square"
        assert list(h.adata.obs_names) == list(c2.adata.obs_names)
        assert list(h.adata.var_names) == list(c2.adata.var_names)
        assert (h.adata.X != c2.adata.X).nnz == 0
        np.testing.assert_allclose(h.coords, c2.coords / 8, rtol=1e-3)
        assert h.pixel_size_um == pytest.approx(c2.pixel_size_um * 8, rel=1e-3)
        assert h.spot_diameter_px == pytest.approx(c2.spot_diameter_px / 8, rel=1e-3)
        assert h.spot_diameter_um == pytest.approx(100.0)
        # the WSI is a lazy tiled pyramid
        assert h.image.scale == 1.0 and h.image.is_multiscale
        assert abs(h.image.shape[0] - c2.image.shape[0] / 8) <= 1
        assert type(h.image.levels[0]).__module__.startswith("zarr")
        x, y = h.coords.mean(axis=0)
        a = h.image.read_region(x - 8, y - 8, 16, 16).astype(float)
        b = c2.image.read_region(8 * x - 64, 8 * y - 64, 128, 16).astype(float)
        assert np.abs(a - b).mean() < 20  # JPEG-compressed, resampled twice
    import h5py

    with h5py.File(root / "patches/HER2ST_C2.h5") as f:
        assert f["img"].shape == (187, 32, 32, 3) and f["barcode"].shape == (187, 1)


def test_hest_folder_with_many_samples(tmp_path, visium_dir):
    v = load_sample(visium_dir)
    write_hest_sample(v, tmp_path, "A")
    write_hest_sample(v, tmp_path, "B")
    with pytest.raises(FlagInputError) as e:
        load_sample(tmp_path)
    assert "2 samples" in _one_line(e)
    b = load_sample(tmp_path / "st/B.h5ad")
    assert b.sample_id == "B" and b.n_spots == 2695 and b.grid == "hex"
    # the Visium image is the lowres PNG: the WSI keeps its resolution, coordinates follow
    np.testing.assert_allclose(b.coords, v.coords * v.image.scale, rtol=1e-3)
    assert b.spot_diameter_um == pytest.approx(55.0, rel=1e-3)


def test_h5ad_roundtrip(tmp_path, c2):
    path = write_h5ad(c2, tmp_path / "c2.h5ad", image_max_px=600)
    assert detect_format(path) == "h5ad"
    s = load_sample(path)
    assert s.sample_id == "C2" and s.grid == "square"
    assert list(s.adata.obs_names) == list(c2.adata.obs_names)
    assert (s.adata.X != c2.adata.X).nnz == 0
    np.testing.assert_allclose(s.coords, c2.coords)
    assert s.pixel_size_um == pytest.approx(c2.pixel_size_um)
    assert s.spot_diameter_px == pytest.approx(c2.spot_diameter_px)
    assert max(s.image.shape[:2]) == 600
    assert s.image.fullres_shape[0] == pytest.approx(c2.image.shape[0], rel=2e-3)
    x, y = c2.coords.mean(axis=0)
    a = s.image.read_region(x - 256, y - 256, 512, 16).astype(float)
    b = c2.image.read_region(x - 256, y - 256, 512, 16).astype(float)
    assert np.abs(a - b).mean() < 20


def test_h5ad_scanpy_convention_without_extras(tmp_path, visium_dir):
    """A plain scanpy-style Visium h5ad: pixel size follows from the 100 um pitch."""
    v = load_sample(visium_dir)
    a = v.adata.copy()
    sf = v.metadata["scalefactors"]
    a.uns["spatial"] = {
        "lib": {
            "images": {"lowres": np.asarray(v.image.levels[0])},
            "scalefactors": {k: float(x) for k, x in sf.items()},
        }
    }
    a.write_h5ad(tmp_path / "v.h5ad")
    s = load_sample(tmp_path / "v.h5ad")
    assert s.sample_id == "lib" and s.grid == "hex"
    assert s.pixel_size_um == pytest.approx(v.pixel_size_um)
    assert s.image.scale == pytest.approx(sf["tissue_lowres_scalef"])

    del a.uns["spatial"]["lib"]["scalefactors"]["tissue_lowres_scalef"]
    a.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(FlagInputError, match="scale factors"):
        load_sample(tmp_path / "bad.h5ad")

    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(FlagInputError, match="obsm"):
        load_sample(tmp_path / "nospatial.h5ad")


# ---------------------------------------------------------------------------
# plain images


@pytest.fixture(scope="module")
def lowres(visium_dir) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(visium_dir / "spatial/tissue_lowres_image.png").convert("RGB"))


def test_tiff_pyramid(tmp_path, lowres):
    path = write_pyramidal_tiff(tmp_path / "slide.tif", lowres, pixel_size_um=2.5, compression="zlib", min_px=256)
    assert detect_format(path) == "tiff"
    s = load_sample(path)
    assert s.n_spots == 0 and s.adata.obsm["spatial"].shape == (0, 2)
    assert s.pixel_size_um == pytest.approx(2.5)
    assert [lv.shape[:2] for lv in s.image.levels] == [lowres.shape[:2], (300, 300), (150, 150)]
    np.testing.assert_array_equal(s.image.levels[0][100:140, 200:260], lowres[100:140, 200:260])
    np.testing.assert_array_equal(np.asarray(s.image.levels[0][...]), lowres)


def test_tiff_planar_axes(tmp_path, lowres):
    import tifffile

    path = tmp_path / "planar.tiff"
    tifffile.imwrite(path, np.moveaxis(lowres, 2, 0), photometric="rgb", planarconfig="separate")
    s = load_sample(path)
    lv = s.image.levels[0]
    assert isinstance(lv, AxesView) and lv.shape == lowres.shape
    np.testing.assert_array_equal(lv[10:50, 20:70], lowres[10:50, 20:70])
    np.testing.assert_array_equal(lv[5, 7], lowres[5, 7])
    np.testing.assert_array_equal(lv[..., 1], lowres[..., 1])


def test_ome_zarr(tmp_path, lowres):
    import zarr

    path = tmp_path / "img.ome.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    cyx = np.moveaxis(lowres, 2, 0)
    g.create_array("0", data=cyx, chunks=(3, 128, 128))
    g.create_array("1", data=np.ascontiguousarray(cyx[:, ::2, ::2]), chunks=(3, 128, 128))
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.5]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1.0, 1.0]}]},
            ],
        }
    ]
    assert detect_format(path) == "zarr"
    s = load_sample(path)
    assert s.image.shape == lowres.shape and s.image.downsamples == [1.0, 2.0]
    assert s.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(s.image.levels[0][50:80, 60:90], lowres[50:80, 60:90])
    assert s.sample_id == "img"


def test_plain_jpeg_and_png(tmp_path, her2st_dir, visium_dir, lowres):
    s = load_sample(visium_dir / "spatial/tissue_lowres_image.png")
    assert s.n_spots == 0 and s.adata.obsm["spatial"].shape == (0, 2) and s.pixel_size_um is None
    np.testing.assert_array_equal(np.asarray(s.image.levels[0]), lowres)
    jpg = her2st_dir / "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
    assert detect_format(jpg) == "jpeg"
    j = load_sample(jpg)
    assert j.n_spots == 0 and 9800 < j.image.shape[0] < 10000
    assert not j.image.levels[0].loaded


def test_input_errors(tmp_path, her2st_dir):
    with pytest.raises(FlagInputError) as e:
        load_sample(tmp_path / "nope.h5ad")
    assert "nope.h5ad" in _one_line(e) and "not found" in str(e.value)

    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(FlagInputError, match="unknown format"):
        load_sample(txt)

    with pytest.raises(FlagInputError, match="unknown folder"):
        load_sample(tmp_path)

    jpg = her2st_dir / "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpg.read_bytes()[: 1_000_000])
    with pytest.raises(FlagInputError) as e:
        load_sample(cut)
    assert "cut.jpg" in _one_line(e) and "truncated" in str(e.value)

    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(FlagInputError) as e:
        load_sample(bad)
    assert "bad.h5ad" in _one_line(e)

    badtif = tmp_path / "bad.tif"
    badtif.write_bytes(b"II*\x00garbage")
    with pytest.raises(FlagInputError, match="bad.tif"):
        load_sample(badtif)
