"""``uns['spatial']`` in scanpy's layout, plotted with ``sc.pl.spatial`` over a real HER2ST section."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_flag.data.h5ad import scanpy_spatial


def test_scanpy_spatial_plots(c2_slide, guarded):
    import matplotlib

    matplotlib.use("Agg")
    import anndata as ad
    import matplotlib.pyplot as plt
    import scanpy as sc

    _, m = c2_slide
    spatial = scanpy_spatial(dataclasses.replace(m, image=guarded(m.image)), max_px=500)
    lib = spatial["C2"]
    hires = lib["images"]["hires"]
    assert hires.dtype == np.uint8 and hires.ndim == 3 and max(hires.shape[:2]) == 500
    sf = lib["scalefactors"]
    f = sf["tissue_hires_scalef"]
    assert f == pytest.approx(500 / max(m.image.fullres_shape))
    assert sf["spot_diameter_fullres"] == pytest.approx(m.spot_diameter_px)
    # the thumbnail under a spot shows the same tissue as the slide
    big, small = [], []
    for x, y in m.coords:
        big.append(m.image.read_region(x - 40, y - 40, 80, 8).astype(float).mean())
        x0, y0 = int(round((x - 40) * f)), int(round((y - 40) * f))
        small.append(hires[y0 : y0 + 16, x0 : x0 + 16].astype(float).mean())  # 80 full-res px
    assert np.abs(np.subtract(big, small)).max() < 6
    assert np.corrcoef(big, small)[0, 1] > 0.95
    a = ad.AnnData(X=m.adata.X, obs=m.adata.obs.copy(), var=m.adata.var.copy())
    a.obsm["spatial"] = m.coords
    a.uns["spatial"] = spatial
    axs = sc.pl.spatial(a, color=["ERBB2", "array_row"], show=False)
    assert len(axs) == 2 and axs[0].images
    plt.close("all")


def test_scanpy_spatial_without_image(c2_slide):
    _, m = c2_slide
    lib = scanpy_spatial(m, library_id="lib", max_px=None)["lib"]
    assert lib["images"] == {} and lib["metadata"] == {}
    assert "tissue_hires_scalef" not in lib["scalefactors"]
