"""Tissue masks a user brings: a mask image, QuPath annotations, or the mask a prediction recorded.

* **PNG / TIFF** (any resolution): nonzero pixels are tissue; the image is
  stretched over the whole slide, so a thumbnail-sized mask works.  Its
  aspect ratio must match the slide's (within 2%).
* **GeoJSON** as QuPath exports annotations: a FeatureCollection (or a list)
  of Polygon / MultiPolygon features in the slide's full-resolution pixels.
  Features classified ``Ignore*`` or ``Exclude`` (QuPath's convention) are
  subtracted; the others are the tissue.  With only subtracting features,
  they are taken out of the detected tissue.
* **.h5ad** written by ``napari-flag predict``: the mask it recorded in
  ``uns["flag"]["tissue_mask"]``, so a rerun lays the same spots.

Each becomes a :class:`~napari_flag.data.tissue.TissueMask` on a grid of about
:data:`~napari_flag.data.tissue.TISSUE_UM_PER_PX` (or the image's own grid).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ._util import fail, reading, require_file
from .tissue import TISSUE_UM_PER_PX, TissueMask

__all__ = ["read_tissue_mask", "mask_from_polygons", "mask_record", "mask_from_record", "EXCLUDE_CLASSES"]

#: QuPath classifications whose annotations are taken out of the tissue (case-insensitive prefixes)
EXCLUDE_CLASSES = ("ignore", "exclude")
_GRID_MAX_PX = 4096  # long side of a rasterised annotation mask, when the pixel size is unknown


def read_tissue_mask(path: str | Path, fullres_shape: tuple[float, float], pixel_size_um: float | None,
                     detect: Callable[[], TissueMask] | None = None) -> TissueMask:
    """The tissue mask in ``path`` over a slide of ``fullres_shape`` (height, width in full-res px).

    ``detect()`` gives the automatic mask, needed only by a GeoJSON that
    only excludes.
    """
    p = Path(path).expanduser()
    name = p.name.lower()
    if name.endswith((".geojson", ".json")):
        return _from_geojson(require_file(p, "tissue annotations"), fullres_shape, pixel_size_um, detect)
    if name.endswith(".h5ad"):
        return _from_prediction(require_file(p, "prediction"), fullres_shape)
    if name.endswith((".png", ".tif", ".tiff", ".jpg", ".jpeg")):
        return _from_image(require_file(p, "tissue mask"), fullres_shape, pixel_size_um)
    raise fail(p, "unknown tissue mask format (expected a .png/.tif mask, a QuPath .geojson or a prediction .h5ad)")


# ----------------------------------------------------------------------------- mask images
def _from_image(p: Path, fullres_shape, pixel_size_um) -> TissueMask:
    with reading(p, "unreadable mask image"):
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tf:
                arr = tf.series[0].levels[-1].asarray()  # the smallest level is plenty for a mask
        else:
            from PIL import Image

            arr = np.asarray(Image.open(p))
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] in (3, 4) else arr[0]
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise fail(p, f"a mask must be a 2-d image, got shape {arr.shape}")
    mask = arr > (0 if arr.max() <= 1 else arr.max() / 2)
    h, w = fullres_shape
    if abs((h / w) / (mask.shape[0] / mask.shape[1]) - 1.0) > 0.02:
        raise fail(p, f"mask is {mask.shape[1]} x {mask.shape[0]} px, which does not have the slide's "
                      f"shape ({w:.0f} x {h:.0f} px)")
    if not mask.any():
        raise fail(p, "mask marks no tissue")
    return TissueMask(mask=mask, fullres_per_px=float(w) / mask.shape[1], pixel_size_um=pixel_size_um,
                      source=str(p), params={"from": "mask image"})


# ----------------------------------------------------------------------------- GeoJSON
def polygon_features(doc, p: Path) -> list[dict]:
    """The Polygon/MultiPolygon features of a parsed GeoJSON document (a FeatureCollection, a Feature
    or a list of features, as QuPath writes them); other geometries are left out."""
    if isinstance(doc, list):
        feats = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    else:
        raise fail(p, "not a GeoJSON FeatureCollection of polygons")
    out = [f for f in feats if isinstance(f, dict) and isinstance(f.get("geometry"), dict)
           and f["geometry"].get("type") in ("Polygon", "MultiPolygon")]
    if not out:
        raise fail(p, "no Polygon or MultiPolygon features (not a GeoJSON FeatureCollection of polygons)")
    return out


def _excluding(feature: dict) -> bool:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    name = cls.get("name") if isinstance(cls, dict) else cls
    return isinstance(name, str) and name.strip().lower().startswith(EXCLUDE_CLASSES)


def feature_rings(feature: dict) -> list[list[np.ndarray]]:
    """Each polygon of a feature as its rings (exterior first), ``(n, 2)`` x, y arrays."""
    g = feature["geometry"]
    polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
    return [[np.asarray(ring, dtype=np.float64)[:, :2] for ring in poly if len(ring) >= 3] for poly in polys]


def mask_from_polygons(include: list, exclude: list, shape: tuple[int, int], fullres_per_px: float,
                       base: np.ndarray | None = None) -> np.ndarray:
    """Rasterise polygons (lists of rings in full-res x, y) onto a ``shape`` grid of ``fullres_per_px``.

    Interior rings are holes.  ``include`` polygons are unioned (onto ``base``
    when given); ``exclude`` ones are then taken out.
    """
    from skimage.draw import polygon as fill

    def paint(target: np.ndarray, rings: list[np.ndarray]) -> None:
        for k, ring in enumerate(rings):
            rr, cc = fill(ring[:, 1] / fullres_per_px - 0.5, ring[:, 0] / fullres_per_px - 0.5, shape)
            target[rr, cc] = k == 0  # the exterior fills, interior rings cut holes

    out = np.zeros(shape, bool) if base is None else base.copy()
    for rings in include:
        layer = np.zeros(shape, bool)
        paint(layer, rings)
        out |= layer
    for rings in exclude:
        layer = np.zeros(shape, bool)
        paint(layer, rings)
        out &= ~layer
    return out


def _from_geojson(p: Path, fullres_shape, pixel_size_um, detect) -> TissueMask:
    with reading(p, "unreadable GeoJSON"):
        doc = json.loads(p.read_text())
    feats = polygon_features(doc, p)
    include = [poly for f in feats if not _excluding(f) for poly in feature_rings(f)]
    exclude = [poly for f in feats if _excluding(f) for poly in feature_rings(f)]
    h, w = fullres_shape
    pts = np.concatenate([ring for poly in include + exclude for ring in poly])
    if not ((pts[:, 0] < w) & (pts[:, 0] >= 0) & (pts[:, 1] < h) & (pts[:, 1] >= 0)).any():
        raise fail(p, f"every polygon lies outside the slide ({w:.0f} x {h:.0f} px): coordinates must be the "
                      "slide's full-resolution pixels")
    if include:
        f = TISSUE_UM_PER_PX / pixel_size_um if pixel_size_um else max(h, w) / _GRID_MAX_PX
        f = max(float(f), 1.0)
        shape = (max(1, int(np.ceil(h / f))), max(1, int(np.ceil(w / f))))
        mask = mask_from_polygons(include, exclude, shape, f)
        params = {"from": "annotations", "include": len(include), "exclude": len(exclude)}
    else:
        if detect is None:
            raise fail(p, "only excluding annotations, and no detected tissue to take them from")
        auto = detect()
        f, mask = auto.fullres_per_px, mask_from_polygons([], exclude, auto.shape, auto.fullres_per_px, auto.mask)
        params = {"from": "detected minus annotations", "exclude": len(exclude), "detected": auto.params}
    if not mask.any():
        raise fail(p, "the annotations leave no tissue")
    return TissueMask(mask=mask, fullres_per_px=float(f), pixel_size_um=pixel_size_um, source=str(p),
                      params=params)


# ----------------------------------------------------------------------------- recorded masks
def mask_record(t: TissueMask) -> dict:
    """A mask as ``uns`` can store it (bit-packed), with what it covers and where it came from."""
    return {"packed": np.packbits(t.mask.astype(bool), axis=None), "shape": np.asarray(t.shape, dtype=np.int64),
            "fullres_per_px": float(t.fullres_per_px), "source": str(t.source or "")}


def mask_from_record(rec, pixel_size_um: float | None = None, source: str | None = None) -> TissueMask:
    shape = tuple(int(v) for v in np.asarray(rec["shape"]).ravel())
    bits = np.unpackbits(np.asarray(rec["packed"], dtype=np.uint8), count=shape[0] * shape[1])
    return TissueMask(mask=bits.reshape(shape).astype(bool), fullres_per_px=float(rec["fullres_per_px"]),
                      pixel_size_um=pixel_size_um, source=source or str(rec.get("source", "")),
                      params={"from": "recorded mask"})


def _from_prediction(p: Path, fullres_shape) -> TissueMask:
    import anndata as ad

    from ..record import PredictionRecord

    with reading(p, "unreadable prediction file"):
        a = ad.read_h5ad(p, backed="r")
        try:
            info = PredictionRecord.of(a)
        finally:
            a.file.close()
    rec, px = dict(info.tissue_mask or {}), info.pixel_size_um
    rec = {k: np.asarray(v) if k in ("packed", "shape") else v for k, v in rec.items()}
    if not rec:
        raise fail(p, "records no tissue mask (it was predicted on measured spots, or by an older version)")
    t = mask_from_record(rec, float(px) if px else None, str(p))
    h, w = fullres_shape
    mh, mw = t.shape
    if abs(mw * t.fullres_per_px - w) > 2 * t.fullres_per_px or abs(mh * t.fullres_per_px - h) > 2 * t.fullres_per_px:
        raise fail(p, "its tissue mask was made for a slide of another size")
    return t
