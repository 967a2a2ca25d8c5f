"""Routine H&E: a slide with no spots predicted end to end on virtual spots, and cohorts.

Slides are HER2ST JPEGs written as pyramidal OME-TIFFs (conftest ``her2st_slide``);
the model is the bundled one, so these are the runs a user makes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from napari_flag.cli import main

FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"


@pytest.fixture(autouse=True)
def _feature_cache(monkeypatch):
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(FEATURE_DIR))


def _fails(capsys, argv, *needles):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    err = capsys.readouterr().err
    assert ei.value.code != 0
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], err
    return err


@pytest.fixture(scope="module")
def c3_virtual(her2st_slide, tmp_path_factory):
    """C3 as an OME-TIFF with no spots, predicted from the CLI with the bundled model."""
    path, measured = her2st_slide("C3", 2)
    out = tmp_path_factory.mktemp("virtual") / "C3.h5ad"
    assert main(["predict", str(path), "--out", str(out), "--device", "cpu", "--quiet", "--samples", "2"]) == 0
    return out, measured


def test_image_without_spots_predicted_on_virtual_spots(c3_virtual):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    out, measured = c3_virtual
    a = ad.read_h5ad(out)
    info = a.uns["flag"]
    # the model's spots (100 um, square) at the default pitch: its 200 um halved, so 112 um patches tile the tissue
    assert info["virtual_spots"] and info["spot_geometry"] == {"diameter_um": 100.0, "spacing_um": 100.0,
                                                               "lattice": "square"}
    assert 600 < a.n_obs < 1040 and a.n_vars == 200 and "truth" not in a.layers
    assert {"array_row", "array_col", "in_tissue"} <= set(a.obs) and (a.obs["in_tissue"] == 1).all()
    # the lattice: neighbours 100 um apart, in full-resolution pixels of the file
    from scipy.spatial import cKDTree

    d = cKDTree(a.obsm["spatial"]).query(a.obsm["spatial"], k=2)[0][:, 1]
    assert np.median(d) * info["pixel_size_um"] == pytest.approx(100.0, rel=0.01)
    # ≥ 97 % of the measured spots have a virtual spot within 0.75 spacing
    dm = cKDTree(a.obsm["spatial"]).query(measured.coords)[0] * info["pixel_size_um"]
    assert np.mean(dm <= 0.75 * 100.0) >= 0.97
    assert set(info["compatibility"]) == {"coarse_image"}  # a half-size scan: the patch is upsampled
    assert 0 < info["tissue"]["fraction"] < 1
    # scanpy reads it as it is
    lib = next(iter(a.uns["spatial"]))
    assert a.uns["spatial"][lib]["images"]["hires"].dtype == np.uint8
    sc.pl.spatial(a, color=a.var_names[0], show=False)
    sc.pl.spatial(a, color="array_row", show=False)


def test_visium_fixture_warns_about_the_model_panel_even_when_quiet(visium_dir, tmp_path, capsys):
    out = tmp_path / "v.h5ad"
    with pytest.raises(SystemExit):  # the fixture's image is Space Ranger's low-res PNG: patches too small
        main(["predict", str(visium_dir), "--out", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert "warning: 0 of 200 model genes are measured here" in err
    assert "the slide's genes look mouse, the model's panel human" in err
    assert "patch would be" in err and not out.exists()


def test_bad_routine_inputs_are_one_line_errors_and_write_nothing(her2st_slide, tmp_path, capsys):
    from PIL import Image

    path, _ = her2st_slide("C2", 4)
    out = tmp_path / "o.h5ad"
    # a JPEG records no pixel size
    jpg = tmp_path / "c2.jpg"
    arr = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(arr).save(jpg)
    _fails(capsys, ["predict", str(jpg), "--out", str(out)], str(jpg), "pixel size unknown; pass --pixel-size-um")
    # blank slides
    for name, value in (("white", 255), ("black", 0)):
        blank = tmp_path / f"{name}.png"
        Image.fromarray(np.full((800, 800, 3), value, np.uint8)).save(blank)
        _fails(capsys, ["predict", str(blank), "--out", str(out), "--pixel-size-um", "0.5"], str(blank),
               "no tissue found")
    # a pixel size so coarse a patch is under 16 px
    _fails(capsys, ["predict", str(jpg), "--out", str(out), "--pixel-size-um", "20"], "patch would be")
    _fails(capsys, ["predict", str(path), "--out", str(out), "--spacing-um", "-5"], "--spacing-um")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails(capsys, ["predict", str(path), "--out-dir", str(afile)], str(afile), "is a file")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["c2.jpg", "white.png", "black.png", "afile"])


def test_cohort_skips_done_slides_and_goes_on_past_a_broken_one(her2st_slide, tmp_path, capsys):
    path, _ = her2st_slide("C2", 4)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really a tiff")
    out_dir = tmp_path / "preds"
    argv = ["predict", str(path), str(broken), "--out-dir", str(out_dir), "--device", "cpu", "--samples", "1",
            "--steps", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{broken}" in err and "1 predicted, 0 already done, 1 failed" in err
    assert [p.name for p in out_dir.iterdir()] == ["C2_x4.h5ad"]
    before = (out_dir / "C2_x4.h5ad").stat().st_mtime_ns
    assert main(argv) == 1  # resumed: the done slide is skipped, the broken one still reported
    assert "0 predicted, 1 already done, 1 failed" in capsys.readouterr().err
    assert (out_dir / "C2_x4.h5ad").stat().st_mtime_ns == before


def test_cohort_rank_takes_its_share(her2st_slide, tmp_path, monkeypatch, capsys):
    """Under torchrun (RANK/WORLD_SIZE) each rank predicts every WORLD_SIZE-th slide."""
    p2, _ = her2st_slide("C2", 4)
    p4, _ = her2st_slide("C4", 4)
    out_dir = tmp_path / "preds"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["predict", str(p2), str(p4), "--out-dir", str(out_dir), "--device", "cpu", "--samples", "1",
                 "--steps", "2", "--quiet"]) == 0
    assert [p.name for p in out_dir.iterdir()] == ["C4_x4.h5ad"]
