"""Gene panel (HMHVG) and count transforms, on the real HER2ST patient-C sections."""
from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_flag.data import load_sample
from napari_flag.data.panel import (
    GenePanel,
    hmhvg_stats,
    inverse_transform,
    is_excluded_gene,
    panel_matrix,
    select_hmhvg,
    transform_counts,
)
from napari_flag.data.registry import ENV_DATA_DIR
from napari_flag.errors import FlagInputError


@pytest.fixture(scope="module")
def adatas(her2st_dir):
    old = os.environ.get(ENV_DATA_DIR)
    os.environ[ENV_DATA_DIR] = str(her2st_dir)
    try:
        return [load_sample(f"her2st:C{i}").adata for i in range(2, 7)]
    finally:
        if old is None:
            os.environ.pop(ENV_DATA_DIR, None)
        else:
            os.environ[ENV_DATA_DIR] = old


def _reference(adatas, n):
    """The definition, spelled out with pandas: smallest N whose intersection has >= n genes."""
    common = set(adatas[0].var_names)
    for a in adatas[1:]:
        common &= set(a.var_names)
    genes = sorted(g for g in common if not g.upper().startswith(("MT-", "RPS", "RPL")))
    X = np.vstack([a[:, genes].X.toarray() for a in adatas]).astype(np.float64)
    df = pd.DataFrame({"gene": genes, "mean": X.mean(0), "std": X.std(0)})
    by_mean = df.sort_values(["mean", "gene"], ascending=[False, True])["gene"].tolist()
    by_std = df.sort_values(["std", "gene"], ascending=[False, True])["gene"].tolist()
    for N in range(n, len(genes) + 1):
        inter = set(by_mean[:N]) & set(by_std[:N])
        if len(inter) >= n:
            return [g for g in by_mean if g in inter][:n], N, len(inter)
    raise AssertionError


def test_hmhvg_matches_definition(adatas):
    genes = select_hmhvg(adatas, 200)
    assert len(genes) == 200 and len(set(genes)) == 200
    assert not any(is_excluded_gene(g) for g in genes)
    assert all(set(genes) <= set(a.var_names) for a in adatas)
    ref, N, size = _reference(adatas, 200)
    assert genes == ref
    assert N > 200  # the intersection is smaller than N: a real search happened
    assert "ERBB2" in genes  # HER2 itself: these are HER2-positive tumours


@pytest.mark.parametrize("n", [1, 7, 50, 333])
def test_hmhvg_sizes_and_determinism(adatas, n):
    genes = select_hmhvg(adatas, n)
    assert len(genes) == n
    assert select_hmhvg(adatas[::-1], n) == genes  # slide order does not matter
    assert genes == _reference(adatas, n)[0]


def test_hmhvg_stats_pooled(adatas):
    genes, mean, std = hmhvg_stats(adatas[:2])
    g = genes[0]
    pooled = np.concatenate([a[:, g].X.toarray().ravel() for a in adatas[:2]])
    assert mean[0] == pytest.approx(pooled.mean()) and std[0] == pytest.approx(pooled.std())


def test_excluded_genes():
    for g in ("MT-CO1", "mt-Co1", "RPS6", "Rpl13a", "rps27", "RPLP0"):
        assert is_excluded_gene(g)
    for g in ("MTOR", "ERBB2", "Gapdh", "MRPL20", "SRPRB"):
        assert not is_excluded_gene(g)


def test_hmhvg_mouse_small_panel_warns(visium_dir):
    a = load_sample(visium_dir).adata
    with pytest.warns(UserWarning, match="eligible genes"):
        genes = select_hmhvg([a], 200)
    assert 0 < len(genes) <= 100 and not any(g.lower().startswith("mt-") for g in genes)
    assert len(select_hmhvg([a], 20)) == 20


def test_transforms_roundtrip():
    X = sp.csr_matrix(np.array([[0, 1, 3], [7, 0, 255]], dtype=np.float32))
    for kind, fwd in (("log2p1", np.log2(1 + X.toarray())), ("log1p", np.log1p(X.toarray())), ("none", X.toarray())):
        Y = transform_counts(X, kind)
        assert Y.dtype == np.float32 and isinstance(Y, np.ndarray)
        np.testing.assert_allclose(Y, fwd, rtol=1e-6)
        back = inverse_transform(Y, kind)
        assert back.dtype == np.float32
        np.testing.assert_allclose(back, X.toarray(), rtol=1e-5, atol=1e-4)
    assert transform_counts(np.array([[1.0]]))[0, 0] == pytest.approx(1.0)  # default log2p1
    with pytest.raises(ValueError):
        transform_counts(X, "sqrt")


def test_panel_matrix_and_missing_genes(adatas):
    a = adatas[0]
    genes = ["ERBB2", "ACTB", "IGKC"]
    M = panel_matrix(a, genes, "log2p1")
    assert M.shape == (a.n_obs, 3) and M.dtype == np.float32
    np.testing.assert_allclose(M[:, 0], np.log2(1 + a[:, "ERBB2"].X.toarray().ravel()))
    with pytest.raises(FlagInputError) as e:
        panel_matrix(a, ["ERBB2", "NOT_A_GENE", "ALSO_NOT"], "none")
    msg = str(e.value)
    assert "NOT_A_GENE" in msg and "ALSO_NOT" in msg and "\n" not in msg
    dense = ad.AnnData(X=a.X.toarray(), obs=a.obs, var=a.var)
    np.testing.assert_array_equal(panel_matrix(dense, genes), M)


def test_gene_panel_standardisation(adatas):
    genes = select_hmhvg(adatas[:3], 30)
    p = GenePanel.fit(adatas[:3], genes, transform="log1p")
    assert len(p) == 30 and p.transform == "log1p" and p.genes == tuple(genes)
    y = np.concatenate([panel_matrix(a, genes, "log1p") for a in adatas[:3]])
    np.testing.assert_allclose(p.mean, y.mean(0), rtol=1e-5)
    np.testing.assert_allclose(p.std, np.maximum(y.std(0), 1e-3), rtol=1e-5)
    truth, ok = p.targets(adatas[3])
    assert ok.all() and truth.shape == (adatas[3].n_obs, 30)
    z = p.standardise(truth)
    np.testing.assert_allclose(p.to_target(z), truth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.to_target(np.full_like(z, -1e3)), 0.0)  # clipped at a zero count
    np.testing.assert_allclose(p.floor * p.std + p.mean, 0.0, atol=1e-5)
    # a slide lacking a gene: NaN truth column, standardised to the panel mean (0)
    lacking = adatas[3][:, [g for g in adatas[3].var_names if g != genes[0]]]
    t2, ok2 = p.targets(lacking)
    assert not ok2[0] and ok2[1:].all() and np.isnan(t2[:, 0]).all()
    assert (p.standardise(t2)[:, 0] == 0).all()
    q = GenePanel.from_checkpoint({"genes": list(genes), "transform": "log1p", "mean": p.mean, "std": p.std})
    assert q == p
    with pytest.raises(ValueError):
        GenePanel(("A", "A"))
    with pytest.raises(ValueError):
        GenePanel(("A",), transform="bogus")
    with pytest.raises(ValueError):
        GenePanel(("A", "B"), mean=np.zeros(3))


def test_lognorm_target_is_scanpys_normalize_total_log1p(adatas):
    """The library-size-normalised scale must equal what a scanpy user computes, panel genes only
    (the spot totals still come from every gene of the slide)."""
    import scanpy as sc

    a = adatas[0]
    genes = select_hmhvg(adatas[:2], 20)
    ref = a.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    want = ref[:, genes].X
    want = want.toarray() if sp.issparse(want) else np.asarray(want)
    np.testing.assert_allclose(panel_matrix(a, genes, "lognorm"), want, rtol=1e-5, atol=1e-5)
    p = GenePanel.fit(adatas[:2], genes, transform="lognorm")
    truth, ok = p.targets(a)
    assert ok.all()
    np.testing.assert_allclose(truth, want, rtol=1e-5, atol=1e-5)
