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
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import FlagInputError

__all__ = [
    "TRANSFORMS",
    "GenePanel",
    "select_hmhvg",
    "hmhvg_stats",
    "is_excluded_gene",
    "transform_counts",
    "inverse_transform",
    "panel_matrix",
]

TRANSFORMS = ("log2p1", "log1p", "none")
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
    import scipy.sparse as sp

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


def transform_counts(X, kind: str = "log2p1") -> np.ndarray:
    """Raw counts -> model targets, dense float32 (``log2(1+x)`` by default)."""
    import scipy.sparse as sp

    k = _check_kind(kind)
    A = X.toarray() if sp.issparse(X) else np.asarray(X)
    A = A.astype(np.float32, copy=True)
    if k == "log2p1":
        np.log2(1.0 + A, out=A)
    elif k == "log1p":
        np.log1p(A, out=A)
    return A


def inverse_transform(Y, kind: str = "log2p1") -> np.ndarray:
    """Model scale -> counts scale (``2**y - 1`` for log2p1), float32."""
    k = _check_kind(kind)
    A = np.asarray(Y, dtype=np.float32).copy()
    if k == "log2p1":
        A = np.exp2(A) - 1.0
    elif k == "log1p":
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
    import scipy.sparse as sp

    idx = _gene_index(adata, genes)
    X = adata.X
    sub = X[:, idx] if sp.issparse(X) else np.asarray(X)[:, idx]
    return transform_counts(sub, kind)


@dataclass
class GenePanel:
    """Genes the model predicts and the transform of their counts; saved with the model."""

    genes: list[str]
    transform: str = "log2p1"
    method: str = "hmhvg"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.genes = [str(g) for g in self.genes]
        self.transform = _check_kind(self.transform)
        if len(set(self.genes)) != len(self.genes):
            raise ValueError("gene panel has duplicate genes")

    def __len__(self) -> int:
        return len(self.genes)

    @classmethod
    def select(cls, adatas: Sequence, n_genes: int = 200, transform: str = "log2p1") -> "GenePanel":
        genes = select_hmhvg(adatas, n_genes)
        return cls(genes=genes, transform=transform, method="hmhvg", meta={"n_slides": len(adatas), "requested": int(n_genes)})

    def matrix(self, adata) -> np.ndarray:
        return panel_matrix(adata, self.genes, self.transform)

    def inverse(self, Y) -> np.ndarray:
        return inverse_transform(Y, self.transform)

    def to_dict(self) -> dict:
        return {"genes": list(self.genes), "transform": self.transform, "method": self.method, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "GenePanel":
        return cls(
            genes=list(d["genes"]),
            transform=d.get("transform", "log2p1"),
            method=d.get("method", "hmhvg"),
            meta=dict(d.get("meta", {})),
        )
