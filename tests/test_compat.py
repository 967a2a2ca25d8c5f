"""Slide-vs-model checks on real data: the Visium mouse fixture and HER2ST against the bundled human panel."""
from __future__ import annotations

import dataclasses
import json

import pytest

from napari_flag.compat import Issue, check_compatibility, guess_species, raise_for_errors
from napari_flag.data import load_sample, with_pixel_size
from napari_flag.errors import FlagInputError


@pytest.fixture(scope="module")
def model_genes():
    import torch

    from napari_flag import resources_dir

    return list(torch.load(resources_dir() / "flag_default.pt", weights_only=True, map_location="cpu")["genes"])


def test_guess_species():
    assert guess_species(["ERBB2", "ACTB", "C1orf112", "MT-CO1"]) == "human"
    assert guess_species(["Erbb2", "Actb", "mt-Co1", "4930444P10Rik"]) == "mouse"
    assert guess_species(["ENSMUSG00000051951", "ENSMUSG00000025900"]) == "mouse"
    assert guess_species(["ERBB2", "Actb"]) is None and guess_species(["1", "2"]) is None


def test_visium_mouse_against_human_panel(visium_dir, model_genes):
    visium = load_sample(visium_dir)
    issues = check_compatibility(visium, model_genes, patch_um=112.0, patch_px=224)
    by = {i.code: i for i in issues}
    assert by["gene_share"].level == "warning"
    assert by["gene_share"].message.startswith(f"0 of {len(model_genes)} model genes are measured here")
    assert by["species"].level == "warning" and "mouse" in by["species"].message
    # the fixture's image is Space Ranger's low-res PNG, about 11 um per pixel
    assert by["patch_too_small"].level == "error"
    assert by["patch_too_small"].message.startswith("patch would be ")
    json.dumps([i.to_dict() for i in issues])
    with pytest.raises(FlagInputError) as e:
        raise_for_errors(issues, visium.source)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{visium.source}: patch would be")


def test_her2st_against_its_panel(her2st_slide, model_genes):
    _, m = her2st_slide("C2", 1)
    assert check_compatibility(m, model_genes, 112.0, 224, tissue_fraction=0.17) == []
    _, coarse = her2st_slide("C2", 8)
    assert [i.code for i in check_compatibility(coarse, model_genes, 112.0, 224)] == ["coarse_image"]
    issues = check_compatibility(coarse, model_genes, 112.0, 224, tissue_fraction=0.0)
    assert Issue("no_tissue", "error", "no tissue found") in issues
    # an image-only slide: no gene checks; an unknown pixel size with no spots to stand in is an error
    blank = dataclasses.replace(coarse, adata=coarse.adata[:0, :0].copy(), pixel_size_um=None,
                                spot_diameter_px=float("nan"))
    got = [(i.code, i.level) for i in check_compatibility(blank, model_genes, 112.0, 224)]
    assert got == [("pixel_size_unknown", "error")]


def test_patch_smaller_than_16_px_is_an_input_error(her2st_slide, model_genes):
    _, m = her2st_slide("C2", 8)
    s = with_pixel_size(m, m.pixel_size_um * 2)  # as if scanned at 11 um/px
    with pytest.raises(FlagInputError) as e:
        raise_for_errors(check_compatibility(s, model_genes, 112.0, 224), s.source)
    assert str(e.value).startswith(f"{s.source}: patch would be 10 px")
