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


class Recolour:
    """Another lab's dyes: the image re-mixed with haematoxylin and eosin of another hue.

    The stains are unmixed with scikit-image's H&E-DAB vectors and mixed back
    with ``h_to`` / ``e_to`` (RGB optical densities) in place of theirs, the
    amounts unchanged: what a bluer or purpler haematoxylin, a more orange
    eosin would give.  Unlike a change of amount, this moves the stain
    vectors a normaliser has to find.
    """

    def __init__(self, name: str, h_to=None, e_to=None):
        from skimage.color import rgb_from_hed

        self.key = f"recolour:{name}"
        rows = rgb_from_hed.astype(np.float32).copy()
        for i, v in ((0, h_to), (1, e_to)):
            if v is not None:
                rows[i] = np.asarray(v, np.float32) / np.linalg.norm(v)
        self._mix = rows

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        from napari_flag.features.stain import restain

        return restain(patches, mix=self._mix)


def variations() -> dict:
    """Named shifts beside the grid: dyes of other hues and a scanner's knobs (brightness, focus, JPEG)."""
    from napari_flag.features.stain import StainJitter

    return {
        "haematoxylin bluer": Recolour("h-blue", h_to=[0.80, 0.55, 0.15]),
        "haematoxylin purpler": Recolour("h-purple", h_to=[0.50, 0.80, 0.35]),
        "eosin more orange": Recolour("e-orange", e_to=[0.05, 0.80, 0.60]),
        "brighter (+8%), less contrast (-10%)": StainJitter(brightness=1.08, contrast=0.9),
        "blur 1 px": StainJitter(blur=1.0),
        "JPEG quality 60": StainJitter(jpeg=60),
    }


def score_section(ckpt: Path, section: str, grid: list[float], seed: int = 0, reference=None,
                  named: dict | None = None) -> dict:
    """``{"h,e": metrics}`` of one model on one section over the stain grid, and ``{name: metrics}``
    for the ``named`` variations.

    ``reference``: a :class:`~napari_flag.features.stain_norm.StainBasis`; each
    shifted image is then normalised to it (the slide's stains estimated on
    the shifted image, as they would be on another lab's slide).
    """
    from napari_flag.checkpoint import load_model
    from napari_flag.data import load_sample
    from napari_flag.data.panel import GenePanel
    from napari_flag.features import compute_features
    from napari_flag.features.stain import StainJitter
    from napari_flag.features.stain_norm import normalised_encoder
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

    def score(shift) -> dict:
        if reference is not None:
            feats = compute_features(sample, normalised_encoder(encoder, sample, reference, shift))
        else:
            feats = compute_features(sample, encoder, augment=shift)
        slide = prepare_slide(sample, encoder, meta.get("graph"), panel, feats=feats)
        pred = predict_arrays(model, slide, panel, seed=seed)[0]
        m = evaluate(pred, slide.truth, slide.coords, slide.array_rc, slide.grid, genes=panel.genes, seed=seed)
        return {k: float(m[k]) for k in KEYS}

    out = {f"{h:g},{e:g}": score(None if h == e == 1.0 else StainJitter(h=float(h), e=float(e)))
           for h in grid for e in grid}
    if named:
        out["named"] = {name: score(shift) for name, shift in named.items()}
    return out


def training_reference(ckpt: Path, train_sections: list[str]):
    """The stain reference of a fold: the checkpoint's own, else estimated on its training sections."""
    from napari_flag.checkpoint import load_checkpoint
    from napari_flag.data import load_sample
    from napari_flag.features.stain_norm import StainBasis, reference_from_samples
    from napari_flag.inference import encoder_for_checkpoint

    meta = load_checkpoint(ckpt)
    if meta.get("stain"):
        return StainBasis.from_dict(meta["stain"])
    samples = [load_sample(f"her2st:{s}") for s in train_sections]
    return reference_from_samples(samples, encoder_for_checkpoint(meta, "cpu"))


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    res: dict = {"label": args.label, "grid": args.grid, "nested": args.nested, "stain_norm": args.stain_norm,
                 "sections": {}}
    t0 = time.time()
    for i, held in enumerate(args.sections):
        scored = SECTIONS[(SECTIONS.index(held) + 1) % len(SECTIONS)] if args.nested else held
        ckpt = Path(args.runs) / f"{held}_flag" / ("best.pt" if args.nested else "last.pt")
        ref = training_reference(ckpt, [s for s in SECTIONS if s not in (held, scored)]) if args.stain_norm else None
        if ref is not None:
            res.setdefault("references", {})[held] = ref.to_dict()
        res["sections"][scored] = score_section(ckpt, scored, args.grid, reference=ref,
                                                named=variations() if args.named else None)
        base = res["sections"][scored][f"{1:g},{1:g}"]
        print(f"[{scored}] as scanned PCC={base['PCC']:.3f} SSC={base['SSC']:.3f}; "
              f"worst PCC {min(v['PCC'] for k, v in res['sections'][scored].items() if k != 'named'):.3f}",
              flush=True)
    res["summary"] = summarise(res)
    res.update(command=command(), machine=machine(f"{args.threads} torch threads"), wall_s=time.time() - t0)
    return res


def summarise(res: dict) -> dict:
    """Per grid point (and named variation), the mean over sections; and the drop from the unshifted image."""
    points = [p for p in next(iter(res["sections"].values())) if p != "named"]
    mean = {p: {k: float(np.mean([s[p][k] for s in res["sections"].values()])) for k in KEYS} for p in points}
    base = mean[f"{1:g},{1:g}"]
    shifted = [p for p in points if p != f"{1:g},{1:g}"]
    single = [p for x in (0.7, 1.3) for p in (f"{x:g},1", f"1,{x:g}") if p in mean]
    extra = {}
    if single:  # the ×0.7 / ×1.3 of one stain, the other as scanned
        extra["drop_07_13"] = {k: float(np.mean([base[k] - mean[p][k] for p in single])) for k in KEYS}
    named = [s["named"] for s in res["sections"].values() if "named" in s]
    if named:
        extra["named"] = {n: {k: float(np.mean([s[n][k] for s in named])) for k in KEYS} for n in named[0]}
    return {
        **extra,
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
    ap.add_argument("--stain-norm", action="store_true",
                    help="normalise each image's stains to the fold's reference (the checkpoint's, "
                         "else estimated on its training sections) before encoding")
    ap.add_argument("--named", action="store_true",
                    help="also score named variations: dyes of other hues, brightness/contrast, blur, JPEG")
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
    print(json.dumps({k: s[k] for k in ("as_scanned", "shifted_mean", "worst", "drop_07_13", "named") if k in s},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
