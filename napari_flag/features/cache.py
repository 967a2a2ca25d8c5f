"""On-disk feature cache: encoding a slide is the slow step, so do it once.

Entries are zarr groups named by a hash of everything that changes the numbers:
the sample (source, id, spot ids and coordinates), the encoder (name and weights
fingerprint) and the patch geometry.  Each entry is written to a temporary folder
and renamed into place, so a reader never sees a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ..errors import FlagInputError

__all__ = ["feature_cache_dir", "feature_cache_key", "read_cached", "write_cached"]

CACHE_VERSION = 1


def feature_cache_dir() -> Path:
    """``$NAPARI_FLAG_FEATURE_DIR``, else ``<user cache>/napari-flag/features``."""
    env = os.environ.get("NAPARI_FLAG_FEATURE_DIR")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-flag")) / "features"


def _slug(s: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))
    return keep.strip("._")[:40] or "x"


def feature_cache_key(sample, encoder, side_px: float) -> str:
    """Stable entry name: readable prefix plus a hash of sample, encoder and geometry."""
    h = hashlib.sha256()
    meta = {
        "v": CACHE_VERSION,
        "source": str(sample.source or ""),
        "sample_id": str(sample.sample_id),
        "image_shape": list(sample.image.shape) if sample.image is not None else None,
        "image_scale": float(sample.image.scale) if sample.image is not None else None,
        "encoder": encoder.name,
        "weights": getattr(encoder, "weights_id", ""),
        "dim": int(encoder.dim),
        "patch_um": float(encoder.patch_um),
        "patch_px": int(encoder.patch_px),
        "side_px": round(float(side_px), 4),
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update("\x00".join(map(str, sample.spot_ids)).encode())
    h.update(np.round(sample.coords, 3).astype("<f8").tobytes())
    return f"{_slug(sample.sample_id)}-{_slug(encoder.name)}-{h.hexdigest()[:24]}"


def read_cached(root: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached features, or ``None`` when absent or unreadable (then recompute)."""
    path = Path(root) / f"{key}.zarr"
    if not path.is_dir():
        return None
    try:
        import zarr

        arr = zarr.open_group(str(path), mode="r")["features"]
        if tuple(arr.shape) != tuple(shape):
            return None
        return np.asarray(arr[...], dtype=np.float32)
    except Exception:  # a damaged entry is a miss, never an error
        return None


def write_cached(root: Path, key: str, feats: np.ndarray, attrs: dict | None = None) -> Path:
    """Write an entry atomically (temporary folder, then rename)."""
    import zarr

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{key}.zarr"
    try:
        with atomic_path(final) as tmp:
            group = zarr.open_group(str(tmp), mode="w")
            chunks = (min(max(len(feats), 1), 4096), feats.shape[1])
            arr = group.create_array("features", shape=feats.shape, dtype="float32", chunks=chunks)
            arr[...] = feats.astype(np.float32, copy=False)
            group.attrs.update({"cache_version": CACHE_VERSION, **(attrs or {})})
    except FlagInputError:
        if not final.is_dir():  # not a lost race with another writer of the same features
            raise
    return final
