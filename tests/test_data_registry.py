"""Dataset registry: ids, cache lookups, offline behaviour, hash checks."""
from __future__ import annotations

import shutil
from pathlib import Path

import pooch
import pytest

from napari_flag.data import load_sample, registry
from napari_flag.data.registry import (
    ENV_DATA_DIR,
    ENV_OFFLINE,
    cache_dir,
    dataset_info,
    fetch_her2st,
    list_datasets,
)
from napari_flag.errors import FlagInputError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt is recorded and fails, as it would offline."""
    calls = []

    def refuse(url, *a, **k):
        calls.append(url)
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(pooch, "retrieve", refuse)
    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", lambda *a, **k: refuse("http"))
    monkeypatch.delenv(ENV_OFFLINE, raising=False)
    return calls


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_list_datasets():
    ids = list_datasets()
    assert len(ids) == 36
    assert ids[0] == "her2st:A1" and ids[-1] == "her2st:H3"
    assert "her2st:C2" in ids and len(set(ids)) == 36
    info = dataset_info("HER2ST:c2")
    assert info.section == "C2" and info.patient == "C"
    assert info.image == "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
    assert len(info.counts_sha256) == 64
    assert info.url(info.counts) == "https://raw.githubusercontent.com/almaan/her2st/master/data/ST-cnts/C2.tsv.gz"


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(ENV_DATA_DIR)
    assert cache_dir() == Path(pooch.os_cache("napari-flag"))


def test_shared_folder_is_a_valid_cache(monkeypatch, her2st_dir, no_network):
    monkeypatch.setenv(ENV_DATA_DIR, str(her2st_dir))
    before = _tree(her2st_dir)
    files = fetch_her2st("C2")
    assert files["counts"] == her2st_dir / "ST-cnts/C2.tsv.gz"
    assert files["spots"] == her2st_dir / "ST-spotfiles/C2_selection.tsv"
    assert files["image"] == her2st_dir / "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
    s = load_sample("her2st:C3")
    assert s.n_spots == 180
    assert no_network == []  # present and good: the network is never tried
    assert _tree(her2st_dir) == before  # and nothing is written into the cache


@pytest.mark.parametrize("bad", ["her2st:Z9", "her2st:", "foo:C2", "her2st:C22"])
def test_unknown_dataset_id(bad):
    with pytest.raises(FlagInputError) as e:
        load_sample(bad)
    msg = str(e.value)
    assert "\n" not in msg and bad in msg
    assert "her2st:<section>" in msg and "A1" in msg and "H3" in msg


def test_missing_file_offline_names_file_and_variable(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(FlagInputError) as e:
        load_sample("her2st:C2")
    msg = str(e.value)
    assert "\n" not in msg
    assert "ST-cnts/C2.tsv.gz" in msg and ENV_DATA_DIR in msg
    assert len(no_network) == 1  # one attempt, which failed
    assert list(tmp_path.iterdir()) == []  # a failed download leaves no trace


def test_offline_switch_skips_network(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_OFFLINE, "1")
    with pytest.raises(FlagInputError, match=ENV_DATA_DIR):
        fetch_her2st("A1")
    assert no_network == []


def test_corrupt_file_is_a_hash_error(monkeypatch, tmp_path, her2st_copy, no_network):
    her2st_copy(tmp_path, "ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv", corrupt="ST-cnts/C2.tsv.gz")
    counts = tmp_path / "ST-cnts/C2.tsv.gz"
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(FlagInputError) as e:
        load_sample("her2st:C2")
    msg = str(e.value)
    assert "hash mismatch" in msg and str(counts) in msg and "\n" not in msg
    assert no_network == []  # a bad file is reported, never silently replaced


def test_counts_without_image_load_with_warning(monkeypatch, tmp_path, her2st_copy, no_network):
    her2st_copy(tmp_path, "ST-cnts/C3.tsv.gz", "ST-spotfiles/C3_selection.tsv")
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    with pytest.warns(UserWarning, match="without the H&E image"):
        s = load_sample("her2st:C3")
    assert s.n_spots == 180 and s.image is None
    assert not (tmp_path / "ST-imgs").exists()


def test_download_goes_through_pooch_into_the_cache(monkeypatch, tmp_path, her2st_dir):
    """A successful download lands at <cache>/<relpath>, verified by hash."""
    seen = {}

    def fake_retrieve(url, known_hash=None, fname=None, path=None, **kw):
        rel = url.split("/data/", 1)[1]
        seen[rel] = known_hash
        dst = Path(path) / fname
        shutil.copy(her2st_dir / rel, dst)
        return str(dst)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    files = fetch_her2st("C4")
    assert files["counts"] == tmp_path / "ST-cnts/C4.tsv.gz" and files["counts"].is_file()
    assert files["image"].is_file()
    assert seen["ST-cnts/C4.tsv.gz"] == "sha256:" + dataset_info("her2st:C4").counts_sha256
    assert registry.sha256sum(files["image"]) == dataset_info("her2st:C4").image_sha256
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]
