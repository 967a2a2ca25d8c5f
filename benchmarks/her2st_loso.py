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

``--nested``: each fold also holds out one of its four training sections for
validation (the one after the test section, cyclically: C2 -> C3, ..., C6 ->
C2) and trains on the other three; the EMA weights are validated every
``val_every`` steps (PCC of the default prediction), training stops after
``patience`` validations without improvement, and the best validated weights
are kept.  The sampler is then set on the same validation section, and only
then is the test section predicted, once.  ``--select split`` (the default)
sets its two knobs by what each output is for, each scored over seeds 0 and 1:
the temperature (grid ``--temperatures``) maximises GSC-CCC + SSC of *one
sample* (a sample is there to keep gene-gene and spatial structure); then, at
that temperature, the blend's ``mean_like`` N (grid ``--mean-likes``)
maximises PCC + SSC of the *mean*, the default prediction (the rule
``--select mean`` applies to the temperature: a larger N moves the mean
towards the posterior mean, more PCC and less spatial structure).
``--select mean`` is that earlier rule alone.  ``--select targets`` sets the
temperature as ``split`` does and N by the two fidelity targets written as a
validation rule: it maximises the smaller margin of the mean over
``PCC >= PCC(regression) - 0.01`` and ``SSC >= SSC(ridge)``, with the
regression and ridge of the same fold scored on the same validation section
(``--methods`` must then include both; they run before the generative ones).

    python benchmarks/her2st_loso.py --out benchmarks/results/her2st.json

Folds run in parallel worker processes (``--jobs``), one torch thread each.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _result import command, machine, write_json

from napari_flag.model import BASELINES, METHODS

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
GENERATIVE = set(METHODS) - set(BASELINES) - {"regression"}


def validation_section(held: str) -> str:
    """The nested fold's validation section: the one after the test section, cyclically."""
    return SECTIONS[(SECTIONS.index(held) + 1) % len(SECTIONS)]


def run_fold(held: str, methods: list[str], steps: int, overrides: list[str], out_dir: str, seed: int,
             reuse: bool = False, temperature: float | None = None, nested: bool = False,
             temperatures: tuple[float, ...] = (0.5, 0.7, 1.0), val_every: int = 100, patience: int = 4,
             select: str = "split", mean_likes: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 32)) -> dict:
    import torch

    torch.set_num_threads(1)
    from napari_flag.checkpoint import load_checkpoint, load_model
    from napari_flag.inference import predict_arrays
    from napari_flag.metrics import evaluate
    from napari_flag.training import TrainConfig, prepare_data, train

    val_sec = validation_section(held) if nested else None
    train_ids = [f"her2st:{s}" for s in SECTIONS if s not in (held, val_sec)]
    val_ids = [f"her2st:{val_sec}"] if nested else []
    base = TrainConfig(
        train=train_ids, val=val_ids + [f"her2st:{held}"], test=[f"her2st:{held}"], steps=steps,
        val_every=val_every if nested else 0, patience=patience if nested else 0, seed=seed, device="cpu",
        log_every=100,
    ).with_overrides(overrides)
    if nested:  # validate the default prediction (its sampler), not one sample
        sampler = base.flag_config().sampler
        base = base.replace(val_samples=sampler.samples, val_steps=sampler.steps)
    data = prepare_data(base)  # panel + standardisation from the training sections only
    sl = data.val[-1]
    # the test section is prepared with the training panel but never seen by training or selection
    data = dataclasses.replace(data, val=data.val[:-1])
    res: dict = {"held_out": held, "validation": val_sec, "genes": data.genes, "methods": {}}
    refs: dict = {}  # --select targets: the baselines' validation scores the rule compares against
    if nested and select == "targets":
        missing = set(TARGET_REFS) - set(methods)
        if missing:
            raise SystemExit(f"--select targets needs --methods to include {sorted(missing)}")
        methods = [m for m in methods if m in TARGET_REFS] + [m for m in methods if m not in TARGET_REFS]
    for m in methods:
        cfg = base.replace(method=m, out_dir=str(Path(out_dir) / f"{held}_{m}"))
        ckpt = Path(cfg.out_dir) / ("best.pt" if nested and m not in BASELINES else "last.pt")
        info = Path(cfg.out_dir) / "bench.json"
        if reuse and ckpt.is_file() and info.is_file():
            # sampler-only re-evaluation of a finished run: same weights, same panel
            model, meta = load_model(ckpt, "cpu")
            assert list(meta.genes) == list(data.genes), "panel differs from the saved run"
            if hasattr(model, "cfg"):  # the sampler comes from this command, the weights from the run
                model.cfg = model.cfg.replace(sampler=cfg.flag_config().sampler)
            rec = json.loads(info.read_text())
            t_train, n_steps = rec["train_s"], rec["steps"]
        else:
            t0 = time.time()
            out = train(cfg, data=data)
            t_train, model, n_steps = time.time() - t0, out.model, out.step
            if nested and m not in BASELINES:  # the best validated EMA weights, not the last
                model, _ = load_model(out.best_path, "cpu")
                n_steps = int(load_checkpoint(out.best_path, map_location="cpu")["step"])
            info.write_text(json.dumps({"train_s": t_train, "steps": n_steps, "stopped_at": out.step}))
        if nested and select == "targets" and m in TARGET_REFS:  # deterministic baselines: one seed
            refs[m] = _validation_score(predict_arrays(model, data.val[0], data.panel, seed=0)[0], data.val[0],
                                        data, ("PCC", "SSC"))
            res.setdefault("validation_reference", {})[m] = refs[m]
        sel = None
        if nested and hasattr(model, "cfg") and m != "regression" and temperature is None:
            if select in ("split", "targets"):
                sel = _choose_split(model, data.val[0], data, temperatures, mean_likes,
                                    refs if select == "targets" else None)
                model.set_sampler(mean_like=sel["mean_like"])
            else:
                sel = _choose_temperature(model, data.val[0], data, temperatures, seed)
            model.set_sampler(temperature=sel["chosen"])
        elif temperature is not None and hasattr(model, "cfg"):
            model.set_sampler(temperature=float(temperature))
        t0 = time.time()
        pred, _, smp = predict_arrays(model, sl, data.panel, seed=seed, return_samples=True)
        t_pred = time.time() - t0

        def score(x):
            return evaluate(x, sl.truth, sl.coords, sl.array_rc, sl.grid, genes=data.genes, seed=seed)

        res["methods"][m] = {"metrics": score(pred),
                             "train_s": t_train, "predict_s": t_pred, "steps": n_steps}
        if sel is not None:
            res["methods"][m]["temperature"] = sel
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


def _choose_temperature(model, val_slide, data, grid, seed) -> dict:
    """Sampler temperature maximising PCC + SSC of the default prediction on the validation section."""
    from napari_flag.inference import predict_arrays
    from napari_flag.metrics import evaluate

    scores = {}
    for t in grid:
        model.set_sampler(temperature=float(t))
        pred, _, _ = predict_arrays(model, val_slide, data.panel, seed=seed)
        met = evaluate(pred, val_slide.truth, val_slide.coords, val_slide.array_rc, val_slide.grid,
                       genes=data.genes, seed=seed)
        scores[str(t)] = {"PCC": float(met["PCC"]), "SSC": float(met["SSC"])}
    chosen = max(grid, key=lambda t: scores[str(t)]["PCC"] + scores[str(t)]["SSC"])
    return {"chosen": float(chosen), "validation": scores}


SPLIT_SEEDS = (0, 1)
# --select targets: the baselines each fidelity target names, and the PCC tolerance it allows
TARGET_REFS = ("regression", "ridge")
PCC_TOLERANCE = 0.01


def _validation_score(x, val_slide, data, keys) -> dict:
    """``keys`` of the metrics of prediction ``x`` on the validation section."""
    from napari_flag.metrics import evaluate

    met = evaluate(x, val_slide.truth, val_slide.coords, val_slide.array_rc, val_slide.grid,
                   genes=data.genes, seed=0)
    return {k: float(met[k]) for k in keys}


def target_margin(scores: dict, refs: dict) -> float:
    """The smaller margin of a mean's validation scores over the two fidelity targets."""
    return min(scores["PCC"] - (refs["regression"]["PCC"] - PCC_TOLERANCE), scores["SSC"] - refs["ridge"]["SSC"])


def _choose_split(model, val_slide, data, temperatures, mean_likes, refs: dict | None = None) -> dict:
    """Temperature by one sample's GSC-CCC + SSC, then the blend's N by the mean's PCC + SSC
    or, with ``refs`` (the baselines' validation scores), by :func:`target_margin`
    (both on the validation section, mean over two seeds)."""
    import numpy as np

    from napari_flag.inference import predict_arrays

    def mean_over_seeds(fn):
        runs = [fn(sd) for sd in SPLIT_SEEDS]
        return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}

    sample_scores = {}
    for t in temperatures:
        model.set_sampler(temperature=float(t))
        sample_scores[str(t)] = mean_over_seeds(lambda sd: _validation_score(
            predict_arrays(model, val_slide, data.panel, seed=sd, return_samples=True, keep_samples=1)[2][0],
            val_slide, data, ("GSC-CCC", "SSC", "PCC")))
    tau = max(temperatures, key=lambda t: sample_scores[str(t)]["GSC-CCC"] + sample_scores[str(t)]["SSC"])
    model.set_sampler(temperature=float(tau))
    mean_scores = {}
    for n in mean_likes:
        mean_scores[str(n)] = mean_over_seeds(lambda sd: _validation_score(
            predict_arrays(model, val_slide, data.panel, seed=sd, mean_like=int(n))[0], val_slide, data,
            ("PCC", "SSC", "GSC-CCC")))
    if refs is None:
        like = max(mean_likes, key=lambda n: mean_scores[str(n)]["PCC"] + mean_scores[str(n)]["SSC"])
    else:
        like = max(mean_likes, key=lambda n: target_margin(mean_scores[str(n)], refs))
    return {"chosen": float(tau), "mean_like": int(like), "rule": "split" if refs is None else "targets",
            "seeds": list(SPLIT_SEEDS), "validation": {"sample": sample_scores, "mean": mean_scores},
            **({"references": refs} if refs is not None else {})}


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
    ap.add_argument("--nested", action="store_true",
                    help="hold out a validation section per fold: early stopping and temperature chosen on it")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.7, 1.0],
                    help="--nested: temperature grid scored on the validation section")
    ap.add_argument("--select", choices=["split", "mean", "targets"], default="split",
                    help="--nested: how the sampler is set on the validation section (see the module docstring)")
    ap.add_argument("--mean-likes", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12, 16, 32],
                    help="--nested --select split/targets: grid of the blend's mean_like")
    ap.add_argument("--val-every", type=int, default=100, help="--nested: steps between validations")
    ap.add_argument("--patience", type=int, default=4, help="--nested: validations without improvement")
    ap.add_argument("overrides", nargs="*", help="TrainConfig key=value overrides (model.width=64 ...)")
    a = ap.parse_args(argv)

    import numpy as np

    t0 = time.time()
    with ProcessPoolExecutor(max_workers=a.jobs) as ex:
        futs = [ex.submit(run_fold, s, a.methods, a.steps, a.overrides, a.runs, a.seed, a.reuse, a.temperature,
                          a.nested, tuple(a.temperatures), a.val_every, a.patience, a.select, tuple(a.mean_likes))
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
        "config": {"steps": a.steps, "seed": a.seed, "temperature": a.temperature, "overrides": a.overrides,
                   "sections": a.sections, "nested": a.nested,
                   **({"temperatures": a.temperatures, "val_every": a.val_every, "patience": a.patience,
                       "select": a.select, "mean_likes": a.mean_likes,
                       "validation": [f["validation"] for f in folds]} if a.nested else {})},
        "selection": [{"held_out": f["held_out"], "validation": f["validation"],
                       **{m: {"steps": r["steps"], **({"temperature": r["temperature"]} if "temperature" in r else {})}
                          for m, r in f["methods"].items() if not m.endswith(("_sample", "_antithetic"))}}
                      for f in folds],
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
