"""The npe2 manifest: valid, shipped twice byte for byte, every command importable."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG_YAML = REPO / "napari_flag" / "napari.yaml"
ROOT_YAML = REPO / "napari.yaml"

WIDGETS = {"Predict expression", "Gene maps", "Moran's I", "Metrics", "Regions", "Train FLAG", "Export"}


def test_root_and_package_manifests_are_identical():
    assert PKG_YAML.read_bytes() == ROOT_YAML.read_bytes()


def test_manifest_validates_and_lists_contributions():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(PKG_YAML)
    assert pm.name == "napari-flag"
    c = pm.contributions
    assert {w.display_name for w in c.widgets} == WIDGETS
    assert {s.key for s in c.sample_data} == {f"her2st-C{i}" for i in range(2, 7)}
    (reader,) = c.readers
    assert reader.accepts_directories
    assert {"*.h5ad", "*.tif", "*.zarr", "*.jpg", "*.png"} <= set(reader.filename_patterns)


def test_every_command_resolves():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(PKG_YAML)
    for cmd in pm.contributions.commands:
        mod, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(importlib.import_module(mod), attr)), cmd.python_name


def test_installed_entry_point_serves_this_manifest():
    npe2 = pytest.importorskip("npe2")
    installed = npe2.PluginManifest.from_distribution("napari-flag")
    here = npe2.PluginManifest.from_file(PKG_YAML)
    assert installed.contributions == here.contributions
