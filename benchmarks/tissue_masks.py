"""Tissue masks on real and synthetic slides: measured spots inside, pale tissue kept, ink and margins out.

    python benchmarks/tissue_masks.py

Real: HER2ST C2-C6 and the Visium fixture (every measured spot's centre must
lie inside the mask).  Synthetic (``tests/synthetic_slides.py``, 2 um/px,
known ground truth): a section with dense tissue, fat, loose stroma, a hole
and a fold; blue, green and black ink and a black scanner margin on the glass.
Writes ``results/tissue_masks.json`` and a figure of every mask
(``results/tissue_masks.png``, overview with the mask's outline; measured
spots in cyan, any outside the mask in red).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _result import command, machine, write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _real(ids):
    from napari_flag.data import load_sample
    from napari_flag.data.tissue import detect_tissue

    for sid in ids:
        s = load_sample(sid)
        t = detect_tissue(s.image, s.pixel_size_um, source=sid)
        inside = t.contains(s.coords)
        row = {"spots": int(s.n_spots), "inside": int(inside.sum()), "fraction": round(t.fraction, 4)}
        yield sid, s.image, t, s.coords, inside, row


def _synthetic(seeds, size_px):
    from synthetic_slides import breast_like

    from napari_flag.data.sample import SlideImage
    from napari_flag.data.tissue import detect_tissue

    for seed in seeds:
        d = breast_like(size_px, seed=seed)
        img = SlideImage([d["image"]])
        t = detect_tissue(img, d["pixel_size_um"], source=f"synthetic-{seed}")
        step = 4
        yy, xx = np.mgrid[0:size_px:step, 0:size_px:step]
        got = t.contains(np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]).reshape(yy.shape)
        sub = {k: d[k][::step, ::step] for k in ("truth", "fat", "ink", "margin")}
        glass = ~sub["truth"] & ~sub["ink"] & ~sub["margin"]
        row = {"section_covered": round(float(got[sub["truth"]].mean()), 4),
               "fat_covered": round(float(got[sub["fat"]].mean()), 4),
               "ink_in_mask": round(float(got[sub["ink"]].mean()), 4),
               "margin_in_mask": round(float(got[sub["margin"]].mean()), 4),
               "glass_in_mask": round(float(got[glass].mean()), 4)}
        yield f"synthetic-{seed}", img, t, None, None, row


def _panel(ax, name, image, t, coords, inside, row):
    from napari_flag.data.overview import read_overview

    rgb, f = read_overview(image, t.fullres_per_px, 4_000_000)
    ax.imshow(rgb)
    ax.contour(t.mask[: rgb.shape[0], : rgb.shape[1]], [0.5], colors="lime", linewidths=0.8)
    if coords is not None:
        xy = coords / f
        ax.scatter(xy[inside, 0], xy[inside, 1], s=2, c="cyan", linewidths=0)
        ax.scatter(xy[~inside, 0], xy[~inside, 1], s=25, c="red")
        title = f"{name}: {row['inside']}/{row['spots']} spots inside"
    else:
        title = f"{name}: section {row['section_covered']:.1%}, fat {row['fat_covered']:.1%}, ink {row['ink_in_mask']:.0%}"
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=[f"her2st:C{i}" for i in range(2, 7)])
    ap.add_argument("--visium", default=str(HERE.parents[1] / "shared/data/visium_mouse_brain_fixture"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--size-px", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results/tissue_masks.json"))
    ap.add_argument("--figure", default=str(HERE / "results/tissue_masks.png"))
    a = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(_real([*a.sections, a.visium])) + list(_synthetic(a.seeds, a.size_px))
    cols = 4
    rows = -(-len(cases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows))
    result = {"cases": {}}
    for ax, (name, image, t, coords, inside, row) in zip(axes.ravel(), cases):
        label = Path(name).name if "/" in name else name
        row["rule"] = t.params.get("rule")
        result["cases"][label] = row
        print(label, row, flush=True)
        _panel(ax, label, image, t, coords, inside, row)
    for ax in axes.ravel()[len(cases):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(a.figure, dpi=80)
    result.update(command=command(argv), machine=machine("tissue detection only"))
    write_json(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
