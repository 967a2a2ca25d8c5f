"""HEST-1k sample layout: one root, one file per sample id in each subfolder.

::

    <root>/st/<id>.h5ad          counts, obsm['spatial'] in WSI pixels
    <root>/wsis/<id>.tif         pyramidal (Big)TIFF, the full-resolution H&E
    <root>/metadata/<id>.json    pixel_size_um_estimated, spot_diameter (um), ...
    <root>/patches/<id>.h5       optional: img (N, H, W, 3), coords, barcode

The WSI is read lazily through tifffile's zarr view.  :func:`write_hest_sample`
writes the same layout from any :class:`Sample`, so data from other sources
can be shared with HEST-aware tools.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ._util import check_in_image, fail, guess_grid, reading
from .sample import Sample

__all__ = ["read_hest", "write_hest_sample", "is_hest_root", "hest_ids", "hest_root_of"]

_TECH_GRID = {"visium": "hex", "spatial transcriptomics": "square", "st": "square"}


def is_hest_root(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return (p / "st").is_dir() and any((p / "st").glob("*.h5ad"))


def hest_root_of(path: str | Path) -> Path | None:
    """The HEST root for a root folder or for one of its ``st/<id>.h5ad`` files."""
    p = Path(path).expanduser()
    if p.is_dir() and is_hest_root(p):
        return p
    if p.suffix == ".h5ad" and p.parent.name == "st":
        root = p.parent.parent
        if (root / "wsis").is_dir() or (root / "metadata").is_dir():
            return root
    return None


def hest_ids(root: str | Path) -> list[str]:
    return sorted(f.stem for f in (Path(root) / "st").glob("*.h5ad"))


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def read_hest(path: str | Path, sample_id: str | None = None) -> Sample:
    """Read one HEST sample from a root folder (or its ``st/<id>.h5ad``)."""
    from .h5ad import anndata_to_sample
    from .images import open_tiff

    import anndata as ad

    p = Path(path).expanduser()
    if not p.exists():
        raise fail(p, "not found")
    root = hest_root_of(p)
    if root is None:
        raise fail(p, "not a HEST sample folder (needs st/<id>.h5ad)")
    if p.suffix == ".h5ad":
        sample_id = sample_id or p.stem
    if sample_id is None:
        ids = hest_ids(root)
        if len(ids) != 1:
            shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
            raise fail(root, f"HEST folder holds {len(ids)} samples ({shown}); pass one as {root}/st/<id>.h5ad")
        sample_id = ids[0]
    st = root / "st" / f"{sample_id}.h5ad"
    if not st.is_file():
        raise fail(st, "HEST expression file not found")
    with reading(st, "unreadable or truncated h5ad file"):
        adata = ad.read_h5ad(st)

    meta: dict = {}
    meta_file = root / "metadata" / f"{sample_id}.json"
    if meta_file.is_file():
        with reading(meta_file, "unreadable metadata JSON"):
            meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict):
            raise fail(meta_file, "metadata JSON is not an object")

    sample = anndata_to_sample(adata, st, sample_id=sample_id, source=str(root))
    pixel = _num(meta.get("pixel_size_um_estimated")) or _num(meta.get("pixel_size_um_embedded"))
    if pixel is not None:
        sample.pixel_size_um = pixel
    spot_um = _num(meta.get("spot_diameter"))
    if spot_um is not None and sample.pixel_size_um:
        sample.spot_diameter_px = spot_um / sample.pixel_size_um
    tech = str(meta.get("st_technology") or "").strip().lower()
    grid = meta.get("grid") or _TECH_GRID.get(tech)
    if grid:
        sample.grid = str(grid)
    elif sample.grid is None:
        sample.grid = guess_grid(
            adata.obs[["array_row", "array_col"]].to_numpy() if "array_row" in adata.obs else None
        )

    wsi = root / "wsis" / f"{sample_id}.tif"
    if wsi.is_file():
        img, tiff_px = open_tiff(wsi)
        check_in_image(st, sample.coords, img)
        sample.image = img
        if sample.pixel_size_um is None and tiff_px is not None:
            sample.pixel_size_um = tiff_px
    patches = root / "patches" / f"{sample_id}.h5"
    sample.metadata.update(
        hest=meta,
        technology=meta.get("st_technology"),
        wsi=str(wsi) if wsi.is_file() else None,
        patches=str(patches) if patches.is_file() else None,
    )
    return sample


def _technology_name(sample: Sample) -> str | None:
    tech = sample.metadata.get("technology")
    if tech == "ST":
        return "Spatial Transcriptomics"
    if tech:
        return str(tech)
    return {"hex": "Visium", "square": "Spatial Transcriptomics"}.get(sample.grid or "")


def _thumbnail(arr: np.ndarray, long_side: int = 1000) -> tuple[np.ndarray, float]:
    """HEST's ``downscaled_fullres`` image (at most ``long_side`` px) and its scale factor."""
    from PIL import Image

    f = min(1.0, long_side / max(arr.shape[:2]))
    if f >= 1.0:
        return arr, 1.0
    size = (max(1, round(arr.shape[1] * f)), max(1, round(arr.shape[0] * f)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.LANCZOS)), size[0] / arr.shape[1]


def write_hest_sample(
    sample: Sample,
    root: str | Path,
    sample_id: str | None = None,
    downsample: float = 1.0,
    patches: bool = False,
    patch_px: int = 224,
    patch_um: float = 112.0,
    compression: str | None = "jpeg",
) -> Path:
    """Write ``sample`` in the HEST layout under ``root``; returns the h5ad path.

    ``downsample`` > 1 writes a coarser WSI (coordinates, spot diameter and
    pixel size are rescaled to match), handy for small shareable copies.  The
    WSI is never upsampled: a sample whose image is itself downscaled (e.g. a
    Visium hires PNG) gets a WSI at that image's resolution.
    """
    from .h5ad import image_thumbnail
    from .images import write_pyramidal_tiff

    root = Path(root)
    sid = str(sample_id or sample.sample_id)
    factor = 1.0 / float(downsample)  # output px per source full-res px
    wsi_arr = None
    if sample.image is not None:
        wsi_arr, factor = image_thumbnail(sample.image, factor)

    a = sample.adata.copy()
    xy = sample.coords * factor
    a.obsm["spatial"] = xy
    a.obs["pxl_col_in_fullres"] = xy[:, 0]
    a.obs["pxl_row_in_fullres"] = xy[:, 1]
    a.obs["in_tissue"] = 1
    spot_px = float(sample.spot_diameter_px) * factor
    pixel = sample.pixel_size_um / factor if sample.pixel_size_um else None
    sf: dict = {"spot_diameter_fullres": spot_px}
    st_entry: dict = {"scalefactors": sf, "metadata": {}}
    if wsi_arr is not None:
        thumb, thumb_f = _thumbnail(wsi_arr)
        st_entry["images"] = {"downscaled_fullres": thumb}
        sf["tissue_downscaled_fullres_scalef"] = float(thumb_f)
    a.uns["spatial"] = {"ST": st_entry}
    nf = {"sample_id": sid, "spot_diameter_px": spot_px}
    if pixel:
        nf["pixel_size_um"] = float(pixel)
    if sample.grid:
        nf["grid"] = str(sample.grid)
    a.uns["napari_flag"] = nf

    meta = {
        "id": sid,
        "st_technology": _technology_name(sample),
        "pixel_size_um_estimated": pixel,
        "pixel_size_um_embedded": pixel,
        "spot_diameter": sample.metadata.get("spot_diameter_um")
        or (spot_px * pixel if pixel else None),
        "inter_spot_dist": sample.metadata.get("inter_spot_dist_um"),
        "spots_under_tissue": int(sample.n_spots),
        "grid": sample.grid,
        "source": str(sample.source) if sample.source else None,
    }
    if wsi_arr is not None:
        meta["fullres_px_height"], meta["fullres_px_width"] = int(wsi_arr.shape[0]), int(wsi_arr.shape[1])

    for sub in ("st", "metadata") + (("wsis",) if wsi_arr is not None else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if wsi_arr is not None:
        write_pyramidal_tiff(root / "wsis" / f"{sid}.tif", wsi_arr, pixel_size_um=pixel, compression=compression)
    st_path = root / "st" / f"{sid}.h5ad"
    with atomic_path(st_path) as tmp:
        a.write_h5ad(tmp)
    (root / "metadata" / f"{sid}.json").write_text(json.dumps(meta, indent=2))

    if patches and wsi_arr is not None and pixel:
        _write_patches(root / "patches" / f"{sid}.h5", sample, patch_px, patch_um, factor)
    return st_path


def _write_patches(path: Path, sample: Sample, patch_px: int, patch_um: float, factor: float) -> None:
    """Spot-centred patches (HEST's ``img``/``coords``/``barcode`` datasets)."""
    import h5py

    side = patch_um / sample.pixel_size_um  # in source full-res px
    xy = sample.coords
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        img = f.create_dataset("img", shape=(len(xy), patch_px, patch_px, 3), dtype="uint8", chunks=(1, patch_px, patch_px, 3))
        for i, (x, y) in enumerate(xy):
            img[i] = sample.image.read_region(x - side / 2, y - side / 2, side, patch_px)
        f.create_dataset("coords", data=(xy * factor).astype(np.float64))
        f.create_dataset("barcode", data=np.asarray(sample.spot_ids, dtype="S")[:, None])
        f.attrs["patch_size_um"] = patch_um
        f.attrs["coords"] = "spot centre (x, y) in WSI pixels"
