"""Slide metrics of a prediction, computed once per viewer (the session keeps
them) and shared by the Metrics and Moran's I widgets (both only display what
:func:`napari_flag.metrics.evaluate_adata` returns, the function
``napari-flag evaluate`` uses too)."""
from __future__ import annotations

import numpy as np

from .. import layers as L
from ..errors import FlagInputError
from ..metrics import (
    array_rc,
    evaluate_adata,
    in_sample_note,
    local_morans_i,
    morans_i,
    spatial_weights,
)
from ..record import PredictionRecord


def missing_truth(ad) -> str:
    """Why a prediction cannot be scored, exactly: no measured spots, or none of the model's genes."""
    info = PredictionRecord.of(ad)
    sid = info.name
    if info.virtual_spots:
        return f"{sid} is an image without measured expression (virtual spots): nothing to compare with"
    share = (info.compatibility or {}).get("gene_share")
    if share:
        return f"{sid}: {share.get('message')}; too few to compare"
    return f"{sid}: the slide has no measured expression of the model's genes"


def evaluation(ad, key: str) -> dict:
    """``dict(metrics, pcc, moran_true, moran_pred, mean_true, mean_pred, genes, W, grid, note)``
    of prediction ``ad`` (named ``key`` in messages).

    Genes the slide does not measure (NaN truth columns) are left out.  A
    prediction without truth gets its own global Moran's I per gene only
    (``moran_true`` is ``None``, ``metrics`` empty, ``missing`` says why).
    Safe to call from a worker thread; the widget stores the result in the
    session (:meth:`~napari_flag.widgets.session.FlagSession.store_evaluation`).
    """
    if ad is None:
        raise FlagInputError(f"{key}: prediction no longer available")
    info = PredictionRecord.of(ad)
    truth = ad.layers.get("truth")
    if truth is None or np.isfinite(np.asarray(truth)).all(axis=0).sum() < 2:
        return _prediction_only(ad, missing_truth(ad))
    metrics, det = evaluate_adata(ad, return_details=True)
    return {
        "metrics": metrics,
        "genes": det["genes"],
        "pcc": np.asarray(det["pcc"], dtype=np.float64),
        "moran_true": np.asarray(det["moran_true"], dtype=np.float64),
        "moran_pred": np.asarray(det["moran_pred"], dtype=np.float64),
        "mean_true": det["mean_true"],
        "mean_pred": det["mean_pred"],
        "W": det["W"],
        "grid": det["grid"],
        "note": in_sample_note(info),
        "missing": None,
    }


def _prediction_only(ad, why: str) -> dict:
    """Spatial structure of the prediction itself: global Moran's I per gene on the slide's weights."""
    pred = np.asarray(ad.X, dtype=np.float64)
    W, grid = spatial_weights(np.asarray(ad.obsm["spatial"])[:, :2], array_rc(ad), PredictionRecord.of(ad).grid)
    return {
        "metrics": {}, "genes": [str(g) for g in ad.var_names], "pcc": None, "moran_true": None,
        "moran_pred": np.asarray(morans_i(pred, W), dtype=np.float64), "mean_true": None,
        "mean_pred": pred.mean(axis=0), "W": W, "grid": grid, "note": None, "missing": why,
    }


def local_moran(session, key: str, gene: str) -> dict[str, np.ndarray]:
    """Local Moran's I of one gene, measured and predicted, on the SSC weights."""
    ad = session.prediction_of(key)
    ev = session.evaluation(key)
    if ev is not None:
        W = ev["W"]
    else:
        W, _ = spatial_weights(np.asarray(ad.obsm["spatial"])[:, :2], array_rc(ad), PredictionRecord.of(ad).grid)
    out = {"lisa_pred": local_morans_i(L.gene_values(ad, gene, "pred"), W)}
    if "truth" in ad.layers:
        t = L.gene_values(ad, gene, "truth")
        if np.isfinite(t).all():
            out["lisa_truth"] = local_morans_i(t, W)
    return {k: np.nan_to_num(np.asarray(v, dtype=np.float32), nan=0.0) for k, v in out.items()}
