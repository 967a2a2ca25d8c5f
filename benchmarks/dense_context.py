"""Would a dense feature map make the context view cheaper?  Its features and its cost, measured.

    python benchmarks/dense_context.py --out benchmarks/results/dense_context.json

The bundled encoder's context view is a 280 um window around each spot,
resized to 224 px (1.25 um/px) and average-pooled after EfficientNet-Lite0's
head; at the 100 um pitch neighbouring windows overlap by ~85%, so each tissue
pixel is encoded about six times.  The alternative: encode the tissue once in
large tiles at the same scale and average, per spot, the head's feature map
over the cells its window covers (area-weighted, cells of 32 px).  Two
questions, both measured here:

* **Same features?**  On every spot of one HER2ST section: the cosine between
  each spot's dense-pooled context vector and its per-window vector, for tiles
  of ``--tile`` px with a margin of half a window plus 80 px; and, as a
  check, the same for a "tile" that is exactly the window (which must be 1).
* **Cheaper per pixel?**  The head's feature map of one tile of each side in
  ``--sides`` against batches of 6 windows of 224 px, best of ``--repeats``,
  in one process (ratios in one run, as the machine's speed drifts).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _result import command, machine, write_json

CELL = 32  # the encoder's output stride


def _prep(enc, img: np.ndarray):
    import torch

    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float()  # a writable copy
    return enc._normalise(x).contiguous(memory_format=torch.channels_last)


def _cell_weights(centre: float, window: float, n: int) -> np.ndarray:
    """Share of each of ``n`` cells covered by ``[centre - window/2, centre + window/2]``."""
    edges = np.arange(n + 1) * float(CELL)
    lo, hi = centre - window / 2, centre + window / 2
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)


def dense_context(sample, enc, tile: int) -> np.ndarray:
    """Context vectors of every spot pooled from tiles of ``tile`` px (at the context view's scale)."""
    import torch

    window = int(enc.context_px or enc.patch_px)
    f = enc.patch_um * enc.context / window / sample.pixel_size_um  # level-0 px per input px
    margin = window // 2 + 80  # a multiple of CELL past the window: the cells keep their receptive field
    u = sample.coords / f
    out = np.zeros((sample.n_spots, enc.view_dim), np.float32)
    groups: dict = {}
    for i, key in enumerate(map(tuple, np.floor(u / tile).astype(int))):
        groups.setdefault(key, []).append(i)
    for (a, b), idx in groups.items():
        ox, oy, side = a * tile - margin, b * tile - margin, tile + 2 * margin
        img = sample.image.read_region(ox * f, oy * f, side * f, side)
        with torch.inference_mode():
            fm = enc.model.feature_map(_prep(enc, img))[0].float().numpy()
        for i in idx:
            wx = _cell_weights(u[i, 0] - ox, window, fm.shape[2])
            wy = _cell_weights(u[i, 1] - oy, window, fm.shape[1])
            out[i] = np.einsum("h,chw,w->c", wy, fm, wx) / (wx.sum() * wy.sum())
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def timings(enc, sides: list[int], repeats: int) -> dict:
    """Seconds per megapixel of the feature map at each tile side, and of 224 px windows in batches of 6."""
    import torch

    rng = np.random.default_rng(0)

    def best(x) -> float:
        with torch.inference_mode():
            enc.model.feature_map(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                enc.model.feature_map(x)
                times.append(time.perf_counter() - t0)
        return min(times)

    batch = torch.cat([_prep(enc, rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(6)])
    base = best(batch.contiguous(memory_format=torch.channels_last)) / (6 * 224**2) * 1e6
    out = {"windows_224_batch6_s_per_mpx": base}
    for side in sides:
        t = best(_prep(enc, rng.integers(0, 256, (side, side, 3), dtype=np.uint8))) / side**2 * 1e6
        out[f"tile_{side}_s_per_mpx"] = t
        out[f"tile_{side}_vs_windows"] = t / base
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", default="C3")
    ap.add_argument("--tile", type=int, default=1024, help="tile side at the context scale (px)")
    ap.add_argument("--sides", type=int, nargs="+", default=[448, 704, 960, 1408])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import torch
    from napari_flag.data import load_sample
    from napari_flag.features import compute_features, get_encoder

    torch.set_num_threads(a.threads)
    enc = get_encoder("efficientnet_lite0", device="cpu", context=2.5)
    sample = load_sample(f"her2st:{a.section}")
    t0 = time.time()
    per_window = compute_features(sample, enc, cache=False)[:, enc.view_dim:]
    dense = dense_context(sample, enc, a.tile)
    check = []
    window = int(enc.context_px or enc.patch_px)
    f = enc.patch_um * enc.context / window / sample.pixel_size_um
    for i in range(min(8, sample.n_spots)):
        x, y = sample.coords[i]
        img = sample.image.read_region(x - window / 2 * f, y - window / 2 * f, window * f, window)
        with torch.inference_mode():
            v = enc.model.feature_map(_prep(enc, img))[0].float().numpy().mean(axis=(1, 2))
        check.append(float(_cos(v[None], per_window[i : i + 1])[0]))
    cos = _cos(dense, per_window)
    res = {
        "section": a.section, "spots": int(sample.n_spots), "tile_px": a.tile,
        "cosine_dense_vs_windows": {"median": float(np.median(cos)), "p10": float(np.percentile(cos, 10)),
                                    "min": float(cos.min())},
        "cosine_window_tile_vs_windows": {"min": float(min(check)), "n": len(check)},
        "timing": timings(enc, a.sides, a.repeats),
        "command": command(argv), "machine": machine(f"{a.threads} torch threads"), "wall_s": time.time() - t0,
    }
    write_json(res, a.out)
    print({k: res[k] for k in ("cosine_dense_vs_windows", "cosine_window_tile_vs_windows", "timing")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
