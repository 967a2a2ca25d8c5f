"""Leave-one-section-out benchmark on HER2ST patient C (sections C2-C6).

For every held-out section: choose the 200-gene HMHVG panel on the other four,
train each method on them with the same seed, and evaluate on the held-out
section with ``napari_flag.metrics``.  Generative methods are reported twice:
the default prediction (mean of the default number of samples) and a single
sample (``<method>_sample``), which keeps gene-gene structure that averaging
washes out; ``flag_antithetic`` is FLAG's mean over the same number of samples
drawn as antithetic pairs (close to the posterior mean).

``--reuse`` scores the weights saved in ``--runs`` instead of training again,
with the sampler settings of this command line (they do not affect training).

No model selection touches the held-out section: every method trains for a
fixed number of steps and the final EMA weights are evaluated.

    python benchmarks/her2st_loso.py --out benchmarks/results/her2st.json

Folds run in parallel worker processes (``--jobs``), one torch thread each.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _result import command, machine, write_json

from napari_flag.model import BASELINES, METHODS

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
GENERATIVE = set(METHODS) - set(BASELINES) - {"regression"}


def run_fold(held: str, methods: list[str], steps: int, overrides: list[str], out_dir: str, seed: int,
             reuse: bool = False, temperature: float | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    from napari_flag.checkpoint import load_model
    from napari_flag.inference import predict_arrays
    from napari_flag.metrics import evaluate
    from napari_flag.training import SAMPLER_KEYS, TrainConfig, prepare_data, train

    train_ids = [f"her2st:{s}" for s in SECTIONS if s != held]
    base = TrainConfig(
        train=train_ids, val=[f"her2st:{held}"], test=[f"her2st:{held}"], steps=steps,
        val_every=0, patience=0, seed=seed, device="cpu", log_every=100,
    ).with_overrides(overrides)
    data = prepare_data(base)  # panel + standardisation from the four training sections only
    sl = data.val[0]
    res: dict = {"held_out": held, "genes": data.genes, "methods": {}}
    for m in methods:
        cfg = base.replace(method=m, out_dir=str(Path(out_dir) / f"{held}_{m}"))
        ckpt, info = Path(cfg.out_dir) / "last.pt", Path(cfg.out_dir) / "bench.json"
        if reuse and ckpt.is_file() and info.is_file():
            # sampler-only re-evaluation of a finished run: same weights, same panel
            model, meta = load_model(ckpt, "cpu")
            assert list(meta.genes) == list(data.genes), "panel differs from the saved run"
            if hasattr(model, "cfg"):  # the sampler comes from this command, the weights from the run
                want = cfg.flag_config()
                for k in SAMPLER_KEYS:
                    setattr(model.cfg, k, getattr(want, k))
            rec = json.loads(info.read_text())
            t_train, n_steps = rec["train_s"], rec["steps"]
        else:
            t0 = time.time()
            out = train(cfg, data=data)
            t_train, model, n_steps = time.time() - t0, out.model, out.step
            info.write_text(json.dumps({"train_s": t_train, "steps": n_steps}))
        if temperature is not None and hasattr(model, "cfg"):
            model.cfg.sample_temperature = float(temperature)
        t0 = time.time()
        pred, _, smp = predict_arrays(model, sl, data.panel, seed=seed, return_samples=True)
        t_pred = time.time() - t0

        def score(x):
            return evaluate(x, sl.truth, sl.coords, sl.array_rc, sl.grid, genes=data.genes, seed=seed)

        res["methods"][m] = {"metrics": score(pred),
                             "train_s": t_train, "predict_s": t_pred, "steps": n_steps}
        if m in GENERATIVE and smp is not None:
            res["methods"][m + "_sample"] = {"metrics": score(smp[0]),
                                             "train_s": t_train, "predict_s": t_pred, "steps": n_steps}
        if m == "flag":
            # the same samples drawn as antithetic pairs: their mean is close to the
            # posterior mean (regression-like), reported to show that trade-off
            t0 = time.time()
            anti, _, _ = predict_arrays(model, sl, data.panel, seed=seed, antithetic=True)
            res["methods"]["flag_antithetic"] = {"metrics": score(anti),
                                                 "train_s": t_train, "predict_s": time.time() - t0,
                                                 "steps": n_steps}
        print(f"[{held}] {m}: " + " ".join(f"{k}={v:.3f}" for k, v in res["methods"][m]["metrics"].items())
              + f" train={t_train:.0f}s", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/her2st.json")
    ap.add_argument("--sections", nargs="+", default=SECTIONS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/her2st_loso")
    ap.add_argument("--reuse", action="store_true", help="evaluate finished runs in --runs instead of retraining")
    ap.add_argument("--temperature", type=float, default=None, help="sampler temperature (default: the model's)")
    ap.add_argument("overrides", nargs="*", help="TrainConfig key=value overrides (model.width=64 ...)")
    a = ap.parse_args(argv)

    import numpy as np

    t0 = time.time()
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        futs = [ex.submit(run_fold, s, a.methods, a.steps, a.overrides, a.runs, a.seed, a.reuse, a.temperature)
                for s in a.sections]
        folds = [f.result() for f in futs]

    names = []
    for f in folds:
        for m in f["methods"]:
            if m not in names:
                names.append(m)
    methods = {}
    for m in names:
        per = [f["methods"][m] for f in folds if m in f["methods"]]
        keys = per[0]["metrics"].keys()
        methods[m] = {
            k: {"mean": float(np.nanmean([p["metrics"][k] for p in per])),
                "std": float(np.nanstd([p["metrics"][k] for p in per])),
                "folds": [float(p["metrics"][k]) for p in per]}
            for k in keys
        }
        methods[m]["train_s"] = {"mean": float(np.mean([p["train_s"] for p in per])),
                                 "folds": [float(p["train_s"]) for p in per]}
        methods[m]["predict_s"] = {"mean": float(np.mean([p["predict_s"] for p in per])),
                                   "folds": [float(p["predict_s"]) for p in per]}
    result = {
        "methods": methods,
        "folds": [f["held_out"] for f in folds],
        "config": {"steps": a.steps, "seed": a.seed, "temperature": a.temperature, "overrides": a.overrides, "sections": a.sections},
        "command": command(argv),
        "machine": machine(f"{a.jobs} folds in parallel, 1 thread each"),
        "wall_s": time.time() - t0,
    }
    write_json(result, a.out)
    print(markdown_table(result))
    return 0


def markdown_table(result: dict) -> str:
    keys = ["PCC", "PCC-50", "MSE", "GSC", "GSC-CCC", "SSC", "ARI", "NMI", "DEG"]
    lines = ["| method | " + " | ".join(keys) + " | train s/fold |", "|---" * (len(keys) + 2) + "|"]
    for m, r in result["methods"].items():
        cells = [f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in keys]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['train_s']['mean']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
