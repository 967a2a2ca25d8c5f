"""Readers, sample data and layer-data helpers, without a display."""
from __future__ import annotations

import numpy as np
import pytest

from napari_flag import layers as L


@pytest.fixture(scope="module")
def c2_layers(her2st_dir):
    from napari_flag._reader import napari_get_reader

    reader = napari_get_reader("her2st:C2")
    assert reader is not None
    return reader("her2st:C2")


def test_her2st_reader_geometry_and_metadata(c2_layers):
    (img, ik, it), (pts, pk, pt) = c2_layers
    assert (it, pt) == ("image", "points")
    md = pk["metadata"]
    sample = md[L.SAMPLE]
    assert sample is not None and sample.sample_id == "C2"
    ps = sample.pixel_size_um
    assert 0.5 < ps < 1.0  # legacy ST: ~0.7-0.8 um per full-res pixel
    # spots: (row, col) = (y, x) in full-res px, scaled to microns
    np.testing.assert_allclose(pts, sample.coords[:, ::-1])
    assert pk["scale"] == pytest.approx((ps, ps))
    assert pk["size"] == pytest.approx(sample.spot_diameter_px)
    assert pk["size"] * ps == pytest.approx(100.0, rel=0.02)  # 100 um ST spots
    assert tuple(pk["units"]) == ("um", "um")
    # image: level 0 pixel -> full-res px / image.scale, then microns
    assert ik["scale"] == pytest.approx((ps / sample.image.scale,) * 2)
    assert ik["rgb"] and ik["multiscale"] == sample.image.is_multiscale
    # plain facts, a key and the Sample itself, the same on both layers
    for k in ("sample_id", "source", "pixel_size_um", "grid", "sample_key", L.ROLE, L.SAMPLE):
        assert k in md and k in ik["metadata"]
    assert md["source"] == "her2st:C2" and md["grid"] == "square"
    assert ik["metadata"]["sample_key"] == md["sample_key"]
    assert ik["metadata"][L.SAMPLE] is sample
    # hover values: spot id, total counts and log2(1+count) of the top genes
    f = pk["features"]
    assert list(f)[:2] == ["spot", "total_counts"] and len(f["spot"]) == sample.n_spots
    g = md["genes"][0]
    raw = np.asarray(sample.adata[:, g].X.todense()).ravel()
    np.testing.assert_allclose(f[g], np.log2(1 + raw), rtol=1e-6)


def test_visium_reader(visium_dir):
    from napari_flag._reader import napari_get_reader

    layers = napari_get_reader(str(visium_dir))(str(visium_dir))
    (img, ik, _), (pts, pk, _) = layers
    s = pk["metadata"][L.SAMPLE]
    assert s.grid == "hex" and len(pts) == s.n_spots == 2695
    # lowres PNG: one level-0 pixel is 1/tissue_lowres_scalef full-res pixels
    assert ik["scale"][0] == pytest.approx(s.pixel_size_um / s.image.scale)
    assert pk["size"] * s.pixel_size_um == pytest.approx(55.0, rel=0.05)  # Visium spots are 55 um


def test_reader_declines_unknown_and_reports_bad_files(tmp_path, monkeypatch):
    from napari_flag import _reader

    (tmp_path / "notes.txt").write_text("hello")
    assert _reader.napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.napari_get_reader(str(tmp_path)) is None  # an unrelated folder
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"not hdf5 at all")
    seen = []
    monkeypatch.setattr(_reader, "_notify", seen.append)
    reader = _reader.napari_get_reader(str(bad))
    assert reader is not None
    assert reader(str(bad)) == [(None,)]  # nothing added, no second error from napari
    assert len(seen) == 1 and "broken.h5ad" in seen[0]


def test_sample_data_offline_error(tmp_path, monkeypatch):
    from napari_flag import _sample_data
    from napari_flag.errors import FlagInputError

    monkeypatch.setenv("NAPARI_FLAG_DATA_DIR", str(tmp_path))  # empty cache
    monkeypatch.setenv("NAPARI_FLAG_OFFLINE", "1")  # and no network
    with pytest.raises(FlagInputError, match=r"HER2ST C3 .*NAPARI_FLAG_DATA_DIR") as err:
        _sample_data.her2st_c3()
    assert "\n" not in str(err.value)  # one line: it is the whole notification


def test_sample_data_from_cache(her2st_dir):
    from napari_flag import _sample_data

    layers = _sample_data.her2st_c2()
    assert [t[2] for t in layers] == ["image", "points"]
    assert layers[1][1]["metadata"]["source"] == "her2st:C2"


def test_layers_module_is_headless():
    import subprocess
    import sys

    code = (
        "import sys, napari_flag.layers\n"
        "print(any(m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'napari', 'pandas') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prediction_layer_data_shares_contrast():
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    n, g = 50, 4
    truth = rng.gamma(2, 1, (n, g)).astype(np.float32)
    pred = (truth * 0.5).astype(np.float32)
    a = ad.AnnData(pred, obs=pd.DataFrame(index=[f"s{i}" for i in range(n)]),
                   var=pd.DataFrame(index=list("ABCD")))
    a.layers["truth"] = truth
    a.layers["std"] = np.full_like(pred, 0.1)
    a.obsm["spatial"] = rng.uniform(0, 1000, (n, 2))
    a.uns["flag"] = {"sample_id": "toy"}
    meta = {"pixel_size_um": 0.5, "spot_diameter_px": 20.0}
    out = L.prediction_to_layer_data(a, "B", meta=meta, key="k")
    roles = [t[1]["metadata"][L.ROLE] for t in out]
    assert roles == ["pred", "truth", "std"]
    kw = {r: t[1] for r, t in zip(roles, out)}
    assert kw["pred"]["face_contrast_limits"] == kw["truth"]["face_contrast_limits"]
    lo, hi = kw["pred"]["face_contrast_limits"]
    both = np.r_[pred[:, 1], truth[:, 1]]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(both, [1, 99])))
    np.testing.assert_allclose(kw["truth"]["features"]["value"], truth[:, 1])
    np.testing.assert_allclose(out[0][0], a.obsm["spatial"][:, ::-1])
    assert kw["std"]["face_colormap"] == L.UNCERTAINTY_COLORMAP
    assert L.percentile_limits(np.ones(5)) == (1.0, 2.0)  # constant values still give a range
    # the layers say which scale their values are on (figures title their colorbars with it)
    assert kw["pred"]["metadata"]["values"] == "log2(1+count)"
    a.uns["flag"]["transform"] = "lognorm"
    out = L.prediction_to_layer_data(a, "B", meta=meta, key="k")
    assert out[0][1]["metadata"]["values"] == "ln(1+count per 10k)"


def test_reader_h5ad_and_pyramidal_tiff(visium_dir, tmp_path):
    from napari_flag._reader import napari_get_reader
    from napari_flag.data import load_sample
    from napari_flag.data.h5ad import write_h5ad
    from napari_flag.data.images import write_pyramidal_tiff

    s = load_sample(str(visium_dir))
    h5 = write_h5ad(s, tmp_path / "brain.h5ad")
    (img, ik, _), (pts, pk, _) = napari_get_reader(str(h5))(str(h5))
    assert len(pts) == s.n_spots and pk["metadata"]["pixel_size_um"] == pytest.approx(s.pixel_size_um)
    np.testing.assert_allclose(pts, s.coords[:, ::-1])

    rgb = np.full((1500, 1200, 3), 230, np.uint8)
    rgb[200:900, 300:1000] = (150, 60, 140)
    tif = write_pyramidal_tiff(tmp_path / "slide.tif", rgb, pixel_size_um=0.5, min_px=512)
    (layer,) = napari_get_reader(str(tif))(str(tif))
    data, kw, kind = layer
    assert kind == "image" and kw["multiscale"] and len(data) >= 2
    assert kw["scale"] == pytest.approx((0.5, 0.5)) and tuple(kw["units"]) == ("um", "um")
    assert data[0].shape[:2] == (1500, 1200)


@pytest.mark.parametrize("which", ["C2", "visium"])
def test_spot_raster_on_real_spots(which, her2st_dir, visium_dir):
    """The image stand-in of a Points panel: each spot's disc, nothing else, inside the budget."""
    from napari_flag.data import load_sample

    s = load_sample("her2st:C2" if which == "C2" else str(visium_dir))
    rc = s.coords[:, ::-1]
    d = float(s.spot_diameter_px)
    budget = 400_000
    R = L.spot_raster(rc, d, max_pixels=budget)
    assert R.index.size <= budget and R.n_spots == s.n_spots
    assert d / R.step <= 32 + 1e-9
    # every spot centre lies on its own spot ...
    ij = np.rint((rc - np.asarray(R.origin)) / R.step).astype(int)
    assert (R.index[ij[:, 0], ij[:, 1]] == np.arange(s.n_spots)).all()
    # ... and every painted pixel centre is within a radius of its spot
    ii, jj = np.nonzero(R.index >= 0)
    centres = np.asarray(R.origin) + np.c_[ii, jj] * R.step
    dist = np.linalg.norm(centres - rc[R.index[ii, jj]], axis=1)
    assert dist.max() <= d / 2 + 1e-6
    # a disc has about the area it should (in pixels), so spots are not squares or dots
    per_spot = np.bincount(R.index[R.index >= 0], minlength=s.n_spots)
    area = np.pi * (d / 2 / R.step) ** 2
    assert np.median(per_spot) == pytest.approx(area, rel=0.15)
    # painting: values on the spots, NaN (drawn transparent) between them
    v = np.linspace(0, 1, s.n_spots, dtype=np.float32)
    img = R.render(v)
    assert img.dtype == np.float32 and np.isnan(img[R.index < 0]).all()
    np.testing.assert_array_equal(img[ii, jj], v[R.index[ii, jj]])
    out = np.zeros_like(img)
    assert R.render(v[::-1], out=out) is out and out[ij[0, 0], ij[0, 1]] == v[-1]
    # geometry: raster pixel (i, j) sits where the Points layer puts its data
    ps = s.pixel_size_um
    geo = R.layer_geometry(scale=(ps, ps))
    world = np.asarray(geo["translate"]) + ij * np.asarray(geo["scale"])
    np.testing.assert_allclose(world, rc * ps, atol=R.step * ps)
    with pytest.raises(ValueError, match="values"):
        R.render(v[:-1])
    with pytest.raises(ValueError, match="diameter"):
        L.spot_raster(rc, 0.0)
