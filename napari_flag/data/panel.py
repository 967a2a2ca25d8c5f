"""The gene panel the model predicts, and the count transform it is trained on.

HMHVG ("highly mean, highly variable genes", as in the FLAG paper): over the
genes measured on every training slide, minus mitochondrial and ribosomal
genes, take the top-N genes by mean and the top-N by standard deviation of raw
counts (all spots of all training slides pooled) and keep the intersection.
N is searched so that the intersection has the requested size; genes chosen
this way are both expressed and informative, which is what a slide-level
regression can hope to predict.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import FlagInputError

__all__ = [
    "TRANSFORMS",
    "GenePanel",
    "select_hmhvg",
    "hmhvg_stats",
    "is_excluded_gene",
    "transform_counts",
    "spot_totals",
    "SCALE_NAMES",
    "SCALE_UNITS",
    "inverse_transform",
    "panel_matrix",
]

TRANSFORMS = ("log2p1", "log1p", "lognorm", "none")
#: what each target scale is, in words (recorded with every prediction)
SCALE_NAMES = {
    "log2p1": "log2(1 + count)",
    "log1p": "ln(1 + count)",
    "lognorm": "ln(1 + 10,000 x count / spot total), scanpy's normalize_total + log1p",
    "none": "raw count",
}
#: short axis labels of the same scales (legends, colorbars)
SCALE_UNITS = {"log2p1": "log2(1+count)", "log1p": "ln(1+count)", "lognorm": "ln(1+count per 10k)", "none": "count"}
#: counts per spot after library-size normalisation (scanpy's ``target_sum``)
LOGNORM_TARGET_SUM = 1e4
_EXCLUDE = re.compile(r"^(MT-|RPS|RPL)", re.IGNORECASE)


def is_excluded_gene(name: str) -> bool:
    """Mitochondrial (``MT-``/``mt-``) and ribosomal protein (``RPS*``/``RPL*``) genes."""
    return bool(_EXCLUDE.match(str(name)))


def _common_genes(adatas) -> list[str]:
    if not adatas:
        raise FlagInputError("gene panel: no training slides given")
    common = None
    for a in adatas:
        names = list(dict.fromkeys(map(str, a.var_names)))
        if common is None:
            common = names
        else:
            present = set(names)
            common = [g for g in common if g in present]
    return [g for g in common if not is_excluded_gene(g)]


def _column_sums(adata, genes: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    idx = _gene_index(adata, genes)
    X = adata.X
    if sp.issparse(X):
        X = X.tocsc()[:, idx]
        s1 = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
        s2 = np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel()
    else:
        Xd = np.asarray(X)[:, idx].astype(np.float64, copy=False)
        s1 = Xd.sum(axis=0)
        s2 = np.einsum("ij,ij->j", Xd, Xd)
    return s1, s2, int(adata.n_obs)


def hmhvg_stats(adatas: Sequence) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Eligible genes with their pooled mean and standard deviation of raw counts."""
    genes = _common_genes(list(adatas))
    if not genes:
        raise FlagInputError("gene panel: the training slides share no eligible gene")
    s1 = np.zeros(len(genes))
    s2 = np.zeros(len(genes))
    n = 0
    for a in adatas:
        a1, a2, k = _column_sums(a, genes)
        s1 += a1
        s2 += a2
        n += k
    if n == 0:
        raise FlagInputError("gene panel: the training slides have no spots")
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return genes, mean, np.sqrt(var)


def _rank(values: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Positions 0..G-1 ordered by value descending, ties broken by gene name."""
    order = np.lexsort((names, -values))
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank


def select_hmhvg(adatas: Sequence, n_genes: int = 200) -> list[str]:
    """HMHVG panel of ``n_genes`` genes, ordered by decreasing pooled mean.

    The intersection size grows with N, so the smallest N reaching
    ``n_genes`` is found by bisection; when no N gives exactly ``n_genes``,
    the intersection at that N is trimmed by mean rank.  Deterministic: ties
    are broken by gene name.
    """
    n_genes = int(n_genes)
    if n_genes < 1:
        raise ValueError("n_genes must be at least 1")
    genes, mean, std = hmhvg_stats(adatas)
    names = np.asarray(genes, dtype=object)
    rmean, rstd = _rank(mean, names.astype(str)), _rank(std, names.astype(str))
    G = len(genes)
    if n_genes >= G:
        if n_genes > G:
            warnings.warn(f"gene panel: only {G} eligible genes, fewer than the {n_genes} requested", stacklevel=2)
        chosen = np.arange(G)
    else:
        # |top-N(mean) & top-N(std)| = #genes with max(rank_mean, rank_std) < N
        worst = np.maximum(rmean, rstd)
        lo, hi = n_genes, G  # size(hi) == G >= n_genes
        while lo < hi:
            mid = (lo + hi) // 2
            if int((worst < mid).sum()) >= n_genes:
                hi = mid
            else:
                lo = mid + 1
        chosen = np.flatnonzero(worst < lo)
    chosen = chosen[np.argsort(rmean[chosen], kind="stable")][:n_genes]
    return [genes[i] for i in chosen]


# ---------------------------------------------------------------------------
# transforms


def _check_kind(kind: str) -> str:
    k = (kind or "none").lower()
    if k not in TRANSFORMS:
        raise ValueError(f"unknown transform {kind!r}; expected one of {', '.join(TRANSFORMS)}")
    return k


def transform_counts(X, kind: str = "log2p1", totals=None) -> np.ndarray:
    """Raw counts -> model targets, dense float32 (``log2(1+x)`` by default).

    ``lognorm`` divides by each spot's total count over *all* genes first
    (``totals``; the row sums of ``X`` when not given, right only when ``X``
    holds every gene), as scanpy's ``normalize_total`` + ``log1p`` do: sequencing
    depth, which drives every gene on raw log counts, is taken out.
    """
    k = _check_kind(kind)
    A = X.toarray() if sp.issparse(X) else np.asarray(X)
    A = A.astype(np.float32, copy=True)
    if k == "log2p1":
        np.log2(1.0 + A, out=A)
    elif k == "log1p":
        np.log1p(A, out=A)
    elif k == "lognorm":
        t = np.asarray(A.sum(axis=1) if totals is None else totals, dtype=np.float64).reshape(-1)
        scale = np.divide(LOGNORM_TARGET_SUM, t, out=np.zeros_like(t), where=t > 0).astype(np.float32)
        np.log1p(A * scale[:, None], out=A)
    return A


def spot_totals(adata) -> np.ndarray:
    """Total count of every spot over all of its genes (the library size)."""
    X = adata.X
    return np.asarray(X.sum(axis=1), dtype=np.float64).reshape(-1)


def inverse_transform(Y, kind: str = "log2p1") -> np.ndarray:
    """Model scale -> counts scale (``2**y - 1`` for log2p1), float32; ``lognorm``
    gives counts per 10,000 (the spot totals are not known to a prediction)."""
    k = _check_kind(kind)
    A = np.asarray(Y, dtype=np.float32).copy()
    if k == "log2p1":
        A = np.exp2(A) - 1.0
    elif k in ("log1p", "lognorm"):
        A = np.expm1(A)
    return A.astype(np.float32, copy=False)


def _gene_index(adata, genes: Sequence[str]) -> np.ndarray:
    names = list(map(str, adata.var_names))
    first: dict[str, int] = {}
    for i, g in enumerate(names):
        first.setdefault(g, i)
    missing = [g for g in genes if g not in first]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FlagInputError(f"gene panel: {len(missing)} panel gene(s) missing from the sample: {shown}")
    return np.fromiter((first[g] for g in genes), dtype=np.int64, count=len(genes))


def panel_matrix(adata, genes: Sequence[str], kind: str = "log2p1") -> np.ndarray:
    """``(n_spots, len(genes))`` float32 targets, columns in panel order."""
    idx = _gene_index(adata, genes)
    X = adata.X
    sub = X[:, idx] if sp.issparse(X) else np.asarray(X)[:, idx]
    return transform_counts(sub, kind, spot_totals(adata) if _check_kind(kind) == "lognorm" else None)


@dataclass(frozen=True, eq=False)
class GenePanel:
    """What a model predicts and on which scale: genes, count transform and the
    per-gene standardisation the network works in (all from the training slides).

    The model sees ``(target - mean) / std``; predictions come back through
    :meth:`to_target`.  Saved in every checkpoint, so a prediction rebuilds the
    targets of a new slide exactly as during training.
    """

    genes: tuple[str, ...]
    transform: str = "log2p1"
    mean: np.ndarray | None = None  # (G,) float32; None: not standardised (mean 0, std 1)
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        genes = tuple(str(g) for g in self.genes)
        if not genes:
            raise ValueError("gene panel is empty")
        if len(set(genes)) != len(genes):
            raise ValueError("gene panel has duplicate genes")
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "transform", _check_kind(self.transform))
        g = len(genes)
        mean = np.zeros(g, np.float32) if self.mean is None else np.asarray(self.mean, np.float32).reshape(-1)
        std = np.ones(g, np.float32) if self.std is None else np.asarray(self.std, np.float32).reshape(-1)
        if mean.shape != (g,) or std.shape != (g,):
            raise ValueError(f"mean/std must have one value per gene ({g})")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def __len__(self) -> int:
        return len(self.genes)

    def __eq__(self, other) -> bool:
        return (isinstance(other, GenePanel) and self.genes == other.genes and self.transform == other.transform
                and np.array_equal(self.mean, other.mean) and np.array_equal(self.std, other.std))

    @classmethod
    def fit(cls, adatas: Sequence, genes: Sequence[str], transform: str = "log2p1", min_std: float = 1e-3):
        """Standardisation of ``genes`` over all spots of the training slides ``adatas``."""
        y = np.concatenate([panel_matrix(a, genes, transform) for a in adatas], axis=0).astype(np.float64)
        return cls(tuple(genes), transform, y.mean(axis=0), np.maximum(y.std(axis=0), min_std))

    @classmethod
    def from_checkpoint(cls, ckpt) -> "GenePanel":
        def arr(v):
            return v.numpy() if hasattr(v, "numpy") else np.asarray(v)

        return cls(tuple(ckpt["genes"]), ckpt["transform"], arr(ckpt["mean"]), arr(ckpt["std"]))

    def targets(self, adata) -> tuple[np.ndarray, np.ndarray]:
        """``(truth (S, G) float32, present (G,) bool)`` of a slide's counts; NaN columns for genes it lacks."""
        names = set(map(str, adata.var_names))
        ok = np.array([g in names for g in self.genes], dtype=bool)
        out = np.full((adata.n_obs, len(self)), np.nan, dtype=np.float32)
        if ok.any():
            out[:, ok] = panel_matrix(adata, [g for g, o in zip(self.genes, ok) if o], self.transform)
        return out, ok

    def standardise(self, y: np.ndarray) -> np.ndarray:
        """Target scale -> model units; NaN (absent genes) become 0, the panel mean."""
        z = (np.nan_to_num(np.asarray(y, np.float32), nan=0.0) - self.mean) / self.std
        z[:, ~np.isfinite(np.asarray(y, np.float32)).all(axis=0)] = 0.0
        return z.astype(np.float32)

    def to_target(self, z: np.ndarray) -> np.ndarray:
        """Model units -> target scale, clipped at 0 (no transform gives negative counts)."""
        return np.maximum(np.asarray(z, np.float32) * self.std + self.mean, 0.0)

    @property
    def floor(self) -> np.ndarray:
        """Model-unit value of a zero count (the smallest valid target on every scale)."""
        return ((0.0 - self.mean) / self.std).astype(np.float32)
