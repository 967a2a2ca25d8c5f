"""Metrics on a real HER2ST section, cross-checked against independent implementations."""
from __future__ import annotations

import json
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from napari_flag import metrics as M


# --------------------------------------------------------------------------- data
def _load_c2(her2st_dir):
    """Counts (spots x genes DataFrame), pixel (x, y) and array (x, y) coords of C2."""
    try:
        from napari_flag.data import load_sample
    except ImportError:
        load_sample = None
    if load_sample is not None:
        s = load_sample("her2st:C2")
        ad = s.adata
        X = ad.X.toarray() if sp.issparse(ad.X) else np.asarray(ad.X)
        counts = pd.DataFrame(X, index=ad.obs_names, columns=ad.var_names)
        arr = np.column_stack([ad.obs["array_col"], ad.obs["array_row"]]).astype(float)
        return counts, s.coords, arr
    spots = pd.read_csv(her2st_dir / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"])]
    counts = pd.read_csv(her2st_dir / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    spots = spots[spots["selected"] == 1]
    ids = spots.index.intersection(counts.index)
    spots, counts = spots.loc[ids], counts.loc[ids]
    return counts, spots[["pixel_x", "pixel_y"]].to_numpy(float), spots[["x", "y"]].to_numpy(float)


@pytest.fixture(scope="module")
def c2(her2st_dir):
    counts, px, arr = _load_c2(her2st_dir)
    y = np.log2(1.0 + counts.to_numpy(np.float64))
    top = np.argsort(-y.var(axis=0), kind="stable")[:120]
    truth = y[:, top]
    W = M.grid_weights(arr, "square")
    rng = np.random.default_rng(0)
    # a plausible prediction: spatially smoothed truth plus noise, one gene made flat
    pred = 0.5 * truth + 0.5 * (W @ truth) + rng.normal(0, 0.4, truth.shape)
    pred[:, 7] = 1.0
    return dict(truth=truth, pred=pred, px=px, arr=arr, W=W, genes=list(counts.columns[top]))


def _pysal_w(W):
    """libpysal W with the same directed, row-standardised adjacency."""
    from libpysal.weights import W as PW

    W = sp.csr_matrix(W)
    neigh, wts = {}, {}
    for i in range(W.shape[0]):
        lo, hi = W.indptr[i], W.indptr[i + 1]
        neigh[i] = W.indices[lo:hi].tolist()
        wts[i] = [1.0] * (hi - lo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # islands warning
        w = PW(neigh, wts, silence_warnings=True)
    return w


# --------------------------------------------------------------------------- PCC & errors
def test_pcc_matches_scipy(c2):
    t, p = c2["truth"], c2["pred"]
    r = M.pcc_per_gene(p, t)
    assert r.shape == (t.shape[1],)
    assert np.isnan(r[7])  # flat prediction
    for j in [0, 1, 5, 50, 119]:
        assert r[j] == pytest.approx(stats.pearsonr(p[:, j], t[:, j])[0], abs=1e-10)
    s = M.pcc_summary(p, t)
    v = np.sort(r[np.isfinite(r)])[::-1]
    assert s["PCC"] == pytest.approx(v.mean())
    assert s["PCC-10"] == pytest.approx(v[:10].mean())
    assert s["PCC-50"] == pytest.approx(v[:50].mean())
    assert s["PCC-10"] >= s["PCC-50"] >= s["PCC"]
    # fewer valid genes than k: mean of all of them
    assert M.pcc_summary(p[:, :5], t[:, :5])["PCC-50"] == pytest.approx(np.nanmean(r[:5]))
    assert M.mse(p, t) == pytest.approx(np.mean((p - t) ** 2))
    assert M.mae(p, t) == pytest.approx(np.mean(np.abs(p - t)))


# --------------------------------------------------------------------------- GSC
def test_gsc_matches_naive_loop(c2):
    t, p = c2["truth"][:, :40].copy(), c2["pred"][:, :40].copy()
    t[:, 3] = 2.0  # constant in truth -> dropped; gene 7 is constant in pred
    keep = [j for j in range(40) if j not in (3, 7)]
    a, b = [], []
    for i, j in combinations(keep, 2):
        a.append(stats.pearsonr(t[:, i], t[:, j])[0])
        b.append(stats.pearsonr(p[:, i], p[:, j])[0])
    a, b = np.array(a), np.array(b)
    ta, pb = M.gene_correlation_triangles(p, t)
    np.testing.assert_allclose(ta, a, atol=1e-10)
    np.testing.assert_allclose(pb, b, atol=1e-10)
    assert M.gsc(p, t) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-10)
    n = len(a)
    cov = sum((x - a.mean()) * (y - b.mean()) for x, y in zip(a, b)) / n
    ccc = 2 * cov / (a.var() + b.var() + (a.mean() - b.mean()) ** 2)
    assert M.gsc_ccc(p, t) == pytest.approx(ccc, abs=1e-10)
    # CCC punishes inflated magnitudes that Pearson ignores
    assert M.lins_ccc(a, 0.5 * a) < 0.9 and M.lins_ccc(a, a) == pytest.approx(1.0)


# --------------------------------------------------------------------------- spatial weights
def _lattice_neighbours(keys, offsets):
    pos = {k: i for i, k in enumerate(keys)}
    out = []
    for k in keys:
        out.append({pos[(k[0] + dr, k[1] + dc)] for dr, dc in offsets if (k[0] + dr, k[1] + dc) in pos})
    return out


def _check_lattice(W, keys, offsets):
    W = sp.csr_matrix(W)
    k = len(offsets)
    deg = np.diff(W.indptr)
    assert deg.max() <= k
    rs = np.asarray(W.sum(axis=1)).ravel()
    np.testing.assert_allclose(rs[deg > 0], 1.0)
    assert np.all(rs[deg == 0] == 0)
    lat = _lattice_neighbours(keys, offsets)
    n_interior = 0
    for i, nb in enumerate(lat):
        got = set(W.indices[W.indptr[i] : W.indptr[i + 1]].tolist())
        assert got <= nb  # only true lattice neighbours survive the 1.3 x median cut
        if len(nb) == k:
            n_interior += 1
            assert got == nb and deg[i] == k
    assert n_interior > 10


SQUARE = [(0, 1), (0, -1), (1, 0), (-1, 0)]
HEX = [(0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1)]


def test_grid_square_her2st(c2):
    arr, px = c2["arr"], c2["px"]
    keys = [(int(y), int(x)) for x, y in arr]
    assert M.infer_grid(arr) == "square"
    assert M.infer_grid(px) == "square"
    _check_lattice(M.grid_weights(arr, "auto"), keys, SQUARE)
    # refined pixel positions jitter: a few diagonals pass the cut, most edges agree
    Wp = M.grid_weights(px, "auto")
    assert np.diff(Wp.indptr).max() <= 4
    shared = Wp.multiply(c2["W"] > 0).astype(bool).nnz
    assert shared / c2["W"].nnz > 0.9


def test_spatial_weights_rule_lattice_then_pixels(c2, visium):
    """The one SSC weights rule: the array lattice when the slide has it, else pixel positions."""
    import anndata as ad

    n = c2["arr"].shape[0]
    a = ad.AnnData(obs=pd.DataFrame({"array_row": c2["arr"][:, 1], "array_col": c2["arr"][:, 0]}, index=[str(i) for i in range(n)]))
    a.obsm["spatial"] = c2["px"]
    rc = M.array_rc(a)
    W, grid = M.spatial_weights(c2["px"], rc)
    assert grid == "square" and (W != M.grid_weights(c2["arr"], "square")).nnz == 0
    row, col, px = visium
    v = ad.AnnData(obs=pd.DataFrame({"array_row": row, "array_col": col}, index=[str(i) for i in range(len(row))]))
    v.obsm["spatial"] = px
    W, grid = M.spatial_weights(px, M.array_rc(v))
    assert grid == "hex" and (W != M.grid_weights(M.lattice_coords(row, col, "hex"), "hex")).nnz == 0
    del v.obs["array_row"]
    assert M.array_rc(v) is None
    W, grid = M.spatial_weights(px, None)
    assert grid == "hex" and (W != M.grid_weights(px, "hex")).nnz == 0


@pytest.fixture(scope="module")
def visium(visium_dir):
    pos = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None)
    pos = pos[pos[1] == 1]
    return pos[2].to_numpy(), pos[3].to_numpy(), pos[[5, 4]].to_numpy(float)


def test_grid_hex_visium(visium):
    row, col, px = visium
    keys = list(zip(row.tolist(), col.tolist()))
    assert M.infer_grid(px) == "hex"
    lat = M.lattice_coords(row, col, "hex")
    assert M.infer_grid(lat) == "hex"
    Wp = M.grid_weights(px, "auto")
    _check_lattice(Wp, keys, HEX)
    _check_lattice(M.grid_weights(lat, "hex"), keys, HEX)


def test_grid_directed_knn_and_islands():
    # a 3 x 3 square block plus one far spot: the far spot's kNN edges are all
    # too long (island row stays zero), and nobody links to it
    xy = np.array([(x, y) for x in range(3) for y in range(3)] + [(10, 10)], float)
    W = M.grid_weights(xy, "square")
    assert W.shape == (10, 10) and W[9].nnz == 0 and W[:, 9].nnz == 0
    assert np.diff(W.indptr)[4] == 4  # centre spot
    # a kNN graph need not be symmetric: keep i -> j only for j in kNN(i)
    xy = np.array([[0, 0], [1, 0], [2, 0], [3.2, 0], [0, 1], [1, 1], [2, 1]], float)
    W = M.grid_weights(xy, k=2, ratio=10)
    assert (W != W.T).nnz > 0
    with pytest.raises(ValueError):
        M.grid_weights(xy, "triangle")


# --------------------------------------------------------------------------- Moran's I
def test_morans_i_matches_esda(c2):
    import esda

    t, W = c2["truth"], c2["W"]
    w = _pysal_w(W)
    I = M.morans_i(t, W)
    assert I.shape == (t.shape[1],)
    for j in [0, 3, 20, 77]:
        ref = esda.Moran(t[:, j], w, transformation="r", permutations=0).I
        assert I[j] == pytest.approx(ref, abs=1e-6)
        assert M.morans_i(t[:, j], W) == pytest.approx(ref, abs=1e-12)
    assert np.isnan(M.morans_i(np.ones(t.shape[0]), W))


def test_morans_i_with_island_matches_esda(c2):
    import esda

    # add a far-away spot: an island with a zero row that adds nothing to S0
    xy = np.vstack([c2["arr"], [100.0, 100.0]])
    W = M.grid_weights(xy, "square")
    assert W[-1].nnz == 0
    y = np.append(c2["truth"][:, 2], 3.0)
    w = _pysal_w(W)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = esda.Moran(y, w, transformation="r", permutations=0).I
        loc = esda.Moran_Local(y, w, transformation="r", permutations=0).Is
    assert M.morans_i(y, W) == pytest.approx(ref, abs=1e-6)
    np.testing.assert_allclose(M.local_morans_i(y, W), loc, atol=1e-6)


def test_local_morans_i_matches_esda(c2):
    import esda

    t, W = c2["truth"], c2["W"]
    w = _pysal_w(W)
    L = M.local_morans_i(t, W)
    assert L.shape == t.shape
    for j in [0, 11, 60]:
        ref = esda.Moran_Local(t[:, j], w, transformation="r", permutations=0).Is
        np.testing.assert_allclose(L[:, j], ref, atol=1e-6)
        np.testing.assert_allclose(M.local_morans_i(t[:, j], W), ref, atol=1e-6)
    # the local statistics average to the global one (row-standardised, no islands)
    n = t.shape[0]
    np.testing.assert_allclose(L.sum(axis=0) / (n - 1), M.morans_i(t, W), atol=1e-10)


def test_ssc(c2):
    t, p, W = c2["truth"], c2["pred"], c2["W"]
    it, ip = M.morans_i(t, W), M.morans_i(p, W)
    ok = np.isfinite(it) & np.isfinite(ip)
    assert not ok[7]
    assert M.ssc(p, t, W) == pytest.approx(stats.pearsonr(it[ok], ip[ok])[0], abs=1e-10)
    # smoothing inflates Moran's I but keeps its ranking across genes
    assert np.nanmean(ip) > np.nanmean(it)
    assert M.ssc(p, t, W) > 0.5


# --------------------------------------------------------------------------- domains & DEG
def test_spatial_domains_match_sklearn(c2):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t, p = c2["truth"], c2["pred"]
    s, lt, lp = M.spatial_domains(p, t, n_clusters=5, seed=0, return_labels=True)
    assert lt.shape == lp.shape == (t.shape[0],) and len(np.unique(lt)) == 5
    assert s["ARI"] == pytest.approx(adjusted_rand_score(lt, lp))
    assert s["NMI"] == pytest.approx(normalized_mutual_info_score(lt, lp))
    s2, lt2, lp2 = M.spatial_domains(p, t, n_clusters=5, seed=0, return_labels=True)
    assert s2 == s and np.array_equal(lt, lt2) and np.array_equal(lp, lp2)  # deterministic
    flat = np.ones_like(t)
    assert np.all(M.cluster_labels(flat) == 0)


def test_wilcoxon_matches_scipy(c2):
    t = c2["truth"][:, :30]
    labels = M.cluster_labels(c2["truth"], n_clusters=4)
    groups, z = M.wilcoxon_scores(t, labels)
    assert z.shape == (4, 30)
    for gi in range(4):
        inside = labels == groups[gi]
        for j in [0, 4, 17]:
            res = stats.mannwhitneyu(t[inside, j], t[~inside, j], method="asymptotic", use_continuity=False)
            n1, n2 = inside.sum(), (~inside).sum()
            # z points the same way as scipy's U and gives its tie-corrected two-sided p
            zz = z[gi, j]
            assert np.sign(zz) == np.sign(res.statistic - n1 * n2 / 2)
            assert stats.norm.sf(abs(zz)) * 2 == pytest.approx(res.pvalue, rel=1e-6, abs=1e-300)


def test_deg_overlap(c2):
    t, p = c2["truth"], c2["pred"]
    labels = M.cluster_labels(t)
    assert M.deg_overlap(t, t, labels, k=20) == 1.0
    d = M.deg_overlap(p, t, labels, k=20)
    assert 0.0 <= d < 1.0
    # reversed expression ranks genes backwards: little overlap
    assert M.deg_overlap(-t, t, labels, k=20) < d
    # k larger than the panel caps at G
    assert M.deg_overlap(p[:, :10], t[:, :10], labels, k=50) == 1.0


# --------------------------------------------------------------------------- slide level
def test_perfect_prediction(c2):
    t = c2["truth"]
    m = M.evaluate_slide(t, t, c2["px"], grid="auto")
    assert list(m) == list(M.METRIC_KEYS)
    for k in ["PCC", "PCC-10", "PCC-50", "GSC", "GSC-CCC", "SSC", "ARI", "NMI", "DEG"]:
        assert m[k] == pytest.approx(1.0), k
    assert m["MSE"] == 0.0 and m["MAE"] == 0.0


def test_evaluate_slide_and_summary(c2):
    t, p = c2["truth"], c2["pred"]
    m, det = M.evaluate_slide(p, t, c2["arr"], grid="square", genes=c2["genes"], return_details=True)
    assert all(isinstance(v, float) for v in m.values())
    assert set(m) == set(M.METRIC_KEYS)
    assert 0.3 < m["PCC"] < m["PCC-50"] < m["PCC-10"] <= 1.0
    assert m["GSC"] > m["GSC-CCC"] - 0.5 and -1 <= m["ARI"] <= 1
    assert m["SSC"] == pytest.approx(M.ssc(p, t, c2["W"]))
    assert m["DEG"] == pytest.approx(M.deg_overlap(p, t, det["labels_true"], 20))
    assert det["genes"] == c2["genes"] and det["pcc"].shape == (t.shape[1],)
    m2 = M.evaluate_slide(p, t, None, weights=c2["W"])
    assert m2 == m
    with pytest.raises(ValueError):
        M.evaluate_slide(p[:, :5], t, c2["arr"])

    res = M.summarize({"C2": m, "C2b": dict(m, PCC=m["PCC"] - 0.2)})
    assert set(res) == {"slides", "mean", "std"} and set(res["slides"]) == {"C2", "C2b"}
    assert res["mean"]["PCC"] == pytest.approx(m["PCC"] - 0.1)
    assert res["std"]["PCC"] == pytest.approx(0.1)  # ddof=0
    assert res["std"]["MSE"] == 0.0
    js = json.loads(json.dumps(M.jsonable(M.summarize({"a": dict(m, SSC=float("nan"))}))))
    assert js["slides"]["a"]["SSC"] is None and js["mean"]["SSC"] is None
    txt = M.format_table(res)
    lines = txt.splitlines()
    assert "PCC-50" in lines[0] and "GSC-CCC" in lines[0]
    assert any(line.startswith("C2b") for line in lines) and any(line.startswith("std") for line in lines)
    assert "slide" in M.format_table(m)
