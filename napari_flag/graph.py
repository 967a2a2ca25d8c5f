"""Spatial kNN graph over spots: the condition FLAG's graph encoder reads.

The graph is built once per slide from geometry and image features only (never
from expression), so it is cheap and can be reused for every denoising step.
Construction is sparse (a k-d tree, O(S k log S)); nothing dense in S is ever
allocated, so whole-slide Visium HD-scale inputs (tens of thousands of spots)
are fine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = ["SpatialGraph", "build_spatial_graph"]

# Edge features, in column order.
EDGE_FEATURES = ("distance_weight", "cosine_similarity")


@dataclass
class SpatialGraph:
    """Directed edges ``src -> dst`` (``edge_index[0]`` is the neighbour whose
    message flows into ``edge_index[1]``); every node receives from its own k
    nearest neighbours.  ``edge_attr`` columns are :data:`EDGE_FEATURES`."""

    edge_index: torch.Tensor  # (2, E) int64
    edge_attr: torch.Tensor  # (E, 2) float32
    num_nodes: int
    scale_um: float = 1.0  # length scale used for the distance weight

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to(self, device) -> "SpatialGraph":
        return SpatialGraph(
            self.edge_index.to(device), self.edge_attr.to(device), self.num_nodes, self.scale_um
        )

    def neighbour_matrix(self) -> torch.Tensor:
        """Sparse (S, S) row-stochastic matrix ``W``: ``(W x)_i`` is the distance-weighted
        mean of ``x`` over spot i's neighbours (itself excluded; a spot without
        neighbours gets a zero row).  What joint denoising aggregates at every step.
        """
        src, dst = self.edge_index[0], self.edge_index[1]
        w = self.edge_attr[:, 0].to(torch.float32)
        tot = torch.zeros(self.num_nodes, dtype=w.dtype, device=w.device).index_add_(0, dst, w)
        w = w / tot[dst].clamp_min(1e-12)
        return torch.sparse_coo_tensor(torch.stack([dst, src]), w, (self.num_nodes, self.num_nodes),
                                       check_invariants=True).coalesce()

    def subgraph(self, nodes) -> "SpatialGraph":
        """Graph induced on ``nodes`` (relabelled 0..len-1); edges leaving it are dropped."""
        nodes = torch.as_tensor(np.asarray(nodes), dtype=torch.long)
        remap = torch.full((self.num_nodes,), -1, dtype=torch.long)
        remap[nodes] = torch.arange(len(nodes))
        ei = remap[self.edge_index.cpu()]
        keep = (ei >= 0).all(0)
        return SpatialGraph(ei[:, keep], self.edge_attr.cpu()[keep], len(nodes), self.scale_um)


def _as_numpy(a, dtype) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def build_spatial_graph(
    coords_um,
    feats,
    k: int = 8,
    radius_um: float | None = None,
    scale_um: float | None = None,
) -> SpatialGraph:
    """k-nearest-neighbour graph with ``[exp(-d^2 / 2 scale^2), cos(v_src, v_dst)]`` edges.

    Parameters
    ----------
    coords_um : (S, 2) spot centres in microns (any consistent unit works; the
        distance weight is scale-free once ``scale_um`` is the median).
    feats : (S, D) visual features (numpy or torch).
    k : neighbours per node (clipped to ``S - 1``).
    radius_um : optional cutoff; neighbours farther than this are dropped, so
        isolated spots (tissue islands) get no edges rather than far ones.
    scale_um : length scale of the Gaussian weight; default the median kNN
        distance, which makes the weight of a typical neighbour ``exp(-1/2)``
        whatever the platform's spot pitch.
    """
    xy = _as_numpy(coords_um, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords_um must be (S, 2), got {xy.shape}")
    n = xy.shape[0]
    f = _as_numpy(feats, np.float32)
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"feats must be (S, D) with S={n}, got {f.shape}")
    if k < 1:
        raise ValueError("k must be >= 1")
    kk = min(int(k), n - 1)
    if kk < 1:
        return SpatialGraph(
            torch.zeros((2, 0), dtype=torch.long),
            torch.zeros((0, 2), dtype=torch.float32),
            n,
            float(scale_um) if scale_um else 1.0,
        )

    dist, idx = cKDTree(xy).query(xy, k=kk + 1)
    dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
    dst = np.repeat(np.arange(n), kk + 1).reshape(n, kk + 1)
    # Drop the self match wherever it landed (duplicate coordinates can push it
    # out of column 0, or out of the list entirely: then drop the last column).
    keep = idx != dst
    keep &= np.cumsum(keep, axis=1) <= kk
    if radius_um is not None:
        keep &= dist <= float(radius_um)
    src, dst, d = idx[keep], dst[keep], dist[keep]

    if scale_um is None:
        # Median over the full kNN list (before the radius cut), so the scale is a
        # property of the slide's spot pitch, not of the cutoff.
        knn = dist[(idx != np.arange(n)[:, None])]
        pos = knn[knn > 0]
        scale_um = float(np.median(pos)) if pos.size else 1.0
    scale = float(scale_um)
    if not scale > 0:
        raise ValueError(f"scale_um must be > 0, got {scale_um}")
    w = np.exp(-(d**2) / (2.0 * scale**2)).astype(np.float32)

    norm = np.linalg.norm(f, axis=1, keepdims=True)
    fn = f / np.maximum(norm, 1e-12)
    cos = np.empty(len(src), dtype=np.float32)
    step = max(1, (1 << 22) // max(f.shape[1], 1))  # bound the gathered block to ~16 MB
    for a in range(0, len(src), step):
        b = min(a + step, len(src))
        cos[a:b] = np.einsum("ij,ij->i", fn[src[a:b]], fn[dst[a:b]])
    np.clip(cos, -1.0, 1.0, out=cos)

    edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    edge_attr = torch.from_numpy(np.stack([w, cos], axis=1))
    return SpatialGraph(edge_index, edge_attr, n, scale)
