"""Reading a prediction file and its truth the way a scanpy user keeps them (the CLI, widgets and API share it).

A truth file may be a prediction (``layers['truth']``, on the prediction's
scale), or counts (``layers['counts']``, ``.raw`` or an integer ``X``, which
are transformed like the prediction), or an already log-scale ``X``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .data.panel import TRANSFORMS, transform_counts
from .errors import FlagInputError
from .metrics import evaluate_adata, in_sample_note
from .record import PredictionRecord

__all__ = ["read_h5ad", "checked_record", "read_truth", "truth_for", "evaluate_file", "TRUTH_SCALES"]

#: what a truth file's values are: ``auto`` (by what the file holds), ``counts``, ``target`` (the prediction's scale)
TRUTH_SCALES = ("auto", "counts", "target")


def read_h5ad(path: str | Path):
    """An ``.h5ad`` file, or one line saying why it cannot be read."""
    import anndata as ad

    p = Path(path).expanduser()
    if not p.is_file():
        raise FlagInputError(f"{p}: file not found")
    try:
        return ad.read_h5ad(p)
    except Exception as exc:  # h5py / anndata raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlagInputError(f"{p}: not a readable .h5ad file ({first[:200]})") from exc


def checked_record(adata, path) -> PredictionRecord:
    """``uns['flag']`` of a file, checked (it is read from the file, so it may hold anything), as a record."""
    from collections.abc import Mapping

    info = adata.uns.get("flag", {})
    if not isinstance(info, Mapping):
        raise FlagInputError(f"{path}: uns['flag'] is a {type(info).__name__}, not a mapping")
    info = {str(k): v for k, v in info.items()}
    tr = info.get("transform")
    if tr is not None and (not isinstance(tr, str) or tr not in TRANSFORMS):
        raise FlagInputError(f"{path}: uns['flag']['transform'] is not one of {', '.join(TRANSFORMS)}")
    for k in ("grid", "sample_id"):  # only plain strings are used
        if k in info and not isinstance(info[k], str):
            del info[k]
    return PredictionRecord.from_uns(info)


def _counts_source(t, scale: str, path):
    """``(matrix, gene names, what)`` of the truth file's values on ``scale`` (``counts``/``target``/``auto``).

    Counts are looked for in ``layers['counts']``, then ``.raw``, then an
    integer ``X``; a non-integer ``X`` is taken as already on the target scale
    (as scanpy users keep it: log-normalised X, counts in a layer).
    """
    names = [str(g) for g in t.var_names]
    if scale in ("auto", "counts"):
        if "counts" in t.layers:
            return t.layers["counts"], names, "counts"
        if t.raw is not None and scale == "counts" or (t.raw is not None and _is_integer(t.raw.X)):
            return t.raw.X, [str(g) for g in t.raw.var_names], "counts"
        if scale == "counts" or _is_integer(t.X):
            return t.X, names, "counts"
        _check_truth_values(t.X, path)  # say what is wrong before guessing a scale for it
        warnings.warn(f"{path}: X is not integer counts and the file has no layers['counts'] or .raw; "
                      "X is taken as already on the target scale (a truth scale of 'counts' transforms it)",
                      RuntimeWarning, stacklevel=3)
    return t.X, names, "target"


def _check_truth_values(X, path) -> None:
    v = X.data if sp.issparse(X) else np.asarray(X)
    if not np.isfinite(v).all() or (v < 0).any():  # neither counts nor log-scale expression
        raise FlagInputError(f"{path}: truth holds negative or non-finite values (not counts or log expression)")


def _is_integer(X) -> bool:
    v = X.data if sp.issparse(X) else np.asarray(X)
    v = np.asarray(v[: 1_000_000] if v.ndim == 1 else v.ravel()[: 1_000_000], dtype=np.float64)
    return bool(np.isfinite(v).all() and (v >= 0).all() and np.allclose(v, np.round(v)))


def read_truth(path, genes, transform: str, scale: str = "auto"):
    """Truth matrix for ``genes`` on the prediction's scale, and the file's spot ids.

    A prediction-format file (``layers['truth']``) must be on the prediction's
    scale (its ``uns['flag']['transform']``, when recorded); counts are
    transformed like the prediction (see :func:`_counts_source`).  Panel genes
    the truth lacks are left out of the metrics (noted on stderr); none shared
    is an error.
    """
    t = read_h5ad(path)
    if "truth" in t.layers and scale == "auto":
        ttr = checked_record(t, path).transform
        if ttr is not None and ttr != transform:
            raise FlagInputError(f"{path}: truth is on the {ttr!r} scale but the prediction on {transform!r}")
        mat, names, kind = t.layers["truth"], [str(g) for g in t.var_names], "target"
    else:
        mat, names, kind = _counts_source(t, scale, path)
    col: dict = {}
    for i, g in enumerate(names):
        col.setdefault(g, i)
    have = [g for g in genes if g in col]
    if not have:
        raise FlagInputError(f"{path}: shares no genes with the prediction's panel")
    if len(have) < len(genes):
        warnings.warn(f"{path}: lacks {len(genes) - len(have)} of the {len(genes)} panel genes; they are left out",
                      RuntimeWarning, stacklevel=2)
    totals = np.asarray(mat.sum(axis=1), dtype=np.float64).reshape(-1) if kind == "counts" else None
    sub = mat[:, [col[g] for g in have]]
    sub = np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float64)
    _check_truth_values(sub, path)
    if kind == "counts":
        sub = transform_counts(sub, transform, totals).astype(np.float64)  # library size over all genes
    out = np.full((t.n_obs, len(genes)), np.nan)
    out[:, [genes.index(g) for g in have]] = sub
    return out, [str(s) for s in t.obs_names]


def truth_for(adata, truth_path, scale: str = "auto", path=None):
    """``(adata on the spots the truth has, truth matrix)`` for a prediction and a truth file."""
    info = checked_record(adata, path or "prediction")
    genes = [str(g) for g in adata.var_names]
    tmat, tspots = read_truth(truth_path, genes, str(info.transform or "log2p1"), scale)
    pos = {s: i for i, s in enumerate(tspots)}
    keep = [i for i, s in enumerate(adata.obs_names) if s in pos]
    if not keep:
        raise FlagInputError(f"{truth_path}: shares no spot ids with {path or 'the prediction'}")
    return adata[keep], tmat[[pos[str(adata.obs_names[i])] for i in keep]]


def evaluate_file(path, truth_path=None, grid: str = "auto", layer: str = "X", truth_scale: str = "auto"):
    """``(sample id, metrics, in-sample note)`` of one prediction file against its own or a given truth."""
    a = read_h5ad(path)
    info = checked_record(a, path)
    if layer != "X" and layer not in a.layers:
        raise FlagInputError(f"{path}: has no layer {layer!r}")
    if "spatial" not in a.obsm:
        raise FlagInputError(f"{path}: no obsm['spatial'] spot coordinates")
    truth = None
    if truth_path is None:
        if "truth" not in a.layers:
            raise FlagInputError(f"{path}: no layers['truth']", setting="truth")
    else:
        a, truth = truth_for(a, truth_path, truth_scale, path)
    try:
        metrics = evaluate_adata(a, layer=layer, truth=truth, grid=None if grid == "auto" else grid)
    except FlagInputError as exc:
        raise FlagInputError(f"{path}: {exc}") from None
    return str(info.sample_id or Path(path).stem), metrics, in_sample_note(info)
