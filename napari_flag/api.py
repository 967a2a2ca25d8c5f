"""The Python API: what a notebook user calls.

    import napari_flag as nf
    adata = nf.predict("her2st:C2")          # or a slide file, an outs/ folder, an .h5ad, a Sample
    nf.evaluate(adata)                        # PCC, MSE, GSC, SSC, ... against layers["truth"]
    import scanpy as sc; sc.pl.spatial(adata, color=adata.var_names[:3])

Each is a thin front end over the library the CLI and the widgets use
(:func:`napari_flag.inference.iter_predict`, :func:`napari_flag.metrics.evaluate_adata`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_sample", "predict", "evaluate"]


def load_sample(source, sample_id: str | None = None, pixel_size_um: float | None = None):
    """A slide as a :class:`~napari_flag.data.Sample`: a dataset id (``"her2st:C2"``), a Space Ranger
    ``outs/`` or HEST folder, an ``.h5ad``, or an image (SVS/TIFF/OME-TIFF/OME-Zarr/JPEG/PNG)."""
    from .data import load_sample as _load

    return _load(source, sample_id=sample_id, pixel_size_um=pixel_size_um)


def predict(sample, checkpoint: str | Path | None = None, *, steps: int | None = None,
            samples: int | None = None, device: str = "auto", seed: int = 0, spacing_um: float | None = None,
            pixel_size_um: float | None = None, tissue=None, feature_cache: bool | str | Path = True,
            progress: bool = False, **kw) -> Any:
    """Predict every spot of ``sample`` (anything :func:`load_sample` takes, or a ``Sample``) as AnnData.

    ``X`` is the predicted mean, ``layers["std"]`` the spread over samples,
    ``layers["sample"]`` one sample, ``layers["truth"]`` the measured expression
    when the slide has it; ``obsm["spatial"]`` and ``uns["spatial"]`` follow
    scanpy, so ``sc.pl.spatial(adata, color=...)`` works as is.  A slide
    without spots gets virtual spots over its tissue (``tissue``: a mask file
    or QuPath GeoJSON instead of the detected tissue).  ``checkpoint=None`` is
    the bundled model.  ``progress=True`` shows a bar per stage.  Warnings
    about a model that does not fit the slide are issued as ``RuntimeWarning``.
    """
    from .inference import predict_sample

    bar = _bar() if progress else None
    try:
        return predict_sample(sample, checkpoint=checkpoint, steps=steps, samples=samples, device=device, seed=seed,
                              spacing_um=spacing_um, pixel_size_um=pixel_size_um, tissue=tissue,
                              feature_cache=feature_cache, progress=bar, **kw)
    finally:
        if bar is not None:
            bar.close()


def evaluate(adata, truth=None, *, layer: str = "X", grid: str | None = None, truth_scale: str = "auto",
             seed: int = 0) -> dict:
    """Metrics of a prediction (:func:`predict`'s output, or a file it wrote) against the truth.

    ``truth``: default ``layers["truth"]``; or a (spots, genes) matrix on the
    prediction's scale; or an ``.h5ad`` file as a scanpy user keeps it (counts
    in ``layers['counts']``, ``.raw`` or an integer ``X`` are transformed like
    the prediction; ``truth_scale`` ``"counts"``/``"target"`` says what they
    are), matched by spot id.  ``layer``: ``"X"`` (the mean) or e.g.
    ``"sample"``.  Returns ``{"PCC": ..., "MSE": ..., "GSC": ..., "SSC": ..., ...}``
    as defined in the method notes.
    """
    from .errors import FlagInputError
    from .metrics import evaluate_adata
    from .truth import read_h5ad, truth_for

    if isinstance(adata, (str, Path)):
        adata = read_h5ad(adata)
    if isinstance(truth, (str, Path)):
        adata, truth = truth_for(adata, truth, truth_scale)
    if truth is None and "truth" not in adata.layers:
        raise FlagInputError("the prediction has no layers['truth'] (a slide without measured spots)",
                             setting="truth")
    return evaluate_adata(adata, layer=layer, truth=truth, grid=grid, seed=seed)


def _bar():
    """A ``progress(event)`` callable drawing one tqdm bar per stage."""
    from tqdm.auto import tqdm

    state: dict = {"bar": None, "stage": None}

    def progress(ev) -> None:
        if state["stage"] != ev.stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"], state["stage"] = tqdm(total=max(ev.total, 1), desc=ev.stage, leave=False), ev.stage
        state["bar"].n = ev.done
        state["bar"].refresh()

    progress.close = lambda: state["bar"] is not None and state["bar"].close()  # type: ignore[attr-defined]
    return progress
