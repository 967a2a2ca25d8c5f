#!/usr/bin/env python3
"""Build the bundled gene prior table (resources/gene_prior_go.npz) from Gene Ontology.

FLAG's alignment loss needs a frozen embedding per gene. Foundation-model gene
embeddings are large and licence-bound, so the default is a small, reproducible
stand-in derived from GO annotations: genes that share specific GO terms get
similar vectors.

Source: Debian's ``r-bioc-org.hs.eg.db`` package (Bioconductor org.Hs.eg.db), whose
SQLite file maps Entrez gene ids to HGNC symbols and to GO terms (annotations already
propagated to ancestor terms in the ``go_all`` view).

Recipe:
1. gene x term binary matrix from ``go_all`` (BP, MF and CC), ND ("no data")
   evidence excluded;
2. keep terms annotated to at least ``--min-genes`` genes and at most
   ``--max-frac`` of the annotated genes (rare terms cannot inform similarity,
   near-root terms only add noise); drop genes left without terms;
3. TF-IDF (sklearn ``TfidfTransformer``, smooth idf, l2 rows), then
   ``TruncatedSVD(--dim, random_state=--seed)``, then L2-normalised rows;
4. write ``symbols`` (str), ``embeddings`` (float16, N x dim), an unambiguous alias
   table (``alias_symbols`` -> ``alias_index``) for older symbols found in count
   matrices, and ``meta`` (JSON string), compressed, no pickled objects.

Usage::

    python scripts/build_gene_prior.py                # downloads the .deb with apt-get
    python scripts/build_gene_prior.py --deb r-bioc-org.hs.eg.db_3.16.0-1_all.deb
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_flag._io import atomic_path, atomic_write_text

DEB_PACKAGE = "r-bioc-org.hs.eg.db"
REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {shlex.join(cmd)}\n{res.stderr.strip()}")
    return res.stdout


def download_deb(dest: Path) -> Path:
    """Fetch the package with apt-get (no install); retries once after `apt-get update`."""
    cmd = ["apt-get", "download", DEB_PACKAGE]
    res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if res.returncode != 0:
        print("apt-get download failed; running apt-get update and retrying", file=sys.stderr)
        _run(["apt-get", "update"])
        _run(cmd, cwd=dest)
    debs = sorted(dest.glob(f"{DEB_PACKAGE}_*.deb"))
    if not debs:
        raise SystemExit(f"apt-get download produced no {DEB_PACKAGE}_*.deb in {dest}")
    return debs[-1]


def deb_fields(deb: Path) -> dict[str, str]:
    out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Source"])
    fields = {}
    for line in out.splitlines():
        key, _, val = line.partition(":")
        fields[key.strip()] = val.strip()
    return fields


def extract_sqlite(deb: Path, workdir: Path) -> Path:
    _run(["dpkg", "-x", str(deb), str(workdir)])
    hits = sorted(workdir.rglob("org.Hs.eg.sqlite"))
    if not hits:
        raise SystemExit(f"{deb}: no org.Hs.eg.sqlite inside the package")
    return hits[0]


def read_db(db: Path) -> tuple[dict[str, str], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Metadata, gene symbols, propagated GO annotations and aliases, read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = dict(con.execute("SELECT name, value FROM metadata").fetchall())
        genes = pd.read_sql(
            "SELECT g._id AS _id, g.gene_id AS gene_id, i.symbol AS symbol "
            "FROM genes g JOIN gene_info i ON g._id = i._id", con)
        ann = pd.read_sql(
            "SELECT DISTINCT _id, go_id FROM go_all WHERE evidence != 'ND'", con)
        alias = pd.read_sql("SELECT _id, alias_symbol FROM alias", con)
    finally:
        con.close()
    return meta, genes, ann, alias


def build(genes: pd.DataFrame, ann: pd.DataFrame, alias: pd.DataFrame, dim: int,
          min_genes: int, max_frac: float, seed: int) -> dict:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    genes = genes.assign(upper=genes["symbol"].str.upper())
    # One row per symbol: where a symbol names several Entrez ids, keep the most
    # annotated one (ties -> lowest numeric gene id) so the result is deterministic.
    n_ann = ann.groupby("_id").size()
    genes["n_ann"] = genes["_id"].map(n_ann).fillna(0).astype(int)
    genes["gid_num"] = pd.to_numeric(genes["gene_id"], errors="coerce")
    annotated = genes[genes["n_ann"] > 0].sort_values(
        ["upper", "n_ann", "gid_num"], ascending=[True, False, True])
    annotated = annotated.drop_duplicates("upper", keep="first")
    ann = ann[ann["_id"].isin(annotated["_id"])]

    g_idx, g_ids = pd.factorize(ann["_id"], sort=True)
    t_idx, terms = pd.factorize(ann["go_id"], sort=True)
    m = sp.csr_matrix((np.ones(len(ann), np.float32), (g_idx, t_idx)),
                      shape=(len(g_ids), len(terms)))
    m.sum_duplicates()
    m.data[:] = 1.0
    n_annotated = m.shape[0]
    per_term = np.asarray(m.sum(axis=0)).ravel()
    keep_t = (per_term >= min_genes) & (per_term <= max_frac * n_annotated)
    m = m[:, keep_t]
    keep_g = np.asarray(m.sum(axis=1)).ravel() > 0
    m = m[keep_g]
    g_ids = np.asarray(g_ids)[keep_g]

    tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True).fit_transform(m)
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=seed)
    emb = svd.fit_transform(tfidf)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    sym_of = annotated.set_index("_id")["symbol"]
    symbols = sym_of.reindex(g_ids).to_numpy().astype(str)
    order = np.argsort(np.char.upper(symbols), kind="stable")
    symbols, emb = symbols[order], emb[order]
    g_ids = g_ids[order]

    # Aliases: older/alternative symbols (count matrices often predate renames).
    # Keep only those that are nobody's official symbol and point to exactly one row.
    row_of = pd.Series(np.arange(len(g_ids)), index=g_ids)
    al = alias[alias["_id"].isin(row_of.index)].copy()
    al["upper"] = al["alias_symbol"].str.upper()
    al = al[~al["upper"].isin(set(genes["upper"]))]
    al["row"] = al["_id"].map(row_of)
    al = al.drop_duplicates(["upper", "row"])
    al = al[~al["upper"].duplicated(keep=False)].sort_values("upper")

    return dict(
        symbols=symbols,
        embeddings=emb.astype(np.float16),
        alias_symbols=al["upper"].to_numpy().astype(str),
        alias_index=al["row"].to_numpy().astype(np.int32),
        n_terms_total=int(len(terms)),
        n_terms_kept=int(keep_t.sum()),
        n_genes_annotated=int(n_annotated),
        nnz=int(m.nnz),
        explained_variance=float(svd.explained_variance_ratio_.sum()),
    )


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def provenance_md(meta: dict) -> str:
    db = meta["db_metadata"]
    lines = [
        "# gene_prior_go.npz: provenance",
        "",
        "Default frozen gene embedding table F for FLAG's GFM-alignment loss: one",
        f"{meta['dim']}-d L2-normalised vector per human gene, derived from Gene Ontology",
        "annotations. It is a light, reproducible stand-in for foundation-model gene",
        "embeddings (Geneformer, scGPT); those can be used instead through",
        "`napari_flag.gene_prior.load_gene_prior(path)`.",
        "",
        "## Source",
        "",
        f"- Debian package `{meta['deb_package']}` version `{meta['deb_version']}`"
        f" (Bioconductor org.Hs.eg.db), file `{meta['deb_file']}`, sha256 `{meta['deb_sha256']}`.",
        f"- SQLite `org.Hs.eg.sqlite`: DBSCHEMA {db.get('DBSCHEMA')} {db.get('DBSCHEMAVERSION')},"
        f" organism {db.get('ORGANISM')} (taxid {db.get('TAXID')}).",
        f"- Gene symbols: {db.get('EGSOURCENAME')} ({db.get('EGSOURCEURL')}), source date {db.get('EGSOURCEDATE')}.",
        f"- GO release: {db.get('GOSOURCENAME')} `go-basic.obo` ({db.get('GOSOURCEURL')}),"
        f" source date {db.get('GOSOURCEDATE')}; gene-to-GO from {db.get('GOEGSOURCENAME')}"
        f" {db.get('GOEGSOURCEDATE')}.",
        "",
        "## Recipe",
        "",
        "1. Binary gene x GO-term matrix from the `go_all` view (BP, MF, CC; annotations",
        "   propagated to ancestor terms), evidence code ND excluded. Symbols that name",
        "   several Entrez ids keep the most annotated id (ties: lowest id).",
        f"2. Terms kept if annotated to >= {meta['min_genes']} genes and <= {meta['max_frac']:.0%}"
        f" of the {meta['n_genes_annotated']} annotated genes:"
        f" {meta['n_terms_kept']} of {meta['n_terms_total']} terms; genes left without terms dropped.",
        "3. TF-IDF (`sklearn TfidfTransformer`, smooth idf, l2), `TruncatedSVD("
        f"n_components={meta['dim']}, algorithm='randomized', n_iter=7, random_state={meta['seed']})`,",
        "   rows L2-normalised, stored as float16.",
        "4. Alias table: alternative symbols from the `alias` table that are no gene's",
        "   official symbol and point to exactly one kept gene (helps older count matrices).",
        "",
        "## Result",
        "",
        f"- genes: {meta['n_genes']}; d_e: {meta['dim']}; aliases: {meta['n_aliases']};"
        f" matrix nnz: {meta['nnz']}",
        f"- explained variance ratio (sum over {meta['dim']} components): {meta['explained_variance']:.4f}",
        f"- file size: {meta['file_bytes'] / 1e6:.2f} MB",
        f"- built {meta['built']} with numpy {meta['numpy']}, scikit-learn {meta['sklearn']}",
        "",
        "## Command",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "Arrays in the .npz: `symbols` (str, sorted), `embeddings` (float16, N x d_e),",
        "`alias_symbols` (str, upper-case), `alias_index` (int32 row into `symbols`),",
        "`meta` (JSON string). Load with `np.load(path, allow_pickle=False)`.",
        "",
        "Licence: GO annotations are CC BY 4.0 (Gene Ontology Consortium); NCBI Gene data",
        "are public domain; org.Hs.eg.db is Artistic-2.0.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "resources" / "gene_prior_go.npz")
    ap.add_argument("--dim", type=int, default=128, help="embedding width d_e")
    ap.add_argument("--deb", type=Path, default=None,
                    help=f"an already-downloaded {DEB_PACKAGE}_*.deb (default: apt-get download)")
    ap.add_argument("--min-genes", type=int, default=5, help="drop GO terms on fewer genes")
    ap.add_argument("--max-frac", type=float, default=0.25,
                    help="drop GO terms on more than this fraction of annotated genes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--provenance", type=Path, default=None,
                    help="provenance markdown (default: --out with .md suffix)")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out.suffix != ".npz":
        ap.error("--out must end in .npz")
    prov = (args.provenance or out.with_suffix(".md")).resolve()

    import hashlib

    import sklearn

    with tempfile.TemporaryDirectory(prefix="gene_prior_") as tmpd:
        tmp = Path(tmpd)
        deb = args.deb.resolve() if args.deb else download_deb(tmp)
        if not deb.is_file():
            raise SystemExit(f"{deb}: no such file")
        fields = deb_fields(deb)
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        db_path = extract_sqlite(deb, tmp / "x")
        db_meta, genes, ann, alias = read_db(db_path)

    res = build(genes, ann, alias, args.dim, args.min_genes, args.max_frac, args.seed)
    cmd = "python scripts/build_gene_prior.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    meta = dict(
        name="go", dim=args.dim, seed=args.seed, min_genes=args.min_genes, max_frac=args.max_frac,
        deb_package=fields.get("Package", DEB_PACKAGE), deb_version=fields.get("Version", "?"),
        deb_file=deb.name, deb_sha256=sha, db_metadata=db_meta,
        n_genes=int(len(res["symbols"])), n_aliases=int(len(res["alias_symbols"])),
        n_genes_annotated=res["n_genes_annotated"], n_terms_total=res["n_terms_total"],
        n_terms_kept=res["n_terms_kept"], nnz=res["nnz"],
        explained_variance=res["explained_variance"],
        built=_dt.date.today().isoformat(), numpy=np.__version__, sklearn=sklearn.__version__,
        command=cmd.strip(),
    )
    arrays = {k: res[k] for k in ("symbols", "embeddings", "alias_symbols", "alias_index")}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    write_npz_atomic(out, arrays)
    meta["file_bytes"] = out.stat().st_size
    atomic_write_text(prov, provenance_md(meta))

    print(f"wrote {out} ({meta['file_bytes'] / 1e6:.2f} MB) and {prov}")
    print(f"  {meta['deb_package']} {meta['deb_version']}; GO {db_meta.get('GOSOURCEDATE')},"
          f" Entrez Gene {db_meta.get('EGSOURCEDATE')}")
    print(f"  genes {meta['n_genes']} (of {meta['n_genes_annotated']} annotated), d_e {args.dim},"
          f" terms {meta['n_terms_kept']}/{meta['n_terms_total']}, aliases {meta['n_aliases']},"
          f" explained variance {meta['explained_variance']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
