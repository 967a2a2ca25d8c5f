"""Ridge / MLP baselines: fit, predict, weight-only save and reload."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from napari_flag.model import MLPBaseline, RidgeBaseline


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def linear_data():
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(n, 20)) * rng.uniform(0.5, 5, size=20) + 3 for n in (60, 70)]
    w = rng.normal(size=(20, 6))
    targets = [f @ w + 2.0 + 0.01 * rng.normal(size=(len(f), 6)) for f in feats]
    test = rng.normal(size=(40, 20)) * 2 + 3
    return feats, targets, test, test @ w + 2.0


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_ridge_recovers_linear_map(linear_data):
    feats, targets, test, truth = linear_data
    r = RidgeBaseline().fit(feats, targets)
    assert r.alpha_ == pytest.approx(100 / (20 * 6))  # PCA capped at the feature count
    pred = r.predict(test)
    assert pred.shape == truth.shape and pred.dtype == np.float32
    np.testing.assert_allclose(pred, truth, atol=0.2)  # includes the intercept
    r2 = RidgeBaseline.from_state(_roundtrip(r.state_dict()))
    np.testing.assert_allclose(r2.predict(test), pred, rtol=1e-5, atol=1e-5)


def test_ridge_folded_affine_map_matches_pipeline(linear_data):
    """The stored (W, b) equals standardise -> PCA -> ridge done step by step."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge

    feats, targets, test, _ = linear_data
    x, y = np.concatenate(feats), np.concatenate(targets)
    r = RidgeBaseline(alpha=3.0, n_pca=5).fit(feats, targets)
    mu, sd = x.mean(0), x.std(0)
    pca = PCA(5, random_state=0).fit((x - mu) / sd)
    reg = Ridge(alpha=3.0).fit(pca.transform((x - mu) / sd), y)
    ref = reg.predict(pca.transform((test - mu) / sd))
    np.testing.assert_allclose(r.predict(test), ref, rtol=1e-4, atol=1e-4)


def test_ridge_few_samples():
    rng = np.random.default_rng(1)
    r = RidgeBaseline(n_pca=256).fit([rng.normal(size=(10, 300))], [rng.normal(size=(10, 4))])
    assert r.predict(rng.normal(size=(3, 300))).shape == (3, 4)


def test_mlp_fits_and_roundtrips(linear_data):
    feats, targets, test, truth = linear_data
    m = MLPBaseline(hidden=64, epochs=60, lr=3e-3, dropout=0.0, seed=0).fit(feats, targets)
    pred = m.predict(test)
    assert pred.shape == truth.shape
    r = np.corrcoef(pred.ravel(), truth.ravel())[0, 1]
    assert r > 0.9
    m2 = MLPBaseline.from_state(_roundtrip(m.state_dict()))
    np.testing.assert_allclose(m2.predict(test), pred, rtol=1e-5, atol=1e-5)
    # the seed makes fitting reproducible
    again = MLPBaseline(hidden=64, epochs=60, lr=3e-3, dropout=0.0, seed=0).fit(feats, targets)
    np.testing.assert_allclose(again.predict(test), pred, rtol=1e-5, atol=1e-5)


def test_unfitted_baselines_raise():
    with pytest.raises(RuntimeError):
        RidgeBaseline().predict(np.zeros((2, 3)))
    with pytest.raises(RuntimeError):
        MLPBaseline().state_dict()
