"""The Python API: what a notebook user calls.

    import napari_flag as nf
    adata = nf.predict("her2st:C2")          # or a slide file, an outs/ folder, an .h5ad, a Sample
    nf.evaluate(adata)                        # PCC, MSE, GSC, SSC, ... against layers["truth"]
    import scanpy as sc; sc.pl.spatial(adata, color=adata.var_names[:3])
    res = nf.regions(adata, "annotations.geojson", compare=("Tumor", "Stroma"))
    res.summary(); res.de                     # region averages, and A - B per gene, with intervals

Each is a thin front end over the library the CLI and the widgets use
(:func:`napari_flag.inference.iter_predict`, :func:`napari_flag.metrics.evaluate_adata`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_sample", "predict", "evaluate", "regions"]


def load_sample(source, sample_id: str | None = None, pixel_size_um: float | None = None):
    """A slide as a :class:`~napari_flag.data.Sample`: a dataset id (``"her2st:C2"``), a Space Ranger
    ``outs/`` or HEST folder, an ``.h5ad``, or an image (SVS/TIFF/OME-TIFF/OME-Zarr/JPEG/PNG)."""
    from .data import load_sample as _load

    return _load(source, sample_id=sample_id, pixel_size_um=pixel_size_um)


def predict(sample, checkpoint: str | Path | None = None, *, steps: int | None = None,
            samples: int | None = None, device: str = "auto", seed: int = 0, spacing_um: float | None = None,
            pixel_size_um: float | None = None, tissue=None, feature_cache: bool | str | Path = True,
            stain_norm: bool | None = None, progress: bool = False, **kw) -> Any:
    """Predict every spot of ``sample`` (anything :func:`load_sample` takes, or a ``Sample``) as AnnData.

    ``X`` is the predicted mean, ``layers["std"]`` the spread over samples,
    ``layers["sample"]`` one sample, ``layers["truth"]`` the measured expression
    when the slide has it; ``obsm["spatial"]`` and ``uns["spatial"]`` follow
    scanpy, so ``sc.pl.spatial(adata, color=...)`` works as is.  A slide
    without spots gets virtual spots over its tissue (``tissue``: a mask file
    or QuPath GeoJSON instead of the detected tissue).  ``checkpoint=None`` is
    the bundled model.  ``stain_norm`` maps the slide's H&E onto the model's
    training stains first (``None``: as the model records; the bundled model
    does).  ``progress=True`` shows a bar per stage.  Warnings
    about a model that does not fit the slide are issued as ``RuntimeWarning``.
    """
    from .inference import predict_sample

    bar = _bar() if progress else None
    try:
        return predict_sample(sample, checkpoint=checkpoint, steps=steps, samples=samples, device=device, seed=seed,
                              spacing_um=spacing_um, pixel_size_um=pixel_size_um, tissue=tissue,
                              feature_cache=feature_cache, stain_norm=stain_norm, progress=bar, **kw)
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


def regions(adata, regions, compare: tuple[str, str] | None = None, *, draws: int | None = None, seed: int = 0,
            sample=None, checkpoint: str | Path | None = None):
    """What each region of a prediction expresses, and how two differ, with the model's uncertainty.

    ``adata``: :func:`predict`'s output or a file it wrote.  ``regions``: a
    QuPath GeoJSON file or dict (Polygon/MultiPolygon features in the slide's
    full-resolution pixels, named by ``properties.name`` or the
    classification), ``{name: (n, 2) xy polygon}``, or a napari Shapes layer.
    Intervals come from ``draws`` (default 64) joint posterior samples of the
    regions' spots drawn again with the model and slide the prediction
    records (``sample``: the slide, when already open).  Returns a
    :class:`~napari_flag.roi.RegionResult`: ``.summary()`` (``region, gene,
    n_spots, mean, lower, upper``), ``.compare(a, b)`` and, with ``compare``,
    ``.de`` (``gene, difference, lower, upper, prob_greater``);
    ``napari_flag.roi.write_geojson(result, path)`` takes them back to QuPath.
    """
    from .roi import DEFAULT_DRAWS, region_stats
    from .truth import read_h5ad

    if isinstance(adata, (str, Path)):
        adata = read_h5ad(adata)
    return region_stats(adata, regions, n_draws=draws or DEFAULT_DRAWS, seed=seed, sample=sample,
                        checkpoint=checkpoint, compare=compare)


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
