"""Training curves of nested LOSO runs: training loss and validation metrics against step.

    python benchmarks/training_curves.py --runs runs/her2st_nested --method flag \
        --out benchmarks/results/training_curves.png

Reads every ``<runs>/<section>_<method>/train_log.jsonl`` written by
``benchmarks/her2st_loso.py --nested`` (step losses every ``log_every`` steps,
one validation record per ``val_every`` steps) and marks the step whose EMA
weights were kept (best validation PCC).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    steps, vals = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        (vals if rec.get("event") == "validation" else steps).append(rec)
    return steps, vals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder holding <section>_<method>/train_log.jsonl")
    ap.add_argument("--method", nargs="+", default=["flag"], help="run suffixes to plot (one colour each)")
    ap.add_argument("--out", default="benchmarks/results/training_curves.png")
    a = ap.parse_args(argv)

    import matplotlib
    import yaml

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = Path(a.runs)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = ["-", "--", ":", "-."]
    found = 0
    for mi, method in enumerate(a.method):
        for log in sorted(runs.glob(f"*_{method}/train_log.jsonl")):
            sec = log.parent.name[: -len(method) - 1]
            cfg_path = log.parent / "config.yaml"
            val = yaml.safe_load(cfg_path.read_text()).get("val") if cfg_path.is_file() else None
            name = f"test {sec}" + (f", val {str(val[0]).split(':')[-1]}" if val else "")
            steps, vals = read_log(log)
            if not vals:
                continue
            found += 1
            ls = styles[mi % len(styles)]
            line, = axes[0].plot([r["step"] for r in steps], [r["denoise"] for r in steps], ls, lw=1,
                                 label=name if len(a.method) == 1 else f"{name} ({method})")
            col = line.get_color()
            vs = [v["step"] for v in vals]
            best = max(vals, key=lambda v: v["PCC"])
            for ax, key in ((axes[1], "PCC"), (axes[2], "SSC")):
                ax.plot(vs, [v[key] for v in vals], ls, color=col, marker=".", lw=1)
                ax.plot([best["step"]], [best[key]], "o", color=col, ms=8, mfc="none")
    if not found:
        print(f"error: {runs}: no train_log.jsonl with validation records for {a.method}", file=sys.stderr)
        return 1
    axes[0].set(title="training loss (one logged step per log_every)", xlabel="step", ylabel="denoising loss")
    axes[1].set(title="validation PCC (default prediction, EMA)", xlabel="step", ylabel="mean PCC over genes")
    axes[2].set(title="validation SSC (default prediction, EMA)", xlabel="step", ylabel="SSC")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Nested LOSO (HER2ST patient C): each fold trains on 3 sections, validates on a 4th; "
                 "circle = kept (best validation PCC)", fontsize=10)
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
