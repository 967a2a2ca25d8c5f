"""Regions as polygons in the slide's full-resolution pixels: read, named, matched to spots, written.

A region is a name and a (Multi)Polygon in full-resolution ``(x, y)`` pixels,
the frame of ``obsm["spatial"]`` and of QuPath's GeoJSON export.  Features
that share a name are one region (QuPath users annotate a class in several
pieces).  Headless: shapely only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data._util import fail, reading, require_file
from ..errors import FlagInputError

__all__ = ["Region", "read_regions", "regions_from_geojson", "regions_from_polygons", "regions_geojson", "spots_in_regions"]


@dataclass
class Region:
    """A named area: ``geometry`` a shapely (Multi)Polygon in full-resolution pixels."""

    name: str
    geometry: object
    properties: dict = field(default_factory=dict)


def _feature_name(feature: dict, k: int) -> str:
    props = feature.get("properties") or {}
    name = props.get("name")
    if not (isinstance(name, str) and name.strip()):
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else cls
    return name.strip() if isinstance(name, str) and name.strip() else f"region {k + 1}"


def _geometry(rings_list) -> object:
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.validation import make_valid

    polys = [Polygon(r[0], r[1:]) for r in rings_list if len(r) and len(r[0]) >= 3]
    geom = make_valid(MultiPolygon(polys) if len(polys) > 1 else polys[0])
    return geom


def _merge(named: list[tuple[str, object]]) -> list[Region]:
    """One region per name, in order of first appearance (same-named pieces unioned)."""
    from shapely import unary_union

    order: dict[str, list] = {}
    for name, geom in named:
        order.setdefault(name, []).append(geom)
    return [Region(name, parts[0] if len(parts) == 1 else unary_union(parts)) for name, parts in order.items()]


def read_regions(path: str | Path) -> list[Region]:
    """The regions of a GeoJSON file (a FeatureCollection of Polygon/MultiPolygon features, as QuPath
    exports annotations).  A region's name is ``properties.name``, else
    ``properties.classification.name``, else ``"region N"``."""
    p = require_file(path, "regions file")
    with reading(p, "unreadable GeoJSON"):
        doc = json.loads(p.read_text())
    return regions_from_geojson(doc, p)


def regions_from_geojson(doc, where: str | Path = "regions") -> list[Region]:
    """The regions of a parsed GeoJSON document (see :func:`read_regions`); ``where`` names it in errors."""
    from ..data.tissue_input import feature_rings, polygon_features

    named = []
    for k, f in enumerate(polygon_features(doc, where)):
        rings = feature_rings(f)
        if not rings or not any(len(r) for r in rings):
            raise fail(where, f"feature {k + 1} ({_feature_name(f, k)!r}) has a polygon with fewer than 3 points")
        named.append((_feature_name(f, k), _geometry(rings)))
    return _merge(named)


def regions_from_polygons(polygons: list[np.ndarray], names: list[str]) -> list[Region]:
    """Regions from ``(n, 2)`` ``(x, y)`` vertex arrays in full-resolution pixels (e.g. a napari
    Shapes layer's polygons, converted), one name per polygon; same names are one region."""
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    if len(polygons) != len(names):
        raise FlagInputError(f"regions: {len(polygons)} polygons but {len(names)} names")
    named = []
    for poly, name in zip(polygons, names):
        xy = np.asarray(poly, dtype=np.float64)
        if xy.ndim != 2 or len(xy) < 3:
            raise FlagInputError(f"region {name!r}: a polygon needs at least 3 vertices")
        named.append((str(name), make_valid(Polygon(xy[:, :2]))))
    return _merge(named)


def spots_in_regions(regions: list[Region], coords: np.ndarray, bounds: tuple[float, float] | None = None,
                     source: str = "regions") -> np.ndarray:
    """``bool (n_regions, n_spots)``: which spots (full-res ``(x, y)``) lie in which region.

    Raises when no region holds any spot (coordinates at another scale, or
    the regions of another slide), when a region lies wholly outside the slide
    (``bounds`` = full-res ``(height, width)``), or when a region holds no spot.
    """
    import shapely
    from shapely.geometry import box

    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    # a centre on the outline counts as inside (intersects, not contains): spots on a shared edge are in both
    inside = np.array([shapely.intersects_xy(r.geometry, xy[:, 0], xy[:, 1]) for r in regions]).reshape(len(regions), -1)
    if len(regions) and not inside.any():
        lo, hi = xy.min(0), xy.max(0)
        b = np.array([r.geometry.bounds for r in regions])
        raise FlagInputError(
            f"{source}: no spot falls in any region; regions span x {b[:, 0].min():.0f}-{b[:, 2].max():.0f}, "
            f"y {b[:, 1].min():.0f}-{b[:, 3].max():.0f} px but spots span x {lo[0]:.0f}-{hi[0]:.0f}, "
            f"y {lo[1]:.0f}-{hi[1]:.0f} px (regions at another scale, or of another slide?)")
    slide = box(0.0, 0.0, float(bounds[1]), float(bounds[0])) if bounds is not None else None
    for r, row in zip(regions, inside):
        if slide is not None and not r.geometry.intersects(slide):
            raise FlagInputError(f"{source}: region {r.name!r} lies outside the slide "
                                 f"({bounds[1]:.0f} x {bounds[0]:.0f} px)")
        if not row.any():
            raise FlagInputError(f"{source}: region {r.name!r} contains no spots")
    return inside


def regions_geojson(regions: list[Region], measurements: dict[str, dict] | None = None) -> dict:
    """A QuPath-readable FeatureCollection: one annotation per region, its name and classification,
    and ``measurements`` (``{region: {key: number}}``) in ``properties.measurements``."""
    from shapely.geometry import mapping

    feats = []
    for r in regions:
        props = {"objectType": "annotation", "name": r.name, "classification": {"name": r.name}}
        if measurements and r.name in measurements:
            props["measurements"] = {k: float(v) for k, v in measurements[r.name].items()}
        feats.append({"type": "Feature", "geometry": mapping(r.geometry), "properties": props})
    return {"type": "FeatureCollection", "features": feats}
