"""One object for a slide, whatever format it came from.

Every reader returns a :class:`Sample`; everything downstream (features, model,
metrics, napari layers) consumes only this object, so adding a format means
adding a reader and nothing else.

Coordinate convention: ``adata.obsm["spatial"]`` holds spot centres as
``(x, y)`` in *full-resolution* pixels (scanpy/Space Ranger convention).
napari wants ``(row, col) = (y, x)``; convert at the napari edge only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["SlideImage", "Sample"]


@dataclass
class SlideImage:
    """A lazy RGB image, possibly a pyramid.

    ``levels[0]`` is the finest level; every level is an array-like
    ``(Y, X, C)`` (zarr array, dask array, memmap or ndarray) that is only
    sliced, never loaded whole.  ``scale`` is the number of level-0 pixels per
    full-resolution pixel (1.0 for a full-resolution image, e.g. 0.0516 for a
    Visium ``tissue_lowres_image.png``), so full-res coordinates times
    ``scale`` index level 0.  ``downsamples[i]`` is the factor of level ``i``
    relative to level 0.
    """

    levels: list
    scale: float = 1.0
    path: str | None = None
    downsamples: list[float] | None = None

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("SlideImage needs at least one level")
        if self.downsamples is None:
            h0 = self.levels[0].shape[0]
            self.downsamples = [h0 / lv.shape[0] for lv in self.levels]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of level 0, ``(Y, X, C)``."""
        return tuple(self.levels[0].shape)

    @property
    def fullres_shape(self) -> tuple[float, float]:
        """Height and width of the image in full-resolution pixels."""
        return (self.shape[0] / self.scale, self.shape[1] / self.scale)

    @property
    def is_multiscale(self) -> bool:
        return len(self.levels) > 1

    def read_region(self, x0: float, y0: float, size: float, out_px: int) -> np.ndarray:
        """Square region in full-res coordinates, resampled to ``out_px``.

        ``(x0, y0)`` is the top-left corner and ``size`` the side, both in
        full-resolution pixels.  The coarsest level that still has at least
        ``out_px`` pixels across the region is read; areas outside the image
        are white (255), as background on an H&E slide is.
        """
        from PIL import Image

        side0 = size * self.scale  # side in level-0 pixels
        level = 0
        for i, ds in enumerate(self.downsamples):
            if side0 / ds >= out_px:
                level = i
        arr = self.levels[level]
        ds = self.downsamples[level]
        f = self.scale / ds
        xa, ya, side = x0 * f, y0 * f, size * f
        ix0, iy0 = int(np.floor(xa)), int(np.floor(ya))
        ix1, iy1 = int(np.ceil(xa + side)), int(np.ceil(ya + side))
        h, w = arr.shape[0], arr.shape[1]
        out = np.full((iy1 - iy0, ix1 - ix0, 3), 255, dtype=np.uint8)
        cy0, cx0, cy1, cx1 = max(iy0, 0), max(ix0, 0), min(iy1, h), min(ix1, w)
        if cy1 > cy0 and cx1 > cx0:
            block = np.asarray(arr[cy0:cy1, cx0:cx1])
            if block.ndim == 2:
                block = np.repeat(block[..., None], 3, axis=2)
            block = block[..., :3]
            if block.dtype != np.uint8:
                block = _to_uint8(block)
            out[cy0 - iy0 : cy1 - iy0, cx0 - ix0 : cx1 - ix0] = block
        # crop the sub-pixel offset away, then resample to the requested size
        img = Image.fromarray(out)
        box = (xa - ix0, ya - iy0, xa - ix0 + side, ya - iy0 + side)
        return np.asarray(img.resize((out_px, out_px), Image.BILINEAR, box=box))


def _to_uint8(block: np.ndarray) -> np.ndarray:
    if np.issubdtype(block.dtype, np.floating):
        hi = 1.0 if block.max(initial=0) <= 1.0 else 255.0
        return np.clip(block / hi * 255.0, 0, 255).astype(np.uint8)
    info = np.iinfo(block.dtype)
    return (block.astype(np.float64) / info.max * 255).astype(np.uint8)


@dataclass
class Sample:
    """A slide with its spots.

    Attributes
    ----------
    sample_id : short identifier (``"C2"``, a Visium sample name, ...).
    adata : raw counts as AnnData, spots x genes; ``obs_names`` are spot ids,
        ``var_names`` gene symbols (HGNC for human), ``obsm["spatial"]`` spot
        centres ``(x, y)`` in full-resolution pixels, and when known
        ``obs["array_row"]``, ``obs["array_col"]`` (the array grid).  A sample
        with an image but no spots has ``n_obs == 0``; one with positions but
        no expression has ``n_vars == 0``.
    spot_diameter_px : spot diameter in full-resolution pixels.
    pixel_size_um : microns per full-resolution pixel, ``None`` when unknown.
    image : the H&E image, lazy; ``None`` for expression-only samples.
    grid : ``"square"`` (legacy ST), ``"hex"`` (Visium) or ``None`` (unknown).
    source : where it was read from (a path or a dataset id).
    metadata : anything else worth keeping (scale factors, technology, ...).
    """

    sample_id: str
    adata: Any
    spot_diameter_px: float
    pixel_size_um: float | None = None
    image: SlideImage | None = None
    grid: str | None = None
    source: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        return int(self.adata.n_obs)

    @property
    def spot_ids(self) -> Sequence[str]:
        return list(self.adata.obs_names)

    @property
    def coords(self) -> np.ndarray:
        """Spot centres ``(x, y)`` in full-resolution pixels, float64 ``(n, 2)``."""
        return np.asarray(self.adata.obsm["spatial"], dtype=np.float64)

    @property
    def coords_um(self) -> np.ndarray | None:
        """Spot centres in microns, or ``None`` when the pixel size is unknown."""
        if self.pixel_size_um is None:
            return None
        return self.coords * float(self.pixel_size_um)

    @property
    def has_counts(self) -> bool:
        return self.adata.n_obs > 0 and self.adata.n_vars > 0

    @property
    def spot_diameter_um(self) -> float | None:
        if self.pixel_size_um is None:
            return None
        return self.spot_diameter_px * self.pixel_size_um

    def __repr__(self) -> str:  # short: AnnData reprs are long
        img = "none" if self.image is None else "x".join(map(str, self.image.shape))
        return (
            f"Sample({self.sample_id!r}, spots={self.adata.n_obs}, genes={self.adata.n_vars}, "
            f"image={img}, spot_diameter_px={self.spot_diameter_px:.1f}, "
            f"pixel_size_um={self.pixel_size_um}, grid={self.grid})"
        )

