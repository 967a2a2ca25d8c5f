"""Stain and scanner variation of H&E patches: re-staining in HED space, plus the scanner's knobs.

Another lab's H&E differs from the training slides mostly in how much
haematoxylin and eosin the tissue took up (optical density per stain), then
in brightness, contrast, focus and compression.  :class:`StainJitter` applies
one such variation to a batch of patches; training draws several per slide
(:func:`draw_jitters`) and the stain-shift benchmark uses the same re-staining
(:func:`restain`).  The colour deconvolution is scikit-image's (Ruifrok &
Johnston's H&E-DAB vectors, as in ``skimage.color.rgb2hed``), done in float32
on whole batches.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

__all__ = ["JitterRanges", "StainJitter", "draw_jitters", "restain"]


@cache  # called for every batch the reader thread re-stains
def _matrices() -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import hed_from_rgb, rgb_from_hed

    return hed_from_rgb.astype(np.float32), rgb_from_hed.astype(np.float32)


def restain(patches: np.ndarray, h: float = 1.0, e: float = 1.0, mix: np.ndarray | None = None) -> np.ndarray:
    """``uint8 (..., 3)`` RGB with haematoxylin and eosin optical densities scaled by ``h`` and ``e``.

    ``h = e = 1`` returns the input.  Scaling happens on the stain
    concentrations of the colour deconvolution, so background (no stain)
    stays white whatever the scales.  ``mix``: ``(3, 3)`` RGB optical
    densities of H, E and DAB (rows) to mix the amounts back with, in place of
    scikit-image's (dyes of another hue).
    """
    patches = np.asarray(patches)
    if h == 1.0 and e == 1.0 and mix is None:
        return patches
    to_hed, to_rgb = _matrices()
    if mix is not None:
        to_rgb = np.asarray(mix, dtype=np.float32)
    rgb = patches.astype(np.float32)
    od = -np.log(np.maximum(rgb / 255.0, 1e-6))  # skimage's rgb2hed, without its clipping of 0
    conc = od @ to_hed
    conc[..., 0] *= np.float32(h)
    conc[..., 1] *= np.float32(e)
    out = 255.0 * np.exp(-(conc @ to_rgb))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class JitterRanges:
    """How far a drawn variation may go.

    ``stain``: haematoxylin and eosin scales are drawn log-uniformly in
    ``[1/(1+stain), 1+stain]``, independently; ``brightness`` and ``contrast``:
    multiplicative, uniformly in ``1 ± value``; ``blur``: Gaussian sigma in
    patch pixels, uniformly in ``[0, blur]``; ``jpeg``: quality drawn in
    ``[jpeg, 95]`` (0 turns compression off).
    """

    stain: float = 0.4
    brightness: float = 0.08
    contrast: float = 0.1
    blur: float = 0.8
    jpeg: int = 60


@dataclass(frozen=True)
class StainJitter:
    """One stain and scanner variation, applied identically to every patch it gets."""

    h: float = 1.0
    e: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    blur: float = 0.0
    jpeg: int = 0

    @property
    def key(self) -> str:
        """Identifies the variation (part of the feature cache key)."""
        return "jit:" + ",".join(f"{k}={v:.4g}" for k, v in asdict(self).items())

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """``uint8 (N, H, W, 3)`` patches with this variation."""
        out = restain(patches, self.h, self.e).astype(np.float32)
        if self.brightness != 1.0 or self.contrast != 1.0:
            mean = out.mean(axis=(-3, -2, -1), keepdims=True)
            out = (out - mean) * self.contrast + mean * self.brightness
        if self.blur > 0:
            from scipy.ndimage import gaussian_filter

            sig = (0.0,) * (out.ndim - 3) + (self.blur, self.blur, 0.0)
            out = gaussian_filter(out, sigma=sig, mode="nearest")
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return _jpeg(out, self.jpeg) if self.jpeg else out


def _jpeg(patches: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    flat = patches.reshape((-1,) + patches.shape[-3:])
    out = np.empty_like(flat)
    for i, p in enumerate(flat):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out.reshape(patches.shape)


def draw_jitters(k: int, seed: int, ranges: JitterRanges = JitterRanges()) -> list[StainJitter]:
    """``k`` variations drawn from ``ranges`` with a seeded generator (the same ``seed``, the same list)."""
    rng = np.random.default_rng(seed)
    out = []
    top = np.log1p(ranges.stain)
    for _ in range(int(k)):
        h, e = np.exp(rng.uniform(-top, top, size=2))
        b, c = 1.0 + rng.uniform(-1, 1, size=2) * (ranges.brightness, ranges.contrast)
        blur = rng.uniform(0.0, ranges.blur) if ranges.blur > 0 else 0.0
        q = int(rng.integers(ranges.jpeg, 96)) if ranges.jpeg else 0
        out.append(StainJitter(round(float(h), 4), round(float(e), 4), round(float(b), 4), round(float(c), 4),
                               round(float(blur), 3), q))
    return out
