"""Sampler steps of the default on the nested folds' validation sections: 3 against 4.

    python benchmarks/steps_validation.py --runs /work/runs/nested_ctx --steps 3 4

For every nested fold (``her2st_loso.py --nested``: trained on three sections,
validated on the next one), the best validated weights predict the fold's
*validation* section (the test section is never read) with the bundled
sampler (temperature 0.7, blend imitating 6 samples, first call shared) at
each step count, seeds 0 and 1.  Fewer steps would cost fewer network calls
(3 steps: 3 per spot, 4 steps: 5); the rule adopts fewer steps only if no
metric of the mean or of one sample (PCC, GSC, GSC-CCC, SSC; mean over folds)
is more than 0.005 worse.
Writes ``benchmarks/results/steps_validation.json``.
"""
from __future__ import annotations

import argparse
import sys

from _result import command, machine, write_json

KEYS = ("PCC", "GSC", "GSC-CCC", "SSC")
TOL = 0.005


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/her2st_nested")
    ap.add_argument("--steps", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--mean-like", type=int, default=6)
    ap.add_argument("--context", type=float, default=2.5, help="the folds' encoder context (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/steps_validation.json")
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from her2st_loso import SECTIONS, validation_section

    from napari_flag.checkpoint import load_model
    from napari_flag.inference import predict_arrays
    from napari_flag.metrics import evaluate
    from napari_flag.training import TrainConfig, prepare_data

    folds = {}
    for held in SECTIONS:
        val = validation_section(held)
        model, meta = load_model(f"{a.runs}/{held}_flag/best.pt", "cpu")
        model.set_sampler(temperature=a.temperature, mean_like=a.mean_like)
        train = [f"her2st:{s}" for s in SECTIONS if s not in (held, val)]
        enc = {"context": a.context} if a.context else {}
        data = prepare_data(TrainConfig(train=train, val=[f"her2st:{val}"], test=[], device="cpu", encoder_kw=enc))
        assert list(meta.genes) == list(data.genes), "panel differs from the saved run"
        sl = data.val[0]

        def score(x):
            met = evaluate(x, sl.truth, sl.coords, sl.array_rc, sl.grid, genes=data.genes, seed=0)
            return {k: float(met[k]) for k in KEYS}

        folds[held] = {"validation": val}
        for st in a.steps:
            scored = []  # (mean, one sample) scores of each seed
            for sd in (0, 1):
                pred, _, smp = predict_arrays(model, sl, data.panel, steps=st, seed=sd, return_samples=True,
                                              keep_samples=1)
                scored.append((score(pred), score(smp[0])))
            folds[held][str(st)] = {part: {k: float(np.mean([r[i][k] for r in scored])) for k in KEYS}
                                    for i, part in enumerate(("mean", "sample"))}
            print(held, val, st, folds[held][str(st)], flush=True)
    means = {str(st): {part: {k: float(np.mean([folds[h][str(st)][part][k] for h in SECTIONS])) for k in KEYS}
                       for part in ("mean", "sample")} for st in a.steps}
    most = str(max(a.steps))
    worst = {str(st): min(means[str(st)][p][k] - means[most][p][k] for p in ("mean", "sample") for k in KEYS)
             for st in a.steps}
    adopt = min((st for st in a.steps if worst[str(st)] >= -TOL), key=int)
    result = {"folds": folds, "means": means, "worst_change_vs_most_steps": worst, "tolerance": TOL,
              "adopted_steps": int(adopt), "temperature": a.temperature, "mean_like": a.mean_like,
              "command": command(argv), "machine": machine(f"{a.threads} threads")}
    write_json(result, a.out)
    for st in a.steps:
        print(st, {p: {k: round(v, 3) for k, v in means[str(st)][p].items()} for p in ("mean", "sample")},
              f"worst change {worst[str(st)]:+.3f}")
    print("adopted steps:", adopt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
