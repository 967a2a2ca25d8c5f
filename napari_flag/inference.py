"""The one path from a slide to a prediction: sample -> features -> graph -> model -> samples -> AnnData.

The CLI (``napari-flag predict``), the *Predict expression* widget, validation
during training and the benchmarks all go through here, so a checkpoint applied
to a new slide sees its inputs built exactly as during training.  Nothing here
imports :mod:`napari_flag.training`: a prediction runs without training code.

* :func:`prepare_slide` - features, spatial graph and (when the slide has
  counts) targets of one sample, as a :class:`SlideData`.
* :func:`predict_arrays` - a model on a prepared slide: target-scale mean, std
  and samples.
* :func:`iter_predict` - the whole path from a sample or path and a checkpoint,
  as a generator of :class:`Progress` events ending in a :class:`Result`; a
  napari ``thread_worker`` forwards them, and closing it cancels.
  :func:`predict_sample` is the same as a plain call.
* :func:`callback_events` - the bridge from a callback-style job (features,
  sampling, training) in a helper thread to such a generator.
"""
from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import anndata as ad
import numpy as np
import pandas as pd
import torch

from . import __version__
from ._io import atomic_path, check_output
from . import checkpoint as _checkpoint
from .checkpoint import NO_DEFAULT_MODEL, start_model_load
from .compat import check_compatibility, raise_for_errors
from .data import load_sample, with_pixel_size
from .data.h5ad import scanpy_spatial
from .data.lattice import SpotGeometry, virtual_spots
from .data.panel import SCALE_NAMES, GenePanel
from .data.tissue import TissueMask
from .data.tissue_input import mask_record
from .errors import FlagCancelled, FlagInputError
from .features import compute_features, get_encoder
from .features.encoders import resolve_device
from .graph import build_spatial_graph
from .metrics import array_rc
from .profiling import PhaseClock
from .record import PredictionRecord
from .streaming import FIRST_TILE_SPOTS, TILE_SPOTS, TileResult, plan_tiles, predict_tiles
from .model import SamplerConfig, network_calls, sample_expression, sampler_modes

__all__ = [
    "Progress",
    "Notice",
    "Result",
    "TileResult",
    "SlideData",
    "GenePanel",
    "prepare_slide",
    "predict_arrays",
    "iter_predict",
    "predict_sample",
    "write_prediction",
    "callback_events",
    "spots_for",
    "tissue_for",
    "encoder_identity",
    "make_encoder",
    "encoder_for_checkpoint",
    "resolve_device",
]

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``stage`` ("features", "sampling", ...) are finished."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Notice:
    """Something the user must hear before trusting the result (a model that does not fit the slide)."""

    code: str
    message: str


@dataclass(frozen=True)
class Result:
    """The prediction of one slide (see :func:`iter_predict` for its layout)."""

    adata: Any


@dataclass
class SlideData:
    """One slide, ready for the model.  ``targets`` are standardised; ``truth`` is on the target scale."""

    sample_id: str
    feats: torch.Tensor  # (S, D) float32
    graph: Any  # SpatialGraph
    coords: np.ndarray  # (S, 2) full-resolution pixels (isotropic; used for metrics)
    grid: str | None
    array_rc: np.ndarray | None = None  # (S, 2) array row/col: the lattice Moran's I is defined on
    targets: torch.Tensor | None = None  # (S, G) standardised, finite
    truth: np.ndarray | None = None  # (S, G) target scale, NaN for genes the slide lacks
    gene_ok: np.ndarray | None = None  # (G,) bool, genes present in the slide
    views: list | None = None  # training only: [(feats, graph)] of re-stained copies (stain augmentation)

    @property
    def n_spots(self) -> int:
        return int(self.feats.shape[0])

    def view(self, k: int) -> tuple[torch.Tensor, Any]:
        """Features and graph of copy ``k``: 0 is the slide as scanned, 1.. its re-stained copies."""
        return (self.feats, self.graph) if k == 0 else self.views[k - 1]

    def to(self, device) -> "SlideData":
        return SlideData(
            self.sample_id,
            self.feats.to(device),
            self.graph.to(device) if self.graph is not None else None,
            self.coords,
            self.grid,
            self.array_rc,
            None if self.targets is None else self.targets.to(device),
            self.truth,
            self.gene_ok,
            None if self.views is None else [(f.to(device), g.to(device)) for f, g in self.views],
        )


# ----------------------------------------------------------------------------- encoder
def _jsonable_kw(kw: dict) -> dict:
    out = {}
    for k, v in (kw or {}).items():
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
        elif isinstance(v, (list, tuple)):
            out[str(k)] = list(v)
        else:
            out[str(k)] = str(v)
    return out


def make_encoder(name: str, device="auto", kw: dict | None = None):
    kw = dict(kw or {})
    kw.pop("device", None)
    return get_encoder(name, device=device, **kw)


def encoder_identity(encoder, kw: dict | None = None) -> dict:
    """What a checkpoint records so prediction rebuilds the same encoder (and can check it)."""
    return {
        "name": str(encoder.name),
        "dim": int(encoder.dim),
        "patch_um": float(encoder.patch_um),
        "patch_px": int(encoder.patch_px),
        "weights_id": str(getattr(encoder, "weights_id", "") or ""),
        "kw": _jsonable_kw(kw or {}),
    }


def encoder_for_checkpoint(meta: dict, device="cpu"):
    """Rebuild the encoder a checkpoint was trained with (same name, weights, patch geometry)."""
    ident = dict(meta["encoder"])
    kw = dict(ident.get("kw") or {})
    kw["patch_um"] = float(ident["patch_um"])
    kw["patch_px"] = int(ident["patch_px"])
    enc = make_encoder(ident["name"].split("+")[0], device, kw)  # "+tta"/"+ctx..." come back from kw
    if meta.get("feat_dim") is not None and int(enc.dim) != int(meta["feat_dim"]):
        raise FlagInputError(
            f"{meta.get('path')}: model expects {meta['feat_dim']}-d features but encoder "
            f"{ident['name']!r} gives {enc.dim}-d"
        )
    want = ident.get("weights_id") or ""
    have = getattr(enc, "weights_id", "") or ""
    if want and have and want != have:
        warnings.warn(
            f"encoder weights differ from training ({have} vs {want}); predictions may be off",
            RuntimeWarning, stacklevel=2,
        )
    return enc


def slide_encoder(meta: dict, sample, device="cpu", stain_norm: bool | None = None, slide_stains=None):
    """The checkpoint's encoder for one slide: its patches normalised to the training stains when asked.

    ``stain_norm``: ``None`` follows the checkpoint (``meta["stain"]["normalise"]``),
    ``True``/``False`` turn Macenko normalisation to the recorded reference on
    or off (:mod:`napari_flag.features.stain_norm`).  ``slide_stains``: the
    slide's stains when known (a prediction's record), else estimated.
    """
    from .features.stain_norm import normalised_encoder

    enc = encoder_for_checkpoint(meta, device)
    ref = meta.get("stain") or None
    if stain_norm is None:
        stain_norm = bool(ref and ref.get("normalise", True))
    if not stain_norm:
        return enc
    if not ref:
        raise FlagInputError(f"{meta.get('path')}: the model records no stain reference (trained before stain "
                             "normalisation existed); it cannot normalise stains", setting="stain_norm")
    return normalised_encoder(enc, sample, ref, source=slide_stains)


def stain_record(encoder) -> dict | None:
    """What a prediction records of its stain normalisation (``None``: the patches were not normalised)."""
    record = getattr(getattr(encoder, "augment", None), "record", None)
    return record() if record is not None else None


# ----------------------------------------------------------------------------- slide
def spot_coords_um(sample) -> np.ndarray:
    """Spot centres in microns; pixels when the pixel size is unknown (the graph's
    distance weight is scale-free, so only ``radius_um`` is then off)."""
    c = sample.coords_um
    if c is None:
        warnings.warn(
            f"{sample.source or sample.sample_id}: pixel size unknown; graph distances in pixels",
            RuntimeWarning, stacklevel=2,
        )
        c = sample.coords
    return np.asarray(c, dtype=np.float64)


def prepare_slide(
    sample,
    encoder,
    graph: dict | None = None,
    panel: GenePanel | None = None,
    feature_cache: bool | str | Path = True,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    feats: np.ndarray | None = None,
) -> SlideData:
    """Features (cached), spatial graph and, with ``panel`` and counts, the targets of one sample.

    ``graph``: ``{"k": 8, "radius_um": None}`` as a checkpoint records it.
    ``feats`` skips the encoder when the features are already at hand.
    ``progress(done, total)`` follows the feature batches; raising from it aborts.
    """
    g = dict(graph or {})
    if feats is None:
        feats = compute_features(sample, encoder, batch_size=batch_size, cache=feature_cache, progress=progress)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    sg = build_spatial_graph(spot_coords_um(sample), feats, k=int(g.get("k") or 8), radius_um=g.get("radius_um"))
    slide = SlideData(str(sample.sample_id), torch.from_numpy(feats), sg, sample.coords, sample.grid,
                      array_rc(sample.adata))
    if panel is not None and sample.has_counts:
        slide.truth, slide.gene_ok = panel.targets(sample.adata)
        slide.targets = torch.from_numpy(panel.standardise(slide.truth))
    return slide


# ----------------------------------------------------------------------------- model
@torch.no_grad()
def predict_arrays(model, slide: SlideData, panel: GenePanel, steps: int | None = None,
                   samples: int | None = None, seed: int = 0, progress: ProgressFn | None = None,
                   return_samples: bool = False, **sampler) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Target-scale ``(mean, std, samples | None)`` of a model on a prepared slide.

    ``sampler`` passes solver, temperature, antithetic, mean, keep_samples ... to
    :func:`~napari_flag.model.sample_expression`.  Baselines (ridge, MLP) give
    std 0 and their prediction as the one sample.
    """
    if not isinstance(model, torch.nn.Module):  # ridge / MLP baseline
        sampler.pop("keep_samples", None)
        pred = panel.to_target(model.predict(slide.feats.cpu().numpy()))
        if progress:
            progress(1, 1)
        return pred, np.zeros_like(pred), (pred[None] if return_samples else None)
    model.eval()
    dev = model.device
    h = model.encode_slide(slide.feats.to(dev), slide.graph.to(dev) if slide.graph is not None else None)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    floor = torch.from_numpy(panel.floor).to(dev)
    if getattr(model, "is_joint", False):
        sampler.setdefault("neighbours", slide.graph.neighbour_matrix().to(dev))
    out = sample_expression(model, h, steps=steps, samples=samples, generator=gen, return_samples=return_samples,
                            progress=progress, clip_min=floor, **sampler)
    pred = panel.to_target(out["mean"].float().cpu().numpy())
    sd = out["std"].float().cpu().numpy() * panel.std
    smp = None
    if return_samples and out.get("samples") is not None:
        smp = panel.to_target(out["samples"].float().cpu().numpy())
    return pred, sd, smp


# ----------------------------------------------------------------------------- events
def callback_events(fn: Callable[[Callable[[Any], None]], Any]):
    """Run ``fn(emit)`` in a helper thread; yield every object it emits; return its result.

    This is how a callback-style job (the feature encoder's batches, sampler
    steps, a training run) becomes a generator a napari worker can drive.
    Closing the generator (a cancelled worker) makes the next ``emit`` raise
    :class:`FlagCancelled` inside ``fn``, so the job stops at its next event
    and nothing keeps running in the background.  An exception in ``fn`` is
    re-raised in the consumer's thread.
    """
    q: queue.Queue = queue.Queue()
    cancelled = threading.Event()
    box: dict[str, Any] = {}

    def emit(event) -> None:
        if cancelled.is_set():
            raise FlagCancelled("cancelled")
        q.put((event,))

    def target() -> None:
        try:
            box["value"] = fn(emit)
        except BaseException as exc:  # re-raised in the consumer's thread
            box["error"] = exc
        finally:
            q.put(None)

    t = threading.Thread(target=target, name="napari-flag job", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            yield item[0]
    finally:
        cancelled.set()
        t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _staged(stage: str, fn: Callable[[ProgressFn], Any]):
    """:func:`callback_events` for a job taking ``progress(done, total)``: yields :class:`Progress`."""
    return callback_events(lambda emit: fn(lambda done, total: emit(Progress(stage, int(done), int(total)))))


# ----------------------------------------------------------------------------- whole path
def _resolve_checkpoint(checkpoint) -> Path:
    if checkpoint is None:
        p = _checkpoint.default_checkpoint_path()  # looked up at call time: one place to point elsewhere
        if not p.is_file():
            raise FlagInputError(NO_DEFAULT_MODEL, setting="checkpoint")
        return p
    p = Path(checkpoint).expanduser()
    if not p.is_file():
        raise FlagInputError(f"{p}: checkpoint not found")
    return p


def _training_slides(meta) -> list[str]:
    """The slides a checkpoint was trained on, as recorded (ids) and as configured (ids or paths)."""
    tc = meta.get("train_config") or {}
    out: list[str] = []
    for s in list(meta.get("training_slides") or []) + list(tc.get("train") or []):
        if str(s) not in out:
            out.append(str(s))
    return out


def in_training_set(sample, slides: list[str]) -> bool:
    """Whether ``sample`` is one of a model's training slides (by dataset id, source or id)."""
    names = {str(sample.sample_id), str(sample.source or "")} - {""}
    for s in slides:
        if s in names or s.split(":", 1)[-1] in names:
            return True
    return False


def model_geometry(meta, spacing_um: float | None = None) -> SpotGeometry:
    """The spot geometry a checkpoint was trained on (diameter, pitch, lattice).

    A checkpoint from before geometry was recorded needs ``spacing_um``; its
    spots are then taken as half their pitch on a square lattice, as on
    legacy ST.
    """
    rec = meta.get("spot_geometry")
    if rec:
        return SpotGeometry.from_dict(rec)
    if spacing_um is None:
        raise FlagInputError(f"{meta.get('path')}: the model records no spot geometry", setting="spacing_um")
    return SpotGeometry(float(spacing_um) / 2.0, float(spacing_um), "square")


def tissue_for(sample, tissue=None):
    """The tissue mask to lay virtual spots on: ``None`` (detect it), a :class:`TissueMask`, or a file
    (mask image, QuPath GeoJSON, or a prediction whose recorded mask is reused)."""
    from .data.tissue import TissueMask, detect_tissue
    from .data.tissue_input import read_tissue_mask

    if tissue is None or isinstance(tissue, TissueMask):
        return tissue
    name = str(sample.source or sample.sample_id)
    return read_tissue_mask(tissue, sample.image.fullres_shape, sample.pixel_size_um,
                            detect=lambda: detect_tissue(sample.image, sample.pixel_size_um, source=name))


def spots_for(sample, meta, spacing_um: float | None = None, tissue=None):
    """``sample`` when it has spots; else virtual spots laid over its tissue with the model's geometry.

    ``tissue``: see :func:`tissue_for` (default: detected).

    The spots are the model's (diameter, lattice kind).  Their pitch is
    ``spacing_um`` when given; by default the model's pitch, refined by the
    smallest whole factor that lets the encoder's patches tile the tissue
    (:meth:`~napari_flag.data.lattice.SpotGeometry.covering`): at legacy ST's
    200 um, 112 um patches would leave three quarters of the tissue unseen,
    and a measured spot's nearest virtual spot would lie a median 110 um away
    (``benchmarks/results/virtual_spots.json``).
    """
    if sample.n_spots > 0:
        if tissue is not None:
            raise FlagInputError(f"{sample.source or sample.sample_id}: the slide has measured spots; a tissue "
                                 "mask only places virtual spots on slides without them")
        return sample
    if sample.image is None:
        raise FlagInputError(f"{sample.source or sample.sample_id}: no spots and no image to lay spots on")
    geometry = model_geometry(meta, spacing_um)
    if spacing_um is None:
        geometry = geometry.covering(float(meta.encoder["patch_um"]))
    return virtual_spots(sample, geometry, spacing_um=spacing_um, tissue=tissue_for(sample, tissue))


def _compatibility(sample, meta, panel: GenePanel) -> list:
    """What :func:`~napari_flag.compat.check_compatibility` finds between the slide and the model."""
    tissue = sample.metadata.get("tissue") if isinstance(sample.metadata, dict) else None
    fraction = tissue.get("fraction") if isinstance(tissue, dict) else None
    return check_compatibility(sample, panel.genes, float(meta.encoder["patch_um"]), int(meta.encoder["patch_px"]),
                               tissue_fraction=fraction)


def iter_predict(
    sample,
    checkpoint=None,
    steps: int | None = None,
    samples: int | None = None,
    device="auto",
    seed: int = 0,
    feature_cache: bool | str | Path = True,
    keep_sample: bool = True,
    spacing_um: float | None = None,
    pixel_size_um: float | None = None,
    tissue=None,
    tiles: bool = True,
    stain_norm: bool | None = None,
) -> Iterator[Progress | Notice | TileResult | Result]:
    """Yield :class:`Progress` and :class:`Notice` events, then one :class:`Result`.

    ``sample``: a :class:`~napari_flag.data.Sample` or anything ``load_sample``
    accepts (dataset id, folder, ``.h5ad``, image).  ``checkpoint``: a file, or
    ``None`` for the bundled default.  ``steps``/``samples`` default to the
    checkpoint's sampler settings.  Stopping iteration early (``close()``) is a
    clean cancel: nothing is returned and no helper thread keeps running.

    A slide without spots (a routine H&E image) gets virtual spots over its
    detected tissue with the model's spot geometry (pitch ``spacing_um`` when
    given) or over ``tissue`` (a :class:`~napari_flag.data.tissue.TissueMask`
    or a mask file, see :func:`tissue_for`); the mask used is recorded in
    ``uns["flag"]["tissue_mask"]`` (bit-packed), so passing the output file as
    ``tissue`` lays the same spots again.  Virtual spots of a whole slide are
    predicted tile by tile (``tiles=False``: all at once), each tile's result
    yielded as a :class:`~napari_flag.streaming.TileResult` as soon as it is
    made.  ``pixel_size_um`` overrides the file's pixel size.  Before any
    feature is computed the slide is checked against the model (genes,
    species, pixel size, tissue): errors raise, warnings are yielded as
    :class:`Notice` s and recorded in ``uns["flag"]["compatibility"]``.
    ``stain_norm``: see :func:`slide_encoder` (recorded in ``uns["flag"]["stain_norm"]``).

    The result has ``X`` = predicted mean on the target scale (clipped at 0),
    ``layers["std"]`` (spread over samples), ``layers["sample"]`` (one sample,
    when ``keep_sample`` and the model is generative), ``layers["truth"]`` when
    the slide has counts (NaN columns for panel genes it lacks, listed in
    ``uns["flag"]["truth_missing_genes"]``), ``obsm["spatial"]`` in full-res
    pixels, ``obs`` with the lattice ``array_row``/``array_col`` and ``in_tissue``
    when known, ``uns["spatial"]`` in scanpy's layout (``sc.pl.spatial`` works as
    is) and the run's metadata in ``uns["flag"]``.
    """
    ckpt_path = _resolve_checkpoint(checkpoint)
    clock = PhaseClock()
    sample = yield from _open_stage(sample, pixel_size_um, clock)
    dev = resolve_device(device)
    building, meta = start_model_load(ckpt_path, dev)  # the network builds while the slide is prepared
    try:
        panel = GenePanel.from_checkpoint(meta)
        sample, issues = yield from _spots_stage(sample, meta, panel, spacing_um, tissue, clock)
        encoder = slide_encoder(meta, sample, dev, stain_norm)
        plan = _tile_plan(sample, tiles)
        slide = None
        if plan is None:
            slide = yield from _features_stage(sample, encoder, meta, panel, feature_cache, clock)
        if not building.done():
            yield Progress("loading model", 0, 1)
        with clock.phase("model wait"):
            model = building.result()
    finally:
        building.join()  # a cancelled or failed run leaves no thread behind
    yield Progress("loading model", 1, 1)

    run = _SamplerRun.of(model, steps, samples, seed, keep_sample)
    if plan is None:
        with clock.phase("sampling"):
            pred, sd, smp = yield from _staged("sampling", lambda cb: predict_arrays(
                model, slide, panel, steps=run.steps, samples=run.samples, seed=run.seed, progress=cb,
                return_samples=run.keep_sample, keep_samples=1))
    else:
        pred, sd, smp = yield from _tiles_stage(model, sample, encoder, meta, panel, plan, run, feature_cache, clock)
        slide = SlideData(str(sample.sample_id), torch.empty(0), None, sample.coords, sample.grid)
    out = _prediction_anndata(sample, slide, panel, pred, sd, smp)
    out.uns["flag"] = _record(ckpt_path, meta, model, run, panel, sample, slide, issues, clock, encoder).to_uns()
    out.uns["spatial"] = scanpy_spatial(sample)
    yield Result(out)


def _open_stage(sample, pixel_size_um: float | None, clock: PhaseClock):
    """The sample (read when given as a path or id), with its pixel size overridden; it must have an image."""
    if not hasattr(sample, "adata"):
        yield Progress("loading sample", 0, 1)
        with clock.phase("open"), warnings.catch_warnings(record=True) as said:  # an image that could not be had is the error
            warnings.simplefilter("always")
            sample = load_sample(sample)
        if sample.image is not None or not sample.metadata.get("image_problem"):
            for w in said:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        yield Progress("loading sample", 1, 1)
    if pixel_size_um is not None:
        sample = with_pixel_size(sample, pixel_size_um)
    if sample.image is None:
        why = sample.metadata.get("image_problem")
        raise FlagInputError(why or f"{sample.source or sample.sample_id}: no H&E image; prediction needs one")
    return sample


def _spots_stage(sample, meta, panel: GenePanel, spacing_um, tissue, clock: PhaseClock):
    """Virtual spots on a slide without any, then the model-slide checks: ``(sample, issues)``."""
    if sample.n_spots == 0:
        yield Progress("tissue", 0, 1)
        with clock.phase("tissue"):
            sample = spots_for(sample, meta, spacing_um, tissue)
        yield Progress("tissue", 1, 1)
    elif tissue is not None:
        spots_for(sample, meta, spacing_um, tissue)  # says why a mask does not apply
    issues = _compatibility(sample, meta, panel)
    for issue in issues:  # warnings first, so a slide that also fails says everything wrong with it
        if not issue.is_error:
            yield Notice(issue.code, issue.message)
    raise_for_errors(issues, sample.source or sample.sample_id)
    return sample, issues


def _features_stage(sample, encoder, meta, panel: GenePanel, feature_cache, clock: PhaseClock):
    """Features of every spot, then the spatial graph: the whole slide as a :class:`SlideData`."""
    feature_stats: dict = {}
    with clock.phase("features") as row:
        feats = yield from _staged("features", lambda cb: compute_features(
            sample, encoder, cache=feature_cache, progress=cb, stats=feature_stats))
        row.update(feature_stats)
    yield Progress("graph", 0, 1)
    with clock.phase("graph"):
        slide = prepare_slide(sample, encoder, meta.get("graph"), panel, feats=feats)
    yield Progress("graph", 1, 1)
    return slide


def _tiles_stage(model, sample, encoder, meta, panel: GenePanel, plan, run: "_SamplerRun", feature_cache,
                 clock: PhaseClock):
    """The slide tile by tile in one job thread (:func:`~napari_flag.streaming.predict_tiles`)."""
    with clock.phase("tiles") as row:
        stats: dict = {"tiles": len(plan)}
        arrays = yield from callback_events(lambda emit: predict_tiles(
            model, sample, encoder, panel, plan, emit, graph=meta.get("graph"), run=run,
            feature_cache=feature_cache, stats=stats))
        row.update(stats)
    return arrays


@dataclass(frozen=True)
class _SamplerRun:
    """The sampler settings of one run, the model's defaults filled in."""

    steps: int
    samples: int
    seed: int
    keep_sample: bool
    generative: bool

    @classmethod
    def of(cls, model, steps, samples, seed: int, keep_sample: bool) -> "_SamplerRun":
        if not isinstance(model, torch.nn.Module):  # ridge / MLP: one deterministic prediction
            return cls(0, 1, int(seed), False, False)
        generative = model.cfg.network.mode == "diffusion"
        sampler = model.cfg.sampler
        return cls(int(steps or sampler.steps), int(samples or sampler.samples), int(seed),
                   bool(keep_sample and generative), generative)


def _record(ckpt_path, meta, model, run: _SamplerRun, panel: GenePanel, sample, slide, issues,
            clock: PhaseClock, encoder=None) -> PredictionRecord:
    """What the output says about its run (``uns["flag"]``)."""
    slides = _training_slides(meta)
    md = sample.metadata
    # the model's sampler at this run's counts (what sample_expression ran)
    sampler = model.cfg.sampler.replace(steps=run.steps, samples=run.samples) if run.generative else None
    mask = md.get("tissue_mask")
    return PredictionRecord(
        checkpoint=str(ckpt_path), method=str(meta.method), model_version=str(meta.get("version", "")),
        training_slides=slides, in_training_set=bool(in_training_set(sample, slides)),
        encoder=str(meta.encoder["name"]), encoder_dim=int(meta.encoder["dim"]),
        patch_um=float(meta.encoder["patch_um"]), patch_px=int(meta.encoder["patch_px"]),
        stain_norm=stain_record(encoder), steps=run.steps, samples=run.samples, seed=run.seed,
        solver=str(sampler.solver) if sampler else "", mean_rule=_mean_rule(sampler) if sampler else "",
        temperature=float(sampler.temperature) if sampler else None,
        network_calls_per_spot=network_calls(sampler) if sampler else None,
        transform=panel.transform, scale=SCALE_NAMES[panel.transform], **_truth_info(panel, slide),
        sample_id=str(sample.sample_id), source=str(sample.source or ""),
        spot_diameter_px=float(sample.spot_diameter_px),
        pixel_size_um=float(sample.pixel_size_um) if sample.pixel_size_um else None,
        grid=str(sample.grid) if sample.grid else None, virtual_spots=md.get("technology") == "virtual",
        spot_geometry=dict(md["spot_geometry"]) if "spot_geometry" in md else None,
        tissue=dict(md["tissue"]) if "tissue" in md else None,
        tissue_mask=mask_record(mask) if isinstance(mask, TissueMask) else None,
        compatibility={i.code: {"level": i.level, "message": i.message} for i in issues},
        timings=clock.as_dict(), version=str(__version__),
    )


def _tile_plan(sample, tiles: bool):
    """Tiles for a slide of virtual spots large enough to be worth streaming, else ``None``."""
    if not tiles or sample.has_counts or sample.metadata.get("technology") != "virtual":
        return None
    pitch_px = float(sample.metadata["inter_spot_dist_um"]) / float(sample.pixel_size_um)
    if sample.n_spots <= 2 * FIRST_TILE_SPOTS:
        return None
    return plan_tiles(sample.coords, pitch_px, tile_spots=TILE_SPOTS, first_spots=FIRST_TILE_SPOTS)


def _truth_info(panel: GenePanel, slide: SlideData) -> dict:
    if slide.gene_ok is None or not slide.gene_ok.any():
        return {}
    info: dict[str, Any] = {"truth_genes": int(slide.gene_ok.sum())}
    if not slide.gene_ok.all():
        info["truth_missing_genes"] = [g for g, o in zip(panel.genes, slide.gene_ok) if not o]
    return info


def _prediction_anndata(sample, slide: SlideData, panel: GenePanel, pred, sd, smp):
    obs = pd.DataFrame(index=pd.Index([str(s) for s in sample.spot_ids]))
    for col in ("array_row", "array_col", "in_tissue"):
        if col in sample.adata.obs:
            obs[col] = np.asarray(sample.adata.obs[col])
    out = ad.AnnData(X=pred.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(list(panel.genes))))
    out.layers["std"] = sd.astype(np.float32)
    if smp is not None:
        out.layers["sample"] = smp[0].astype(np.float32)
    if slide.gene_ok is not None and slide.gene_ok.any():
        out.layers["truth"] = slide.truth
    out.obsm["spatial"] = np.asarray(sample.coords, dtype=np.float64)
    return out


def _mean_rule(sampler: SamplerConfig) -> str:
    """How the recorded mean was formed (see :func:`~napari_flag.model.sample_expression`)."""
    if not sampler_modes(sampler)[0]:
        return "samples"
    like, samples = int(sampler.mean_like), int(sampler.samples)
    return f"blend of {samples} imitating {like}" if samples < like else f"mean of {samples} (fast)"


def predict_sample(sample, checkpoint=None, steps: int | None = None, samples: int | None = None,
                   device="auto", seed: int = 0, progress: Callable[[Progress], None] | None = None,
                   notice: Callable[[Notice], None] | None = None, **kw):
    """Run :func:`iter_predict` to the end; ``progress(event)`` sees every :class:`Progress`,
    ``notice(event)`` every :class:`Notice` (default: a ``RuntimeWarning``)."""
    for ev in iter_predict(sample, checkpoint=checkpoint, steps=steps, samples=samples, device=device,
                           seed=seed, **kw):
        if isinstance(ev, Result):
            return ev.adata
        if isinstance(ev, Notice):
            if notice is not None:
                notice(ev)
            else:
                warnings.warn(ev.message, RuntimeWarning, stacklevel=2)
        elif isinstance(ev, Progress) and progress is not None:
            progress(ev)
    raise RuntimeError("prediction ended without a result")  # pragma: no cover


def write_prediction(adata, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``.h5ad`` via a temporary file in the same folder, then rename (never half a file)."""
    out = check_output(out, overwrite)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    return out
