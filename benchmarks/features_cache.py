"""Feature extraction for one whole HER2ST section: cold (encode) vs warm (read the cache).

Usage: python benchmarks/features_cache.py [--section C2] [--batch-size 32] [--device cpu]
The cache goes to a fresh temporary folder, so the first run is truly cold.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_HER2ST = REPO.parent / "shared" / "data" / "her2st"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", default="C2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if "NAPARI_FLAG_DATA_DIR" not in os.environ and SHARED_HER2ST.is_dir():
        os.environ["NAPARI_FLAG_DATA_DIR"] = str(SHARED_HER2ST)

    import numpy as np
    import torch

    from napari_flag.data import load_sample
    from napari_flag.features import compute_features, extract_patches, get_encoder

    t = time.perf_counter()
    sample = load_sample(f"her2st:{args.section}")
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    encoder = get_encoder("efficientnet_lite0", device=args.device)
    t_enc = time.perf_counter() - t
    n = sample.n_spots
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, load avg at start "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"sample: {sample}")
    print(f"encoder: {encoder}")
    print(f"load sample {t_load:.2f} s, build encoder {t_enc:.2f} s")

    t = time.perf_counter()
    for _ in extract_patches(sample, None, encoder.patch_um, encoder.patch_px, args.batch_size):
        pass
    t_patch = time.perf_counter() - t
    print(f"patch extraction alone: {t_patch:.2f} s ({1e3 * t_patch / n:.1f} ms/spot)")

    cache = Path(tempfile.mkdtemp(prefix="flag-feat-bench-"))
    try:
        t = time.perf_counter()
        cold = compute_features(sample, encoder, batch_size=args.batch_size, cache=cache)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        warm = compute_features(sample, encoder, batch_size=args.batch_size, cache=cache)
        t_warm = time.perf_counter() - t
        size = _dir_size(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    same = np.array_equal(cold, warm)
    print(f"cold (extract + encode + write cache): {t_cold:.2f} s for {n} spots "
          f"({1e3 * t_cold / n:.1f} ms/spot)")
    print(f"warm (read cache): {t_warm * 1e3:.1f} ms  -> {t_cold / max(t_warm, 1e-9):.0f}x faster")
    print(f"features {cold.shape} {cold.dtype}, cache entry {size / 1e6:.2f} MB, warm == cold: {same}")
    print("load avg at end " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
