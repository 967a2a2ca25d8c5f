"""``napari-flag predict`` on ~4,000 spots, features cached: the default sampler against today's 32-call one.

    python benchmarks/fast_sampling.py --threads 2

Lays virtual spots (``--spacing-um``) over a HER2ST H&E image (pixel size
from the section's own spot pitch), fills the feature cache with one
untimed prediction, then times, in one run and alternating,
``napari-flag predict IMAGE`` with the model's default sampler and with
``--steps 4 --samples 8`` (DPM-Solver++(2M), plain mean of 8 samples: the
previous default, 32 network evaluations per spot).  Each is a fresh
process, timed from launch to exit (imports, model and image loading,
tissue mask, cached features, graph, sampling, writing the .h5ad).
Writes ``benchmarks/results/fast_sampling.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _result import command, machine, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", default="C2")
    ap.add_argument("--spacing-um", type=float, default=43.0, help="43 um gives ~4,000 spots on C2")
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/fast_sampling.json")
    a = ap.parse_args(argv)

    import anndata as ad

    from napari_flag.checkpoint import default_checkpoint_path, load_model
    from napari_flag.data import load_sample
    from napari_flag.model.config import FLAT_KEYS

    sec = load_sample(f"her2st:{a.section}")
    image = Path(sec.source) if sec.source and Path(sec.source).suffix.lower() in (".jpg", ".jpeg") else None
    if image is None:
        image = next((Path(os.environ.get("NAPARI_FLAG_DATA_DIR", ".")) / "ST-imgs").rglob(f"*_{a.section}.jpg"))
    ckpt = str(a.checkpoint or default_checkpoint_path())
    model, _ = load_model(ckpt, "cpu")
    cfg = model.cfg
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    tmp = Path(tempfile.mkdtemp(prefix="napari-flag-fast-"))
    base = ["napari-flag", "predict", str(image), "--pixel-size-um", f"{sec.pixel_size_um:.6f}",
            "--spacing-um", str(a.spacing_um), "--checkpoint", ckpt, "--device", "cpu", "--quiet", "--overwrite"]
    settings = {
        "default": [],
        "steps4_samples8": ["--steps", "4", "--samples", "8"],
    }

    def run(extra, out):
        t0 = time.perf_counter()
        p = subprocess.run([*base, "--out", str(out), *extra], env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"predict failed: {p.stderr[-2000:]}")
        return dt

    warm = run([], tmp / "warm.h5ad")  # fills the feature cache (and any image cache)
    print(f"warm-up (features computed): {warm:.1f} s", flush=True)
    times: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(a.repeats):
        for name, extra in settings.items():
            times[name].append(run(extra, tmp / f"{name}.h5ad"))
            print(f"{name:16s} {times[name][-1]:7.2f} s", flush=True)
    outs = {k: ad.read_h5ad(tmp / f"{k}.h5ad") for k in settings}
    spots = int(outs["default"].n_obs)
    info = {k: o.uns["flag"] for k, o in outs.items()}
    best = {k: min(v) for k, v in times.items()}
    pairs = [o / n for o, n in zip(times["steps4_samples8"], times["default"])]
    nfe = {k: int(info[k]["network_calls_per_spot"]) for k in settings}  # what each run recorded
    result = {
        "image": str(image), "spots": spots, "spacing_um": a.spacing_um, "checkpoint": ckpt,
        "default_sampler": {flat: getattr(cfg.sampler, name) for flat, (part, name) in FLAT_KEYS.items()
                            if part == "sampler" and flat.startswith("sample_") and flat != "sample_antithetic"},
        "runs": {k: {"seconds": times[k], "best_s": best[k], "nfe_per_spot": nfe[k],
                     "steps": int(info[k]["steps"]), "samples": int(info[k]["samples"])} for k in settings},
        "warmup_s": warm,
        "speedup_best": best["steps4_samples8"] / best["default"],
        "speedup_per_pair": pairs,
        "speedup_median_pair": statistics.median(pairs),
        "command": command(argv), "machine": machine(f"{a.threads} threads (OMP_NUM_THREADS)"),
    }
    write_json(result, a.out)
    print(f"{spots} spots: default {best['default']:.1f} s, --steps 4 --samples 8 {best['steps4_samples8']:.1f} s: "
          f"{result['speedup_best']:.2f}x (median pair {result['speedup_median_pair']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
