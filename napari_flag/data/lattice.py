"""Spot arrays as geometry: measured from a real sample, or laid over tissue.

A model trained on one array sees spots of one size at one pitch; predicting
on a routine H&E slide (no spots) means placing *virtual* spots on the same
lattice.  :class:`SpotGeometry` holds that lattice in microns,
:func:`geometry_of` measures it on a sample with spots, and
:func:`virtual_spots` lays it over the detected tissue of a slide.

Lattices use the array conventions of their platform: legacy ST is square
(``x = col * pitch``, ``y = row * pitch``); Visium is hexagonal with doubled
columns, ``row + col`` even, ``x = col * pitch / 2`` and
``y = row * pitch * sqrt(3) / 2``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FlagInputError
from ._util import fail, grid_step_px, guess_grid, nn_distance_px
from .sample import Sample

__all__ = [
    "LATTICES",
    "SpotGeometry",
    "ST_LEGACY",
    "training_geometry",
    "VISIUM",
    "geometry_of",
    "lattice_points",
    "virtual_spots",
    "PIXEL_SIZE_HINT",
]

LATTICES = ("square", "hex")
#: what to tell a user whose image has no pixel size
PIXEL_SIZE_HINT = "pixel size unknown"


def _positive(v, what: str, where: str = "spot geometry") -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(v, bool) or not (math.isfinite(f) and f > 0):
        raise FlagInputError(f"{where}: {what} must be a positive number of microns, got {v!r}")
    return f


@dataclass(frozen=True)
class SpotGeometry:
    """Spot diameter and centre-to-centre pitch in microns, and the lattice kind."""

    diameter_um: float
    spacing_um: float
    lattice: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "diameter_um", _positive(self.diameter_um, "spot diameter"))
        object.__setattr__(self, "spacing_um", _positive(self.spacing_um, "spot spacing"))
        if self.lattice not in LATTICES:
            raise FlagInputError(f"spot geometry: lattice must be 'square' or 'hex', got {self.lattice!r}")

    def with_spacing(self, spacing_um: float) -> "SpotGeometry":
        """Same spots at another pitch (denser or sparser sampling)."""
        return SpotGeometry(self.diameter_um, spacing_um, self.lattice)

    def covering(self, patch_um: float) -> "SpotGeometry":
        """This lattice refined by the smallest whole factor that makes its pitch at most ``patch_um``.

        Patches of side ``patch_um`` centred on such a lattice leave no tissue
        unseen (square and hexagonal alike), and every ``k``-th virtual spot
        still sits on the coarser lattice the model was trained on.  Legacy ST
        (200 um pitch, 112 um patches) becomes 100 um; Visium (100 um) stays.
        """
        k = max(1, math.ceil(self.spacing_um / _positive(patch_um, "patch size") - 1e-9))
        return self if k == 1 else self.with_spacing(self.spacing_um / k)

    def spacing_px(self, pixel_size_um: float) -> float:
        return self.spacing_um / float(pixel_size_um)

    def diameter_px(self, pixel_size_um: float) -> float:
        return self.diameter_um / float(pixel_size_um)

    def to_dict(self) -> dict:
        return {"diameter_um": float(self.diameter_um), "spacing_um": float(self.spacing_um), "lattice": self.lattice}

    @classmethod
    def from_dict(cls, d: dict) -> "SpotGeometry":
        if not hasattr(d, "get"):
            raise FlagInputError(f"spot geometry: expected a mapping, got {type(d).__name__}")
        missing = [k for k in ("diameter_um", "spacing_um", "lattice") if d.get(k) is None]
        if missing:
            raise FlagInputError(f"spot geometry: missing {', '.join(missing)}")
        return cls(d["diameter_um"], d["spacing_um"], str(d["lattice"]))


#: legacy Spatial Transcriptomics: 100 um spots, 200 um apart on a square grid
ST_LEGACY = SpotGeometry(100.0, 200.0, "square")
#: 10x Visium: 55 um spots, 100 um apart on a hexagonal grid
VISIUM = SpotGeometry(55.0, 100.0, "hex")
#: spot diameter over pitch of the two platforms, used when a sample lacks one
_DIAMETER_RATIO = {"square": ST_LEGACY.diameter_um / ST_LEGACY.spacing_um, "hex": VISIUM.diameter_um / VISIUM.spacing_um}


def _name(sample: Sample) -> str:
    return str(sample.source or sample.sample_id)


def _lattice_from_neighbours(xy: np.ndarray) -> str | None:
    """'hex' when a typical spot has 6 neighbours at the pitch, 'square' when 4."""
    from scipy.spatial import cKDTree

    if len(xy) < 7:
        return None
    tree = cKDTree(xy)
    d, _ = tree.query(xy, k=2)
    step = float(np.median(d[:, 1]))
    counts = np.array([len(n) - 1 for n in tree.query_ball_point(xy, step * 1.2)])
    inner = counts[counts >= np.percentile(counts, 75)]  # spots away from the edge
    return "hex" if np.median(inner) >= 5 else "square"


def _pitch_from_neighbours(xy: np.ndarray, lattice: str) -> float | None:
    """Median distance to the 4 (square) or 6 (hex) lattice neighbours, in px.

    Only spots whose neighbours are all present count: at an edge the
    nearest points include diagonals.  The nearest-neighbour distance alone
    would underestimate a slightly warped array (legacy ST by about 6%).
    """
    from scipy.spatial import cKDTree

    k = 4 if lattice == "square" else 6
    if len(xy) <= k:
        return nn_distance_px(xy)
    d, _ = cKDTree(xy).query(xy, k=k + 1)
    d = d[:, 1:]
    nn = float(np.median(d[:, 0]))
    full = d[:, -1] < 1.25 * nn
    return float(np.median(d[full])) if full.any() and nn > 0 else nn_distance_px(xy)


def geometry_of(sample: Sample) -> SpotGeometry:
    """The spot lattice of a sample with spots, measured in microns.

    Pitch: median distance of array neighbours (``obs['array_row'/'array_col']``)
    or, without array indices, of the 4 or 6 nearest spots, times the pixel
    size.  Lattice: hexagonal when all ``row + col`` share a parity
    (Visium's doubled columns), else square; without indices, from the number
    of neighbours at the pitch.  Diameter: the sample's spot diameter, or the
    platform's diameter/pitch ratio when it has none.
    """
    name = _name(sample)
    if sample.n_spots < 2:
        raise fail(name, "needs at least 2 spots to measure the spot lattice")
    if not sample.pixel_size_um:
        raise FlagInputError(f"{name}: {PIXEL_SIZE_HINT}", setting="pixel_size_um")
    px = float(sample.pixel_size_um)
    xy = sample.coords
    obs = sample.adata.obs
    lattice = step = None
    if "array_row" in obs and "array_col" in obs:
        rc = obs[["array_row", "array_col"]].to_numpy()
        if np.isfinite(rc.astype(np.float64)).all():
            lattice = guess_grid(rc)
            step = grid_step_px(rc, xy, lattice)
    if lattice is None:
        lattice = sample.grid if sample.grid in LATTICES else _lattice_from_neighbours(xy)
    if step is None and lattice is not None:
        step = _pitch_from_neighbours(xy, lattice)
    if lattice is None or not step:
        raise fail(name, "cannot measure the spot lattice (spots too few or all at one place)")
    spacing = step * px
    diam = sample.spot_diameter_px * px if np.isfinite(sample.spot_diameter_px) and sample.spot_diameter_px > 0 else None
    if diam is None:
        diam = spacing * _DIAMETER_RATIO[lattice]
    return SpotGeometry(float(diam), float(spacing), lattice)


def training_geometry(samples) -> SpotGeometry | None:
    """The geometry a model trained on ``samples`` expects: median diameter and pitch
    over the slides that can be measured, the lattice most of them have."""
    geoms = []
    for smp in samples:
        try:
            geoms.append(geometry_of(smp))
        except FlagInputError:  # no pixel size, too few spots: says nothing about the others
            continue
    if not geoms:
        return None
    kinds = [g.lattice for g in geoms]
    lattice = max(set(kinds), key=kinds.count)
    same = [g for g in geoms if g.lattice == lattice]
    return SpotGeometry(float(np.median([g.diameter_um for g in same])), float(np.median([g.spacing_um for g in same])),
                        lattice)


def lattice_points(
    lattice: str, spacing_px: float, x_range: tuple[float, float], y_range: tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, xy)`` of every lattice point with ``xy`` inside the ranges.

    Point ``(row, col)`` lies at ``origin + (col * s, row * s)`` on a square
    lattice and at ``origin + (col * s / 2, row * s * sqrt(3) / 2)`` with
    ``row + col`` even on a hexagonal one (``s`` the pitch), so indices are
    non-negative for points right and below ``origin``.
    """
    s = float(spacing_px)
    ox, oy = origin
    dx, dy = (s, s) if lattice == "square" else (s / 2.0, s * math.sqrt(3) / 2.0)
    c0, c1 = math.ceil((x_range[0] - ox) / dx), math.floor((x_range[1] - ox) / dx)
    r0, r1 = math.ceil((y_range[0] - oy) / dy), math.floor((y_range[1] - oy) / dy)
    rows, cols = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    if lattice == "hex":
        keep = (rows + cols) % 2 == 0
        rows, cols = rows[keep], cols[keep]
    xy = np.column_stack([ox + cols * dx, oy + rows * dy]).astype(np.float64)
    return rows.astype(np.int64), cols.astype(np.int64), xy


def virtual_spots(
    sample: Sample,
    geometry: SpotGeometry,
    spacing_um: float | None = None,
    pixel_size_um: float | None = None,
    tissue=None,
    min_coverage: float = 0.5,
) -> Sample:
    """A copy of an image-only sample with spots laid on its tissue.

    The lattice of ``geometry`` (pitch ``spacing_um`` when given) starts half
    a pitch inside the image's top-left corner; a spot is kept when its centre
    lies on tissue or at least ``min_coverage`` of its disc does.  The result
    has ``obs['array_row'/'array_col']`` (lattice indices), ``obs['in_tissue']
    == 1``, ``obsm['spatial']`` in full-res px, ids ``"r{row}_c{col}"`` and no
    genes; ``metadata['tissue_mask']`` keeps the :class:`TissueMask` used and
    ``metadata['tissue']`` its JSON summary.  ``tissue`` reuses a mask
    already computed; ``pixel_size_um`` overrides the sample's.
    """
    import anndata as ad
    import pandas as pd

    from .tissue import detect_tissue

    name = _name(sample)
    if sample.image is None:
        raise fail(name, "no H&E image to place spots on")
    if spacing_um is not None:
        spacing_um = _positive(spacing_um, "spot spacing", name)
        geometry = geometry.with_spacing(spacing_um)
    if pixel_size_um is not None:
        px = _positive(pixel_size_um, "pixel size", name)
    elif sample.pixel_size_um:
        px = float(sample.pixel_size_um)
    else:
        raise FlagInputError(f"{name}: {PIXEL_SIZE_HINT}", setting="pixel_size_um")
    if tissue is None:
        tissue = detect_tissue(sample.image, pixel_size_um=px, source=name)
    s = geometry.spacing_px(px)
    radius = geometry.diameter_px(px) / 2.0
    h, w = sample.image.fullres_shape
    bbox = tissue.bbox_fullres()
    if bbox is None:
        raise fail(name, "no tissue found")
    origin = (s / 2.0, s / 2.0)
    rows, cols, xy = lattice_points(
        geometry.lattice, s, (max(0.0, bbox[0] - s), min(w, bbox[2] + s)),
        (max(0.0, bbox[1] - s), min(h, bbox[3] + s)), origin,
    )
    on = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    rows, cols, xy = rows[on], cols[on], xy[on]
    keep = tissue.contains(xy) | (tissue.coverage(xy, radius) >= min_coverage)
    rows, cols, xy = rows[keep], cols[keep], xy[keep]
    if not len(xy):
        raise fail(name, "no tissue found under any spot of the lattice")
    ids = pd.Index([f"r{r}_c{c}" for r, c in zip(rows, cols)])
    obs = pd.DataFrame({"array_row": rows, "array_col": cols, "in_tissue": np.ones(len(rows), dtype=np.int64)}, index=ids)
    adata = ad.AnnData(X=np.zeros((len(rows), 0), dtype=np.float32), obs=obs)
    adata.obsm["spatial"] = xy
    meta = dict(sample.metadata)
    meta.update(
        technology="virtual",
        spot_geometry=geometry.to_dict(),
        spot_diameter_um=geometry.diameter_um,
        inter_spot_dist_um=geometry.spacing_um,
        lattice_origin_px=[float(origin[0]), float(origin[1])],
        tissue=tissue.to_dict(),
        tissue_mask=tissue,
    )
    return Sample(
        sample_id=sample.sample_id,
        adata=adata,
        spot_diameter_px=float(2 * radius),
        pixel_size_um=px,
        image=sample.image,
        grid=geometry.lattice,
        source=sample.source,
        metadata=meta,
    )
