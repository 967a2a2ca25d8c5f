"""Slides and predictions as napari layer-data tuples, without importing napari.

Readers, sample data, widgets and scripts all build layers here, so the
geometry is decided once:

* napari coordinates are ``(row, col) = (y, x)``.  Spots are stored in
  full-resolution pixels and every layer gets ``scale = pixel size`` (µm per
  full-res pixel), so world coordinates are microns and the scale bar is true.
  An image level-0 pixel covers ``1 / image.scale`` full-res pixels, hence the
  image scale ``pixel_size_um / image.scale``.  Without a known pixel size the
  world unit is the full-res pixel.
* a Points ``size`` is a diameter in data units: the real spot diameter.
* layers carry plain metadata (ids, pixel size, grid, role, a key naming the
  slide or prediction they belong to) and the object they show: the
  :class:`~napari_flag.data.sample.Sample` under :data:`SAMPLE`, the
  prediction AnnData under :data:`PREDICTION`.  Nothing else holds them, so
  they are freed with the last layer that carries them.

Only numpy is imported (``features`` are plain dicts of arrays, which napari
turns into its table): this module is safe in headless code, in worker
threads and in tests without a display.
"""
from __future__ import annotations

import itertools

import numpy as np

from .data.panel import SCALE_UNITS
from .record import PredictionRecord

__all__ = [
    "EXPRESSION_COLORMAP",
    "LISA_COLORMAP",
    "PREDICTION",
    "ROLE",
    "SAMPLE",
    "UNCERTAINTY_COLORMAP",
    "SpotRaster",
    "gene_values",
    "image_layer_data",
    "new_prediction_key",
    "new_sample_key",
    "panel_name",
    "percentile_limits",
    "prediction_to_layer_data",
    "sample_metadata",
    "sample_to_layer_data",
    "spot_raster",
    "spots_layer_data",
    "symmetric_limits",
    "top_genes",
    "values_layer_data",
    "world_scale",
    "world_units",
]

#: metadata key naming what a layer is ("slide", "spots", "pred", "truth", "std", ...)
ROLE = "flag_role"
EXPRESSION_COLORMAP = "viridis"
UNCERTAINTY_COLORMAP = "magma"
LISA_COLORMAP = "bwr"

#: metadata key of the :class:`~napari_flag.data.sample.Sample` a slide's layers show
SAMPLE = "flag_sample"
#: metadata key of the prediction AnnData a prediction's layers show
PREDICTION = "flag_prediction"

_counter = itertools.count(1)


def new_sample_key(sample) -> str:
    """A fresh key naming the layers of one opened ``sample`` (``"C2#3"``)."""
    return f"{sample.sample_id}#{next(_counter)}"


def new_prediction_key(adata) -> str:
    """A fresh key naming the layers of one prediction (``"pred:C2#4"``); the
    number grows with every key, so later runs sort after earlier ones."""
    sid = PredictionRecord.of(adata).sample_id or "pred"
    return f"pred:{sid}#{next(_counter)}"


# ---------------------------------------------------------------------------
# geometry


def world_scale(pixel_size_um: float | None) -> tuple[float, float]:
    """Scale of a layer whose data are full-resolution pixels."""
    s = float(pixel_size_um) if pixel_size_um else 1.0
    return (s, s)


def world_units(pixel_size_um: float | None) -> tuple[str, str]:
    return ("um", "um") if pixel_size_um else ("pixel", "pixel")


def sample_metadata(sample, key: str | None, role: str) -> dict:
    """Facts about a sample for ``layer.metadata``, and the sample itself under :data:`SAMPLE`."""
    return {
        ROLE: role,
        SAMPLE: sample,
        "sample_key": key,
        "sample_id": str(sample.sample_id),
        "source": None if sample.source is None else str(sample.source),
        "pixel_size_um": None if sample.pixel_size_um is None else float(sample.pixel_size_um),
        "spot_diameter_px": float(sample.spot_diameter_px),
        "grid": sample.grid,
        "n_spots": int(sample.n_spots),
    }


def image_layer_data(sample, key: str | None = None, name: str | None = None, role: str = "slide", **extra):
    """The H&E image as ``(levels, kwargs, "image")``; multiscale when it is a pyramid."""
    img = sample.image
    if img is None:
        return None
    ps = world_scale(sample.pixel_size_um)[0] / float(img.scale)
    data = list(img.levels) if img.is_multiscale else img.levels[0]
    kwargs = dict(
        name=name or f"{sample.sample_id} H&E",
        rgb=True,
        multiscale=img.is_multiscale,
        scale=(ps, ps),
        units=world_units(sample.pixel_size_um),
        metadata=sample_metadata(sample, key, role),
    )
    # contrast limits given up front: napari would otherwise compute them by
    # reading the coarsest level, and uint8 RGB is already display-ready
    kwargs["contrast_limits"] = (0, 255)
    kwargs.update(extra)
    return (data, kwargs, "image")


def top_genes(adata, n: int = 20) -> list[str]:
    """The ``n`` genes with the highest mean count (a quick default panel)."""
    if adata.n_vars == 0 or n <= 0:
        return []
    X = adata.X
    mean = np.asarray(X.mean(axis=0)).ravel()
    order = np.argsort(-mean, kind="stable")[: min(n, adata.n_vars)]
    return [str(adata.var_names[i]) for i in order]


def _dense_columns(adata, genes: list[str]) -> np.ndarray:
    if not genes:
        return np.zeros((adata.n_obs, 0), np.float32)
    idx = adata.var_names.get_indexer(genes)
    X = adata.X[:, idx]
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return np.asarray(X, dtype=np.float32)


def spots_layer_data(sample, key: str | None = None, genes: list[str] | None = None, n_genes: int = 20):
    """Spots as a Points layer: real diameter, ``log2(1+count)`` of a few genes in ``features``.

    Coloured by total counts (a quick look at where the tissue was captured);
    hovering a spot shows its id, total counts and the gene values.
    """
    ad = sample.adata
    xy = sample.coords
    data = xy[:, ::-1].copy() if len(xy) else np.zeros((0, 2))
    feats = {"spot": np.asarray(ad.obs_names, dtype=object)}
    kwargs: dict = dict(
        name=f"{sample.sample_id} spots",
        size=float(sample.spot_diameter_px),
        scale=world_scale(sample.pixel_size_um),
        units=world_units(sample.pixel_size_um),
        border_width=0.0,
        opacity=0.75,
        metadata=sample_metadata(sample, key, "spots"),
    )
    if sample.has_counts:
        genes = [g for g in (genes if genes is not None else top_genes(ad, n_genes)) if g in ad.var_names]
        total = np.asarray(ad.X.sum(axis=1)).ravel().astype(np.float32)
        feats["total_counts"] = total
        vals = np.log2(1.0 + _dense_columns(ad, genes))
        for j, g in enumerate(genes):
            feats[g] = vals[:, j]
        kwargs.update(
            face_color="total_counts",
            face_colormap=EXPRESSION_COLORMAP,
            face_contrast_limits=percentile_limits(total),
        )
        kwargs["metadata"]["genes"] = list(genes)
        kwargs["metadata"]["values"] = "log2(1+count)"
    else:
        kwargs.update(face_color="transparent", border_color="yellow", border_width=0.08, opacity=1.0)
    kwargs["features"] = feats
    return (data, kwargs, "points")


def sample_to_layer_data(sample, n_genes: int = 20) -> list:
    """Image (when present) and spots (when present) of a sample; both carry the sample and one key."""
    key = new_sample_key(sample)
    out = []
    img = image_layer_data(sample, key)
    if img is not None:
        out.append(img)
    if sample.n_spots > 0:
        out.append(spots_layer_data(sample, key, n_genes=n_genes))
    return out


# ---------------------------------------------------------------------------
# predictions


def percentile_limits(*arrays, lo: float = 1.0, hi: float = 99.0) -> tuple[float, float]:
    """Contrast limits from the ``lo``-``hi`` percentiles of the union of ``arrays``.

    One range for truth and prediction makes the same colour mean the same
    value on both panels; clipping outliers keeps the bulk of spots readable.
    """
    vals = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    v = np.concatenate(vals) if vals else np.zeros(0)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    a, b = np.percentile(v, [lo, hi])
    if not b > a:
        a, b = float(v.min()), float(v.max())
    if not b > a:
        b = a + 1.0
    return (float(a), float(b))


def symmetric_limits(values, hi: float = 99.0) -> tuple[float, float]:
    """``(-m, m)`` around zero, for diverging maps such as local Moran's I."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    m = float(np.percentile(v, hi)) if v.size else 1.0
    m = m if m > 0 else 1.0
    return (-m, m)


def gene_values(adata, gene: str, role: str = "pred") -> np.ndarray:
    """One gene's values from a prediction AnnData: ``pred`` (X), ``std`` or ``truth``."""
    j = int(adata.var_names.get_loc(gene))
    M = adata.X if role == "pred" else adata.layers[role]
    col = M[:, j]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return np.asarray(col, dtype=np.float32).ravel()


PANEL_TITLES = {
    "pred": "predicted",
    "truth": "measured",
    "std": "uncertainty",
    # short: the layer list shows about 30 characters of a name
    "lisa_pred": "local I predicted",
    "lisa_truth": "local I measured",
}


def panel_name(sample_id: str, role: str, gene: str) -> str:
    """Layer name of a gene panel, e.g. ``"C2 predicted · ERBB2"``."""
    return f"{sample_id} {PANEL_TITLES.get(role, role)} · {gene}"



def values_layer_data(
    values: np.ndarray,
    coords_xy: np.ndarray,
    spot_ids,
    *,
    name: str,
    meta: dict,
    clim: tuple[float, float],
    colormap: str,
    gene_table: dict[str, np.ndarray] | None = None,
    column: str = "value",
):
    """A Points layer coloured by ``values`` (column ``column`` of ``features``)."""
    feats = {"spot": np.asarray(spot_ids, dtype=object), column: np.asarray(values, dtype=np.float32)}
    for g, v in (gene_table or {}).items():
        feats.setdefault(g, np.asarray(v, dtype=np.float32))
    ps = meta.get("pixel_size_um")
    kwargs = dict(
        name=name,
        size=float(meta.get("spot_diameter_px") or 1.0),
        scale=world_scale(ps),
        units=world_units(ps),
        features=feats,
        face_color=column,
        face_colormap=colormap,
        face_contrast_limits=tuple(clim),
        # a thin white rim keeps dark (low) spots visible on purple H&E
        border_color="white",
        border_width=0.06,
        border_width_is_relative=True,
        opacity=0.9,
        metadata=dict(meta),
    )
    data = np.asarray(coords_xy, dtype=np.float64)[:, ::-1].copy()
    return (data, kwargs, "points")


def virtual_spots_layer_data(adata, meta: dict, key: str | None, sid: str):
    """The virtual spots laid over an image's tissue, as outlines (their lattice indices in ``features``)."""
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    ps = meta.get("pixel_size_um")
    feats = {"spot": np.asarray(adata.obs_names, dtype=object)}
    for col in ("array_row", "array_col"):
        if col in adata.obs:
            feats[col] = np.asarray(adata.obs[col])
    m = dict(meta, **{ROLE: "virtual_spots", PREDICTION: adata, "prediction_key": key, "sample_id": sid})
    kwargs = dict(
        name=f"{sid} virtual spots", size=float(meta.get("spot_diameter_px") or 1.0), scale=world_scale(ps),
        units=world_units(ps), features=feats, face_color="transparent", border_color="white",
        border_width=0.08, border_width_is_relative=True, opacity=0.8, metadata=m,
    )
    return (xy[:, ::-1].copy(), kwargs, "points")


def prediction_to_layer_data(adata, gene: str | None = None, meta: dict | None = None, key: str | None = None) -> list:
    """Prediction, uncertainty and (when present) truth as Points layers.

    ``meta`` is the slide's layer metadata (pixel size, spot diameter, sample
    key); ``key`` names the prediction's layers.  ``features`` holds the spot
    id and the chosen gene's ``value`` (shown on hover); the full matrices stay
    in the AnnData, which every layer carries under :data:`PREDICTION`, since
    a wide ``features`` table makes every recolouring in napari several times
    slower.  Prediction and truth share one contrast range.  Order:
    prediction, truth, uncertainty.
    """
    meta = dict(meta or {})
    genes = [str(g) for g in adata.var_names]
    gene = gene if gene in genes else genes[0]
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    roles = ["pred"] + [r for r in ("truth", "std") if r in adata.layers]
    rec = PredictionRecord.of(adata)
    sid = meta.get("sample_id") or rec.sample_id or "slide"
    vals = {r: gene_values(adata, gene, r) for r in roles}
    shared = percentile_limits(*(vals[r] for r in roles if r != "std"))
    transform = str(rec.transform or "log2p1")
    unit = SCALE_UNITS.get(transform, transform)  # the colorbar title of figures made from these layers
    out = []
    if rec.virtual_spots:  # a routine H&E slide: show where the spots were laid
        out.append(virtual_spots_layer_data(adata, meta, key, str(sid)))
    for r in roles:
        clim = percentile_limits(vals[r]) if r == "std" else shared
        m = dict(meta, **{ROLE: r, PREDICTION: adata, "prediction_key": key, "gene": gene, "sample_id": str(sid),
                          "clim": clim, "values": unit})
        cmap = UNCERTAINTY_COLORMAP if r == "std" else EXPRESSION_COLORMAP
        out.append(
            values_layer_data(
                vals[r], xy, adata.obs_names, name=panel_name(str(sid), r, gene), meta=m, clim=clim,
                colormap=cmap,
            )
        )
    return out


# ---------------------------------------------------------------------------
# spots drawn as an image


class SpotRaster:
    """Spots stamped once into an index image, so a gene map is one table look-up.

    ``index[i, j]`` is the spot covering raster pixel ``(i, j)`` or ``-1``;
    pixel ``(i, j)`` is centred on full-resolution pixel
    ``origin + (i, j) * step`` (``(row, col)``, like the Points data).
    :meth:`render` gives a float32 image with NaN off the spots, which napari
    draws transparent, so the H&E shows between spots.  Why: on a software
    OpenGL renderer thousands of point sprites cost far more per frame than
    one textured quad (``benchmarks/gene_switch.py``).
    """

    def __init__(self, index: np.ndarray, origin: tuple[float, float], step: float):
        self.index = index
        self.origin = (float(origin[0]), float(origin[1]))
        self.step = float(step)
        self.n_spots = int(index.max()) + 1 if index.size else 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.index.shape)

    def render(self, values, out: np.ndarray | None = None) -> np.ndarray:
        """``values`` (one per spot) painted on the spots, NaN elsewhere."""
        v = np.asarray(values, dtype=np.float32).ravel()
        if v.size < self.n_spots:
            raise ValueError(f"{v.size} values for a raster of {self.n_spots} spots")
        lut = np.empty(v.size + 1, np.float32)
        lut[:-1] = v
        lut[-1] = np.nan  # index -1: off the spots
        if out is None:
            out = np.empty(self.index.shape, np.float32)
        return np.take(lut, self.index, out=out)

    def layer_geometry(self, scale=(1.0, 1.0), translate=(0.0, 0.0)) -> dict:
        """``scale``/``translate`` of the image that lies exactly on a Points
        layer with the given ``scale`` and ``translate``."""
        sc = np.asarray(scale, dtype=np.float64)[-2:]
        tr = np.asarray(translate, dtype=np.float64)[-2:]
        return {"scale": tuple(sc * self.step), "translate": tuple(tr + sc * np.asarray(self.origin))}


def spot_raster(
    coords_rc: np.ndarray,
    diameter: float,
    *,
    max_pixels: int = 1_000_000,
    max_px_per_spot: float = 32.0,
) -> SpotRaster:
    """Stamp discs of ``diameter`` (data units) centred on ``coords_rc`` (``(row, col)``).

    The step is the finest that keeps the image within ``max_pixels`` and a
    spot within ``max_px_per_spot`` pixels across: a 5,000-spot Visium slide
    gets about 8 pixels per spot, a few hundred ST spots the full 32.  A pixel
    belongs to a spot when its centre lies within the spot's radius; where
    discs overlap the later spot wins.
    """
    c = np.asarray(coords_rc, dtype=np.float64).reshape(-1, 2)
    d = float(diameter)
    if not d > 0 or not np.isfinite(d):
        raise ValueError(f"spot diameter must be positive, got {diameter!r}")
    if len(c) == 0:
        return SpotRaster(np.full((1, 1), -1, np.int32), (0.0, 0.0), d)
    r = d / 2.0
    lo = c.min(axis=0) - r
    span = c.max(axis=0) + r - lo
    step = max(d / float(max_px_per_spot), float(np.sqrt(np.prod(span) / float(max_pixels))))
    shape = tuple(int(n) for n in np.ceil(span / step).astype(int) + 1)
    while shape[0] * shape[1] > max_pixels:  # rounding up can cross the budget
        step *= 1.01
        shape = tuple(int(n) for n in np.ceil(span / step).astype(int) + 1)
    index = np.full(shape, -1, np.int32)
    centre = np.rint((c - lo) / step).astype(np.int64)
    reach = int(np.ceil(r / step)) + 1
    ids = np.arange(len(c), dtype=np.int32)
    r2 = r * r
    for di in range(-reach, reach + 1):
        ii = centre[:, 0] + di
        dy2 = (lo[0] + ii * step - c[:, 0]) ** 2
        for dj in range(-reach, reach + 1):
            jj = centre[:, 1] + dj
            m = (dy2 + (lo[1] + jj * step - c[:, 1]) ** 2 <= r2)
            m &= (ii >= 0) & (ii < shape[0]) & (jj >= 0) & (jj < shape[1])
            index[ii[m], jj[m]] = ids[m]
    return SpotRaster(index, (float(lo[0]), float(lo[1])), step)


# ---------------------------------------------------------------------------
# tissue masks the user edits

#: names of Shapes layers whose polygons add tissue to, or take it out of, a slide's mask
TISSUE_INCLUDE, TISSUE_EXCLUDE = "tissue include", "tissue exclude"


def tissue_layer_data(mask, pixel_size_um: float | None, slide: str, name: str = "tissue"):
    """A :class:`~napari_flag.data.tissue.TissueMask` as an editable ``labels`` layer over its slide.

    Mask pixel ``(i, j)`` covers full-res ``[j f, (j + 1) f)``; full-res pixel
    ``k`` is centred on ``k``, so the layer is shifted by ``f / 2 - 0.5``.
    """
    ps = world_scale(pixel_size_um)[0]
    f = float(mask.fullres_per_px)
    return (mask.mask.astype(np.uint8), dict(
        name=name, scale=(f * ps, f * ps), translate=((f / 2 - 0.5) * ps,) * 2, opacity=0.35,
        units=world_units(pixel_size_um),
        metadata={ROLE: "tissue", "slide": slide, "pixel_size_um": pixel_size_um, "fullres_per_px": f,
                  "source": str(mask.source or ""), "params": dict(mask.params)},
    ), "labels")


def tissue_from_layer_data(labels, meta: dict, include=(), exclude=()):
    """The mask a user painted (nonzero labels), with polygons added and taken out.

    ``include``/``exclude``: polygons as ``(n, 2)`` arrays of full-res ``(y, x)``.
    """
    from .data.tissue import TissueMask
    from .data.tissue_input import mask_from_polygons

    f = float(meta["fullres_per_px"])
    mask = np.asarray(labels) > 0
    rings = lambda polys: [[np.asarray(p, dtype=np.float64)[:, ::-1]] for p in polys if len(p) >= 3]  # noqa: E731
    mask = mask_from_polygons(rings(include), rings(exclude), mask.shape, f, base=mask)
    params = {"from": "edited in napari", "include": len(include), "exclude": len(exclude),
              "detected": meta.get("params", {})}
    return TissueMask(mask=mask, fullres_per_px=f, pixel_size_um=meta.get("pixel_size_um"),
                      source=f"napari layer {meta.get('slide', '')}", params=params)
