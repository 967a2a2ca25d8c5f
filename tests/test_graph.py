"""Spatial kNN graph: correctness on known layouts, edge cases, sparse scale."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from napari_flag.graph import SpatialGraph, build_spatial_graph


def _grid(n_side: int, pitch: float = 100.0) -> np.ndarray:
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(float) * pitch


def test_square_grid_neighbours_and_weights():
    xy = _grid(5)
    feats = np.random.default_rng(0).normal(size=(25, 7))
    g = build_spatial_graph(xy, feats, k=4)
    assert isinstance(g, SpatialGraph)
    assert g.num_nodes == 25
    assert g.edge_index.dtype == torch.long and g.edge_index.shape == (2, 25 * 4)
    assert g.edge_attr.dtype == torch.float32 and g.edge_attr.shape == (100, 2)
    src, dst = g.edge_index.numpy()
    assert not np.any(src == dst)
    # every node receives exactly k edges
    assert np.all(np.bincount(dst, minlength=25) == 4)
    # centre node 12 (2,2): its 4 neighbours are the grid 4-neighbourhood
    assert set(src[dst == 12]) == {7, 11, 13, 17}
    d = np.linalg.norm(xy[src] - xy[dst], axis=1)
    # median kNN distance is the pitch -> scale 100, weight exp(-d^2 / 2 s^2)
    assert g.scale_um == pytest.approx(100.0)
    w = g.edge_attr[:, 0].numpy()
    assert np.all((w > 0) & (w <= 1))
    np.testing.assert_allclose(w, np.exp(-(d**2) / (2 * 100.0**2)), rtol=1e-6)
    # cosine similarity is exact
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    np.testing.assert_allclose(g.edge_attr[:, 1].numpy(), (fn[src] * fn[dst]).sum(1), atol=1e-6)


def test_radius_cutoff_and_explicit_scale():
    xy = np.array([[0, 0], [1, 0], [0, 1], [50, 50]], float)
    g = build_spatial_graph(xy, np.ones((4, 3)), k=3, radius_um=2.0, scale_um=1.0)
    src, dst = g.edge_index.numpy()
    assert 3 not in set(src) | set(dst)  # the isolated spot has no edges
    assert g.num_edges == 6  # the triangle, both directions
    np.testing.assert_allclose(g.edge_attr[:, 1].numpy(), 1.0, atol=1e-6)  # identical features
    w = g.edge_attr[:, 0].numpy()
    assert w.max() == pytest.approx(np.exp(-0.5)) and w.min() == pytest.approx(np.exp(-1.0))


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_few_spots(n):
    xy = np.random.default_rng(1).random((n, 2))
    g = build_spatial_graph(xy, np.random.default_rng(2).random((n, 4)), k=8)
    assert g.num_nodes == n
    assert g.num_edges == max(n * (n - 1), 0)
    assert g.edge_attr.shape == (g.num_edges, 2)


def test_duplicate_coordinates_drop_self_only():
    xy = np.zeros((4, 2))  # all spots stacked: self may not come first in the query
    g = build_spatial_graph(xy, np.eye(4), k=2)
    src, dst = g.edge_index.numpy()
    assert not np.any(src == dst)
    assert np.all(np.bincount(dst, minlength=4) == 2)
    assert np.all(g.edge_attr[:, 0].numpy() == 1.0)  # zero distance -> weight 1
    np.testing.assert_allclose(g.edge_attr[:, 1].numpy(), 0.0, atol=1e-7)  # orthogonal features


def test_torch_inputs_and_bad_shapes():
    g = build_spatial_graph(torch.rand(10, 2), torch.rand(10, 3), k=3)
    assert g.num_edges == 30
    with pytest.raises(ValueError):
        build_spatial_graph(np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        build_spatial_graph(np.zeros((5, 2)), np.zeros((4, 2)))


def test_subgraph_relabels():
    g = build_spatial_graph(_grid(4), np.random.default_rng(0).random((16, 3)), k=4)
    sub = g.subgraph([0, 1, 4, 5])
    assert sub.num_nodes == 4
    assert sub.edge_index.max() < 4
    assert sub.edge_attr.shape[0] == sub.num_edges


def test_50k_spots_sparse():
    """At whole-slide scale the graph stays k edges per spot (nothing dense in the spot count)."""
    rng = np.random.default_rng(0)
    n = 50_000
    xy = rng.random((n, 2)) * 20_000
    feats = rng.random((n, 64)).astype(np.float32)
    g = build_spatial_graph(xy, feats, k=8)
    assert g.num_edges == n * 8
    assert np.isfinite(g.edge_attr.numpy()).all()
