"""Does bf16 autocast change the metrics?  The default sampler in float32 and under CPU bf16 autocast.

    python benchmarks/bf16_metrics.py --runs /work/runs/loso_v2

For every leave-one-section-out fold in ``--runs`` (``<section>_flag/last.pt``,
as ``her2st_loso.py`` saves them), the held-out section is predicted with the
model's default sampler and seed 0 twice, in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)``, and both the mean and the
kept sample are scored.  The rule for turning autocast on: every metric,
averaged over the folds, moves by less than ``--tol``.  Writes
``benchmarks/results/bf16_metrics.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _result import command, machine, write_json

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
KEYS = ("PCC", "PCC-50", "MSE", "GSC", "GSC-CCC", "SSC", "ARI", "NMI", "DEG")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.002)
    ap.add_argument("--out", default="benchmarks/results/bf16_metrics.json")
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from napari_flag.checkpoint import load_model
    from napari_flag.inference import predict_arrays
    from napari_flag.metrics import evaluate
    from napari_flag.training import TrainConfig, prepare_data

    folds = {}
    for held in SECTIONS:
        data = prepare_data(TrainConfig(train=[f"her2st:{s}" for s in SECTIONS if s != held],
                                        val=[f"her2st:{held}"], device="cpu"))
        sl = data.val[0]
        model, meta = load_model(Path(a.runs) / f"{held}_flag" / "last.pt", "cpu")
        assert list(meta.genes) == list(data.genes), "panel differs from the saved run"

        def score(x):
            m = evaluate(x, sl.truth, sl.coords, sl.array_rc, sl.grid, genes=data.genes, seed=0)
            return {k: float(m[k]) for k in KEYS}

        rec = {}
        for name, ctx in (("float32", torch.autocast("cpu", enabled=False)),
                          ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
            with ctx:
                t0 = time.perf_counter()
                pred, _, smp = predict_arrays(model, sl, data.panel, seed=0, return_samples=True, keep_samples=1)
                rec[name] = {"mean": score(pred), "sample": score(smp[0]), "seconds": time.perf_counter() - t0}
        rec["delta"] = {part: {k: rec["bf16"][part][k] - rec["float32"][part][k] for k in KEYS}
                        for part in ("mean", "sample")}
        folds[held] = rec
        print(f"[{held}] bf16 - float32, mean: " + " ".join(f"{k}={v:+.4f}" for k, v in rec["delta"]["mean"].items()),
              flush=True)
    mean_delta = {part: {k: float(np.mean([f["delta"][part][k] for f in folds.values()])) for k in KEYS}
                  for part in ("mean", "sample")}
    worst = max(abs(v) for part in mean_delta.values() for v in part.values())
    result = {"folds": folds, "mean_delta": mean_delta, "largest_mean_move": worst, "tol": a.tol,
              "autocast_allowed": worst < a.tol, "command": command(argv), "machine": machine(f"{a.threads} threads")}
    write_json(result, a.out)
    print(f"largest move of a fold-mean metric: {worst:.4f} (tol {a.tol}): "
          f"{'autocast allowed' if worst < a.tol else 'autocast stays off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
