"""Readers on broken input: a clear one-line error naming the file, and nothing written.

Every broken input is made here from the real shared data (copied to a
temporary folder first, then damaged), so the corpus follows the real formats.
The fuzzing at the end mutates small real files at random: a reader must
either return a valid sample or raise ``FlagInputError``, never anything else.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pooch
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from napari_flag.data import Sample, image_sample, load_sample
from napari_flag.data.images import ENV_PYRAMID_DIR
from napari_flag.data.registry import ENV_DATA_DIR, ENV_OFFLINE
from napari_flag.data.spaceranger import read_spaceranger
from napari_flag.data.st_legacy import read_st_legacy
from napari_flag.errors import FlagInputError

C2_COUNTS = "ST-cnts/C2.tsv.gz"
C2_SPOTS = "ST-spotfiles/C2_selection.tsv"
C2_IMAGE = "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pyramids")


@pytest.fixture(autouse=True)
def _env(monkeypatch, her2st_dir, pyramids):
    """Shared data as the dataset cache, a scratch pyramid cache that must stay empty, no network."""
    monkeypatch.setenv(ENV_DATA_DIR, str(her2st_dir))
    monkeypatch.setenv(ENV_PYRAMID_DIR, str(pyramids))
    monkeypatch.setenv(ENV_OFFLINE, "1")

    def refuse(*a, **k):
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(pooch, "retrieve", refuse)
    yield
    assert not any(pyramids.iterdir()), "a failed or spot-only read wrote a pyramid"


def _copy(src: Path, dst: Path) -> Path:
    """Copy without the (read-only) mode of the shared files."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def _fails(fn, *names: str, problem: str, root: Path | None = None) -> str:
    """``fn()`` raises FlagInputError, one line, naming every ``names`` and matching ``problem``;
    and the folder ``root`` (the damaged input) is left exactly as it was."""
    before = _tree(root) if root is not None else None
    with pytest.raises(FlagInputError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    for n in names:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert re.search(problem, msg, re.I), f"{problem!r} not in {msg!r}"
    if root is not None:
        assert _tree(root) == before, "the failed read created or changed files"
    return msg


# ---------------------------------------------------------------------------
# legacy ST (HER2ST layout)


@pytest.fixture(scope="module")
def c2_tables(her2st_dir):
    counts = pd.read_csv(her2st_dir / C2_COUNTS, sep="\t", index_col=0)
    spots = pd.read_csv(her2st_dir / C2_SPOTS, sep="\t")
    return counts, spots


@pytest.fixture
def st(tmp_path, c2_tables):
    """A small real section: all C2 spots, 40 genes, plain TSV; damage it, then read it."""
    counts, spots = c2_tables
    d = tmp_path / "st"
    d.mkdir()
    counts.iloc[:, :40].to_csv(d / "C2.tsv", sep="\t")
    spots.to_csv(d / "C2_selection.tsv", sep="\t", index=False)
    return d


def _read_st(d: Path, image: Path | None = None):
    return lambda: read_st_legacy(d / "C2.tsv", d / "C2_selection.tsv", image)


def _edit_counts(d: Path, fn) -> None:
    df = pd.read_csv(d / "C2.tsv", sep="\t", index_col=0)
    df = fn(df)
    df.to_csv(d / "C2.tsv", sep="\t")


def _edit_spots(d: Path, fn) -> None:
    df = pd.read_csv(d / "C2_selection.tsv", sep="\t")
    fn(df).to_csv(d / "C2_selection.tsv", sep="\t", index=False)


def test_st_small_section_reads(st):
    s = _read_st(st)()
    assert s.n_spots == 187 and s.adata.n_vars == 40


def test_st_missing_counts(st):
    (st / "C2.tsv").unlink()
    _fails(_read_st(st), "C2.tsv", problem="not found", root=st)


def test_st_truncated_counts_gz(tmp_path, her2st_dir):
    counts = tmp_path / "C2.tsv.gz"
    counts.write_bytes((her2st_dir / C2_COUNTS).read_bytes()[:300_000])
    spots = _copy(her2st_dir / C2_SPOTS, tmp_path / "C2_selection.tsv")
    _fails(lambda: read_st_legacy(counts, spots), str(counts), problem="truncated", root=tmp_path)


def test_st_truncated_plain_counts(st):
    """A plain table cut mid-row leaves empty cells: NaN counts, not a silent zero."""
    raw = (st / "C2.tsv").read_bytes()
    (st / "C2.tsv").write_bytes(raw[: len(raw) - 37])
    _fails(_read_st(st), "C2.tsv", problem="NaN", root=st)


def test_st_empty_counts(st):
    (st / "C2.tsv").write_bytes(b"")
    _fails(_read_st(st), "C2.tsv", problem="unreadable|empty", root=st)
    (st / "C2.tsv").write_text("\tGENE1\tGENE2\n")
    _fails(_read_st(st), "C2.tsv", problem="empty counts", root=st)


@pytest.mark.parametrize(
    "value, problem",
    [(np.nan, "NaN"), (-3, "negative"), (np.inf, "infinite"), ("lots", "non-numeric")],
)
def test_st_bad_count_values(st, value, problem):
    def damage(df):
        df = df.astype(object) if isinstance(value, str) else df.astype(float)
        df.iloc[5, 7] = value
        return df

    _edit_counts(st, damage)
    _fails(_read_st(st), "C2.tsv", problem=problem, root=st)


def test_st_duplicate_spot_ids(st):
    _edit_counts(st, lambda df: pd.concat([df, df.iloc[:1]]))
    _fails(_read_st(st), "C2.tsv", problem="duplicate spot id", root=st)


@pytest.mark.parametrize("col, value", [("pixel_x", np.nan), ("pixel_y", np.inf), ("pixel_x", -np.inf)])
def test_st_non_finite_coordinates(st, col, value):
    def damage(df):
        df[col] = df[col].astype(float)
        df.loc[10, col] = value
        return df

    _edit_spots(st, damage)
    _fails(_read_st(st), "C2_selection.tsv", problem="NaN or infinite coordinates", root=st)


def test_st_non_numeric_coordinates(st):
    def damage(df):
        df["pixel_y"] = df["pixel_y"].astype(object)
        df.loc[3, "pixel_y"] = "12,5"
        return df

    _edit_spots(st, damage)
    _fails(_read_st(st), "C2_selection.tsv", "pixel_y", problem="non-numeric", root=st)


def test_st_nan_array_position(st):
    def damage(df):
        df["x"] = df["x"].astype(float)
        df.loc[0, "x"] = np.nan
        return df

    _edit_spots(st, damage)
    _fails(_read_st(st), "C2_selection.tsv", problem="array position", root=st)


def test_st_missing_column(st):
    _edit_spots(st, lambda df: df.drop(columns="pixel_y"))
    _fails(_read_st(st), "C2_selection.tsv", problem="lacks column.*pixel_y", root=st)


def test_st_barcodes_match_no_position(st):
    _edit_spots(st, lambda df: df.assign(x=df["x"] + 100))
    _fails(_read_st(st), "C2.tsv", "C2_selection.tsv", problem="no spots matched", root=st)


def test_st_barcodes_match_only_a_few(st):
    # keep the first 20 spots at their place, move the rest off the array
    _edit_spots(st, lambda df: df.assign(x=np.where(np.arange(len(df)) < 20, df["x"], df["x"] + 100)))
    msg = _fails(_read_st(st), "C2.tsv", "C2_selection.tsv", problem="only 20 of 187", root=st)
    assert "same sample" in msg


def test_st_zero_selected_spots(st):
    _edit_spots(st, lambda df: df.assign(selected=0))
    _fails(_read_st(st), "C2_selection.tsv", problem="no spots selected", root=st)


def test_st_spots_outside_image(st, her2st_dir):
    img = _copy(her2st_dir / C2_IMAGE, st / "C2.jpg")
    _edit_spots(st, lambda df: df.assign(pixel_x=df["pixel_x"] + 20_000))
    _fails(_read_st(st, img), "C2_selection.tsv", "C2.jpg", problem="187 of 187 spots lie outside", root=st)


def test_st_few_spots_outside_image_warn(st, her2st_dir):
    img = _copy(her2st_dir / C2_IMAGE, st / "C2.jpg")

    def damage(df):
        df["pixel_y"] = df["pixel_y"].astype(float)
        df.loc[:2, "pixel_y"] = -500.0
        return df

    _edit_spots(st, damage)
    with pytest.warns(UserWarning, match="3 of 187 spots lie outside"):
        s = _read_st(st, img)()
    assert s.n_spots == 187  # kept: their patches read as white background


def test_st_truncated_jpeg(st, her2st_dir):
    img = st / "C2.jpg"
    img.write_bytes((her2st_dir / C2_IMAGE).read_bytes()[:1_500_000])
    _fails(_read_st(st, img), "C2.jpg", problem="truncated JPEG", root=st)


def _jpeg_segment(raw: bytes, marker: int) -> int:
    """Offset of the first segment ``0xFF marker`` in the JPEG header (walking segment lengths)."""
    j = 2
    while raw[j] == 0xFF and raw[j + 1] != 0xDA:
        if raw[j + 1] == marker:
            return j
        j += 2 + int.from_bytes(raw[j + 2 : j + 4], "big")
    raise AssertionError("segment not found")


def test_st_jpeg_fails_on_first_pixel_access(st, her2st_dir, pyramids):
    """Header and end marker fine but a broken Huffman table: opening is lazy, decoding fails cleanly."""
    raw = bytearray((her2st_dir / C2_IMAGE).read_bytes())
    dht = _jpeg_segment(raw, 0xC4)
    raw[dht + 5 : dht + 21] = b"\xff" * 16  # impossible code counts
    img = st / "C2.jpg"
    img.write_bytes(bytes(raw))
    s = _read_st(st, img)()  # only the header is read now
    assert min(s.image.shape[:2]) > 9000
    x, y = s.coords[0]
    _fails(lambda: s.image.read_region(x - 64, y - 64, 128, 32), "C2.jpg", problem="cannot decode", root=st)
    assert not any(pyramids.iterdir())


def test_st_empty_image(st):
    (st / "C2.jpg").write_bytes(b"")
    _fails(_read_st(st, st / "C2.jpg"), "C2.jpg", problem="empty file", root=st)


# ---------------------------------------------------------------------------
# dataset ids and the dataset cache


def test_unknown_dataset_id():
    for bad in ("her2st:Z9", "tcga:C2"):
        msg = _fails(lambda: load_sample(bad), bad, problem="unknown dataset id")
        assert "her2st:<section>" in msg


@pytest.mark.parametrize("which", [C2_COUNTS, C2_SPOTS, C2_IMAGE])
def test_cache_file_with_wrong_hash(tmp_path, her2st_dir, monkeypatch, which):
    cache = tmp_path / "cache"
    for rel in (C2_COUNTS, C2_SPOTS, C2_IMAGE):
        _copy(her2st_dir / rel, cache / rel)
    target = cache / which
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    monkeypatch.setenv(ENV_DATA_DIR, str(cache))
    _fails(lambda: load_sample("her2st:C2"), str(target), problem="hash mismatch", root=cache)


def test_dataset_file_missing_offline(tmp_path, her2st_dir, monkeypatch):
    cache = tmp_path / "cache"
    _copy(her2st_dir / C2_SPOTS, cache / C2_SPOTS)
    monkeypatch.setenv(ENV_DATA_DIR, str(cache))
    _fails(lambda: load_sample("her2st:C2"), "C2.tsv.gz", problem="not in the dataset cache", root=cache)


# ---------------------------------------------------------------------------
# Visium (Space Ranger outs/)


@pytest.fixture
def outs(tmp_path, visium_dir) -> Path:
    d = tmp_path / "outs"
    shutil.copytree(visium_dir, d, copy_function=shutil.copyfile)
    return d


def _sf(outs: Path) -> Path:
    return outs / "spatial/scalefactors_json.json"


def _pos(outs: Path) -> Path:
    return outs / "spatial/tissue_positions_list.csv"


def _edit_sf(outs: Path, fn) -> None:
    sf = json.loads(_sf(outs).read_text())
    fn(sf)
    _sf(outs).write_text(json.dumps(sf))


def _edit_pos(outs: Path, fn) -> None:
    df = pd.read_csv(_pos(outs), header=None)
    fn(df).to_csv(_pos(outs), header=False, index=False)


def _load(outs: Path):
    return lambda: load_sample(outs)


@pytest.mark.parametrize("key", ["spot_diameter_fullres", "tissue_lowres_scalef"])
def test_visium_scalefactor_missing_key(outs, key):
    _edit_sf(outs, lambda sf: sf.pop(key))
    _fails(_load(outs), "scalefactors_json.json", key, problem="missing key", root=outs)


@pytest.mark.parametrize("value", ["big", None, -1.0, 0, True, [96.3]])
def test_visium_scalefactor_not_a_number(outs, value):
    _edit_sf(outs, lambda sf: sf.update(spot_diameter_fullres=value))
    _fails(_load(outs), "scalefactors_json.json", "spot_diameter_fullres", problem="positive number|missing key", root=outs)


def test_visium_scalefactors_not_json(outs):
    _sf(outs).write_text(_sf(outs).read_text()[:40])
    _fails(_load(outs), "scalefactors_json.json", problem="not valid JSON", root=outs)
    _sf(outs).write_text("[1, 2]")
    _fails(_load(outs), "scalefactors_json.json", problem="not a JSON object", root=outs)


def test_visium_truncated_h5(outs):
    h5 = outs / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[:30_000])
    _fails(_load(outs), "filtered_feature_bc_matrix.h5", problem="truncated", root=outs)


def test_visium_empty_h5(outs):
    (outs / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    _fails(_load(outs), "filtered_feature_bc_matrix.h5", problem="unreadable", root=outs)


def test_visium_h5_without_barcodes(outs):
    h5 = outs / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r+") as f:
        m = f["matrix"]
        n_genes = int(m["shape"][0])
        for name in ("barcodes", "data", "indices", "indptr", "shape"):
            del m[name]
        m.create_dataset("barcodes", data=np.array([], dtype="S18"))
        m.create_dataset("data", data=np.array([], dtype=np.int32))
        m.create_dataset("indices", data=np.array([], dtype=np.int32))
        m.create_dataset("indptr", data=np.array([0], dtype=np.int32))
        m.create_dataset("shape", data=np.array([n_genes, 0], dtype=np.int32))
    _fails(_load(outs), "filtered_feature_bc_matrix.h5", problem="no barcodes|unreadable", root=outs)


@pytest.mark.parametrize("value, problem", [(-5, "negative"), (np.nan, "NaN"), (np.inf, "infinite")])
def test_visium_bad_counts(outs, value, problem):
    h5 = outs / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r+") as f:
        data = f["matrix/data"][...].astype(np.float32)
        data[100] = value
        del f["matrix/data"]
        f["matrix"].create_dataset("data", data=data)
    _fails(_load(outs), "filtered_feature_bc_matrix.h5", problem=problem, root=outs)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_visium_non_finite_coordinates(outs, value):
    def damage(df):
        df[5] = df[5].astype(float)
        df.loc[df[1] == 1, 5] = df.loc[df[1] == 1, 5].where(np.arange((df[1] == 1).sum()) != 7, value)
        return df

    _edit_pos(outs, damage)
    _fails(_load(outs), "tissue_positions_list.csv", problem="NaN or infinite coordinates", root=outs)


def test_visium_non_numeric_positions(outs):
    def damage(df):
        df[4] = df[4].astype(object)
        df.loc[df[1] == 1, 4] = "12px"
        return df

    _edit_pos(outs, damage)
    _fails(_load(outs), "tissue_positions_list.csv", "pxl_row_in_fullres", problem="non-numeric", root=outs)


def test_visium_barcodes_match_no_position(outs):
    _edit_pos(outs, _rename_barcodes)
    _fails(_load(outs), "filtered_feature_bc_matrix.h5", "tissue_positions_list.csv", problem="no spots matched", root=outs)


def _rename_barcodes(df, keep: int = 0):
    df = df.copy()
    idx = np.arange(len(df)) >= keep
    df.loc[idx, 0] = "X" + df.loc[idx, 0].astype(str)
    return df


def test_visium_barcodes_match_only_a_few(outs):
    pos = pd.read_csv(_pos(outs), header=None)
    in_t = pos.index[pos[1] == 1]
    pos.loc[in_t[300:], 0] = "X" + pos.loc[in_t[300:], 0].astype(str)
    pos.to_csv(_pos(outs), header=False, index=False)
    msg = _fails(_load(outs), "filtered_feature_bc_matrix.h5", problem=r"only 300 of 2695", root=outs)
    assert "tissue_positions_list.csv" in msg


def test_visium_duplicate_barcodes(outs):
    _edit_pos(outs, lambda df: pd.concat([df, df.iloc[:2]]))
    _fails(_load(outs), "tissue_positions_list.csv", problem="duplicate barcode", root=outs)


def test_visium_zero_spots_under_tissue(outs):
    _edit_pos(outs, lambda df: df.replace({1: {1: 0}}))
    _fails(_load(outs), "tissue_positions_list.csv", problem="no spots under tissue", root=outs)


def test_visium_spots_outside_image(outs):
    # a scale factor ten times too large shrinks the image's full-res extent under the spots
    _edit_sf(outs, lambda sf: sf.update(tissue_lowres_scalef=sf["tissue_lowres_scalef"] * 10))
    _fails(
        _load(outs), "tissue_positions_list.csv", "tissue_lowres_image.png", problem="spots lie outside", root=outs
    )


def test_visium_truncated_png(outs):
    png = outs / "spatial/tissue_lowres_image.png"
    png.write_bytes(png.read_bytes()[:200_000])
    _fails(_load(outs), "tissue_lowres_image.png", problem="truncated|unreadable", root=outs)


def test_visium_corrupt_png_chunk(outs):
    png = outs / "spatial/tissue_lowres_image.png"
    raw = bytearray(png.read_bytes())
    raw[len(raw) // 2] ^= 0x55  # inside the image data: the chunk CRC no longer matches
    png.write_bytes(bytes(raw))
    _fails(_load(outs), "tissue_lowres_image.png", problem="unreadable|cannot decode", root=outs)


# ---------------------------------------------------------------------------
# h5ad and images


@pytest.fixture(scope="module")
def visium_adata(visium_dir):
    return load_sample(visium_dir).adata


def test_h5ad_without_spatial(tmp_path, visium_adata):
    a = visium_adata.copy()
    del a.obsm["spatial"]
    a.write_h5ad(tmp_path / "v.h5ad")
    _fails(lambda: load_sample(tmp_path / "v.h5ad"), "v.h5ad", problem=r"no obsm\['spatial'\]", root=tmp_path)


def test_h5ad_bad_values(tmp_path, visium_adata):
    a = visium_adata.copy()
    a.obsm["spatial"][4, 1] = np.nan
    a.write_h5ad(tmp_path / "nan_xy.h5ad")
    _fails(lambda: load_sample(tmp_path / "nan_xy.h5ad"), "nan_xy.h5ad", problem="NaN or infinite", root=tmp_path)

    a = visium_adata.copy()
    X = a.X.toarray().astype(np.float32)
    X[0, 0] = np.nan
    a.X = sp.csr_matrix(X)
    a.write_h5ad(tmp_path / "nan_x.h5ad")
    _fails(lambda: load_sample(tmp_path / "nan_x.h5ad"), "nan_x.h5ad", problem="NaN", root=tmp_path)

    a = visium_adata[:0].copy()
    a.write_h5ad(tmp_path / "zero.h5ad")
    _fails(lambda: load_sample(tmp_path / "zero.h5ad"), "zero.h5ad", problem="no spots", root=tmp_path)


def test_h5ad_scaled_x_falls_back_to_counts_layer(tmp_path, visium_adata):
    a = visium_adata.copy()
    a.layers["counts"] = a.X.copy()
    X = a.X.toarray().astype(np.float32)
    a.X = (X - X.mean(0)) / (X.std(0) + 1)  # scaled: negative values
    a.write_h5ad(tmp_path / "scaled.h5ad")
    s = load_sample(tmp_path / "scaled.h5ad")
    assert (s.adata.X != visium_adata.X).nnz == 0
    del a.layers["counts"]
    a.write_h5ad(tmp_path / "scaled_only.h5ad")
    _fails(lambda: load_sample(tmp_path / "scaled_only.h5ad"), "scaled_only.h5ad", problem="negative", root=tmp_path)


def test_h5ad_truncated(tmp_path, visium_adata):
    visium_adata.write_h5ad(tmp_path / "full.h5ad")
    raw = (tmp_path / "full.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(raw[: len(raw) // 3])
    _fails(lambda: load_sample(tmp_path / "cut.h5ad"), "cut.h5ad", problem="unreadable or truncated", root=tmp_path)


@pytest.fixture(scope="module")
def lowres(visium_dir) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(visium_dir / "spatial/tissue_lowres_image.png").convert("RGB"))


def test_truncated_tiff(tmp_path, lowres):
    import tifffile

    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, lowres, tile=(128, 128), compression="zlib", photometric="rgb")
    raw = path.read_bytes()
    # tifffile writes the image data before the IFD's tile tables: cut into the data, keep the header
    path.write_bytes(raw[: len(raw) // 2])
    _fails(lambda: load_sample(path), "slide.tif", problem="truncated|unreadable|cannot decode", root=tmp_path)


def test_tiff_corrupt_tile_data(tmp_path, lowres):
    import tifffile

    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, lowres, tile=(128, 128), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        off = int(tf.pages[0].dataoffsets[0])
    raw = bytearray(path.read_bytes())
    raw[off : off + 64] = b"\0" * 64
    path.write_bytes(bytes(raw))
    _fails(lambda: load_sample(path), "slide.tif", problem="cannot decode", root=tmp_path)


def test_empty_and_garbage_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _fails(lambda: load_sample(tmp_path / "empty.png"), "empty.png", problem="empty file", root=tmp_path)
    (tmp_path / "noise.jpg").write_bytes(bytes(range(256)) * 8)
    _fails(lambda: load_sample(tmp_path / "noise.jpg"), "noise.jpg", problem="unreadable", root=tmp_path)
    (tmp_path / "empty.tif").write_bytes(b"")
    _fails(lambda: load_sample(tmp_path / "empty.tif"), "empty.tif", problem="empty file", root=tmp_path)


# ---------------------------------------------------------------------------
# fuzzing: mutated real files -> a valid sample or FlagInputError, nothing else

_TOKENS = ["nan", "NaN", "-1", "-0.5", "inf", "-inf", "", "abc", "1e400", "0", '"', ",", "\t", "\n", "null", "[]", "{}"]


@hs.composite
def mutation(draw, text: bool):
    """One random damage: truncation, byte flips, a deleted or inserted span, or (text) a replaced token."""
    kinds = ["truncate", "flip", "delete", "insert"] + (["token", "token"] if text else [])
    kind = draw(hs.sampled_from(kinds))
    frac = draw(hs.floats(0.0, 1.0))
    if kind == "truncate":
        return ("truncate", frac, None)
    if kind == "flip":
        return ("flip", frac, draw(hs.lists(hs.tuples(hs.floats(0, 1), hs.integers(0, 255)), min_size=1, max_size=8)))
    if kind == "delete":
        return ("delete", frac, draw(hs.integers(1, 400)))
    if kind == "insert":
        return ("insert", frac, draw(hs.binary(min_size=1, max_size=32)))
    return ("token", frac, draw(hs.sampled_from(_TOKENS)))


def _mutate(data: bytes, m) -> bytes:
    kind, frac, arg = m
    n = len(data)
    at = min(int(frac * n), n)
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        b = bytearray(data)
        for f, v in arg:
            b[min(int(f * n), n - 1)] = v
        return bytes(b)
    if kind == "delete":
        return data[:at] + data[at + arg :]
    if kind == "insert":
        return data[:at] + arg + data[at:]
    tokens = list(re.finditer(rb"-?[0-9][0-9.eE+-]*", data))
    if not tokens:
        return data
    t = tokens[min(int(frac * len(tokens)), len(tokens) - 1)]
    return data[: t.start()] + arg.encode() + data[t.end() :]


def _assert_valid(s) -> None:
    assert isinstance(s, Sample)
    assert s.n_spots > 0
    xy = s.coords
    assert xy.shape == (s.n_spots, 2) and np.isfinite(xy).all()
    X = s.adata.X
    vals = X.data if sp.issparse(X) else np.asarray(X)
    assert np.isfinite(vals).all() and (vals >= 0).all()
    assert s.adata.obs_names.is_unique


def _read_or_input_error(fn, check=_assert_valid):
    """Either a valid result or FlagInputError (one line); any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except FlagInputError as exc:
        assert "\n" not in str(exc)
        return None
    check(out)
    return out


@pytest.fixture(scope="module")
def st_small(tmp_path_factory, c2_tables) -> dict:
    counts, spots = c2_tables
    keep = counts.index[:30]
    spots = spots.assign(_id=spots["x"].astype(str) + "x" + spots["y"].astype(str))
    d = tmp_path_factory.mktemp("st_small")
    counts.loc[keep].iloc[:, :25].to_csv(d / "counts.tsv", sep="\t")
    spots[spots["_id"].isin(keep)].drop(columns="_id").to_csv(d / "spots.tsv", sep="\t", index=False)
    return {"counts": (d / "counts.tsv").read_bytes(), "spots": (d / "spots.tsv").read_bytes()}


@FUZZ
@given(which=hs.sampled_from(["counts", "spots"]), m=mutation(text=True))
def test_fuzz_st_legacy(st_small, which, m):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, data in st_small.items():
            (d / f"{name}.tsv").write_bytes(_mutate(data, m) if name == which else data)
        _read_or_input_error(lambda: read_st_legacy(d / "counts.tsv", d / "spots.tsv"))
        assert sorted(p.name for p in d.iterdir()) == ["counts.tsv", "spots.tsv"]


@pytest.fixture(scope="module")
def visium_small(tmp_path_factory, visium_dir) -> Path:
    d = tmp_path_factory.mktemp("visium_small") / "outs"
    shutil.copytree(visium_dir, d, copy_function=shutil.copyfile)
    return d


@FUZZ
@given(which=hs.sampled_from(["tissue_positions_list.csv", "scalefactors_json.json"]), m=mutation(text=True))
def test_fuzz_spaceranger(visium_small, which, m):
    with tempfile.TemporaryDirectory() as tmp:
        outs = Path(tmp) / "outs"
        (outs / "spatial").mkdir(parents=True)
        for f in ("filtered_feature_bc_matrix.h5", "spatial/tissue_lowres_image.png"):
            (outs / f).symlink_to(visium_small / f)
        for f in ("tissue_positions_list.csv", "scalefactors_json.json"):
            data = (visium_small / "spatial" / f).read_bytes()
            (outs / "spatial" / f).write_bytes(_mutate(data, m) if f == which else data)
        before = _tree(outs)
        _read_or_input_error(lambda: read_spaceranger(outs))
        assert _tree(outs) == before


@pytest.fixture(scope="module")
def small_images(tmp_path_factory, lowres) -> dict:
    import tifffile
    from PIL import Image

    d = tmp_path_factory.mktemp("small_images")
    crop = np.ascontiguousarray(lowres[200:328, 200:328])
    Image.fromarray(crop).save(d / "a.png")
    Image.fromarray(crop).save(d / "a.jpg", quality=85)
    tifffile.imwrite(d / "a.tif", crop, tile=(64, 64), compression="zlib", photometric="rgb")
    return {ext: (d / f"a.{ext}").read_bytes() for ext in ("png", "jpg", "tif")}


def _check_image(s) -> None:
    assert isinstance(s, Sample) and s.n_spots == 0
    px = np.asarray(s.image.levels[0][...])  # force decoding: errors here must be FlagInputError too
    assert px.ndim == 3 and px.shape[2] >= 3 and px.shape[:2] == tuple(s.image.shape[:2])


@FUZZ
@given(ext=hs.sampled_from(["png", "jpg", "tif"]), m=mutation(text=False))
def test_fuzz_images(small_images, ext, m):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img.{ext}"
        path.write_bytes(_mutate(small_images[ext], m))

        def read():
            s = image_sample(path)
            _check_image(s)
            return s

        _read_or_input_error(read, check=lambda s: None)
        assert [p.name for p in Path(tmp).iterdir()] == [path.name]
