"""Frozen per-gene embedding tables for FLAG's GFM-alignment loss.

The alignment loss pulls hidden states towards a fixed vector per panel gene, so
all the model needs is a table keyed by gene symbol. The bundled default
(``resources/gene_prior_go.npz``) is built from Gene Ontology annotations by
``scripts/build_gene_prior.py``; users can swap in foundation-model embeddings
(Geneformer, scGPT, ...) exported as CSV/TSV, NPZ, NPY (+ symbol list) or Parquet.

Symbols are matched case-insensitively (HGNC symbols are upper-case; mouse symbols
then map to their human counterparts, which is the intended behaviour for the
common one-to-one orthologues). Files are read without pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import FlagInputError

__all__ = ["GenePrior", "load_gene_prior", "default_gene_prior_path", "DEFAULT_SPECS"]

#: names that select the bundled GO-derived table
DEFAULT_SPECS = ("go", "default")

_SYMBOL_KEYS = ("symbols", "genes", "gene_names", "gene_symbols")
_MATRIX_KEYS = ("embeddings", "matrix", "X", "embedding")
_TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None}
_PARQUET_SUFFIXES = {".parquet", ".pq"}


def _norm(symbol: str) -> str:
    return str(symbol).strip().upper()


@dataclass
class GenePrior:
    """Gene embedding table: row ``i`` of ``matrix`` embeds ``symbols[i]``.

    ``aliases`` maps extra upper-case symbols (e.g. pre-rename HGNC symbols) to a
    row; official symbols always win over aliases.
    """

    symbols: list[str]
    matrix: np.ndarray
    name: str = "custom"
    source: str = ""
    aliases: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.symbols = [str(s) for s in self.symbols]
        self.matrix = np.ascontiguousarray(self.matrix, dtype=np.float32)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(self.symbols):
            raise FlagInputError(
                f"{self.source or self.name}: matrix shape {self.matrix.shape} does not match"
                f" {len(self.symbols)} symbols")
        index: dict[str, int] = {}
        for i, s in enumerate(self.symbols):
            index.setdefault(_norm(s), i)  # first occurrence wins: deterministic
        self._index = index

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.symbols)

    def __repr__(self) -> str:
        return f"GenePrior(name={self.name!r}, genes={len(self)}, dim={self.dim}, source={self.source!r})"

    def row(self, gene: str) -> int | None:
        """Row of ``gene`` (official symbol first, then alias), or None."""
        key = _norm(gene)
        i = self._index.get(key)
        if i is None:
            i = self.aliases.get(key)
        return i

    def for_panel(self, genes: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings for a gene panel, in panel order.

        Returns ``F`` (G, d) float32 with zero rows for genes the table lacks and
        ``mask`` (G,) bool, True where the gene was found; the alignment loss
        should skip masked-out genes rather than pull them towards zero.
        """
        genes = list(genes)
        f = np.zeros((len(genes), self.dim), dtype=np.float32)
        mask = np.zeros(len(genes), dtype=bool)
        for j, g in enumerate(genes):
            i = self.row(g)
            if i is not None:
                f[j] = self.matrix[i]
                mask[j] = True
        return f, mask

    def coverage(self, genes: Iterable[str]) -> tuple[int, int]:
        """(number of panel genes found, panel size)."""
        genes = list(genes)
        return sum(self.row(g) is not None for g in genes), len(genes)


def default_gene_prior_path() -> Path:
    from . import resources_dir

    return resources_dir() / "gene_prior_go.npz"


def load_gene_prior(spec: str | Path | GenePrior | None = None) -> GenePrior:
    """Load a gene prior: None/"go"/"default" -> bundled GO table, else a file path.

    Supported files: ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``; first column gene
    symbol, the rest numeric, header optional), ``.npz`` (arrays ``symbols`` and
    ``embeddings``), ``.npy`` (numeric matrix with a ``<name>.genes.txt`` or
    ``<name>.txt`` sidecar listing one symbol per row), ``.parquet`` (needs pyarrow
    or fastparquet). Problems raise a one-line :class:`FlagInputError` naming the file.
    """
    if isinstance(spec, GenePrior):
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in DEFAULT_SPECS):
        path = default_gene_prior_path()
        if not path.is_file():
            raise FlagInputError(
                f"{path}: bundled gene prior table is missing (rebuild it with scripts/build_gene_prior.py)")
        st = path.stat()
        return _load_cached(str(path), st.st_mtime_ns, st.st_size, "go")
    path = Path(spec).expanduser()
    if not path.exists():
        raise FlagInputError(f"{path}: gene prior file not found")
    if path.is_dir():
        raise FlagInputError(f"{path}: is a folder, expected a gene embedding table file")
    return _load_file(path, name=_stem(path))


@lru_cache(maxsize=4)
def _load_cached(path: str, _mtime: int, _size: int, name: str) -> GenePrior:
    prior = _load_file(Path(path), name=name)
    prior.matrix.setflags(write=False)  # shared between callers
    return prior


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".gz", ".bz2", ".xz", ".zip"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    return Path(name).stem


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zip"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _load_file(path: Path, name: str) -> GenePrior:
    kind = _kind(path)
    if kind == ".npz":
        symbols, matrix, aliases, meta = _read_npz(path)
    elif kind == ".npy":
        symbols, matrix = _read_npy(path)
        aliases, meta = {}, {}
    elif kind in _TEXT_SUFFIXES:
        symbols, matrix = _read_text(path, _TEXT_SUFFIXES[kind])
        aliases, meta = {}, {}
    elif kind in _PARQUET_SUFFIXES:
        symbols, matrix = _read_parquet(path)
        aliases, meta = {}, {}
    else:
        raise FlagInputError(
            f"{path}: unsupported gene prior format {kind or '(no suffix)'!r};"
            " use .csv, .tsv, .npz, .npy (+ .genes.txt) or .parquet")
    symbols, matrix, kept = _validate(path, symbols, matrix)
    if aliases:  # alias rows refer to the file's rows; follow the de-duplication
        new_row = {int(old): new for new, old in enumerate(kept)}
        aliases = {a: new_row[i] for a, i in aliases.items() if i in new_row}
    return GenePrior(symbols=symbols, matrix=matrix, name=str(meta.get("name", name)),
                     source=str(path), aliases=aliases, meta=meta)


def _validate(path: Path, symbols, matrix) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Shared checks; duplicates keep their first occurrence (case-insensitive)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise FlagInputError(f"{path}: embeddings must be a 2-D matrix, got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise FlagInputError(f"{path}: gene prior table is empty (no rows)")
    if matrix.shape[1] == 0:
        raise FlagInputError(f"{path}: no numeric embedding columns")
    if not (np.issubdtype(matrix.dtype, np.number) and not np.issubdtype(matrix.dtype, np.complexfloating)):
        raise FlagInputError(f"{path}: embeddings are not numeric (dtype {matrix.dtype})")
    if len(symbols) != matrix.shape[0]:
        raise FlagInputError(
            f"{path}: {len(symbols)} gene symbols but {matrix.shape[0]} embedding rows")
    matrix = matrix.astype(np.float32, copy=False)
    bad = ~np.isfinite(matrix)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise FlagInputError(
            f"{path}: {int(bad.sum())} NaN/inf values in {len(rows)} rows"
            f" (first: gene {str(symbols[rows[0]])!r})")
    syms = ["" if s is None else str(s).strip() for s in symbols]
    syms = ["" if s.lower() in ("nan", "none") else s for s in syms]
    ok = np.array([bool(s) for s in syms])
    if not ok.any():
        raise FlagInputError(f"{path}: no gene symbols (first column is empty)")
    if all(_is_number(s) for s, k in zip(syms, ok) if k):
        raise FlagInputError(
            f"{path}: gene symbol column holds only numbers; the first column must be the gene symbol")
    upper = [_norm(s) for s in syms]
    n_unique = len({u for u, k in zip(upper, ok) if k})
    if n_unique == 1 and int(ok.sum()) > 1:
        raise FlagInputError(
            f"{path}: all {int(ok.sum())} rows have the same gene symbol {syms[int(np.argmax(ok))]!r}"
            " (duplicates only); the first column must be the gene symbol")
    seen: set[str] = set()
    keep = np.zeros(len(syms), dtype=bool)
    for i, (u, k) in enumerate(zip(upper, ok)):
        if k and u not in seen:
            seen.add(u)
            keep[i] = True
    symbols_out = [s for s, k in zip(syms, keep) if k]
    return symbols_out, np.ascontiguousarray(matrix[keep]), np.flatnonzero(keep)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _read_npz(path: Path):
    import zipfile

    if not zipfile.is_zipfile(path):
        raise FlagInputError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            skey = next((k for k in _SYMBOL_KEYS if k in files), None)
            mkey = next((k for k in _MATRIX_KEYS if k in files), None)
            if skey is None or mkey is None:
                raise FlagInputError(
                    f"{path}: .npz needs arrays 'symbols' and 'embeddings', found {sorted(files) or 'none'}")
            symbols = z[skey]
            matrix = z[mkey]
            aliases: dict[str, int] = {}
            if "alias_symbols" in files and "alias_index" in files:
                a_sym, a_idx = z["alias_symbols"], z["alias_index"]
                if len(a_sym) == len(a_idx):
                    aliases = {_norm(s): int(i) for s, i in zip(a_sym.tolist(), a_idx.tolist())
                               if 0 <= int(i) < len(symbols)}
            meta = {}
            if "meta" in files:
                try:
                    meta = json.loads(str(z["meta"][()]))
                except (ValueError, TypeError):
                    meta = {}
    except FlagInputError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise FlagInputError(f"{path}: cannot read .npz without pickle ({_one_line(exc)});"
                             " store symbols as a string array") from None
    except Exception as exc:  # noqa: BLE001 - corrupt zip etc.
        raise FlagInputError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if symbols.ndim != 1 or symbols.dtype.kind not in "US":
        raise FlagInputError(f"{path}: 'symbols' must be a 1-D string array, got {symbols.dtype} {symbols.shape}")
    if symbols.dtype.kind == "S":
        symbols = np.char.decode(symbols, "utf-8")
    return symbols.tolist(), matrix, aliases, meta


def _read_npy(path: Path):
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise FlagInputError(f"{path}: not a readable .npy file (bad header)")
    try:
        matrix = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise FlagInputError(f"{path}: cannot read .npy without pickle ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001
        raise FlagInputError(f"{path}: not a readable .npy file ({_one_line(exc)})") from None
    stem = path.with_suffix("")
    cands = [stem.with_name(stem.name + ".genes.txt"), stem.with_name(stem.name + ".txt")]
    side = next((c for c in cands if c.is_file()), None)
    if side is None:
        raise FlagInputError(
            f"{path}: .npy holds no gene symbols; put one symbol per line in {cands[0].name}")
    symbols = [ln.strip() for ln in side.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if matrix.ndim == 2 and len(symbols) != matrix.shape[0]:
        raise FlagInputError(
            f"{path}: {matrix.shape[0]} embedding rows but {len(symbols)} symbols in {side.name}")
    return symbols, matrix


def _read_text(path: Path, sep: str | None):
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, engine="python" if sep is None else "c",
                         comment=None, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise FlagInputError(f"{path}: gene prior table is empty") from None
    except Exception as exc:  # noqa: BLE001
        raise FlagInputError(f"{path}: cannot parse as a delimited table ({_one_line(exc)})") from None
    if df.shape[1] < 2:
        raise FlagInputError(
            f"{path}: no numeric columns (need a gene symbol column followed by embedding columns)")
    # Header row: present when the first row's value cells are not numbers.
    if _looks_like_header(df.iloc[0].tolist()):
        header = [str(v) for v in df.iloc[0].tolist()]
        df = df.iloc[1:]
    else:
        header = [f"column {i + 1}" for i in range(df.shape[1])]
    if df.shape[0] == 0:
        raise FlagInputError(f"{path}: gene prior table is empty (header only)")
    return _split_frame(path, df, header)


def _looks_like_header(row: list) -> bool:
    """A first row is a header if a value cell is not a number, its symbol cell is
    blank, or its values are column numbers 0..d-1 / 1..d (pandas ``to_csv``)."""
    first, values = row[0], row[1:]
    cells = [v for v in values if isinstance(v, str)]
    if not all(_is_number(v) for v in cells):
        return True
    if not isinstance(first, str) or not first.strip():
        return True
    try:
        nums = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        return False
    steps = np.arange(len(nums), dtype=float)
    return bool(np.array_equal(nums, steps) or np.array_equal(nums, steps + 1))


def _split_frame(path: Path, df, header: list[str]):
    import pandas as pd

    symbols = df.iloc[:, 0].tolist()
    values = df.iloc[:, 1:]
    numeric = values.apply(pd.to_numeric, errors="coerce")
    # a cell that was present but failed to parse -> column is not numeric
    not_num = numeric.isna() & values.notna() & ~values.astype(str).apply(
        lambda c: c.str.strip().str.lower().isin(["nan", "na", "", "inf", "-inf"]))
    bad_cols = [header[1 + j] for j in np.flatnonzero(not_num.any(axis=0).to_numpy())]
    if len(bad_cols) == values.shape[1]:
        raise FlagInputError(f"{path}: no numeric columns after the gene symbol column")
    if bad_cols:
        raise FlagInputError(
            f"{path}: non-numeric embedding column(s) {', '.join(map(repr, bad_cols[:3]))}"
            f"{' ...' if len(bad_cols) > 3 else ''}")
    return symbols, numeric.to_numpy(dtype=np.float64, na_value=np.nan)


def _read_parquet(path: Path):
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except ImportError:
        raise FlagInputError(
            f"{path}: reading Parquet needs pyarrow or fastparquet (pip install pyarrow),"
            " or export the table as .csv/.npz") from None
    except Exception as exc:  # noqa: BLE001
        raise FlagInputError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None
    if not isinstance(df.index, pd.RangeIndex):  # symbols stored as the index
        df = df.reset_index()
    if df.shape[0] == 0:
        raise FlagInputError(f"{path}: gene prior table is empty")
    if df.shape[1] < 2:
        raise FlagInputError(f"{path}: no numeric columns (need a gene symbol column followed by embedding columns)")
    return _split_frame(path, df, [str(c) for c in df.columns])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
