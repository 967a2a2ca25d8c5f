"""Stain normalisation: a slide's H&E mapped onto the stains of the slides a model was trained on.

Macenko's method (Macenko et al., ISBI 2009), estimated once per slide rather
than per patch: the haematoxylin and eosin optical-density vectors are the
extreme angles of the stained pixels in the plane of their two main
directions, and each stain's concentration is scaled so that its 99th
percentile matches the reference's.  A patch is then unmixed with the
slide's vectors and re-mixed with the reference's.  Estimating on a sample
of the slide's spot patches (not on every patch) keeps all patches of a slide
under one transform, so neighbouring spots stay comparable, and costs one
read of a few hundred patches.

The reference (:class:`StainBasis`) is estimated from the training slides and
recorded in the checkpoint (``meta["stain"]``); :func:`normalised_encoder`
wraps an encoder so that every patch it reads from one slide is normalised.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import FlagInputError

__all__ = [
    "StainBasis",
    "StainNormaliser",
    "estimate_stains",
    "normalised_encoder",
    "reference_from_samples",
    "slide_pixels",
]

_BETA = 0.15  # optical density below which a pixel counts as unstained (glass, pale fat)
_ALPHA = 1.0  # percentile of the angle distribution taken as the pure stains (robust extremes)
_MIN_PIXELS = 2000
_PATCHES = 256  # spot patches per slide the estimate reads
_STRIDE = 4  # every 4th pixel of each of them, each way


@dataclass(frozen=True)
class StainBasis:
    """One slide's (or a reference's) stains: unit OD vectors of H and E, and their 99th-percentile amounts."""

    h: tuple[float, float, float]
    e: tuple[float, float, float]
    max_c: tuple[float, float]

    @property
    def matrix(self) -> np.ndarray:
        """``float32 (3, 2)``: H and E as columns (RGB optical density per unit concentration)."""
        return np.array([self.h, self.e], dtype=np.float32).T

    def to_dict(self) -> dict:
        return {"method": "macenko", "h": list(self.h), "e": list(self.e), "max_c": list(self.max_c)}

    @classmethod
    def from_dict(cls, d: dict) -> StainBasis:
        if str(d.get("method", "macenko")) != "macenko":
            raise FlagInputError(f"stain reference: unknown method {d.get('method')!r} (known: macenko)")
        try:
            return cls(tuple(map(float, d["h"])), tuple(map(float, d["e"])), tuple(map(float, d["max_c"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise FlagInputError(f"stain reference: malformed ({exc})") from exc

    @property
    def key(self) -> str:
        v = self.h + self.e + self.max_c
        return ",".join(f"{x:.3f}" for x in v)


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density of uint8 RGB (white 255 is 0)."""
    return -np.log((np.asarray(rgb, dtype=np.float32) + 1.0) / 256.0)


def estimate_stains(rgb: np.ndarray, source: str = "image") -> StainBasis:
    """Macenko's H and E vectors and 99th-percentile concentrations of ``uint8 (..., 3)`` pixels."""
    od = _od(rgb).reshape(-1, 3)
    od = od[(od > _BETA).all(axis=1)].astype(np.float64)
    if len(od) < _MIN_PIXELS:
        raise FlagInputError(f"{source}: too little stained tissue ({len(od)} pixels) to estimate its stains")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3] * np.where(vecs[:, 1:3].sum(axis=0) < 0, -1.0, 1.0)  # OD is positive: no angle wraps
    t = od @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [_ALPHA, 100.0 - _ALPHA])
    v = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi)]
    v = [x * np.sign(x.sum()) / np.linalg.norm(x) for x in v]
    h, e = (v[0], v[1]) if v[0][0] > v[1][0] else (v[1], v[0])  # haematoxylin absorbs more red
    if abs(float(h @ e)) > 0.995:
        raise FlagInputError(f"{source}: its stains cannot be told apart (one colour only?)")
    conc = np.linalg.lstsq(np.stack([h, e], axis=1), od.T, rcond=None)[0]
    max_c = np.percentile(conc, 99, axis=1)
    if not (max_c > 0).all():
        raise FlagInputError(f"{source}: no haematoxylin or no eosin found; cannot normalise its stains")
    return StainBasis(tuple(map(float, h)), tuple(map(float, e)), tuple(map(float, max_c)))


class StainNormaliser:
    """``uint8 (..., 3)`` patches of a slide with stains ``source`` re-mixed with the stains of ``reference``."""

    def __init__(self, source: StainBasis, reference: StainBasis):
        self.source, self.reference = source, reference
        scale = np.array(reference.max_c, np.float32) / np.array(source.max_c, np.float32)
        # OD -> concentrations (least squares) -> scaled -> reference OD, as one 3x3 matrix
        unmix = np.linalg.pinv(source.matrix.astype(np.float64)).astype(np.float32)  # (2, 3)
        self._m = (unmix.T * scale) @ reference.matrix.T  # (3, 3), applied to row vectors

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        od = _od(patches) @ self._m
        out = 256.0 * np.exp(-np.maximum(od, 0.0)) - 1.0
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def slide_pixels(sample, encoder, augment=None, n_patches: int = _PATCHES) -> np.ndarray:
    """``uint8 (N, 3)`` pixels of up to ``n_patches`` spot patches spread over the slide's spots.

    The patches are the encoder's spot view (its physical size and input side),
    so the estimate sees the resolution the features see.  ``augment`` is
    applied to them first (the stain-shift benchmark's re-staining).
    """
    from .patches import extract_patches

    n = sample.n_spots
    if n == 0:
        raise FlagInputError(f"{sample.source or sample.sample_id}: no spots to estimate the stains on")
    idx = np.unique(np.linspace(0, n - 1, min(n, n_patches)).round().astype(np.int64))
    stride = _STRIDE if len(idx) >= n_patches // 4 else 1  # a handful of spots: every pixel of them
    out = []
    for batch in extract_patches(sample, idx, encoder.patch_um, encoder.patch_px, batch_size=32):
        if augment is not None:
            batch = augment(batch)
        out.append(batch[:, ::stride, ::stride].reshape(-1, 3))
    return np.concatenate(out)


def reference_from_samples(samples, encoder) -> StainBasis:
    """The reference of a set of (training) slides: one estimate on an equal share of each one's pixels."""
    per = max(_PATCHES // max(len(samples), 1), 32)
    pix = np.concatenate([slide_pixels(s, encoder, n_patches=per) for s in samples])
    return estimate_stains(pix, "training slides")


def checkpoint_reference(samples, encoder, normalise: bool = True) -> dict:
    """What a checkpoint records as ``stain``: the slides' pooled reference and whether to normalise."""
    return {**reference_from_samples(samples, encoder).to_dict(), "normalise": bool(normalise)}


class _LazyNormaliser:
    """Estimates the slide's stains on first use (a cached slide's features never need them)."""

    def __init__(self, sample, encoder, reference: StainBasis, augment=None, source: StainBasis | None = None):
        self._sample, self._encoder, self._augment = sample, encoder, augment
        self.reference = reference
        self._norm = None if source is None else StainNormaliser(source, reference)
        self._lock = threading.Lock()
        self.estimate_s = 0.0  # seconds the slide's estimate took (0: given, or not needed)
        base = getattr(augment, "key", None)
        # the slide's estimate follows from the slide and the reference: the reference names the cache entry
        self.key = (f"{base}+" if base else "") + f"norm:macenko{_PATCHES}/{_STRIDE}>{reference.key}"

    @property
    def estimated(self) -> StainBasis | None:
        """The slide's stains, once estimated (``None`` when only cached features were used)."""
        return None if self._norm is None else self._norm.source

    @property
    def normaliser(self) -> StainNormaliser:
        with self._lock:
            if self._norm is None:
                t0 = time.perf_counter()
                try:
                    src = estimate_stains(slide_pixels(self._sample, self._encoder, self._augment),
                                          str(self._sample.source or self._sample.sample_id))
                except FlagInputError as exc:  # the remedy: predict without normalisation
                    raise FlagInputError(str(exc), setting="stain_norm") from None
                self._norm = StainNormaliser(src, self.reference)
                self.estimate_s = time.perf_counter() - t0
            return self._norm

    def record(self) -> dict:
        """What a prediction records: the reference and, once estimated, the slide's stains and time."""
        out = {"method": "macenko", "reference": self.reference.to_dict()}
        if self._norm is not None:
            out.update(slide=self._norm.source.to_dict(), estimate_s=round(float(self.estimate_s), 3))
        return out

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        if self._augment is not None:
            patches = self._augment(patches)
        return self.normaliser(patches)


def normalised_encoder(encoder, sample, reference: StainBasis | dict, augment=None,
                       source: StainBasis | dict | None = None):
    """``encoder`` seeing ``sample``'s patches normalised to ``reference`` (after ``augment``, if any).

    The result has its own name (so the feature cache keeps normalised and raw
    features apart) and normalises the patches of ``sample`` and of any subset
    of its spots with the same, whole-slide estimate of its stains (``source``
    when already known, e.g. recorded by an earlier prediction).
    """
    from . import _Augmented

    if isinstance(reference, dict):
        reference = StainBasis.from_dict(reference)
    if isinstance(source, dict):
        source = StainBasis.from_dict(source)
    return _Augmented(encoder, _LazyNormaliser(sample, encoder, reference, augment, source))
