"""Regions: QuPath GeoJSON in, region averages and comparisons with posterior intervals out (API = CLI)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import napari_flag as nf
from napari_flag.cli import main
from napari_flag.errors import FlagInputError
from napari_flag.roi import (
    as_regions,
    read_regions,
    region_stats,
    spots_in_regions,
    write_geojson,
)


def _square(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _qupath(features) -> dict:
    """A FeatureCollection as QuPath exports annotations (name, or only a classification)."""
    out = []
    for name, cls, rings in features:
        props = {"objectType": "annotation"}
        if name:
            props["name"] = name
        if cls:
            props["classification"] = {"name": cls, "color": [255, 0, 0]}
        out.append({"type": "Feature", "id": "x", "geometry": {"type": "Polygon", "coordinates": rings},
                    "properties": props})
    return {"type": "FeatureCollection", "features": out}


@pytest.fixture(scope="module")
def c3_prediction(her2st_dir, tmp_path_factory):
    """C3 predicted by the bundled model, with two halves of the section as regions."""
    cache = tmp_path_factory.mktemp("features")
    adata = nf.predict("her2st:C3", device="cpu", feature_cache=cache)
    xy = adata.obsm["spatial"]
    xs = np.unique(np.round(xy[:, 0]))
    mid = float(xs[len(xs) // 2] - 37.5)  # between two lattice columns: no centre on the shared edge
    lo, hi = xy.min(0) - 40, xy.max(0) + 40
    fc = _qupath([("Left", None, _square(lo[0], lo[1], mid, hi[1])),
                  (None, "Right", _square(mid, lo[1], hi[0], hi[1]))])
    return adata, fc, cache


def test_qupath_names_and_same_named_pieces_are_one_region(tmp_path):
    fc = _qupath([("Tumour", None, _square(0, 0, 10, 10)), (None, "Stroma", _square(20, 0, 30, 10)),
                  ("Tumour", "Other", _square(40, 0, 50, 10)), (None, None, _square(60, 0, 70, 10))])
    fc["features"].append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
                           "properties": {"name": "a point"}})  # other objects of an export are left out
    p = tmp_path / "r.geojson"
    p.write_text(json.dumps(fc))
    regs = read_regions(p)
    assert [r.name for r in regs] == ["Tumour", "Stroma", "region 4"]
    assert regs[0].geometry.area == pytest.approx(200.0)  # two pieces
    xy = np.array([[5, 5], [25, 5], [45, 5], [65, 5], [100, 100]], float)
    inside = spots_in_regions(regs, xy)
    assert inside.tolist() == [[True, False, True, False, False], [False, True, False, False, False],
                               [False, False, False, True, False]]


@pytest.mark.parametrize("doc, problem", [
    ({"type": "Polygon", "coordinates": _square(0, 0, 1, 1)}, "not a GeoJSON FeatureCollection"),
    ({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]},
     "no Polygon or MultiPolygon"),
    ("{not json", "unreadable GeoJSON"),
])
def test_bad_geojson_is_one_line_naming_the_file(tmp_path, doc, problem):
    p = tmp_path / "bad.geojson"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(FlagInputError, match=problem) as e:
        read_regions(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_regions_that_miss_the_spots_say_why():
    xy = np.array([[100.0, 100.0], [200.0, 100.0], [300.0, 300.0]])
    regs = read_regions_from({"A": _square(50, 50, 250, 150), "B": _square(900, 900, 950, 950)})
    with pytest.raises(FlagInputError, match="'B' contains no spots"):
        spots_in_regions(regs, xy)
    with pytest.raises(FlagInputError, match="'B' lies outside the slide"):
        spots_in_regions(regs, xy, bounds=(500.0, 500.0))
    tiny = read_regions_from({"A": _square(0.05, 0.05, 0.25, 0.15)})  # another scale (e.g. a thumbnail's)
    with pytest.raises(FlagInputError, match="no spot falls in any region.*another scale"):
        spots_in_regions(tiny, xy)


def read_regions_from(polys: dict):
    return as_regions({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": r}, "properties": {"name": n}}
        for n, r in polys.items()]})


def test_region_averages_and_comparison_on_a_real_prediction(c3_prediction):
    adata, fc, _ = c3_prediction
    res = nf.regions(adata, fc, compare=("Left", "Right"), draws=16, seed=0)
    s = res.summary()
    assert list(s.columns[:6]) == ["region", "gene", "n_spots", "mean", "lower", "upper"]
    assert set(s["region"]) == {"Left", "Right"} and len(s) == 2 * adata.n_vars
    assert res.n_spots.sum() == adata.n_obs  # two halves: every spot in one of them
    assert (s["lower"] < s["mean"]).all() and (s["mean"] < s["upper"]).all()
    # the posterior mean of a region's average is close to the average of the prediction itself
    left = res.membership[0]
    np.testing.assert_allclose(s[s.region == "Left"]["mean"], np.asarray(adata.X)[left].mean(0), atol=0.25)
    de = res.de
    assert list(de.columns[:5]) == ["gene", "difference", "lower", "upper", "prob_greater"]
    assert (np.diff(np.abs(de["difference"].to_numpy())) <= 1e-12).all()  # sorted by |difference|
    by_gene = s.pivot(index="gene", columns="region", values="mean")
    np.testing.assert_allclose(de.set_index("gene")["difference"],
                               (by_gene["Left"] - by_gene["Right"]).loc[de["gene"]], atol=1e-5)
    sure = de[(de.prob_greater > 0.99) | (de.prob_greater < 0.01)]
    assert len(sure) > 10 and (np.sign(sure.difference) == np.where(sure.prob_greater > 0.5, 1, -1)).all()
    # on a slide with measured spots the measured difference is beside the predicted one, and agrees in sign
    # for most of the genes the posterior is sure about
    agree = np.sign(sure["difference"]) == np.sign(sure["measured_difference"])
    assert agree.mean() > 0.8
    with pytest.raises(FlagInputError, match="unknown region 'Tumor'; the regions are: Left, Right"):
        nf.regions(adata, fc, compare=("Tumor", "Left"), draws=4)


def test_cli_writes_what_the_api_computes_and_qupath_geojson(c3_prediction, tmp_path, capsys):
    adata, fc, _ = c3_prediction
    pred, regions = tmp_path / "C3.h5ad", tmp_path / "regions.geojson"
    adata.write_h5ad(pred)
    regions.write_text(json.dumps(fc))
    out, de_out, gj = tmp_path / "summary.csv", tmp_path / "de.csv", tmp_path / "out.geojson"
    rc = main(["regions", str(pred), "--regions", str(regions), "--out", str(out), "--compare", "Left", "Right",
               "--de", str(de_out), "--geojson", str(gj), "--draws", "8", "--seed", "3"])
    assert rc == 0
    api = nf.regions(pred, regions, compare=("Left", "Right"), draws=8, seed=3)
    cli_s, cli_de = pd.read_csv(out), pd.read_csv(de_out)
    assert list(cli_s.columns[:6]) == ["region", "gene", "n_spots", "mean", "lower", "upper"]
    np.testing.assert_allclose(cli_s["mean"], api.summary()["mean"], rtol=1e-5)
    np.testing.assert_allclose(cli_de["prob_greater"], api.de["prob_greater"], rtol=1e-5, atol=1e-6)
    assert cli_de["gene"].tolist() == api.de["gene"].tolist()
    back = json.loads(gj.read_text())
    assert [f["properties"]["name"] for f in back["features"]] == ["Left", "Right"]
    meas = back["features"][0]["properties"]["measurements"]
    assert meas["FLAG spots"] == api.n_spots[0] and any(k.endswith(" lower") for k in meas)
    assert [r.name for r in read_regions(gj)] == ["Left", "Right"]  # it reads back
    # never clobbers, and a bad name is one line before any sampling
    with pytest.raises(SystemExit) as e:
        main(["regions", str(pred), "--regions", str(regions), "--out", str(out)])
    assert e.value.code == 1 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["regions", str(pred), "--regions", str(regions), "--out", str(tmp_path / "x.csv"),
              "--compare", "Left", "Nowhere"])
    assert "unknown region 'Nowhere'" in capsys.readouterr().err


def test_export_keeps_geometry(c3_prediction, tmp_path):
    adata, fc, _ = c3_prediction
    res = region_stats(adata, fc, n_draws=4)
    p = write_geojson(res, tmp_path / "r.geojson", genes=list(adata.var_names[:2]))
    again = read_regions(p)
    for a, b in zip(res.regions, again):
        assert a.geometry.symmetric_difference(b.geometry).area < 1e-6 * a.geometry.area
