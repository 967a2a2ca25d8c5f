"""Slide metrics of a prediction, computed once and shared by the Metrics and
Moran's I widgets (both only display what :func:`napari_flag.metrics.evaluate_slide`
returns)."""
from __future__ import annotations

import threading

import numpy as np

from .. import layers as L
from ..errors import FlagInputError

_CACHE: dict[str, dict] = {}
_LOCK = threading.Lock()


def _dense(M) -> np.ndarray:
    M = M.toarray() if hasattr(M, "toarray") else np.asarray(M)
    return np.asarray(M, dtype=np.float64)


def evaluation(key: str) -> dict:
    """``dict(metrics, pcc, moran_true, moran_pred, genes, W)`` for prediction ``key``.

    Genes the slide does not measure (NaN truth columns) are left out.  Safe to
    call from a worker thread; the result is cached per prediction.
    """
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    from ..metrics import evaluate_slide, grid_coords, grid_weights

    ad = L.get_prediction(key)
    if ad is None:
        raise FlagInputError(f"{key}: prediction no longer available")
    if "truth" not in ad.layers:
        raise FlagInputError(
            f"{ad.uns.get('flag', {}).get('sample_id', key)}: slide has no measured expression to compare with"
        )
    pred, truth = _dense(ad.X), _dense(ad.layers["truth"])
    ok = np.isfinite(truth).all(axis=0) & np.isfinite(pred).all(axis=0)
    if ok.sum() < 2:
        raise FlagInputError("fewer than two panel genes are measured on this slide")
    genes = [str(g) for g, o in zip(ad.var_names, ok) if o]
    coords, grid = grid_coords(ad, ad.uns.get("flag", {}).get("grid"))
    W = grid_weights(coords, grid)
    metrics, det = evaluate_slide(pred[:, ok], truth[:, ok], coords, grid=grid, genes=genes, weights=W,
                                  return_details=True)
    out = {
        "metrics": metrics,
        "genes": genes,
        "pcc": np.asarray(det["pcc"], dtype=np.float64),
        "moran_true": np.asarray(det["moran_true"], dtype=np.float64),
        "moran_pred": np.asarray(det["moran_pred"], dtype=np.float64),
        "mean_true": truth[:, ok].mean(axis=0),
        "mean_pred": pred[:, ok].mean(axis=0),
        "W": W,
        "grid": grid,
    }
    with _LOCK:
        _CACHE[key] = out
    return out


def forget(key: str) -> None:
    with _LOCK:
        _CACHE.pop(key, None)


def cached(key: str | None) -> dict | None:
    with _LOCK:
        return _CACHE.get(key) if key else None


def local_moran(key: str, gene: str) -> dict[str, np.ndarray]:
    """Local Moran's I of one gene, measured and predicted, on the SSC weights."""
    from ..metrics import grid_coords, grid_weights, local_morans_i

    ad = L.get_prediction(key)
    ev = cached(key)
    if ev is not None:
        W = ev["W"]
    else:
        coords, grid = grid_coords(ad, ad.uns.get("flag", {}).get("grid"))
        W = grid_weights(coords, grid)
    out = {"lisa_pred": local_morans_i(L.gene_values(ad, gene, "pred"), W)}
    if "truth" in ad.layers:
        t = L.gene_values(ad, gene, "truth")
        if np.isfinite(t).all():
            out["lisa_truth"] = local_morans_i(t, W)
    return {k: np.nan_to_num(np.asarray(v, dtype=np.float32), nan=0.0) for k, v in out.items()}
