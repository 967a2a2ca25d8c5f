"""Regions of a prediction: what each expresses and how two differ, with the model's uncertainty.

One function for every front end (the Regions dock, ``napari-flag regions``
and :func:`napari_flag.regions`): :func:`region_stats` takes a prediction
(AnnData as ``predict`` writes it) and regions (a QuPath GeoJSON, polygons,
or :class:`Region` s), draws joint posterior samples of the regions' spots
(:func:`~napari_flag.regions.posterior.posterior_draws`) and returns a
:class:`RegionResult` with the summary and comparison tables.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._io import atomic_path, atomic_write_text, check_output
from ..errors import FlagInputError
from .posterior import DEFAULT_DRAWS, POSTERIOR_TEMPERATURE, posterior_draws
from .shapes import (
    Region,
    read_regions,
    regions_from_geojson,
    regions_from_polygons,
    regions_geojson,
    spots_in_regions,
)
from .stats import CREDIBLE, DE_COLUMNS, SUMMARY_COLUMNS, RegionResult

__all__ = [
    "CREDIBLE",
    "DEFAULT_DRAWS",
    "DE_COLUMNS",
    "SUMMARY_COLUMNS",
    "Region",
    "RegionResult",
    "as_regions",
    "posterior_draws",
    "read_regions",
    "region_stats",
    "regions_from_geojson",
    "regions_from_polygons",
    "regions_geojson",
    "shape_names",
    "spots_in_regions",
    "write_geojson",
    "write_table",
]


def as_regions(regions, pixel_size_um: float | None = None) -> list[Region]:
    """Regions from a GeoJSON path, a parsed GeoJSON dict, :class:`Region` s, ``{name: (n, 2) xy}``
    polygons, or a napari Shapes layer (its polygons' names from ``features['name']``, converted from
    world coordinates with the slide's ``pixel_size_um``)."""
    if isinstance(regions, (str, Path)):
        return read_regions(regions)
    if isinstance(regions, dict) and regions.get("type") in ("FeatureCollection", "Feature"):
        return regions_from_geojson(regions)
    if isinstance(regions, dict):
        return regions_from_polygons(list(regions.values()), [str(k) for k in regions])
    if hasattr(regions, "shape_type") and hasattr(regions, "data"):
        return _from_shapes_layer(regions, pixel_size_um)
    regions = list(regions)
    if not all(isinstance(r, Region) for r in regions):
        raise FlagInputError("regions: expected a GeoJSON file or dict, Region objects, {name: polygon} "
                             "or a napari Shapes layer")
    return regions


def _from_shapes_layer(layer, pixel_size_um: float | None) -> list[Region]:
    """A napari Shapes layer's polygons and rectangles as regions in full-resolution pixels."""
    px = float(pixel_size_um or 1.0)
    names = shape_names(layer)
    polys, keep = [], []
    for k, (data, kind) in enumerate(zip(layer.data, layer.shape_type)):
        if kind not in ("polygon", "rectangle", "ellipse"):
            continue
        world = np.asarray([layer.data_to_world(p) for p in np.asarray(data)])[:, -2:]
        polys.append(world[:, ::-1] / px)  # napari (row, col) in microns -> full-res (x, y)
        keep.append(names[k])
    if not polys:
        raise FlagInputError(f"{layer.name}: no polygons, rectangles or ellipses to use as regions")
    return regions_from_polygons(polys, keep)


def shape_names(layer) -> list[str]:
    """Each shape's name: the layer's ``name`` feature when set, else ``"region N"``."""
    n = len(layer.data)
    feats = getattr(layer, "features", None)
    col = feats["name"] if feats is not None and "name" in getattr(feats, "columns", ()) else [None] * n
    return [str(v) if isinstance(v, str) and v.strip() else f"region {k + 1}" for k, v in enumerate(col)]


def _slide_bounds(adata) -> tuple[float, float] | None:
    """Full-resolution ``(height, width)`` of the prediction's slide, from its scanpy image."""
    for entry in (adata.uns.get("spatial") or {}).values():
        img = (entry.get("images") or {}).get("hires")
        f = (entry.get("scalefactors") or {}).get("tissue_hires_scalef")
        if img is not None and f:
            return float(np.asarray(img).shape[0]) / f, float(np.asarray(img).shape[1]) / f
    return None


def region_stats(adata, regions, *, n_draws: int = DEFAULT_DRAWS, seed: int = 0, sample=None,
                 checkpoint: str | Path | None = None, temperature: float = POSTERIOR_TEMPERATURE,
                 compare: tuple[str, str] | None = None, source: str = "regions",
                 progress: Callable[[int, int], None] | None = None) -> RegionResult:
    """Per region: its spots and each gene's average with a 95% credible interval; any two compare
    through :meth:`RegionResult.compare` (``compare=(a, b)``: checked before sampling, and
    ``result.de`` is that comparison).  ``adata`` is a prediction as ``predict`` writes it;
    ``regions`` anything :func:`as_regions` takes; ``sample`` the slide when already open."""
    from ..record import PredictionRecord

    if "spatial" not in adata.obsm or "flag" not in adata.uns:
        raise FlagInputError("not a prediction of napari-flag (no obsm['spatial'] or uns['flag'])")
    rec = PredictionRecord.from_uns(adata.uns.get("flag"))
    regs = as_regions(regions, rec.pixel_size_um)
    names = [r.name for r in regs]
    for name in compare or ():
        if name not in names:
            raise FlagInputError(f"{source}: unknown region {name!r}; the regions are: {', '.join(names)}")
    if compare is not None and compare[0] == compare[1]:
        raise FlagInputError(f"compare: {compare[0]!r} with itself; choose two different regions")
    inside = spots_in_regions(regs, adata.obsm["spatial"], _slide_bounds(adata), source)
    spots = np.flatnonzero(inside.any(axis=0))
    t0 = time.perf_counter()
    sampled: dict = {}
    draws = posterior_draws(adata, spots, n_draws, seed, sample=sample, checkpoint=checkpoint,
                            temperature=temperature, progress=progress, stats=sampled)
    pos = np.full(adata.n_obs, -1)
    pos[spots] = np.arange(len(spots))
    averages = np.stack([draws[:, pos[np.flatnonzero(row)]].mean(axis=1) for row in inside])
    X = np.asarray(adata.X, dtype=np.float64)
    measured = None
    if "truth" in adata.layers:
        truth = np.asarray(adata.layers["truth"], dtype=np.float64)
        measured = np.stack([np.nanmean(truth[row], axis=0) if np.isfinite(truth[row]).any() else
                             np.full(truth.shape[1], np.nan) for row in inside])
    info = {"n_draws": int(n_draws), "seed": int(seed), "temperature": float(temperature),
            "credible": CREDIBLE, "region_spots": len(spots), "sampled_spots": sampled["sampled_spots"],
            "seconds": time.perf_counter() - t0}
    return RegionResult(names, [str(g) for g in adata.var_names], inside, averages, X.mean(axis=0),
                        X.std(axis=0), measured, regs, info, tuple(compare) if compare else None)


def write_table(df, path: str | Path, overwrite: bool = False) -> Path:
    """A table as CSV, atomically (temporary file, then rename)."""
    out = check_output(path, overwrite)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return out


def write_geojson(result: RegionResult, path: str | Path, overwrite: bool = False,
                  genes: list[str] | None = None) -> Path:
    """The regions with their measurements (spot count, each gene's mean and interval) as QuPath GeoJSON."""
    out = check_output(path, overwrite)
    return atomic_write_text(out, json.dumps(regions_geojson(result.regions, result.measurements(genes))))
