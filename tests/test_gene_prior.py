"""Gene prior tables: bundled GO table, user tables, panel lookup, one-line errors."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_flag.errors import FlagInputError
from napari_flag.gene_prior import GenePrior, default_gene_prior_path, load_gene_prior

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prior() -> GenePrior:
    return load_gene_prior()


def _cos(p: GenePrior, a: str, b: str) -> float:
    x, y = p.matrix[p.row(a)], p.matrix[p.row(b)]
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _small_table(n=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    syms = ["ERBB2", "ESR1", "KRT19", "ACTB", "GAPDH", "CD3E"][:n]
    return syms, rng.normal(size=(n, d)).astype(np.float32)


# --- bundled table -----------------------------------------------------------------

def test_bundled_table_shape_and_metadata(prior):
    assert default_gene_prior_path().is_file()
    assert default_gene_prior_path().stat().st_size <= 20e6
    assert prior.name == "go" and prior.dim == 128
    assert len(prior) > 15000 and prior.matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(prior.matrix, axis=1), 1.0, atol=1e-2)
    assert prior.meta["deb_package"] == "r-bioc-org.hs.eg.db" and prior.meta["dim"] == 128
    assert load_gene_prior("go") is prior and load_gene_prior(None) is prior  # cached
    assert not prior.matrix.flags.writeable  # shared between callers


def test_bundled_covers_well_known_genes(prior):
    genes = ["ERBB2", "ESR1", "KRT19", "ACTB", "GAPDH"]
    assert prior.coverage(genes) == (5, 5)
    assert prior.coverage([g.lower() for g in genes]) == (5, 5)  # case-insensitive
    f, mask = prior.for_panel(["erbb2", "ERBB2"])
    assert mask.all() and np.array_equal(f[0], f[1])
    assert f.flags.writeable and f.dtype == np.float32


def test_bundled_related_genes_are_closer_than_random(prior):
    related = [("KRT8", "KRT18"), ("CD3D", "CD3E"), ("COL1A1", "COL1A2"), ("CD79A", "CD79B"),
               ("ESR1", "PGR"), ("HLA-A", "HLA-B"), ("MKI67", "TOP2A")]
    rel = np.array([_cos(prior, a, b) for a, b in related])
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(prior), (2, 2000))
    rand = np.einsum("ij,ij->i", prior.matrix[i], prior.matrix[j])
    assert rel.mean() > rand.mean() + 0.2
    assert _cos(prior, "KRT8", "KRT18") > rand.mean() and _cos(prior, "CD3D", "CD3E") > rand.mean()


def test_bundled_aliases_map_old_symbols(prior):
    # HER2ST (2019) uses pre-rename symbols
    assert prior.symbols[prior.row("H3F3B")] == "H3-3B"
    assert prior.symbols[prior.row("ATP5B")] == "ATP5F1B"
    assert prior.row("NOT_A_GENE_XYZ") is None


def test_her2st_panel_coverage(prior, her2st_dir):
    counts = pd.read_csv(her2st_dir / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    panel = counts.mean(axis=0).sort_values(ascending=False).index[:200].tolist()
    n, total = prior.coverage(panel)
    print(f"HER2ST C2 top-200 panel: {n}/{total} genes covered by the GO prior")
    assert total == 200 and n >= 190
    f, mask = prior.for_panel(panel)
    assert f.shape == (200, 128) and mask.sum() == n
    assert np.all(f[~mask] == 0) and np.all(np.abs(f[mask]).sum(axis=1) > 0)


# --- user tables ----------------------------------------------------------------------

def test_csv_with_header_round_trip(tmp_path):
    syms, m = _small_table()
    df = pd.DataFrame(m, index=syms)
    df.index.name = "gene"
    path = tmp_path / "emb.csv"
    df.to_csv(path)  # header "gene,0,1,2,3,4"
    p = load_gene_prior(path)
    assert p.symbols == syms and p.dim == 5 and p.name == "emb"
    np.testing.assert_allclose(p.matrix, m, rtol=1e-6)


def test_tsv_without_header_and_gzip(tmp_path):
    syms, m = _small_table()
    lines = ["\t".join([s, *map(repr, row.tolist())]) for s, row in zip(syms, m)]
    (tmp_path / "emb.tsv").write_text("\n".join(lines) + "\n")
    p = load_gene_prior(tmp_path / "emb.tsv")
    assert p.symbols == syms
    np.testing.assert_allclose(p.matrix, m, rtol=1e-6)
    pd.DataFrame(m, index=syms, columns=[f"d{i}" for i in range(5)]).to_csv(
        tmp_path / "emb.csv.gz", sep=",")
    q = load_gene_prior(str(tmp_path / "emb.csv.gz"))
    assert q.symbols == syms and q.name == "emb"
    np.testing.assert_allclose(q.matrix, m, rtol=1e-6)


def test_npz_and_npy_round_trip(tmp_path):
    syms, m = _small_table()
    np.savez(tmp_path / "emb.npz", symbols=np.array(syms), embeddings=m)
    p = load_gene_prior(tmp_path / "emb.npz")
    assert p.symbols == syms
    np.testing.assert_array_equal(p.matrix, m)
    np.save(tmp_path / "vec.npy", m)
    (tmp_path / "vec.genes.txt").write_text("\n".join(syms) + "\n")
    q = load_gene_prior(tmp_path / "vec.npy")
    assert q.symbols == syms
    np.testing.assert_array_equal(q.matrix, m)


def test_parquet_round_trip_or_clear_error(tmp_path, monkeypatch):
    syms, m = _small_table()
    df = pd.DataFrame(m, columns=[f"d{i}" for i in range(5)])
    df.insert(0, "gene", syms)
    path = tmp_path / "emb.parquet"
    have_engine = any(importlib.util.find_spec(x) for x in ("pyarrow", "fastparquet"))
    if have_engine:
        df.to_parquet(path)
        p = load_gene_prior(path)
        assert p.symbols == syms
        np.testing.assert_allclose(p.matrix, m)
        df.set_index("gene").to_parquet(tmp_path / "indexed.parquet")  # symbols as index
        assert load_gene_prior(tmp_path / "indexed.parquet").symbols == syms
    else:
        path.write_bytes(b"PAR1")

    def no_engine(*a, **k):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    with pytest.raises(FlagInputError, match="pyarrow or fastparquet") as exc:
        load_gene_prior(path)
    assert "emb.parquet" in str(exc.value) and "\n" not in str(exc.value)


def test_for_panel_masks_missing_and_table_duplicates_keep_first(tmp_path):
    (tmp_path / "dup.csv").write_text("gene,a,b\nKRT8,1,0\nkrt8,0,1\nCD3E,0.5,0.5\n")
    p = load_gene_prior(tmp_path / "dup.csv")
    assert p.symbols == ["KRT8", "CD3E"]
    f, mask = p.for_panel(["cd3e", "MISSING1", "Krt8", "MISSING2"])
    assert mask.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(f, [[0.5, 0.5], [0, 0], [1, 0], [0, 0]])
    assert p.coverage(["cd3e", "MISSING1", "Krt8", "MISSING2"]) == (2, 4)
    assert p.coverage([]) == (0, 0) and p.for_panel([])[0].shape == (0, 2)


def test_passthrough_and_explicit_object():
    syms, m = _small_table()
    p = GenePrior(syms, m, name="x")
    assert load_gene_prior(p) is p and p.dim == 5 and len(p) == 6
    with pytest.raises(FlagInputError):
        GenePrior(syms, m[:3])


# --- errors ------------------------------------------------------------------------------

def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    out = {}
    (tmp / "strings.csv").write_text("gene,kind\nKRT8,epithelial\nCD3E,tcell\n")
    out["no numeric"] = (tmp / "strings.csv", "no numeric")
    (tmp / "onecol.csv").write_text("gene\nKRT8\nCD3E\n")
    out["one column"] = (tmp / "onecol.csv", "no numeric")
    (tmp / "nan.csv").write_text("gene,a,b\nKRT8,1,2\nCD3E,nan,3\n")
    out["nan"] = (tmp / "nan.csv", "NaN")
    (tmp / "empty.csv").write_text("")
    out["empty"] = (tmp / "empty.csv", "empty")
    (tmp / "header_only.csv").write_text("gene,a,b\n")
    out["header only"] = (tmp / "header_only.csv", "empty")
    (tmp / "dups.csv").write_text("cat,a,b\nX,1,2\nX,3,4\nX,5,6\n")
    out["duplicate only"] = (tmp / "dups.csv", "duplicates only")
    (tmp / "numsym.csv").write_text("1,0.1,0.2\n2,0.3,0.4\n")
    out["numeric symbols"] = (tmp / "numsym.csv", "gene symbol")
    np.savez(tmp / "obj.npz", symbols=np.array(["A", "B"], dtype=object), embeddings=np.ones((2, 2)))
    out["pickle refused"] = (tmp / "obj.npz", "pickle")
    np.savez(tmp / "keys.npz", names=np.array(["A"]), vecs=np.ones((1, 2)))
    out["npz keys"] = (tmp / "keys.npz", "'symbols' and 'embeddings'")
    np.savez(tmp / "shape.npz", symbols=np.array(["A", "B", "C"]), embeddings=np.ones((2, 2)))
    out["shape mismatch"] = (tmp / "shape.npz", "3 gene symbols but 2")
    np.save(tmp / "lonely.npy", np.ones((2, 2)))
    out["npy sidecar"] = (tmp / "lonely.npy", "lonely.genes.txt")
    (tmp / "table.xlsx").write_bytes(b"xx")
    out["format"] = (tmp / "table.xlsx", "unsupported")
    (tmp / "broken.npz").write_bytes(b"not a zip")
    out["corrupt"] = (tmp / "broken.npz", "not a readable")
    out["missing"] = (tmp / "nope.csv", "not found")
    return out


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    for label, (path, needle) in _bad_files(tmp_path).items():
        with pytest.raises(FlagInputError) as exc:
            load_gene_prior(path)
        msg = str(exc.value)
        assert path.name in msg, (label, msg)
        assert needle in msg, (label, msg)
        assert "\n" not in msg, (label, msg)


# --- build script logic on a synthetic annotation db ---------------------------------------

def test_build_recipe_on_synthetic_annotations():
    spec = importlib.util.spec_from_file_location("build_gene_prior", REPO / "scripts" / "build_gene_prior.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(1)
    n = 40
    genes = pd.DataFrame({"_id": np.arange(1, n + 1), "gene_id": [str(i) for i in range(1, n + 1)],
                          "symbol": [f"G{i}" for i in range(1, n + 1)]})
    genes.loc[genes["_id"] == 40, "symbol"] = "G1"  # duplicated symbol: keep the more annotated id
    rows = [(g, f"GO:{t:07d}") for g in range(1, n + 1) for t in range(30) if rng.random() < 0.3]
    rows += [(g, "GO:9999999") for g in range(1, n + 1)]  # on every gene: dropped by max_frac
    rows += [(1, "GO:8888888")]  # on one gene: dropped by min_genes
    ann = pd.DataFrame(rows, columns=["_id", "go_id"]).drop_duplicates()
    alias = pd.DataFrame({"_id": [2, 3, 4, 5], "alias_symbol": ["OLD2", "SHARED", "SHARED", "G5"]})
    res = mod.build(genes, ann, alias, dim=4, min_genes=2, max_frac=0.5, seed=0)
    syms = res["symbols"].tolist()
    assert len(syms) == len(set(syms)) and syms.count("G1") == 1
    assert res["embeddings"].shape == (len(syms), 4) and res["embeddings"].dtype == np.float16
    assert np.allclose(np.linalg.norm(res["embeddings"].astype(np.float32), axis=1), 1, atol=1e-2)
    assert res["n_terms_kept"] <= 30
    assert res["alias_symbols"].tolist() == ["OLD2"]  # ambiguous and official-symbol aliases dropped
    assert syms[res["alias_index"][0]] == "G2"
    again = mod.build(genes, ann, alias, dim=4, min_genes=2, max_frac=0.5, seed=0)
    np.testing.assert_array_equal(again["embeddings"], res["embeddings"])  # deterministic
    json.dumps({k: v for k, v in res.items() if not isinstance(v, np.ndarray)})


def test_corrupt_npy_is_refused_without_pickle(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x80\x04garbage")
    (tmp_path / "bad.genes.txt").write_text("A\n")
    with pytest.raises(FlagInputError, match="bad.npy: not a readable .npy"):
        load_gene_prior(tmp_path / "bad.npy")
