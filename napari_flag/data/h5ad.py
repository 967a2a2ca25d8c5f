"""AnnData ``.h5ad`` files with spot coordinates (scanpy / squidpy convention).

``obsm["spatial"]`` holds full-resolution ``(x, y)`` pixels; images, if any,
live in ``uns["spatial"][library]["images"][name]`` with
``uns["spatial"][library]["scalefactors"]["tissue_<name>_scalef"]`` mapping
full-resolution coordinates onto them.  :func:`write_h5ad` writes the same
convention (plus ``uns["napari_flag"]`` for the pixel size and grid), so a
:class:`Sample` survives a round trip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import atomic_path
from ..errors import FlagInputError
from ._util import check_coords, check_counts, check_in_image, fail, guess_grid, nn_distance_px, reading, require_file
from .sample import Sample, SlideImage

__all__ = ["read_h5ad", "write_h5ad", "sample_to_anndata", "image_thumbnail", "scanpy_spatial"]

_PIXEL_KEYS = ("pixel_size_um", "pixel_size_um_embedded", "pixel_size_um_estimated", "microns_per_pixel", "mpp")


def _scalar(v) -> float | None:
    try:
        f = float(np.asarray(v).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _find_pixel_size(uns, lib: dict | None) -> float | None:
    places = [uns.get("napari_flag", {}), uns]
    if lib:
        places += [lib.get("scalefactors", {}), lib.get("metadata", {})]
    for d in places:
        if not hasattr(d, "get"):
            continue
        for k in _PIXEL_KEYS:
            if k in d and _scalar(d[k]) is not None:
                return _scalar(d[k])
    return None


def _pick_library(path, spatial, library_id):
    if not hasattr(spatial, "keys") or not len(spatial):
        return None, None
    libs = list(spatial.keys())
    if library_id is None:
        library_id = libs[0]
    if library_id not in spatial:
        raise fail(path, f"library {library_id!r} not in uns['spatial'] (have {', '.join(map(str, libs))})")
    return library_id, spatial[library_id]


def _image_from_uns(path, lib: dict) -> tuple[SlideImage | None, str | None]:
    images = lib.get("images", {}) if lib else {}
    if not hasattr(images, "keys") or not len(images):
        return None, None
    sf = lib.get("scalefactors", {}) or {}
    best = None
    for name in images.keys():
        s = _scalar(sf.get(f"tissue_{name}_scalef"))
        if s is None:
            continue
        if best is None or s > best[1]:
            best = (name, s)
    if best is None:
        names = ", ".join(f"tissue_{n}_scalef" for n in images.keys())
        raise fail(path, f"image(s) in uns['spatial'] but missing or non-numeric scale factors ({names})")
    arr = np.asarray(images[best[0]])
    if arr.ndim not in (2, 3) or arr.size == 0 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise fail(path, f"uns['spatial'] image {best[0]!r} is not an RGB image (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise fail(path, f"uns['spatial'] image {best[0]!r} is not numeric (dtype {arr.dtype})")
    if arr.dtype != np.uint8:
        from .sample import _to_uint8

        arr = _to_uint8(arr)
    return SlideImage(levels=[arr], scale=best[1], path=f"{path}#{best[0]}"), best[0]


def _check_expression(path, adata) -> None:
    """X must hold counts: finite and non-negative.

    A file whose X was normalised or scaled (negatives) but that kept the raw
    counts in ``layers['counts']`` is read from that layer instead.
    """
    if adata.X is None or adata.n_vars == 0:
        return
    try:
        check_counts(path, adata.X, "counts in X")
    except FlagInputError:
        raw = adata.layers["counts"] if "counts" in adata.layers else None
        if raw is None:
            raise
        check_counts(path, raw, "counts in layers['counts']")
        adata.X = raw


def anndata_to_sample(adata, path, sample_id=None, library_id=None, source=None) -> Sample:
    """Build a :class:`Sample` from an in-memory AnnData that follows the convention."""
    if "spatial" not in adata.obsm:
        raise fail(path, "no obsm['spatial'] spot coordinates")
    if adata.n_obs == 0:
        raise fail(path, "no spots (0 rows)")
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise fail(path, f"obsm['spatial'] must be (n, 2) spot coordinates, got shape {xy.shape}")
    xy = check_coords(path, xy[:, :2])
    adata.obsm["spatial"] = xy
    _check_expression(path, adata)
    uns = adata.uns
    lib_id, lib = _pick_library(path, uns.get("spatial", {}), library_id)
    image, image_name = _image_from_uns(path, lib) if lib else (None, None)
    check_in_image(path, xy, image)
    sf = (lib or {}).get("scalefactors", {}) or {}
    nf = uns.get("napari_flag", {}) or {}

    rc = None
    if "array_row" in adata.obs and "array_col" in adata.obs:
        rc = adata.obs[["array_row", "array_col"]].to_numpy()
        if not np.isfinite(rc.astype(float)).all():
            rc = None
    grid = nf.get("grid") or guess_grid(rc)
    grid = str(grid) if grid else None

    pixel = _find_pixel_size(uns, lib)
    spot = _scalar(sf.get("spot_diameter_fullres")) or _scalar(nf.get("spot_diameter_px"))
    notes = {}
    if pixel is None and grid == "hex" and (spot is not None or rc is not None):
        from .spaceranger import VISIUM_SPOT_UM, visium_pixel_size

        pixel = visium_pixel_size(rc, xy, spot)  # hexagonal arrays with scale factors are Visium
        if pixel is not None:
            spot = VISIUM_SPOT_UM / pixel
            notes["pixel_size_from"] = "Visium spot pitch"
    if spot is None:
        nn = nn_distance_px(xy)
        spot = 0.5 * nn if nn else float("nan")  # spots are about half their pitch (ST 100/200, Visium 55/100)
        notes["spot_diameter_from"] = "half the nearest-neighbour distance"

    sid = sample_id or nf.get("sample_id") or (str(lib_id) if lib_id is not None else Path(path).stem)
    return Sample(
        sample_id=str(sid),
        adata=adata,
        spot_diameter_px=float(spot),
        pixel_size_um=pixel,
        image=image,
        grid=grid,
        source=source or str(path),
        metadata={"library_id": lib_id, "image_key": image_name, "scalefactors": dict(sf), **notes},
    )


def read_h5ad(path: str | Path, sample_id: str | None = None, library_id: str | None = None) -> Sample:
    """Read an ``.h5ad`` with ``obsm['spatial']`` (and optionally scanpy-style images)."""
    import anndata as ad

    p = require_file(path, "h5ad file")
    with reading(p, "unreadable or truncated h5ad file"):
        adata = ad.read_h5ad(p)
    return anndata_to_sample(adata, p, sample_id=sample_id, library_id=library_id)


# ---------------------------------------------------------------------------
# writing


def image_thumbnail(image: SlideImage, factor: float) -> tuple[np.ndarray, float]:
    """The image resampled to ``factor`` output pixels per full-res pixel.

    Reads the coarsest level that is still at least that fine, so a pyramid
    never decodes more than it needs.  Never upsamples: the achieved factor is
    returned (``<= factor``).
    """
    from PIL import Image

    factor = min(float(factor), float(image.scale))
    level = 0
    for i, ds in enumerate(image.downsamples):
        if image.scale / ds >= factor * 0.999:
            level = i
    lv_factor = image.scale / image.downsamples[level]
    arr = np.asarray(image.levels[level][...])
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        from .sample import _to_uint8

        arr = _to_uint8(arr)
    h, w = arr.shape[:2]
    fh, fw = image.fullres_shape
    size = (max(1, int(round(fw * factor))), max(1, int(round(fh * factor))))
    if abs(size[0] - w) <= 1 and abs(size[1] - h) <= 1:
        factor = lv_factor  # this level already is the requested resolution
    else:
        resample = Image.LANCZOS if size[0] < w else Image.BILINEAR
        arr = np.asarray(Image.fromarray(arr).resize(size, resample))
        factor = size[0] / fw
    return np.ascontiguousarray(arr), factor


def scanpy_spatial(sample: Sample, library_id: str | None = None, max_px: int | None = 2000) -> dict:
    """``uns['spatial']`` in scanpy's layout, so ``sc.pl.spatial(adata)`` just works.

    ``{library_id: {"images": {"hires": uint8 (h, w, 3)}, "scalefactors":
    {"tissue_hires_scalef", "spot_diameter_fullres"}, "metadata": {}}}``.
    The image is at most ``max_px`` on its long side, read from the pyramid
    level nearest that size (never level 0 of a large slide);
    ``tissue_hires_scalef`` maps ``obsm['spatial']`` (full-res px) onto it.
    ``max_px=None`` (or 0) leaves the image out.
    """
    from PIL import Image

    from .overview import read_overview

    lib = str(library_id or sample.sample_id)
    sf = {"spot_diameter_fullres": float(sample.spot_diameter_px)}
    entry: dict = {"images": {}, "scalefactors": sf, "metadata": {}}
    if sample.image is not None and max_px:
        fh, fw = sample.image.fullres_shape
        target = max(fh, fw) / float(max_px)
        arr, f = read_overview(sample.image, target, max_px=4 * int(max_px) ** 2)
        w = arr.shape[1]
        size = (max(1, int(round(fw / target))), max(1, int(round(fh / target))))
        if size[0] < w:  # finer than asked: output pixel i covers full-res [i t, (i+1) t), t = target
            box = (0.0, 0.0, min(w, size[0] * target / f), min(arr.shape[0], size[1] * target / f))
            arr = np.asarray(Image.fromarray(arr).resize(size, Image.LANCZOS, box=box))
            sf["tissue_hires_scalef"] = float(1.0 / target)
        else:
            sf["tissue_hires_scalef"] = float(1.0 / f)
        entry["images"]["hires"] = np.ascontiguousarray(arr)
    return {lib: entry}


def sample_to_anndata(sample: Sample, image_max_px: int | None = 2000, library_id: str | None = None):
    """A copy of ``sample.adata`` carrying the image and geometry in ``uns``."""
    a = sample.adata.copy()
    a.obsm["spatial"] = np.asarray(sample.coords, dtype=np.float64)
    spatial = scanpy_spatial(sample, library_id=library_id, max_px=image_max_px)
    entry = next(iter(spatial.values()))
    if not entry["images"]:
        del entry["images"]
    a.uns["spatial"] = spatial
    nf = {"sample_id": str(sample.sample_id), "spot_diameter_px": float(sample.spot_diameter_px)}
    if sample.pixel_size_um is not None:
        nf["pixel_size_um"] = float(sample.pixel_size_um)
    if sample.grid:
        nf["grid"] = str(sample.grid)
    if sample.source:
        nf["source"] = str(sample.source)
    a.uns["napari_flag"] = nf
    return a


def write_h5ad(sample: Sample, path: str | Path, image_max_px: int | None = 2000) -> Path:
    """Save a sample as a self-contained ``.h5ad`` (counts, coordinates, a downscaled image)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = sample_to_anndata(sample, image_max_px=image_max_px)
    with atomic_path(path) as tmp:
        a.write_h5ad(tmp)
    return path
