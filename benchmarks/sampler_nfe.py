"""Sampler efficiency: metrics and wall time versus sampler steps and samples per spot.

    python benchmarks/sampler_nfe.py --checkpoint CKPT --section C2

For each (solver, steps, samples) the held-out section is predicted and the
mean prediction is scored.  Solvers: Heun (2*steps-1 network evaluations per
sample; 1 for steps=1) and DPM-Solver++(2M) (one per step).  The default is
the cheapest setting whose PCC, GSC and SSC are all within ``--tol`` of the
reference: Heun with the most steps and samples (100 steps, 8 samples), or
``--reference`` (e.g. ``heun:100:2``, the converged solver for a 2-sample mean).
``chosen_one_sided`` relaxes "within" to "no more than ``--tol`` worse" (higher
is better for all three), so a setting that keeps *more* spatial structure
than the reference is not ruled out for it.

``--settings solver:steps:samples[:mean[:share|noshare]]`` runs only those
settings (mean ``samples`` or ``blend``, samples sharing their first call or
not: see ``sample_expression``); ``default`` is the model's own sampler.  ``--rescore`` re-applies both rules (and redraws the PNG) to the rows of an
existing JSON without predicting again.  Writes
``benchmarks/results/sampler_nfe.json`` and a PNG of the curves.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _result import command, machine, write_json

STEPS = [1, 2, 4, 8, 16, 32, 100]
SAMPLES = [1, 4, 8]


def nfe(solver: str, steps: int, samples: int, blend: bool = False, share: bool = False) -> int:
    from napari_flag.model import calls_per_spot

    return calls_per_spot(steps, solver, samples, blend, share)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="the model to sample (not needed with --rescore)")
    ap.add_argument("--section", default="C2")
    ap.add_argument("--steps", type=int, nargs="+", default=STEPS)
    ap.add_argument("--samples", type=int, nargs="+", default=SAMPLES)
    ap.add_argument("--solvers", nargs="+", default=["heun", "dpm2m"])
    ap.add_argument("--settings", nargs="+", default=None,
                    help="solver:steps:samples[:mean[:share|noshare]] or 'default' (share: the blend's samples "
                         "share their first call; default: the model's sample_share_first)")
    ap.add_argument("--mean-like", type=int, default=None, help="sample_mean_like of the blend (default: the model's)")
    ap.add_argument("--reference", default=None, metavar="SOLVER:STEPS:SAMPLES",
                    help="the plain-mean setting the others are held to (default: the most expensive heun one)")
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/sampler_nfe.json")
    ap.add_argument("--rescore", action="store_true", help="re-choose from the rows already in --out")
    a = ap.parse_args(argv)
    if a.rescore:
        import json

        result = json.loads(Path(a.out).read_text())
        result.update(choose(result["rows"], result["reference"], a.tol))
        result["tol"] = a.tol
        out = write_json(result, a.out)
        plot(result, out.with_suffix(".png"))
        print(f"chosen: {result['chosen']}; one-sided: {result['chosen_one_sided']}")
        return 0
    if not a.checkpoint:
        ap.error("--checkpoint is required")

    import torch

    torch.set_num_threads(a.threads)
    from napari_flag.checkpoint import load_model
    from napari_flag.data import load_sample
    from napari_flag.inference import GenePanel, encoder_for_checkpoint, predict_arrays, prepare_slide
    from napari_flag.metrics import evaluate
    from napari_flag.model import sampler_modes

    model, meta = load_model(a.checkpoint, "cpu")
    panel = GenePanel.from_checkpoint(meta)
    sample = load_sample(f"her2st:{a.section}")
    slide = prepare_slide(sample, encoder_for_checkpoint(meta, "cpu"), meta.get("graph"), panel)

    def score(x):
        return evaluate(x, slide.truth, slide.coords, slide.array_rc, slide.grid, genes=panel.genes, seed=a.seed)

    if a.mean_like is not None:
        model.set_sampler(mean_like=int(a.mean_like))
    cfg = model.cfg.sampler
    if a.settings:
        grid = []
        for spec in a.settings:
            if spec == "default":
                spec = f"{cfg.solver}:{cfg.steps}:{cfg.samples}:{cfg.mean}"
            solver, st, ns, *rest = spec.split(":")
            share = cfg.share_first if len(rest) < 2 else rest[1] == "share"
            grid.append((solver, int(st), int(ns), rest[0] if rest else "samples", share))
    else:
        grid = [(solver, st, ns, "samples", False) for solver in a.solvers for st in a.steps for ns in a.samples
                if not (solver != a.solvers[0] and st == 1)]  # one step: the same one-shot denoiser for all
    rows = []
    for solver, st, ns, rule, share in grid:
        t0 = time.perf_counter()
        pred, _, smp = predict_arrays(model, slide, panel, steps=st, samples=ns, seed=a.seed,
                                      return_samples=True, keep_samples=1, solver=solver, mean=rule,
                                      share_first=share)
        dt = time.perf_counter() - t0
        m, s1 = score(pred), score(smp[0])
        blend, share = sampler_modes(cfg.replace(steps=st, samples=ns, mean=rule, share_first=share))  # as run
        n = nfe(solver, st, ns, blend, share)
        rows.append({"solver": solver, "steps": st, "samples": ns, "mean_rule": rule if blend else "samples",
                     "mean_like": cfg.mean_like if blend else ns, "share_first": share,
                     "nfe_per_spot": n, "seconds": dt, "mean": m, "single_sample": s1})
        print(f"{solver:5s} steps={st:3d} samples={ns} {rows[-1]['mean_rule']:7s} nfe={n:4d} {dt:6.2f}s  "
              + " ".join(f"{k}={m[k]:.3f}" for k in ("PCC", "MSE", "GSC", "GSC-CCC", "SSC")), flush=True)

    plain = [r for r in rows if r["mean_rule"] == "samples"]
    ref_solver = "heun" if any(r["solver"] == "heun" for r in plain) else plain[0]["solver"]
    ref = max((r for r in plain if r["solver"] == ref_solver), key=lambda r: (r["steps"], r["samples"]))
    if a.reference:
        solver, st, ns = a.reference.split(":")
        ref = next(r for r in plain if (r["solver"], r["steps"], r["samples"]) == (solver, int(st), int(ns)))
    result = {
        "section": a.section, "checkpoint": str(a.checkpoint), "tol": a.tol,
        "temperature": float(cfg.temperature),
        "reference": {k: ref[k] for k in PICK},
        **choose(rows, ref, a.tol),
        "rows": rows,
        "command": command(argv),
        "machine": machine(f"{a.threads} threads"),
    }
    out = write_json(result, a.out)
    plot(result, out.with_suffix(".png"))
    print(f"chosen: {result['chosen']}; one-sided: {result['chosen_one_sided']}")
    return 0


PICK = ("solver", "steps", "samples", "mean_rule", "nfe_per_spot")
RULE_KEYS = ("PCC", "GSC", "SSC")


def _setting(r: dict) -> tuple:
    return r["solver"], r["steps"], r["samples"], r.get("mean_rule", "samples"), r.get("share_first", False)


def choose(rows: list[dict], ref: dict, tol: float) -> dict:
    """The cheapest rows within ``tol`` of ``ref`` (two-sided) and no more than ``tol`` below it."""
    ref = next(r for r in rows if _setting(r) == _setting(ref))
    two = [r for r in rows if all(abs(r["mean"][k] - ref["mean"][k]) <= tol for k in RULE_KEYS)]
    one = [r for r in rows if all(r["mean"][k] >= ref["mean"][k] - tol for k in RULE_KEYS)]
    cheapest = lambda rr: min(rr, key=lambda r: (r["nfe_per_spot"], r["seconds"]))  # noqa: E731
    pick = lambda r: {**{k: r.get(k, "samples") for k in PICK}, "seconds": r["seconds"]}  # noqa: E731
    return {"chosen": pick(cheapest(two)), "chosen_one_sided": pick(cheapest(one))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("PCC", "GSC", "GSC-CCC", "SSC")
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.4))
    groups = sorted({(r["solver"], r["samples"], r.get("mean_rule", "samples")) for r in result["rows"]})
    for solver, ns, rule in groups:
        rr = sorted((r for r in result["rows"]
                     if (r["solver"], r["samples"], r.get("mean_rule", "samples")) == (solver, ns, rule)),
                    key=lambda r: r["nfe_per_spot"])
        x = [r["nfe_per_spot"] for r in rr]
        style = "*" if rule == "blend" else ("o-" if solver == "heun" else "s--")
        label = f"{solver}, {ns} sample(s)" + (" blend" if rule == "blend" else "")
        for ax, k in zip(axes, keys):
            ax.plot(x, [r["mean"][k] for r in rr], style, label=label)
        axes[-1].plot(x, [r["seconds"] for r in rr], style, label=label)
    for ax, k in zip(axes, (*keys, "seconds per section")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per spot")
        ax.set_title(k)
        ax.axvline(result["chosen"]["nfe_per_spot"], color="grey", ls=":")
        if "chosen_one_sided" in result:
            ax.axvline(result["chosen_one_sided"]["nfe_per_spot"], color="black", ls="--", lw=0.8)
    axes[0].legend(fontsize=8)
    c, o = result["chosen"], result.get("chosen_one_sided", result["chosen"])
    fig.suptitle(f"HER2ST {result['section']}: dotted = within tol of the reference ({c['solver']} "
                 f"{c['steps']} x {c['samples']}); dashed = no more than tol worse ({o['solver']} "
                 f"{o['steps']} x {o['samples']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
