"""Regions on real data: does the posterior comparison of two regions get the measured one right?

    python benchmarks/regions.py --runs runs/loso_fast_aug --out benchmarks/results/regions.json \\
        --figure benchmarks/results/regions.png

For each HER2ST section C2-C6, its leave-one-section-out model
(``RUNS/<section>_flag/last.pt``, trained on the other four) predicts the
section; two regions are drawn from the *measured* expression (k-means, k = 2,
on the first 10 principal components of the measured log expression with
each spot's mean over genes taken out: two tissue compartments by
composition, not by depth), each the union of its spots' squares, as a pathologist's
polygons would cover them.  :func:`napari_flag.regions` then compares them
(64 joint samples, seed 0) and the predicted difference per gene is scored
against the measured one:

* ``sign_agreement``: genes whose predicted difference has the measured sign;
* ``spearman``: rank correlation of predicted and measured differences;
* ``favoured_side``: genes whose measured difference falls on the side the
  posterior favours (``prob_greater > 0.5`` and measured > 0, or the reverse),
  over the genes where the posterior is confident (``prob_greater`` < 0.05 or
  > 0.95) and over all genes;
* ``coverage``: genes whose measured difference lies in the 95% interval
  (calibration of the intervals, not a target);
* ``stability``: the intervals' widths with seed 1 against seed 0.

``--timing-spots N`` also times the posterior for a region of N virtual
spots (C2's image predicted as a routine H&E slide at a finer pitch).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _result import command, machine, write_json

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


def measured_compartments(adata, seed: int = 0) -> np.ndarray:
    """Cluster label (0/1) of each spot from the composition of its measured expression.

    Each spot's mean over genes is taken out first: clusters of the raw
    levels split spots by how many transcripts they caught (every gene higher
    in one cluster), a difference any model gets the sign of.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    truth = np.nan_to_num(np.asarray(adata.layers["truth"], dtype=np.float64))
    truth = truth - truth.mean(axis=1, keepdims=True)
    z = (truth - truth.mean(0)) / np.maximum(truth.std(0), 1e-8)
    pcs = PCA(n_components=10, random_state=seed).fit_transform(z)
    return KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(pcs)


def compartment_polygons(adata, labels: np.ndarray) -> dict:
    """``{name: GeoJSON geometry}``: the union of each cluster's spot squares (side = the spot pitch)."""
    from scipy.spatial import cKDTree
    from shapely import unary_union
    from shapely.geometry import box, mapping

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    pitch = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    half = pitch / 2.0 * 0.999  # squares that touch but never take a neighbour's centre
    out = {}
    for k in (0, 1):
        geom = unary_union([box(x - half, y - half, x + half, y + half) for x, y in xy[labels == k]])
        out[f"compartment {k + 1}"] = mapping(geom)
    return out


def _fc(polys: dict) -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": g, "properties": {"name": n}} for n, g in polys.items()]}


def score_pair(de) -> dict:
    """How the predicted comparison fares against the measured differences."""
    from scipy.stats import spearmanr

    ok = np.isfinite(de["measured_difference"].to_numpy())
    d, m = de["difference"].to_numpy()[ok], de["measured_difference"].to_numpy()[ok]
    p = de["prob_greater"].to_numpy()[ok]
    lo, hi = de["lower"].to_numpy()[ok], de["upper"].to_numpy()[ok]
    side = (p > 0.5) == (m > 0)
    sure = (p < 0.05) | (p > 0.95)
    return {
        "genes": int(ok.sum()),
        "sign_agreement": float(np.mean(np.sign(d) == np.sign(m))),
        "spearman": float(spearmanr(d, m).statistic),
        "favoured_side": float(side.mean()),
        "confident_genes": int(sure.sum()),
        "favoured_side_confident": float(side[sure].mean()) if sure.any() else float("nan"),
        "coverage": float(np.mean((m >= lo) & (m <= hi))),
    }


def section(ckpt: Path, sec: str, draws: int) -> dict:
    import napari_flag as nf

    adata = nf.predict(f"her2st:{sec}", checkpoint=ckpt, device="cpu")
    labels = measured_compartments(adata)
    fc = _fc(compartment_polygons(adata, labels))
    t0 = time.perf_counter()
    res = nf.regions(adata, fc, compare=("compartment 1", "compartment 2"), draws=draws, seed=0)
    seconds = time.perf_counter() - t0
    again = nf.regions(adata, fc, compare=("compartment 1", "compartment 2"), draws=draws, seed=1)
    de, de1 = res.de, again.de.set_index("gene").loc[res.de["gene"]]
    w0 = (de["upper"] - de["lower"]).to_numpy()
    w1 = (de1["upper"] - de1["lower"]).to_numpy()
    s0, s1 = res.summary(), again.summary()
    sw0, sw1 = (s0["upper"] - s0["lower"]).to_numpy(), (s1["upper"] - s1["lower"]).to_numpy()
    rel = np.abs(np.r_[w1 / w0, sw1 / sw0] - 1.0)
    out = score_pair(de)
    out.update(
        n_spots=[int(v) for v in res.n_spots], seconds=seconds, sampled_spots=res.info["sampled_spots"],
        stability={"median_abs_change": float(np.median(rel)), "within_10pct": float(np.mean(rel <= 0.10)),
                   "p95_abs_change": float(np.percentile(rel, 95))},
        points={"difference": de["difference"].round(4).tolist(),
                "measured": de["measured_difference"].round(4).tolist(),
                "prob_greater": de["prob_greater"].round(4).tolist()},
    )
    return out


def timing(ckpt: Path | None, n_spots: int, draws: int) -> dict:
    """Seconds for the posterior of one region of ``n_spots`` virtual spots, and what storing the
    draws in the prediction file would cost instead."""
    import napari_flag as nf
    from napari_flag.data import load_sample

    s = load_sample("her2st:C2")
    img_only = replace(s, adata=s.adata[:0].copy(), metadata={})  # the image alone: a routine H&E
    adata = nf.predict(img_only, checkpoint=ckpt, device="cpu", spacing_um=50.0)
    xy = adata.obsm["spatial"]
    order = np.argsort(np.hypot(*(xy - np.median(xy, 0)).T))[:n_spots]
    lo, hi = xy[order].min(0) - 1, xy[order].max(0) + 1
    poly = {"block": np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])}
    t0 = time.perf_counter()
    res = nf.regions(adata, poly, draws=draws, sample=img_only)
    return {"region_spots": int(res.n_spots[0]), "sampled_spots": res.info["sampled_spots"],
            "seconds": time.perf_counter() - t0, "slide_spots": int(adata.n_obs),
            "stored_draws_mb_float16": draws * adata.n_obs * adata.n_vars * 2 / 2**20}


def figure(res: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = list(res["sections"])
    fig, axes = plt.subplots(1, len(secs), figsize=(3.3 * len(secs), 3.4), squeeze=False)
    for ax, sec in zip(axes[0], secs):
        r = res["sections"][sec]
        pts = r["points"]
        sc = ax.scatter(pts["measured"], pts["difference"], c=pts["prob_greater"], cmap="coolwarm", s=9,
                        vmin=0, vmax=1)
        lim = np.nanmax(np.abs(np.r_[pts["measured"], pts["difference"]])) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
        ax.axhline(0, color="0.85", lw=0.6)
        ax.axvline(0, color="0.85", lw=0.6)
        ax.set_title(f"{sec}: sign {r['sign_agreement']:.2f}, rho {r['spearman']:.2f}", fontsize=9)
        ax.set_xlabel("measured difference (log2)")
    axes[0][0].set_ylabel("predicted difference (posterior mean)")
    fig.colorbar(sc, ax=axes[0].tolist(), shrink=0.8, label="P(region 1 > region 2)")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of <section>_flag/ leave-one-section-out runs")
    ap.add_argument("--sections", nargs="+", default=SECTIONS)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--timing-spots", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--figure", default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    res: dict = {"draws": a.draws, "sections": {}}
    for sec in a.sections:
        r = res["sections"][sec] = section(Path(a.runs) / f"{sec}_flag" / "last.pt", sec, a.draws)
        print(f"[{sec}] {r['n_spots']} spots: sign {r['sign_agreement']:.3f} spearman {r['spearman']:.3f} "
              f"favoured {r['favoured_side']:.3f} (confident {r['favoured_side_confident']:.3f} of "
              f"{r['confident_genes']}) coverage {r['coverage']:.3f} stability {r['stability']} "
              f"{r['seconds']:.1f} s", flush=True)
    keys = ["sign_agreement", "spearman", "favoured_side", "favoured_side_confident", "coverage"]
    res["mean"] = {k: float(np.nanmean([r[k] for r in res["sections"].values()])) for k in keys}
    res["stability_mean"] = {k: float(np.mean([r["stability"][k] for r in res["sections"].values()]))
                             for k in ("median_abs_change", "within_10pct", "p95_abs_change")}
    if a.timing_spots:
        res["timing"] = timing(Path(a.runs) / f"{a.sections[0]}_flag" / "last.pt", a.timing_spots, a.draws)
        print("timing", res["timing"], flush=True)
    res.update(command=command(), machine=machine("2 torch threads"), wall_s=time.time() - t0)
    write_json(res, a.out)
    print(res["mean"], res["stability_mean"])
    if a.figure:
        figure(res, a.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
