"""Predict the expression of every spot of a slide with a trained checkpoint.

:func:`iter_predict` is a generator of progress events so that a napari
``thread_worker`` can forward them to a progress bar and cancel between two
events; :func:`predict_sample` is the plain-function wrapper the CLI uses.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import FlagCancelled, FlagInputError

__all__ = ["iter_predict", "predict_sample", "write_prediction", "NO_DEFAULT_MODEL"]

NO_DEFAULT_MODEL = "no bundled default model yet; pass --checkpoint"
Event = tuple  # ("progress", done, total, message) | ("result", AnnData)


def _pump(fn: Callable[[Callable[[int, int], None]], Any], message: str):
    """Run ``fn(progress)`` in a helper thread and re-yield its progress calls as events.

    Closing the generator (a cancelled worker) makes the next ``progress`` call
    raise :class:`FlagCancelled` inside ``fn``, so the helper stops after at most
    one more batch / sampler step and nothing keeps running in the background.
    """
    q: queue.Queue = queue.Queue()
    cancelled = threading.Event()
    box: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if cancelled.is_set():
            raise FlagCancelled(message)
        q.put(("progress", int(done), int(total), message))

    def target() -> None:
        try:
            box["value"] = fn(progress)
        except BaseException as exc:  # re-raised in the consumer's thread
            box["error"] = exc
        finally:
            q.put(None)

    t = threading.Thread(target=target, name=f"napari-flag {message}", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                break
            yield item
    finally:
        cancelled.set()
        t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _resolve_checkpoint(checkpoint) -> Path:
    from .checkpoint import default_checkpoint_path

    if checkpoint is None:
        p = default_checkpoint_path()
        if not p.is_file():
            raise FlagInputError(NO_DEFAULT_MODEL)
        return p
    p = Path(checkpoint).expanduser()
    if not p.is_file():
        raise FlagInputError(f"{p}: checkpoint not found")
    return p


def _encoder_for(meta: dict, device):
    """Rebuild the encoder the checkpoint was trained with (same name, weights, patch geometry)."""
    from .training.data import make_encoder

    ident = dict(meta["encoder"])
    kw = dict(ident.get("kw") or {})
    kw["patch_um"] = float(ident["patch_um"])
    kw["patch_px"] = int(ident["patch_px"])
    enc = make_encoder(ident["name"], device, kw)
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
            RuntimeWarning, stacklevel=3,
        )
    return enc


def iter_predict(
    sample,
    checkpoint=None,
    steps: int | None = None,
    samples: int | None = None,
    device="auto",
    seed: int = 0,
    feature_cache: bool | str | Path = True,
    keep_sample: bool = True,
) -> Iterator[Event]:
    """Yield ``("progress", done, total, message)`` events, then ``("result", AnnData)``.

    ``sample``: a :class:`~napari_flag.data.Sample` or anything ``load_sample``
    accepts (dataset id, folder, ``.h5ad``, image).  ``checkpoint``: a file, or
    ``None`` for the bundled default.  ``steps``/``samples`` default to the
    checkpoint's sampler settings.  Stopping iteration early (``close()``) is a
    clean cancel.

    The result has ``X`` = predicted mean on the target scale (clipped at 0),
    ``layers["std"]`` (spread over samples), ``layers["sample"]`` (one sample,
    when ``keep_sample`` and the model is generative), ``layers["truth"]`` when
    the slide has counts (NaN columns for panel genes it lacks, listed in
    ``uns["flag"]["truth_missing_genes"]``), ``obsm["spatial"]`` in full-res
    pixels and the run's metadata in ``uns["flag"]``.
    """
    import anndata as ad
    import pandas as pd
    import torch

    from . import __version__
    from .checkpoint import load_model
    from .training.data import SlideData, slide_graph, target_matrix
    from .training.loop import predict_slide, resolve_device

    ckpt_path = _resolve_checkpoint(checkpoint)
    if not hasattr(sample, "adata"):
        yield ("progress", 0, 1, "loading sample")
        from .data import load_sample

        sample = load_sample(sample)
        yield ("progress", 1, 1, "loading sample")
    if sample.n_spots == 0:
        raise FlagInputError(f"{sample.source or sample.sample_id}: no spots to predict")
    if sample.image is None:
        raise FlagInputError(f"{sample.source or sample.sample_id}: no H&E image; prediction needs one")

    yield ("progress", 0, 1, "loading model")
    dev = resolve_device(device)
    model, meta = load_model(ckpt_path, dev)
    genes, transform = meta.genes, meta.transform
    mean = meta["mean"].numpy().astype(np.float32)
    std = meta["std"].numpy().astype(np.float32)
    encoder = _encoder_for(meta, dev)
    yield ("progress", 1, 1, "loading model")

    from .features import compute_features

    feats = yield from _pump(
        lambda cb: compute_features(sample, encoder, cache=feature_cache, progress=cb), "features"
    )
    yield ("progress", 0, 1, "graph")
    g = meta.get("graph") or {}
    graph = slide_graph(sample, feats, int(g.get("k", 8)), g.get("radius_um"))
    yield ("progress", 1, 1, "graph")

    generative = isinstance(model, torch.nn.Module) and model.cfg.mode == "diffusion"
    if isinstance(model, torch.nn.Module):
        steps = int(steps or model.cfg.sample_steps)
        samples = int(samples or model.cfg.sample_count)
    else:
        steps, samples = 0, 1
    slide = SlideData(str(sample.sample_id), torch.from_numpy(np.asarray(feats, dtype=np.float32)), graph,
                      sample.coords, sample.grid)
    pred, sd, smp = yield from _pump(
        lambda cb: predict_slide(model, slide, mean, std, transform, steps=steps, samples=samples, seed=seed,
                                 progress=cb, return_samples=keep_sample and generative),
        "sampling",
    )

    obs = pd.DataFrame(index=pd.Index([str(s) for s in sample.spot_ids], name=None))
    for col in ("array_row", "array_col", "in_tissue"):
        if col in sample.adata.obs:
            obs[col] = np.asarray(sample.adata.obs[col])
    var = pd.DataFrame(index=pd.Index(genes))
    out = ad.AnnData(X=pred.astype(np.float32), obs=obs, var=var)
    out.layers["std"] = sd.astype(np.float32)
    if smp is not None:
        out.layers["sample"] = smp[0].astype(np.float32)
    out.obsm["spatial"] = np.asarray(sample.coords, dtype=np.float64)
    info: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "method": str(meta.method),
        "steps": int(steps),
        "samples": int(samples),
        "solver": str(model.cfg.sample_solver) if generative else "",
        "seed": int(seed),
        "transform": str(transform),
        "sample_id": str(sample.sample_id),
        "source": str(sample.source or ""),
        "encoder": str(meta.encoder["name"]),
        "encoder_dim": int(meta.encoder["dim"]),
        "patch_um": float(meta.encoder["patch_um"]),
        "patch_px": int(meta.encoder["patch_px"]),
        "spot_diameter_px": float(sample.spot_diameter_px),
        "version": str(__version__),
        "model_version": str(meta.get("version", "")),
    }
    if sample.grid:
        info["grid"] = str(sample.grid)
    if sample.pixel_size_um:
        info["pixel_size_um"] = float(sample.pixel_size_um)
    if sample.has_counts:
        truth, ok = target_matrix(sample, genes, transform)
        if ok.any():
            out.layers["truth"] = truth
            info["truth_genes"] = int(ok.sum())
            if not ok.all():
                info["truth_missing_genes"] = [g for g, o in zip(genes, ok) if not o]
    out.uns["flag"] = info
    yield ("result", out)


def predict_sample(sample, checkpoint=None, steps: int | None = None, samples: int | None = None,
                   device="auto", seed: int = 0, progress: Callable[[int, int, str], None] | None = None,
                   **kw):
    """Run :func:`iter_predict` to the end; ``progress(done, total, message)`` sees every event."""
    for ev in iter_predict(sample, checkpoint=checkpoint, steps=steps, samples=samples, device=device,
                           seed=seed, **kw):
        if ev[0] == "result":
            return ev[1]
        if progress is not None:
            progress(ev[1], ev[2], ev[3])
    raise RuntimeError("prediction ended without a result")  # pragma: no cover


def write_prediction(adata, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``.h5ad`` via a temporary file in the same folder, then rename (never half a file)."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise FlagInputError(f"{out}: already exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise FlagInputError(f"{out.parent}: output folder does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.h5ad", dir=out.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):  # disk full, permissions: say which file was not written
            raise FlagInputError(f"{out}: not written ({exc.strerror or exc})") from exc
        raise
    return out
