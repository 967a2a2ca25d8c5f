"""Reading slides into :class:`Sample` objects, whatever their format.

``load_sample`` is the one entry point; it recognises

* dataset ids: ``"her2st:C2"`` (fetched through :mod:`.registry`'s cache);
* a Space Ranger ``outs/`` folder (or the folder holding ``outs/``);
* a HEST-1k folder (``st/``, ``wsis/``, ``metadata/``) or its ``st/<id>.h5ad``;
* an ``.h5ad`` with ``obsm['spatial']``;
* an image: TIFF/BigTIFF/OME-TIFF (pyramids read lazily), OME-Zarr/zarr,
  JPEG/PNG -> a sample with the image and no spots.

Whatever is on disk, a bad input ends in one ``FlagInputError`` whose single
line names the file and the problem, and nothing is written for it.  The
readers check what would otherwise surface later as nonsense: counts that are
NaN, infinite, negative or not numbers; NaN/infinite or non-numeric
coordinates; scale factors that are missing or not positive numbers; counts
and positions that share no spots, or fewer than half of them; zero spots;
empty, truncated or undecodable images and matrices.  Spot centres off the
image are an error when they are more than half of the spots (wrong image or
scale) and only a warning when fewer (kept; their patches read as white).
JPEG/PNG pixels are decoded lazily: only the header, the end marker (and for
PNG the chunk checksums) are checked at load, and a decoding failure on first
pixel access is a ``FlagInputError`` too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FlagInputError
from ._util import fail
from .registry import cache_dir, fetch_her2st, is_dataset_id, list_datasets
from .sample import Sample, SlideImage

__all__ = [
    "Sample",
    "SlideImage",
    "load_sample",
    "detect_format",
    "image_sample",
    "with_pixel_size",
    "cache_dir",
    "fetch_her2st",
    "list_datasets",
    "FORMATS",
]

#: what :func:`detect_format` can answer
FORMATS = ("dataset", "spaceranger", "hest", "h5ad", "tiff", "zarr", "jpeg", "png")

_MAGIC = {
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",
    b"MM\x00+": "tiff",
    b"\x89PNG": "png",
    b"\x89HDF": "h5ad",
}


def _sniff(p: Path) -> str | None:
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head[:2] == b"\xff\xd8":
        return "jpeg"
    return _MAGIC.get(head[:4])


def detect_format(path: str | Path) -> str:
    """Name the format of ``path`` (one of :data:`FORMATS`) or fail saying why."""
    from .hest import hest_root_of
    from .spaceranger import find_outs

    if isinstance(path, str) and is_dataset_id(path) and not Path(path).exists():
        return "dataset"
    if not isinstance(path, (str, os.PathLike)):
        raise FlagInputError(f"{path!r}: not a path or dataset id")
    p = Path(path).expanduser()
    name = p.name.lower()
    try:
        exists = p.exists()
    except (OSError, ValueError) as exc:  # e.g. an embedded NUL byte, a name too long
        raise fail(repr(str(path)), f"invalid path ({exc})") from None
    if not exists:
        raise fail(p, "file or folder not found")
    if p.is_dir():
        if name.endswith(".zarr") or (p / ".zattrs").exists() or (p / "zarr.json").exists() or (p / ".zgroup").exists():
            return "zarr"
        if find_outs(p) is not None:
            return "spaceranger"
        if hest_root_of(p) is not None:
            return "hest"
        if (p / "ST-cnts").is_dir():
            raise fail(
                p,
                "a HER2ST data folder holds many sections: load one as 'her2st:<section>' "
                "with NAPARI_FLAG_DATA_DIR set to this folder",
            )
        raise fail(p, "unknown folder layout (expected Space Ranger outs/, a HEST folder or a .zarr store)")
    if name.endswith(".h5ad"):
        return "hest" if hest_root_of(p) is not None else "h5ad"
    if name.endswith((".tif", ".tiff", ".btf", ".svs")):
        return "tiff"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith(".png"):
        return "png"
    if name.endswith(".h5") and find_outs(p.parent) is not None:
        return "spaceranger"
    kind = _sniff(p)
    if kind is not None and not (kind == "h5ad" and not name.endswith(".h5ad")):
        return kind
    raise fail(p, "unknown format (expected .h5ad, .tif/.tiff, .zarr, .jpg, .png, a Space Ranger or HEST folder)")


def image_sample(path: str | Path, sample_id: str | None = None) -> Sample:
    """An image with no spots yet: ``n_obs == 0``, ``obsm['spatial']`` of shape (0, 2).

    The spot diameter is unknown (NaN) until spots are placed on the image.
    """
    import anndata as ad

    from .images import open_image

    p = Path(path).expanduser()
    img, px = open_image(p)
    adata = ad.AnnData(X=np.zeros((0, 0), dtype=np.float32))
    adata.obsm["spatial"] = np.zeros((0, 2), dtype=np.float64)
    stem = p.name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".jpeg", ".jpg", ".png", ".svs", ".btf"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return Sample(
        sample_id=sample_id or stem,
        adata=adata,
        spot_diameter_px=float("nan"),
        pixel_size_um=px,
        image=img,
        grid=None,
        source=str(p),
        metadata={"technology": None},
    )


def with_pixel_size(sample: Sample, pixel_size_um) -> Sample:
    """A copy of ``sample`` at a pixel size the user knows better than the file.

    For scans whose file records none (JPEG, plain TIFF) or a wrong one.  The
    value must be a positive number of microns per full-resolution pixel;
    spot positions and the spot diameter in pixels are kept as they are.
    ``metadata['pixel_size_source']`` says ``"user"`` and keeps the old value.
    """
    import dataclasses
    import math

    name = sample.source or sample.sample_id
    try:
        v = float(pixel_size_um)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(pixel_size_um, bool) or not (math.isfinite(v) and v > 0):
        raise fail(name, f"pixel size must be a positive number of um per pixel, got {pixel_size_um!r}")
    meta = dict(sample.metadata, pixel_size_source="user", pixel_size_um_file=sample.pixel_size_um)
    return dataclasses.replace(sample, pixel_size_um=v, metadata=meta)


def load_sample(source: str | Path, sample_id: str | None = None, pixel_size_um: float | None = None) -> Sample:
    """Read any supported slide into a :class:`Sample` (see the module docstring).

    ``pixel_size_um`` overrides the pixel size found in (or derived from) the
    file, see :func:`with_pixel_size`.  Errors are
    :class:`~napari_flag.errors.FlagInputError` with a one-line message naming
    the file and the problem.
    """
    sample = _load(source, sample_id)
    return sample if pixel_size_um is None else with_pixel_size(sample, pixel_size_um)


def _load(source: str | Path, sample_id: str | None = None) -> Sample:
    if source is None or (isinstance(source, str) and not source.strip()):
        raise FlagInputError("no input given: expected a file, a folder or a dataset id such as 'her2st:C2'")
    kind = detect_format(source)
    if kind == "dataset":
        from .st_legacy import read_her2st

        return read_her2st(str(source))
    p = Path(source).expanduser()
    if kind == "spaceranger":
        from .spaceranger import read_spaceranger

        return read_spaceranger(p.parent if p.is_file() else p, sample_id=sample_id)
    if kind == "hest":
        from .hest import read_hest

        return read_hest(p, sample_id=sample_id)
    if kind == "h5ad":
        from .h5ad import read_h5ad

        return read_h5ad(p, sample_id=sample_id)
    return image_sample(p, sample_id=sample_id)
