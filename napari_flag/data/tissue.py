"""Where the tissue is on an H&E slide, from a low-resolution overview.

The rule, on an overview at about 8 um per pixel (sizes in microns, so a
0.25 um/px scan and its 4x thumbnail give the same mask):

1. **Not tissue, whatever else holds**: pen ink (blue and green: blue and green
   far above red, which H&E never is; black: dark and grey) and black or
   out-of-focus scanner margins (darker than :data:`_DARK`).
2. **Dense tissue**: Otsu's threshold on the colour saturation of the smoothed
   overview.  An image whose "tissue" class is barely more saturated than the
   rest (blank glass, a white, black or uniformly tinted image) has none, and
   :func:`detect_tissue` says so in one line naming the file.
3. **Pale tissue** (fat: white adipocytes with thin pink membranes; loose
   stroma): pixels whose local texture (standard deviation of brightness over
   ~3 overview pixels) is well above the glass's, closed over ``pale_um``
   (the size of an adipocyte) into regions; a region is kept when it touches
   dense tissue, so fiducial frames, dust and the faint array pattern on
   glass stay out.
4. A closing bridges the pale gaps between pieces; holes enclosed by tissue
   (lumens, tears, fat) are filled up to ``max_hole_um2``; specks smaller than
   a fraction of a spot are dropped; the mask is grown by ``margin_um`` so that
   spots on the section's edge are inside it; ink and margins are removed last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._util import fail
from .overview import overview_level, read_overview
from .sample import SlideImage

__all__ = ["TissueMask", "detect_tissue", "TISSUE_UM_PER_PX"]

#: resolution the mask is computed at, when the pixel size is known
TISSUE_UM_PER_PX = 8.0
#: overview pixels assumed when the pixel size is unknown
_UNKNOWN_MAX_PX = 2_000_000
#: saturation below which nothing is tissue, whatever Otsu says
_MIN_SATURATION = 0.05
#: least difference of mean saturation between tissue and background
_MIN_CONTRAST = 0.08
#: pixels darker than this (max channel, 0-1) are margins or ink, not tissue
_DARK = 0.12
#: texture (brightness s.d., 0-255) that pale tissue has at least, and its least multiple of the glass's
_MIN_TEXTURE = 3.0
_TEXTURE_OVER_GLASS = 4.0
#: least chroma (max - min channel, 0-255) pale tissue has over the glass's (local mean over 5 x 5 pixels)
_PALE_TINT = 5.0
#: least area of a pen stroke or margin, um^2
_MIN_INK_UM2 = 150.0 * 150.0
#: recorded with every mask, so a mask says which rule made it
TISSUE_RULE = "v2: dense by saturation + textured pale regions touching it, holes filled, ink and margins out"


@dataclass
class TissueMask:
    """A boolean tissue mask over the whole slide and its full-resolution mapping.

    Mask pixel ``(i, j)`` covers full-resolution ``x`` in ``[j f, (j+1) f)``
    and ``y`` in ``[i f, (i+1) f)`` with ``f = fullres_per_px``.
    """

    mask: np.ndarray
    fullres_per_px: float
    pixel_size_um: float | None = None
    source: str | None = None
    threshold: float = float("nan")
    level: int = 0
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    @property
    def fraction(self) -> float:
        """Share of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_mm2(self) -> float | None:
        if self.pixel_size_um is None:
            return None
        side_um = self.fullres_per_px * float(self.pixel_size_um)
        return float(self.mask.sum()) * side_um**2 / 1e6

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """For full-res points ``(x, y)``: do they lie on tissue? Off-slide is not."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        j = np.floor(xy[:, 0] / self.fullres_per_px).astype(np.int64)
        i = np.floor(xy[:, 1] / self.fullres_per_px).astype(np.int64)
        h, w = self.mask.shape
        inside = (i >= 0) & (j >= 0) & (i < h) & (j < w)
        out = np.zeros(len(xy), dtype=bool)
        out[inside] = self.mask[i[inside], j[inside]]
        return out

    def coverage(self, xy: np.ndarray, radius_px: float, n_rings: int = 4) -> np.ndarray:
        """Share of each disc (centre ``xy``, radius in full-res px) lying on tissue.

        Estimated on a fixed set of points spread evenly over the disc
        (concentric rings of equal area), enough for a keep/drop decision.
        """
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        offs = [(0.0, 0.0)]
        for r in range(1, n_rings + 1):
            rad = radius_px * np.sqrt((r - 0.5) / n_rings)
            m = 6 * r
            a = 2 * np.pi * (np.arange(m) + 0.5 * (r % 2)) / m
            offs += list(zip(rad * np.cos(a), rad * np.sin(a)))
        offs = np.asarray(offs)
        pts = (xy[:, None, :] + offs[None, :, :]).reshape(-1, 2)
        return self.contains(pts).reshape(len(xy), len(offs)).mean(axis=1)

    def bbox_fullres(self) -> tuple[float, float, float, float] | None:
        """``(x0, y0, x1, y1)`` of the tissue in full-res px, ``None`` when empty."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if not len(rows):
            return None
        f = self.fullres_per_px
        return (cols[0] * f, rows[0] * f, (cols[-1] + 1) * f, (rows[-1] + 1) * f)

    def to_dict(self) -> dict:
        """JSON-safe summary (no pixels) for reports."""
        area = self.area_mm2
        return {
            "fraction": round(self.fraction, 6),
            "area_mm2": None if area is None else round(area, 4),
            "shape": list(self.shape),
            "fullres_per_px": float(self.fullres_per_px),
            "um_per_px": None if self.pixel_size_um is None else float(self.fullres_per_px * self.pixel_size_um),
            "threshold": None if not np.isfinite(self.threshold) else round(float(self.threshold), 4),
            "level": int(self.level),
            "params": dict(self.params),
        }


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1], zero where a pixel is too dark to tell colour."""
    r, g, b = (rgb[..., i] for i in range(3))  # pairwise max/min: a reduction over a length-3 axis is slow
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32) / 255.0
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32) / 255.0
    s = np.where(mx > _DARK, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return s.astype(np.float32)


def _drop_small(mask: np.ndarray, area_px: float, holes: bool) -> np.ndarray:
    """Fill holes (``holes=True``) or drop objects smaller than ``area_px`` pixels."""
    import skimage.morphology as morph

    n = max(1, int(area_px))
    fn = morph.remove_small_holes if holes else morph.remove_small_objects
    try:  # scikit-image >= 0.26 names the limit max_size (inclusive)
        return fn(mask, max_size=n)
    except TypeError:
        return fn(mask, n)


def _ink(rgb: np.ndarray) -> np.ndarray:
    """Pen ink and dark margins: blue/green marker, black marker, black or out-of-focus borders."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    # haematoxylin can be as blue as (117, 119, 166): blue marker's green stands well above its red
    blue = (b - r > 80) & (g - r > 25)
    green = (g - r > 30) & (g - b > 10)
    dark = mx < _DARK * 255
    black = (mx < 70) & (mx - np.minimum(np.minimum(r, g), b) < 15)
    return blue | green | dark | black


def _texture(rgb: np.ndarray) -> np.ndarray:
    """Local standard deviation of brightness over 3 x 3 overview pixels, smoothed over 5 x 5."""
    from scipy import ndimage as ndi

    lum = rgb.astype(np.float32).mean(axis=-1)
    m = ndi.uniform_filter(lum, 3)
    sd = np.sqrt(np.maximum(ndi.uniform_filter(lum * lum, 3) - m * m, 0.0))
    return ndi.uniform_filter(sd, 5)


def _fill_enclosed(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill holes enclosed by the mask (background not reaching the image border) up to ``max_px`` pixels."""
    from scipy import ndimage as ndi

    holes = ndi.binary_fill_holes(mask) & ~mask
    labels, n = ndi.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes <= max_px)
    return mask | np.isin(labels, small[small > 0])


def _disk_closing(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Closing that does not glue tissue to the image border (padded first)."""
    from skimage.morphology import isotropic_closing

    r = max(1, int(radius_px))
    return isotropic_closing(np.pad(mask, r + 1), r)[r + 1 : -r - 1, r + 1 : -r - 1]


def _pale_regions(rgb: np.ndarray, dense: np.ndarray, excluded: np.ndarray, mask_um: float,
                  pale_um: float) -> np.ndarray:
    """Textured regions next to dense tissue: fat and loose stroma (rule 3 of the module)."""
    from scipy import ndimage as ndi

    tex = _texture(rgb)
    glass = ~dense & ~excluded
    if not glass.any():
        return np.zeros_like(dense)
    base = float(np.median(tex[glass]))
    # stained, not grey: fiducial frames, dust and scanner patterns have texture but no colour
    r, g, b = (rgb[..., i] for i in range(3))  # chroma, not saturation: that rises for darker greys
    chroma = ndi.uniform_filter((np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b))
                                .astype(np.float32), 5)
    tinted = chroma > float(np.median(chroma[glass])) + _PALE_TINT
    textured = (tex > max(_MIN_TEXTURE, _TEXTURE_OVER_GLASS * base)) & tinted & ~excluded
    regions = _disk_closing(textured | dense, round(pale_um / mask_um))
    labels, n = ndi.label(regions)
    if n == 0:
        return np.zeros_like(dense)
    touching = np.unique(labels[dense & regions])
    return np.isin(labels, touching[touching > 0])


def detect_tissue(
    image: SlideImage,
    pixel_size_um: float | None = None,
    source: str | Path | None = None,
    um_per_px: float = TISSUE_UM_PER_PX,
    closing_um: float = 30.0,
    min_hole_um2: float = 40_000.0,
    min_object_um2: float = 20_000.0,
    pale_um: float = 60.0,
    max_hole_um2: float = 4_000_000.0,
    margin_um: float = 24.0,
) -> TissueMask:
    """Tissue mask of ``image`` (full-res pixels of ``pixel_size_um`` microns), by the module's rule.

    ``closing_um`` is the radius of the closing; holes enclosed by tissue up
    to ``max_hole_um2`` (a 2 x 2 mm lumen) are filled, and objects under
    ``min_object_um2`` (a 140 x 140 um speck) dropped; ``pale_um`` is the
    radius that closes the membranes of fat into a region; ``margin_um`` grows
    the mask at the end.  ``min_hole_um2`` is kept for compatibility (every
    smaller hole is filled too).  Without a pixel size the overview is about
    2 Mpx and the sizes assume it is at ``um_per_px``.

    Raises ``FlagInputError("<file>: no tissue found")`` when nothing is left.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    name = str(source or image.path or "image")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise fail(name, f"pixel size must be a positive number, got {pixel_size_um!r}")
    if pixel_size_um:
        target, max_px = um_per_px / float(pixel_size_um), 4_000_000
    else:
        target, max_px = None, _UNKNOWN_MAX_PX
    level, _ = overview_level(image, target, max_px)
    rgb, f = read_overview(image, target, max_px)
    mask_um = f * float(pixel_size_um) if pixel_size_um else um_per_px
    params = {"um_per_px": float(um_per_px), "closing_um": float(closing_um), "min_hole_um2": float(min_hole_um2),
              "min_object_um2": float(min_object_um2), "pale_um": float(pale_um),
              "max_hole_um2": float(max_hole_um2), "margin_um": float(margin_um), "rule": TISSUE_RULE}
    # ink and margins come in strokes and bands; a dark speck inside tissue is a nucleus cluster
    ink = _drop_small(_ink(rgb), _MIN_INK_UM2 / mask_um**2, holes=False)
    excluded = ndi.binary_dilation(ink, iterations=max(1, int(round(16.0 / mask_um))))
    sat = ndi.gaussian_filter(_saturation(rgb), sigma=max(0.5, 8.0 / mask_um))
    sat[excluded] = 0.0
    t = float(threshold_otsu(sat)) if np.ptp(sat) > 1e-3 else float("inf")
    dense = np.zeros(sat.shape, dtype=bool)
    if np.isfinite(t):
        t = max(t, _MIN_SATURATION)
        fg = sat > t
        if fg.any() and (~fg).any() and sat[fg].mean() - sat[~fg & ~excluded].mean() >= _MIN_CONTRAST:
            dense = fg
    px2 = mask_um**2
    mask = dense = _drop_small(dense, min_object_um2 / px2, holes=False)  # a speck seeds nothing
    if mask.any():
        mask = _disk_closing(dense | _pale_regions(rgb, dense, excluded, mask_um, pale_um),
                             round(closing_um / mask_um))
        mask = _fill_enclosed(mask, max_hole_um2 / px2)
        mask = _drop_small(mask, min_object_um2 / px2, holes=False)
        grow = int(round(margin_um / mask_um))
        if grow > 0:
            mask = ndi.binary_dilation(mask, iterations=grow)
        mask &= ~excluded
    if not mask.any():
        raise fail(name, "no tissue found")
    return TissueMask(
        mask=mask,
        fullres_per_px=float(f),
        pixel_size_um=None if not pixel_size_um else float(pixel_size_um),
        source=name,
        threshold=t,
        level=level,
        params=params,
    )
