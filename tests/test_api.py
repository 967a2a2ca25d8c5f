"""The Python API a notebook user calls: nf.load_sample, nf.predict, nf.evaluate."""
from __future__ import annotations

import numpy as np
import pytest

import napari_flag as nf
from napari_flag.errors import FlagInputError


def test_predict_then_evaluate_in_three_lines(her2st_dir, tmp_path):
    adata = nf.predict("her2st:C2", steps=2, samples=2, device="cpu", feature_cache=tmp_path)
    m = nf.evaluate(adata)
    assert adata.n_obs == 187 and {"std", "sample", "truth"} <= set(adata.layers)
    assert 0.0 < m["PCC"] < 1.0 and np.isfinite(m["SSC"]) and "GSC" in m
    out = tmp_path / "C2.h5ad"
    adata.write_h5ad(out)
    assert nf.evaluate(out)["PCC"] == pytest.approx(m["PCC"])  # a file it wrote works too
    # a truth file as a scanpy user keeps it: raw counts, matched by spot id
    counts = nf.load_sample("her2st:C2").adata
    counts.write_h5ad(tmp_path / "counts.h5ad")
    assert nf.evaluate(adata, truth=tmp_path / "counts.h5ad")["PCC"] == pytest.approx(m["PCC"], abs=1e-6)
    s = nf.load_sample("her2st:C3")
    assert s.n_spots == 180 and s.image is not None


def test_evaluate_needs_a_truth(her2st_slide, tmp_path):
    path, _ = her2st_slide("C3", 4)
    adata = nf.predict(str(path), steps=1, samples=1, device="cpu", feature_cache=tmp_path)
    assert adata.uns["flag"]["virtual_spots"]
    with pytest.raises(FlagInputError, match="truth"):
        nf.evaluate(adata)
