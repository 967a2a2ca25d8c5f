"""Stain shift: the HER2ST C sections re-stained over a grid of haematoxylin and eosin scales, scored.

    python benchmarks/stain_shift.py --runs runs/loso_fast_aug --label augmented \\
        --out benchmarks/results/stain_shift_augmented.json
    python benchmarks/stain_shift.py --figure benchmarks/results/stain_shift.png \\
        benchmarks/results/stain_shift_before.json benchmarks/results/stain_shift_augmented.json

Each section's image is re-stained as another lab's protocol would stain it:
the optical densities of haematoxylin and eosin scaled by ``h`` and ``e``
(scikit-image's H&E colour deconvolution, :func:`napari_flag.features.stain.restain`),
for every ``(h, e)`` of ``--grid`` x ``--grid``; the section's leave-one-section-out
model (``RUNS/<section>_flag/last.pt``: trained on the other four) predicts it
with its own sampler and the prediction is scored against the measured
expression.  ``--nested`` scores each nested fold's kept weights
(``best.pt``) on its *validation* section instead (the next section,
cyclically), for choosing a training recipe without the test sections.
The second form draws PCC and SSC against the shift from result files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _result import command, machine, write_json

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
KEYS = ["PCC", "SSC", "GSC", "GSC-CCC", "MSE"]


def score_section(ckpt: Path, section: str, grid: list[float], seed: int = 0) -> dict:
    """``{"h,e": metrics}`` of one model on one section over the stain grid."""
    from napari_flag.checkpoint import load_model
    from napari_flag.data import load_sample
    from napari_flag.data.panel import GenePanel
    from napari_flag.features import compute_features
    from napari_flag.features.stain import StainJitter
    from napari_flag.inference import (
        encoder_for_checkpoint,
        predict_arrays,
        prepare_slide,
    )
    from napari_flag.metrics import evaluate

    model, meta = load_model(ckpt, "cpu")
    panel = GenePanel.from_checkpoint(meta)
    encoder = encoder_for_checkpoint(meta, "cpu")
    sample = load_sample(f"her2st:{section}")
    out = {}
    for h in grid:
        for e in grid:
            jit = StainJitter(h=float(h), e=float(e))
            feats = compute_features(sample, encoder, augment=None if h == e == 1.0 else jit)
            slide = prepare_slide(sample, encoder, meta.get("graph"), panel, feats=feats)
            pred = predict_arrays(model, slide, panel, seed=seed)[0]
            m = evaluate(pred, slide.truth, slide.coords, slide.array_rc, slide.grid, genes=panel.genes, seed=seed)
            out[f"{h:g},{e:g}"] = {k: float(m[k]) for k in KEYS}
    return out


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    res: dict = {"label": args.label, "grid": args.grid, "nested": args.nested, "sections": {}}
    t0 = time.time()
    for i, held in enumerate(args.sections):
        scored = SECTIONS[(SECTIONS.index(held) + 1) % len(SECTIONS)] if args.nested else held
        ckpt = Path(args.runs) / f"{held}_flag" / ("best.pt" if args.nested else "last.pt")
        res["sections"][scored] = score_section(ckpt, scored, args.grid)
        base = res["sections"][scored][f"{1:g},{1:g}"]
        print(f"[{scored}] as scanned PCC={base['PCC']:.3f} SSC={base['SSC']:.3f}; "
              f"worst PCC {min(v['PCC'] for v in res['sections'][scored].values()):.3f}", flush=True)
    res["summary"] = summarise(res)
    res.update(command=command(), machine=machine(f"{args.threads} torch threads"), wall_s=time.time() - t0)
    return res


def summarise(res: dict) -> dict:
    """Per grid point, the mean over sections; and the drop from the unshifted image."""
    points = list(next(iter(res["sections"].values())))
    mean = {p: {k: float(np.mean([s[p][k] for s in res["sections"].values()])) for k in KEYS} for p in points}
    base = mean[f"{1:g},{1:g}"]
    shifted = [p for p in points if p != f"{1:g},{1:g}"]
    return {
        "mean": mean,
        "as_scanned": base,
        "shifted_mean": {k: float(np.mean([mean[p][k] for p in shifted])) for k in KEYS},
        "worst": {k: float(min(mean[p][k] for p in shifted)) if k != "MSE" else
                  float(max(mean[p][k] for p in shifted)) for k in KEYS},
    }


def figure(paths: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(Path(p).read_text()) for p in paths]
    lims = {k: (min(v[k] for r in results for v in r["summary"]["mean"].values()),
                max(v[k] for r in results for v in r["summary"]["mean"].values())) for k in ("PCC", "SSC")}
    fig, axes = plt.subplots(len(results), 2, figsize=(9, 3.6 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        grid = r["grid"]
        mean = r["summary"]["mean"]
        for ax, key, cmap in zip(row, ("PCC", "SSC"), ("viridis", "magma")):
            m = np.array([[mean[f"{h:g},{e:g}"][key] for e in grid] for h in grid])
            im = ax.imshow(m, origin="lower", cmap=cmap, vmin=lims[key][0], vmax=lims[key][1])  # shared by the rows
            ax.set_xticks(range(len(grid)), [f"{g:g}" for g in grid])
            ax.set_yticks(range(len(grid)), [f"{g:g}" for g in grid])
            ax.set_xlabel("eosin scale")
            ax.set_ylabel("haematoxylin scale")
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="k" if v > (lims[key][0] + lims[key][1]) / 2 else "w")
            ax.set_title(f"{r['label']}: {key} (mean of {len(r['sections'])} sections)")
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", help="with --figure: result files to draw")
    ap.add_argument("--runs", help="folder of <section>_flag/ runs (her2st_loso.py --runs)")
    ap.add_argument("--label", default="model")
    ap.add_argument("--sections", nargs="+", default=SECTIONS)
    ap.add_argument("--grid", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2, 1.4])
    ap.add_argument("--nested", action="store_true", help="score each fold's best.pt on its validation section")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--figure", help="draw the given result files into this PNG")
    a = ap.parse_args(argv)
    if a.figure:
        figure(a.results, a.figure)
        return 0
    if not (a.runs and a.out):
        ap.error("--runs and --out are needed to score")
    if 1.0 not in a.grid:
        ap.error("--grid must include 1.0 (the image as scanned)")
    res = run(a)
    write_json(res, a.out)
    s = res["summary"]
    print(json.dumps({"as_scanned": s["as_scanned"], "shifted_mean": s["shifted_mean"], "worst": s["worst"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
