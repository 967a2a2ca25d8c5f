"""Tissue masks a user brings: a mask image, QuPath GeoJSON, a prediction's recorded mask; CLI --tissue."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from napari_flag.cli import main
from napari_flag.data import load_sample
from napari_flag.data.lattice import ST_LEGACY, virtual_spots
from napari_flag.data.tissue import detect_tissue
from napari_flag.data.tissue_input import mask_from_record, mask_record, read_tissue_mask
from napari_flag.errors import FlagInputError


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _geojson(path, *features):
    feats = []
    for ring, cls in features:
        props = {"name": cls or "tissue"}
        if cls:
            props["classification"] = {"name": cls, "color": [255, 0, 0]}
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": props})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


@pytest.fixture(scope="module")
def slide(c2_slide):
    path, _ = c2_slide
    return path, load_sample(path)


def _bbox(s):
    t = detect_tissue(s.image, s.pixel_size_um, source=s.source)
    return t, t.bbox_fullres()


def test_geojson_includes_and_excludes(slide, tmp_path):
    path, s = slide
    t, (x0, y0, x1, y1) = _bbox(s)
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    gj = _geojson(tmp_path / "a.geojson", (_square(x0, y0, xm, y1), None),
                  (_square(x0, ym, xm, y1), "Ignore*"))
    mask = read_tissue_mask(gj, s.image.fullres_shape, s.pixel_size_um)
    v = virtual_spots(s, ST_LEGACY.with_spacing(100.0), tissue=mask)
    xy = v.coords
    assert len(xy) > 5
    assert (xy[:, 0] < xm + 50).all() and (xy[:, 1] < ym + 50).all()  # only the kept quarter (plus a spot's edge)
    # only excluding: the detected tissue less the excluded half
    only = read_tissue_mask(_geojson(tmp_path / "b.geojson", (_square(0, 0, xm, 1e6), "Exclude")),
                            s.image.fullres_shape, s.pixel_size_um, detect=lambda: t)
    w = virtual_spots(s, ST_LEGACY.with_spacing(100.0), tissue=only)
    assert (w.coords[:, 0] > xm - 50).all() and len(w.coords) > 5


def test_mask_image_at_any_resolution_and_recorded_masks(slide, tmp_path):
    path, s = slide
    h, w = s.image.fullres_shape
    small = np.zeros((int(h / 10), int(w / 10)), np.uint8)
    small[: small.shape[0] // 2] = 255  # the top half
    Image.fromarray(small).save(tmp_path / "m.png")
    mask = read_tissue_mask(tmp_path / "m.png", s.image.fullres_shape, s.pixel_size_um)
    assert mask.contains(np.array([[w / 2, h / 4]]))[0] and not mask.contains(np.array([[w / 2, 3 * h / 4]]))[0]
    again = mask_from_record(mask_record(mask))
    np.testing.assert_array_equal(again.mask, mask.mask)
    assert again.fullres_per_px == mask.fullres_per_px


@pytest.mark.parametrize("case, message", [
    ("not_collection", "not a GeoJSON FeatureCollection of polygons"),
    ("points", "no Polygon or MultiPolygon features"),
    ("outside", "outside the slide"),
    ("wrong_shape", "does not have the slide's shape"),
    ("empty_png", "marks no tissue"),
    ("garbage", "unreadable GeoJSON"),
    ("unknown", "unknown tissue mask format"),
])
def test_bad_masks_are_one_line_naming_the_file(slide, tmp_path, case, message):
    path, s = slide
    h, w = s.image.fullres_shape
    p = tmp_path / f"{case}.geojson"
    if case == "not_collection":
        p.write_text(json.dumps({"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]}))
    elif case == "points":
        p.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}]}))
    elif case == "outside":
        _geojson(p, (_square(w * 4, h * 4, w * 5, h * 5), None))
    elif case == "wrong_shape":
        p = tmp_path / "m.png"
        Image.fromarray(np.full((100, 300), 255, np.uint8)).save(p)
    elif case == "empty_png":
        p = tmp_path / "e.png"
        Image.fromarray(np.zeros((int(h / 10), int(w / 10)), np.uint8)).save(p)
    elif case == "garbage":
        p.write_text("{ not json")
    else:
        p = tmp_path / "m.bmp"
        p.write_bytes(b"BM")
    with pytest.raises(FlagInputError) as e:
        read_tissue_mask(p, s.image.fullres_shape, s.pixel_size_um)
    assert str(e.value).startswith(str(p)) and message in str(e.value) and "\n" not in str(e.value)


def test_cli_tissue_geojson_and_rerun_from_the_recorded_mask(slide, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(tmp_path / "features"))
    path, s = slide
    _, (x0, y0, x1, y1) = _bbox(s)
    xm = (x0 + x1) / 2
    gj = _geojson(tmp_path / "keep_left.geojson", (_square(xm, 0, 1e6, 1e6), "Ignore"))
    out = tmp_path / "p.h5ad"
    assert main(["predict", str(path), "--out", str(out), "--tissue", str(gj), "--steps", "1", "--samples", "1",
                 "--quiet", "--device", "cpu"]) == 0
    a = ad.read_h5ad(out)
    assert a.n_obs > 5 and (a.obsm["spatial"][:, 0] < xm + 50).all()
    assert a.uns["flag"]["tissue"]["params"]["from"] == "detected minus annotations"
    out2 = tmp_path / "again.h5ad"
    assert main(["predict", str(path), "--out", str(out2), "--tissue", str(out), "--steps", "1", "--samples", "1",
                 "--quiet", "--device", "cpu"]) == 0
    b = ad.read_h5ad(out2)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
