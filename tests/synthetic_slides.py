"""Synthetic H&E slides with what the HER2ST images lack: fat, loose stroma, holes, pen ink, folds, black margins.

The HER2ST C sections are cropped to dense tumour, so they cannot show
whether tissue detection keeps pale tissue.  These slides are drawn at
2 um/px with known ground truth: ``truth`` marks every pixel of the section
(dense tissue, fat, loose stroma, a fold and the hole inside the section),
``ink`` the pen marks and ``margin`` the black scanner border.
"""
from __future__ import annotations

import numpy as np

PIXEL_SIZE_UM = 2.0
GLASS = (238, 236, 240)


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _adipose(shape, rng, cell_um=90.0, membrane_um=3.0):
    """Boolean membranes of a Voronoi lattice of adipocytes (``cell_um`` across)."""
    from scipy.spatial import cKDTree

    cell = cell_um / PIXEL_SIZE_UM
    n = int(shape[0] * shape[1] / cell**2) + 1
    seeds = rng.uniform(0, 1, size=(n, 2)) * np.asarray(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d, _ = cKDTree(seeds).query(np.c_[yy.ravel(), xx.ravel()], k=2)
    return ((d[:, 1] - d[:, 0]) < membrane_um / PIXEL_SIZE_UM).reshape(shape)


def _paint(img, where, rgb, rng, jitter=8):
    n = int(where.sum())
    img[where] = np.clip(np.asarray(rgb)[None, :] + rng.normal(0, jitter, size=(n, 3)), 0, 255)


def breast_like(size_px: int = 3000, seed: int = 0) -> dict:
    """A section of dense tissue with fat, loose stroma, a hole and a fold; ink and a black margin on the glass.

    Returns ``{"image": uint8 (size, size, 3), "truth", "ink", "margin", "fat", "pixel_size_um"}``.
    """
    rng = np.random.default_rng(seed)
    shape = (size_px, size_px)
    img = np.empty((*shape, 3), np.float32)
    img[:] = GLASS
    img += rng.normal(0, 2.0, size=img.shape)
    c = size_px / 2
    section = _ellipse(shape, c, c, 0.36 * size_px, 0.40 * size_px)
    dense = section & _ellipse(shape, c * 0.9, c * 0.8, 0.22 * size_px, 0.2 * size_px)
    fat = section & ~dense & (np.arange(size_px)[None, :] > c * 0.95)  # the right half of the rim: adipose
    loose = section & ~dense & ~fat
    # dense tissue: eosin background with haematoxylin nuclei
    _paint(img, dense, (215, 120, 185), rng, 12)
    nuclei = dense & (rng.random(shape) < 0.08)
    _paint(img, nuclei, (95, 55, 140), rng, 10)
    # fat: white adipocytes, thin pink membranes
    membranes = fat & _adipose(shape, rng)
    _paint(img, fat & ~membranes, (246, 243, 246), rng, 2)
    _paint(img, membranes, (222, 160, 205), rng, 8)
    # loose stroma: sparse pale fibres on near-white
    grain = 4  # collagen bundles about 8 um across
    coarse = rng.random((size_px // grain + 1, size_px // grain + 1)) < 0.15
    fibres = loose & np.kron(coarse, np.ones((grain, grain), bool))[:size_px, :size_px]
    _paint(img, loose & ~fibres, (240, 228, 238), rng, 3)
    _paint(img, fibres, (225, 175, 210), rng, 8)
    # a hole inside the dense tissue (a tear or lumen): glass, still part of the section
    hole = _disc(shape, int(c * 0.9), int(c * 0.8), 0.05 * size_px)
    img[hole] = GLASS
    # a fold: a darker, more saturated band across the dense tissue
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    fold = dense & (np.abs((yy - c * 0.9) - 0.6 * (xx - c * 0.8)) < 0.012 * size_px)
    _paint(img, fold, (160, 70, 140), rng, 10)
    # pen ink on the glass beside the section (blue and green) and a black mark
    blue = (np.abs(yy - 0.06 * size_px) < 0.012 * size_px) & (xx > 0.2 * size_px) & (xx < 0.75 * size_px)
    green = (np.abs(xx - 0.95 * size_px) < 0.01 * size_px) & (yy > 0.3 * size_px) & (yy < 0.7 * size_px)
    black = _disc(shape, int(0.92 * size_px), int(0.1 * size_px), 0.03 * size_px)
    _paint(img, blue, (45, 95, 190), rng, 10)
    _paint(img, green, (60, 150, 85), rng, 10)
    _paint(img, black, (35, 35, 40), rng, 6)
    # the scanner's black margin along the bottom edge
    margin = yy > size_px - 0.02 * size_px
    img[margin] = rng.normal(12, 3, size=(int(margin.sum()), 3))
    return {"image": np.clip(img, 0, 255).astype(np.uint8), "truth": section | hole, "fat": fat,
            "ink": blue | green | black, "margin": margin, "pixel_size_um": PIXEL_SIZE_UM}
