"""Per-slide evaluation metrics for predicted spatial gene expression.

The definitions follow the "Metrics" section of the FLAG method notes, which is
normative for this project.  Everything is computed on the target scale
(e.g. log2(1 + count)) for one slide; :func:`summarize` aggregates slides.

Conventions chosen here (the method notes leave them open):

* A gene is *constant* when ``max == min`` over the slide's spots; such genes
  give NaN correlations and are dropped where a metric says so.
* Variances and covariances in Lin's CCC use 1/n (population) normalisation.
* Spatial domains (ARI/NMI): PCA on the gene-centred (not scaled) matrix,
  ``n_pcs=15`` components, fitted separately on truth and on prediction, then
  k-means with ``n_clusters=5``, ``n_init=10``, ``random_state=seed``.
  Unscaled log expression is the usual input to PCA; scaling would blow up
  the noise of genes a model predicts as almost flat.
* DEG: per truth cluster, a two-sided Wilcoxon rank-sum (Mann-Whitney) z
  score of cluster vs rest, with average ranks for ties and the standard tie
  correction of the variance; top-k = the k genes with the largest z
  (up-regulated in the cluster), ties broken by gene order.  ``k=20``.
* ``summarize`` reports NaN-ignoring mean and population std (``ddof=0``).

Spatial weights, one rule everywhere (:func:`spatial_weights`; the Metrics and
Moran's I panels, ``napari-flag evaluate``, validation during training and the
benchmarks all call :func:`evaluate`): the array lattice
(``obs['array_row']``/``['array_col']``, see :func:`lattice_coords`) when the
slide records it, else the spot centres in pixels.  The weights
(:func:`grid_weights`) are k-nearest-neighbour graphs on the
spot lattice (4 for square legacy ST, 6 for hexagonal Visium), keeping only
edges shorter than 1.3 x the median kNN edge length, row-standardised.  The
graph is directed (j in kNN(i) gives the edge i -> j) and is not symmetrised.
Coordinates must be isotropic (pixels, microns, or lattice positions from
:func:`lattice_coords`); raw Visium ``(array_row, array_col)`` are not.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .errors import FlagInputError

__all__ = [
    "METRIC_KEYS",
    "pcc_per_gene",
    "pcc_summary",
    "mse",
    "mae",
    "gene_correlation_triangles",
    "gsc",
    "gsc_ccc",
    "lins_ccc",
    "infer_grid",
    "grid_weights",
    "lattice_coords",
    "morans_i",
    "local_morans_i",
    "ssc",
    "cluster_labels",
    "spatial_domains",
    "wilcoxon_scores",
    "deg_overlap",
    "evaluate_slide",
    "spatial_weights",
    "array_rc",
    "evaluate",
    "evaluate_adata",
    "in_sample_note",
    "summarize",
    "format_table",
    "jsonable",
]

METRIC_KEYS = ("PCC", "PCC-10", "PCC-50", "MSE", "MAE", "GSC", "GSC-CCC", "SSC", "ARI", "NMI", "DEG")

#: Default neighbour counts per lattice.
GRID_K = {"square": 4, "hex": 6}
#: Edges longer than this multiple of the median kNN edge are dropped.
EDGE_RATIO = 1.3


# --------------------------------------------------------------------------- helpers
def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if t.ndim == 1:
        t = t[:, None]
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} must both be (spots, genes)")
    return p, t


def _constant(x: np.ndarray) -> np.ndarray:
    """Columns whose values are all equal (exact test: centring is not exact)."""
    if x.shape[0] == 0:
        return np.ones(x.shape[1], dtype=bool)
    return np.ptp(x, axis=0) == 0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two vectors; NaN when either is constant or too short."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    r = float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))
    return max(-1.0, min(1.0, r))


# --------------------------------------------------------------------------- PCC / errors
def pcc_per_gene(pred, truth) -> np.ndarray:
    """Pearson r across spots for every gene, ``(G,)``.

    NaN for genes constant in truth or in prediction.
    """
    p, t = _pair(pred, truth)
    bad = _constant(p) | _constant(t)
    pc = p - p.mean(axis=0)
    tc = t - t.mean(axis=0)
    num = np.einsum("ij,ij->j", pc, tc)
    den = np.sqrt(np.einsum("ij,ij->j", pc, pc) * np.einsum("ij,ij->j", tc, tc))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r = np.clip(r, -1.0, 1.0)
    r[bad] = np.nan
    return r


def _top_mean(r: np.ndarray, k: int) -> float:
    v = r[np.isfinite(r)]
    if v.size == 0:
        return float("nan")
    k = min(k, v.size)
    return float(np.sort(v)[::-1][:k].mean())


def pcc_summary(pred, truth) -> dict[str, float]:
    """PCC (mean over valid genes), PCC-10 and PCC-50 (mean of the best 10 / 50)."""
    r = pcc_per_gene(pred, truth)
    mean = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    return {"PCC": mean, "PCC-10": _top_mean(r, 10), "PCC-50": _top_mean(r, 50)}


def mse(pred, truth) -> float:
    """Mean squared error over spots x genes."""
    p, t = _pair(pred, truth)
    return float(np.mean((p - t) ** 2))


def mae(pred, truth) -> float:
    """Mean absolute error over spots x genes."""
    p, t = _pair(pred, truth)
    return float(np.mean(np.abs(p - t)))


# --------------------------------------------------------------------------- GSC
def _corr_matrix(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=0)
    xc /= np.sqrt(np.einsum("ij,ij->j", xc, xc))
    c = xc.T @ xc
    return np.clip(c, -1.0, 1.0)


def gene_correlation_triangles(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    """Upper off-diagonal triangles of the gene-gene Pearson matrices.

    Genes constant in truth or prediction are dropped first.  Returns
    ``(a_truth, b_pred)``, each of length ``g (g - 1) / 2``.
    """
    p, t = _pair(pred, truth)
    keep = ~(_constant(p) | _constant(t))
    p, t = p[:, keep], t[:, keep]
    iu = np.triu_indices(p.shape[1], k=1)
    return _corr_matrix(t)[iu], _corr_matrix(p)[iu]


def lins_ccc(a, b) -> float:
    """Lin's concordance correlation coefficient (1/n moments)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2:
        return float("nan")
    ma, mb = a.mean(), b.mean()
    cov = float(np.mean((a - ma) * (b - mb)))
    den = float(a.var() + b.var() + (ma - mb) ** 2)
    if den == 0:
        return float("nan")
    return 2.0 * cov / den


def gsc(pred, truth) -> float:
    """Gene structural correlation: Pearson r of the gene-gene correlation triangles."""
    a, b = gene_correlation_triangles(pred, truth)
    return _pearson(a, b)


def gsc_ccc(pred, truth) -> float:
    """Lin's CCC of the gene-gene correlation triangles (penalises inflated |r|)."""
    a, b = gene_correlation_triangles(pred, truth)
    return lins_ccc(a, b)


# --------------------------------------------------------------------------- spatial weights
def _as_coords(coords) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must be (spots, 2), got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("coords contain non-finite values")
    return c


def _knn(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k nearest other spots of every spot: (rows, cols, dists), each (S * k,)."""
    n = c.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        e = np.empty(0)
        return e.astype(np.int64), e.astype(np.int64), e
    dist, idx = cKDTree(c).query(c, k=k + 1)
    # Drop the spot itself; with duplicate positions it may not be column 0,
    # and if it is missing altogether the farthest candidate goes instead.
    keep = idx != np.arange(n)[:, None]
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    rows = np.repeat(np.arange(n), k)
    return rows, idx[keep], dist[keep]


def infer_grid(coords) -> str:
    """Guess the spot lattice from positions: ``"hex"`` or ``"square"``.

    Rule: take m = median distance from each spot to its nearest other spot and
    count, for every spot, the others within 1.3 m.  Interior spots have 6 such
    neighbours on a hexagonal lattice and 4 on a square one (diagonals sit at
    1.41 m, second hex shells at 1.73 m).  The lattice is ``"hex"`` when at
    least a quarter of the spots have 5 or more, else ``"square"`` (also for
    fewer than 3 spots).
    """
    c = _as_coords(coords)
    n = c.shape[0]
    if n < 3:
        return "square"
    k = min(6, n - 1)
    rows, cols, d = _knn(c, k)
    d = d.reshape(n, k)
    m = np.median(d[:, 0])
    counts = (d <= EDGE_RATIO * m).sum(axis=1) if m > 0 else np.zeros(n)
    return "hex" if np.mean(counts >= 5) >= 0.25 else "square"


def grid_weights(coords, grid: str = "auto", k: int | None = None, ratio: float = EDGE_RATIO) -> sp.csr_matrix:
    """Row-standardised kNN spatial weights on the spot lattice, CSR ``(S, S)``.

    ``k`` defaults to 4 (``"square"``) or 6 (``"hex"``); ``"auto"`` calls
    :func:`infer_grid`.  Edges longer than ``ratio`` x the median of all kNN
    edge lengths are dropped, so border spots keep only their true lattice
    neighbours.  Row i holds weight 1/deg(i) on each j in kNN(i) (directed, not
    symmetrised); spots left without neighbours (islands) get an all-zero row,
    as libpysal's row transform does, so they add nothing to S0.
    """
    c = _as_coords(coords)
    n = c.shape[0]
    if k is None:
        if grid == "auto":
            grid = infer_grid(c)
        if grid not in GRID_K:
            raise ValueError(f"grid must be 'auto', 'square' or 'hex', got {grid!r}")
        k = GRID_K[grid]
    rows, cols, d = _knn(c, int(k))
    if d.size:
        keep = d < ratio * np.median(d)
        rows, cols = rows[keep], cols[keep]
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    vals = 1.0 / deg[rows]
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def lattice_coords(array_row, array_col, grid: str) -> np.ndarray:
    """Isotropic ``(x, y)`` positions from integer array indices.

    Square (legacy ST): ``(col, row)``.  Hex (Visium, where neighbours in a row
    are 2 columns apart): ``(col / 2, row * sqrt(3) / 2)``, so all six
    neighbours are at distance 1.
    """
    r = np.asarray(array_row, dtype=np.float64)
    c = np.asarray(array_col, dtype=np.float64)
    if grid == "square":
        return np.column_stack([c, r])
    if grid == "hex":
        return np.column_stack([c / 2.0, r * math.sqrt(3.0) / 2.0])
    raise ValueError(f"grid must be 'square' or 'hex', got {grid!r}")


def array_rc(adata) -> np.ndarray | None:
    obs = adata.obs
    if "array_row" in obs and "array_col" in obs:
        rc = np.column_stack([np.asarray(obs["array_row"], np.float64), np.asarray(obs["array_col"], np.float64)])
        if rc.size and np.isfinite(rc).all():
            return rc
    return None


def _lattice_of(array_rc: np.ndarray) -> str:
    """Visium's ``row + col`` is always even; a square array mixes parities."""
    par = (array_rc[:, 0] + array_rc[:, 1]).astype(np.int64) % 2
    return "hex" if par.size > 1 and np.all(par == par[0]) else "square"


def spatial_weights(coords, array_rc=None, grid: str | None = None) -> tuple[sp.csr_matrix, str]:
    """The SSC weights of a slide and its lattice kind: ``(W, grid)``.

    The one rule: on the array lattice when ``array_rc`` (array row, col) is
    known, which is what the SSC definition uses (legacy ST pixel positions are
    refined spot detections that jitter by up to ~15 % of the pitch, enough for
    some diagonals to pass the 1.3 x median cut); else on the spot centres
    ``coords`` (pixels).  ``grid`` (``"square"``/``"hex"``) is inferred when not
    given: from index parity on the lattice, else from the positions.
    """
    if array_rc is not None:
        rc = np.asarray(array_rc, dtype=np.float64)
        if grid not in GRID_K:
            grid = _lattice_of(rc)
        return grid_weights(lattice_coords(rc[:, 0], rc[:, 1], grid), grid), grid
    c = _as_coords(coords)
    if grid not in GRID_K:
        grid = infer_grid(c)
    return grid_weights(c, grid), grid


# --------------------------------------------------------------------------- Moran's I
def _values(values, n: int) -> tuple[np.ndarray, bool]:
    v = np.asarray(values, dtype=np.float64)
    one = v.ndim == 1
    if one:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != n:
        raise ValueError(f"values must be ({n},) or ({n}, genes), got {np.shape(values)}")
    return v, one


def morans_i(values, W) -> float | np.ndarray:
    """Global Moran's I = (n / S0) z'Wz / z'z, z centred; per column for 2-D input.

    Matches ``esda.Moran(y, w, transformation="r")`` when ``W`` is the
    row-standardised matrix of the same graph.  NaN for constant columns or a
    graph without edges.
    """
    W = sp.csr_matrix(W)
    n = W.shape[0]
    v, one = _values(values, n)
    z = v - v.mean(axis=0)
    s0 = float(W.sum())
    num = np.einsum("ij,ij->j", z, W @ z)
    den = np.einsum("ij,ij->j", z, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (n / s0) * num / den if s0 != 0 else np.full(v.shape[1], np.nan)
    out[_constant(v)] = np.nan
    return float(out[0]) if one else out


def local_morans_i(values, W) -> np.ndarray:
    """Local Moran's I_i = (n - 1) z_i (Wz)_i / sum_j z_j^2, z centred.

    The esda ``Moran_Local(y, w, transformation="r").Is`` normalisation (esda
    standardises z first, which cancels in this ratio).  ``(S,)`` for 1-D
    input, ``(S, G)`` for 2-D; NaN columns for constant genes.
    """
    W = sp.csr_matrix(W)
    n = W.shape[0]
    v, one = _values(values, n)
    z = v - v.mean(axis=0)
    den = np.einsum("ij,ij->j", z, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (n - 1) * z * (W @ z) / den
    out[:, _constant(v)] = np.nan
    return out[:, 0] if one else out


def ssc(pred, truth, W) -> float:
    """Spatial structural correlation: Pearson r across genes of Moran's I.

    ``W`` must be built from the true coordinates.  Genes with NaN I in
    truth or prediction are dropped.
    """
    p, t = _pair(pred, truth)
    it, ip = morans_i(t, W), morans_i(p, W)
    ok = np.isfinite(it) & np.isfinite(ip)
    return _pearson(it[ok], ip[ok])


# --------------------------------------------------------------------------- spatial domains
def cluster_labels(x, n_clusters: int = 5, n_pcs: int = 15, seed: int = 0, scale: bool = False) -> np.ndarray:
    """Deterministic k-means domains on the PCA of an expression matrix, ``(S,)`` int.

    PCA (full SVD) on gene-centred data (optionally unit-variance genes,
    constant genes left at zero), ``min(n_pcs, S - 1, G)`` components, then
    k-means with ``n_init=10`` and ``random_state=seed``.  A matrix with fewer
    distinct rows than clusters is labelled by its distinct rows.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    n, g = x.shape
    z = x - x.mean(axis=0)
    if scale:
        sd = z.std(axis=0)
        sd[sd == 0] = 1.0
        z = z / sd
    n_comp = max(1, min(n_pcs, n - 1, g))
    if n < 2 or not np.any(z):
        return np.zeros(n, dtype=np.int64)
    # one thread: the problem is tiny and OpenMP on busy shared cores is slower
    with threadpool_limits(limits=1):
        emb = PCA(n_components=n_comp, svd_solver="full").fit_transform(z)
        uniq, inv = np.unique(np.round(emb, 12), axis=0, return_inverse=True)
        k = min(n_clusters, n)
        if uniq.shape[0] <= k:
            return inv.reshape(-1).astype(np.int64)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed)
        return km.fit_predict(emb).astype(np.int64)


def spatial_domains(
    pred, truth, n_clusters: int = 5, n_pcs: int = 15, seed: int = 0, scale: bool = False, return_labels: bool = False
):
    """ARI and NMI between k-means domains of truth and of prediction.

    Returns ``{"ARI", "NMI"}``; with ``return_labels`` also the truth and
    prediction labels: ``(scores, labels_true, labels_pred)``.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    p, t = _pair(pred, truth)
    lt = cluster_labels(t, n_clusters, n_pcs, seed, scale)
    lp = cluster_labels(p, n_clusters, n_pcs, seed, scale)
    scores = {"ARI": float(adjusted_rand_score(lt, lp)), "NMI": float(normalized_mutual_info_score(lt, lp))}
    return (scores, lt, lp) if return_labels else scores


# --------------------------------------------------------------------------- DEG
def wilcoxon_scores(x, labels) -> tuple[np.ndarray, np.ndarray]:
    """Rank-sum z scores of each cluster vs the rest, ``(n_groups, G)``.

    z = (U - n1 n2 / 2) / sqrt(n1 n2 / 12 * (n + 1 - sum(t^3 - t) / (n (n - 1)))),
    U the Mann-Whitney statistic of the cluster (average ranks for ties).  The
    same U as ``scipy.stats.mannwhitneyu(x[in], x[out])``.  Returns
    ``(groups, z)``; z is NaN for genes constant over the slide or groups
    covering every spot.
    """
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    n, g = x.shape
    groups = np.unique(labels)
    ranks = rankdata(x, axis=0)  # average ranks for ties
    # tie term sum(t^3 - t) per gene: run lengths of the sorted columns
    xs = np.sort(x, axis=0).T  # (g, n)
    new_run = np.ones((g, n), dtype=bool)
    new_run[:, 1:] = xs[:, 1:] != xs[:, :-1]
    starts = np.flatnonzero(new_run.ravel())
    run = np.diff(np.append(starts, g * n)).astype(np.float64)
    tie = np.bincount(starts // n, weights=run**3 - run, minlength=g)
    onehot = (labels[None, :] == groups[:, None]).astype(np.float64)  # (k, n)
    r1 = onehot @ ranks  # rank sums per group, (k, g)
    n1 = onehot.sum(axis=1)[:, None]
    n2 = n - n1
    u = r1 - n1 * (n1 + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        var = n1 * n2 / 12.0 * ((n + 1) - tie[None, :] / (n * (n - 1)))
        z = (u - n1 * n2 / 2.0) / np.sqrt(var)
    z[~np.isfinite(z)] = np.nan
    return groups, z


def _top_k(z: np.ndarray, k: int) -> np.ndarray:
    s = np.where(np.isfinite(z), z, -np.inf)
    return np.argsort(-s, kind="stable")[:k]


def deg_overlap(pred, truth, labels, k: int = 20) -> float:
    """Mean over truth clusters of |top-k(truth) & top-k(pred)| / k.

    Genes are ranked per cluster by the rank-sum z (cluster vs rest) computed
    on truth and on prediction with the same labels.  ``k`` is capped at the
    number of genes; clusters that cover all spots are skipped.
    """
    p, t = _pair(pred, truth)
    labels = np.asarray(labels)
    if labels.shape != (t.shape[0],):
        raise ValueError(f"labels must be ({t.shape[0]},), got {labels.shape}")
    groups, zt = wilcoxon_scores(t, labels)
    _, zp = wilcoxon_scores(p, labels)
    k = min(int(k), t.shape[1])
    if k <= 0:
        return float("nan")
    vals = []
    for i, grp in enumerate(groups):
        n1 = int(np.sum(labels == grp))
        if n1 == 0 or n1 == labels.size:
            continue
        a, b = _top_k(zt[i], k), _top_k(zp[i], k)
        vals.append(np.intersect1d(a, b).size / k)
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------- slide / summary
def evaluate_slide(
    pred,
    truth,
    coords,
    grid: str = "auto",
    genes: Sequence[str] | None = None,
    n_clusters: int = 5,
    n_pcs: int = 15,
    deg_k: int = 20,
    seed: int = 0,
    weights: sp.spmatrix | None = None,
    return_details: bool = False,
):
    """All metrics of one slide as a dict of floats keyed by :data:`METRIC_KEYS`.

    ``coords`` are the true spot positions (isotropic units, see module doc);
    ``weights`` may pass a prebuilt :func:`grid_weights` matrix instead.  With
    ``return_details`` returns ``(metrics, details)`` where details holds
    per-gene ``pcc``, ``moran_true``, ``moran_pred``, the domain labels
    ``labels_true`` / ``labels_pred`` and ``genes``.
    """
    p, t = _pair(pred, truth)
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("prediction and truth must be finite")
    if genes is not None and len(genes) != t.shape[1]:
        raise ValueError(f"{len(genes)} gene names for {t.shape[1]} genes")
    if weights is None:
        c = _as_coords(coords)
        if c.shape[0] != t.shape[0]:
            raise ValueError(f"coords have {c.shape[0]} spots, expression {t.shape[0]}")
        weights = grid_weights(c, grid)
    r = pcc_per_gene(p, t)
    out: dict[str, float] = {}
    out.update(pcc_summary(p, t))
    out["MSE"] = mse(p, t)
    out["MAE"] = mae(p, t)
    a, b = gene_correlation_triangles(p, t)
    out["GSC"] = _pearson(a, b)
    out["GSC-CCC"] = lins_ccc(a, b)
    it, ip = morans_i(t, weights), morans_i(p, weights)
    ok = np.isfinite(it) & np.isfinite(ip)
    out["SSC"] = _pearson(it[ok], ip[ok])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means convergence chatter on degenerate inputs
        dom, lt, lp = spatial_domains(p, t, n_clusters, n_pcs, seed, return_labels=True)
    out.update(dom)
    out["DEG"] = deg_overlap(p, t, lt, k=deg_k)
    out = {key: float(out[key]) for key in METRIC_KEYS}
    if not return_details:
        return out
    details = {
        "genes": list(genes) if genes is not None else None,
        "pcc": r,
        "moran_true": it,
        "moran_pred": ip,
        "labels_true": lt,
        "labels_pred": lp,
    }
    return out, details


def evaluate(pred, truth, coords, array_rc=None, grid: str | None = None, genes: Sequence[str] | None = None,
             seed: int = 0, return_details: bool = False):
    """Metrics of one slide: the function every caller uses (widgets, CLI, validation, benchmarks).

    Genes without a finite truth or prediction on every spot (panel genes the
    slide does not measure) are left out; fewer than two left is an error.
    Weights follow :func:`spatial_weights`.  With ``return_details`` returns
    ``(metrics, details)``: per-gene ``pcc``, ``moran_true``, ``moran_pred``,
    ``mean_true``, ``mean_pred`` over the kept ``genes``, the mask ``kept``
    (over the input genes), the weights ``W`` and the ``grid``.
    """
    p, t = _pair(pred, truth)
    ok = np.isfinite(t).all(axis=0) & np.isfinite(p).all(axis=0)
    if ok.sum() < 2:
        raise FlagInputError("fewer than two panel genes have a measured and a predicted value on every spot")
    names = list(genes) if genes is not None else [str(i) for i in range(t.shape[1])]
    if len(names) != t.shape[1]:
        raise ValueError(f"{len(names)} gene names for {t.shape[1]} genes")
    W, grid = spatial_weights(coords, array_rc, grid)
    kept = [g for g, o in zip(names, ok) if o]
    metrics, det = evaluate_slide(p[:, ok], t[:, ok], None, genes=kept, seed=seed, weights=W, return_details=True)
    if not return_details:
        return metrics
    det.update(genes=kept, kept=ok, W=W, grid=grid, mean_true=t[:, ok].mean(axis=0), mean_pred=p[:, ok].mean(axis=0))
    return metrics, det


def evaluate_adata(adata, layer: str = "X", truth=None, grid: str | None = None, seed: int = 0,
                   return_details: bool = False):
    """:func:`evaluate` on a prediction AnnData (``napari-flag predict``'s layout).

    ``layer``: ``"X"`` (the mean) or a layer such as ``"sample"``; ``truth``:
    a (spots, genes) matrix on the target scale, default ``layers['truth']``.
    The lattice comes from ``obs['array_row'/'array_col']``; ``grid`` defaults
    to the one recorded in ``uns['flag']``.
    """
    def dense(M):
        return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float64)

    pred = dense(adata.X if layer == "X" else adata.layers[layer])
    truth = dense(adata.layers["truth"] if truth is None else truth)
    from .record import PredictionRecord

    recorded = PredictionRecord.of(adata).grid
    if grid not in GRID_K and recorded in GRID_K:
        grid = str(recorded)
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    return evaluate(pred, truth, coords, array_rc(adata), grid, genes=[str(g) for g in adata.var_names],
                    seed=seed, return_details=return_details)


def in_sample_note(info) -> str | None:
    """The warning an evaluation of a training slide carries (its scores say little about new slides)."""
    from .record import PredictionRecord

    rec = info if isinstance(info, PredictionRecord) else PredictionRecord.from_uns(info)
    if rec.in_training_set:
        return f"{rec.name} was in this model's training set"
    return None


def summarize(per_slide: Mapping[str, Mapping[str, float]]) -> dict:
    """``{"slides": {id: metrics}, "mean": {...}, "std": {...}}`` over slides.

    Mean and std (population, ``ddof=0``) ignore NaN slides per metric; a
    metric NaN on every slide stays NaN.  Keys are those of the first slide.
    """
    slides = {str(k): {m: float(v) for m, v in d.items()} for k, d in per_slide.items()}
    keys: list[str] = []
    for d in slides.values():
        keys.extend(m for m in d if m not in keys)
    mean, std = {}, {}
    for m in keys:
        v = np.array([d.get(m, np.nan) for d in slides.values()], dtype=np.float64)
        v = v[np.isfinite(v)]
        mean[m] = float(v.mean()) if v.size else float("nan")
        std[m] = float(v.std(ddof=0)) if v.size else float("nan")
    return {"slides": slides, "mean": mean, "std": std}


def jsonable(obj):
    """Copy of a metrics result with NaN/inf replaced by ``None`` (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(v) -> str:
    if v is None:
        return "nan"
    v = float(v)
    if not math.isfinite(v):
        return "nan"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"


def format_table(result: Mapping) -> str:
    """Plain-text table: one row per slide plus ``mean`` and ``std`` rows (when present).

    Accepts a :func:`summarize` result or a single :func:`evaluate_slide` dict.
    """
    if "slides" in result:
        rows = [(str(k), v) for k, v in result["slides"].items()]
        extra = [(k, result[k]) for k in ("mean", "std") if k in result]
    else:
        rows, extra = [("slide", result)], []
    keys = [k for k in METRIC_KEYS if any(k in d for _, d in rows + extra)]
    for _, d in rows + extra:
        keys.extend(k for k in d if k not in keys)
    table = [["slide", *keys]]
    table += [[name, *(_fmt(d.get(k)) for k in keys)] for name, d in rows]
    sep_at = len(table)
    table += [[name, *(_fmt(d.get(k)) for k in keys)] for name, d in extra]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for i, r in enumerate(table):
        if i == sep_at and extra:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
