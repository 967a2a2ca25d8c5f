"""Checkpoints: one self-describing file per trained model.

A checkpoint holds only tensors and plain Python data (dicts, lists, strings,
numbers), so it loads with ``torch.load(weights_only=True)``: opening a model
file from the internet cannot execute code.  Besides the weights it carries
everything prediction needs to reproduce the training-time pipeline: the gene
panel, the target transform, the per-gene standardisation, the encoder identity
and the graph parameters.
"""
from __future__ import annotations

import os
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from . import __version__, resources_dir
from ._io import atomic_path
from .data.panel import TRANSFORMS
from .errors import FlagInputError
from .features.encoders import resolve_device
from .model import BASELINES, METHODS, FlagConfig, FlagModel

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "default_checkpoint_path",
    "load_model",
    "start_model_load",
    "export_checkpoint",
    "CheckpointMeta",
    "NO_DEFAULT_MODEL",
]

NO_DEFAULT_MODEL = "no bundled default model yet"

FORMAT = "napari-flag-checkpoint"
FORMAT_VERSION = 1
# Keys every checkpoint must have for prediction.
REQUIRED = ("format", "format_version", "method", "model", "genes", "mean", "std", "transform", "encoder")
# Keys only needed to resume training; dropped by export_checkpoint.
TRAINING_ONLY = ("model_raw", "optimizer", "rng", "train_state")


def default_checkpoint_path() -> Path:
    """The bundled default model (absent until the benchmark has trained it)."""
    return resources_dir() / "flag_default.pt"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())  # a checkpoint is what a killed run resumes from: make it durable


def _cpu(obj: Any) -> Any:
    """Tensors to CPU, recursively, so a checkpoint saved on a GPU opens anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


#: what a checkpoint must say about its model besides the weights (what prediction reads)
REQUIRED_FIELDS = ("method", "genes", "mean", "std", "transform", "encoder")
#: what resuming a run needs on top of the weights prediction uses
RESUME_FIELDS = ("model_raw", "optimizer", "rng", "train_state")


def save_checkpoint(path: str | Path, *, model_state: dict, step: int = 0, epoch: int = 0,
                    metrics: dict | None = None, resume: dict | None = None, **fields: Any) -> Path:
    """Write a checkpoint atomically and return its path.

    ``model_state`` is the weights prediction uses (the EMA weights for FLAG, the
    fitted arrays for a baseline); ``resume`` holds what resuming needs on top
    (:data:`RESUME_FIELDS`: raw weights, optimiser, RNG and training state).
    ``fields`` describe the model: :data:`REQUIRED_FIELDS`, then optionally
    ``model_config``, ``train_config``, ``graph``, ``feat_dim``, ``gene_prior``,
    ``prior_mask`` and anything else worth keeping (spot geometry, training slides).
    """
    missing = [k for k in REQUIRED_FIELDS if k not in fields]
    if missing:
        raise TypeError(f"save_checkpoint: missing {', '.join(missing)}")
    unknown = sorted(set(resume or {}) - set(RESUME_FIELDS))
    if unknown:
        raise TypeError(f"save_checkpoint: unknown resume field {unknown[0]!r}")
    feat_dim, graph = fields.pop("feat_dim", None), fields.pop("graph", None)
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": __version__,
        "model": model_state,
        "model_config": None,
        "train_config": None,
        "gene_prior": None,
        "prior_mask": None,
        **fields,
        "method": str(fields["method"]),
        "genes": [str(g) for g in fields["genes"]],
        "mean": torch.as_tensor(fields["mean"], dtype=torch.float32),
        "std": torch.as_tensor(fields["std"], dtype=torch.float32),
        "transform": str(fields["transform"]),
        "encoder": dict(fields["encoder"]),
        "graph": dict(graph or {}),
        "feat_dim": int(feat_dim) if feat_dim is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "metrics": metrics or {},
        **{k: (resume or {}).get(k) for k in RESUME_FIELDS},
    }
    _atomic_torch_save(_cpu(ckpt), Path(path))
    return Path(path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load and check a checkpoint; any failure is a one-line :class:`FlagInputError` naming the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FlagInputError(f"{p}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns on odd pickle protocols: noise on stderr
            warnings.simplefilter("ignore")
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated, not torch, or unsafe pickle content
        why = _load_problem(exc, p)
        raise FlagInputError(f"{p}: not a napari-flag checkpoint{f' ({why})' if why else ''}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FlagInputError(f"{p}: not a napari-flag checkpoint")
    try:
        version = int(ckpt.get("format_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version > FORMAT_VERSION:
        raise FlagInputError(
            f"{p}: checkpoint format {version} is newer than this napari-flag "
            f"supports ({FORMAT_VERSION}); upgrade napari-flag"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FlagInputError(f"{p}: incomplete checkpoint (missing {', '.join(missing)})")
    problem = _invalid_fields(ckpt)
    if problem:
        raise FlagInputError(f"{p}: invalid checkpoint ({problem})")
    return ckpt


def _load_problem(exc: BaseException, path: Path) -> str | None:
    """Why ``torch.load`` refused a file, when the reason helps; ``None`` for a
    file that is simply something else (torch's own text names its internals)."""
    text = str(exc).lower()
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in text and _looks_like_torch(path):
        # torch's safe unpickler stopped before building anything: no code from the file ran
        if "global" in text:
            return "refused: it holds Python objects besides tensors and plain data; nothing from it was run"
        return "refused: not made of tensors and plain data only; nothing from it was run"
    if isinstance(exc, EOFError) or path.stat().st_size == 0:
        return "empty file"
    if ("central directory" in text or "zip archive" in text) and _looks_like_torch(path):
        return "truncated or corrupt file"
    return None


def _looks_like_torch(path: Path) -> bool:
    """A zip archive (torch's format) or a pickle stream (its legacy format, and
    what a crafted file would be), judged by the first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return head[:2] == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _invalid_fields(ckpt: dict) -> str | None:
    """The first field a prediction would trip over, checked up front so the error names the file."""
    if ckpt["method"] not in METHODS:
        return f"unknown method {ckpt['method']!r}"
    if ckpt["transform"] not in TRANSFORMS:
        return f"unknown transform {ckpt['transform']!r}; expected one of {', '.join(TRANSFORMS)}"
    genes = ckpt["genes"]
    if not isinstance(genes, (list, tuple)) or not genes or not all(isinstance(g, str) for g in genes):
        return "gene panel is not a non-empty list of names"
    if len(set(genes)) != len(genes):
        return "gene panel has duplicate names"
    for k in ("mean", "std"):
        v = ckpt[k]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (len(genes),) or not torch.isfinite(v).all():
            return f"{k} is not {len(genes)} finite numbers, one per gene"
    if not bool((ckpt["std"] > 0).all()):
        return "std has non-positive entries"
    enc = ckpt["encoder"]
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str):
        return "encoder identity is missing its name"
    for k, typ in (("dim", int), ("patch_um", (int, float)), ("patch_px", int)):
        if not isinstance(enc.get(k), typ) or isinstance(enc.get(k), bool) or not enc[k] > 0:
            return f"encoder {k} is not a positive number"
    for k in ("model_config", "train_config", "graph"):
        if ckpt.get(k) is not None and not isinstance(ckpt[k], dict):
            return f"{k} is not a mapping"
    if ckpt["method"] not in BASELINES and not isinstance(ckpt.get("model_config"), dict):
        return "no model_config"
    return None


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy of ``src`` without the resume-only state (optimizer, raw weights, RNG): a smaller file to ship."""
    ckpt = load_checkpoint(src)
    for k in TRAINING_ONLY:
        ckpt[k] = None
    _atomic_torch_save(ckpt, Path(dst))
    return Path(dst)


class CheckpointMeta(dict):
    """The checkpoint dict minus the weights, with attribute access for the common fields."""

    @property
    def genes(self) -> list[str]:
        return list(self["genes"])

    @property
    def transform(self) -> str:
        return self["transform"]

    @property
    def method(self) -> str:
        return self["method"]

    @property
    def encoder(self) -> dict:
        return self["encoder"]


def build_model(ckpt: dict, path: str | Path = "<checkpoint>"):
    """Instantiate the model a checkpoint describes and load its (EMA) weights."""
    method = ckpt["method"]
    try:
        if method in BASELINES:
            return BASELINES[method].from_state(ckpt["model"])
        cfg = FlagConfig.from_dict(ckpt["model_config"] or {})
        model = FlagModel(
            cfg,
            n_genes=len(ckpt["genes"]),
            feat_dim=int(ckpt["feat_dim"]),
            gene_prior=ckpt.get("gene_prior"),
            prior_mask=ckpt.get("prior_mask"),
        )
        model.load_state_dict(ckpt["model"], strict=True)
        return model.eval()
    except FlagInputError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__  # state_dict errors put the point on line 2
        raise FlagInputError(f"{path}: checkpoint does not fit this napari-flag model ({text[:240]})") from exc


def load_model(path: str | Path | None = None, device: Any = "cpu"):
    """``(model, meta)`` from a checkpoint (default: the bundled model).

    ``meta`` holds everything but the weights (genes, mean, std, transform,
    encoder, graph, configs).  Baselines come back as objects with ``predict``.
    """
    meta, build = _open_model(path, device)
    return build(), meta


def start_model_load(path: str | Path | None = None, device: Any = "cpu"):
    """``(building, meta)``: the checkpoint read and checked now, its model built on a helper thread.

    Building the network imports torch_geometric, most of a model load (about
    1.3 of 1.5 s on a 2-core CPU); on a helper thread it overlaps what the
    caller does meanwhile (tissue detection, cached features, the graph).
    ``building.result()`` waits and gives :func:`load_model`'s model or raises
    its error; ``building.join()`` only waits.
    """
    meta, build = _open_model(path, device)
    return ModelBuild(build), meta


class ModelBuild:
    """A model being built on a helper thread (see :func:`start_model_load`)."""

    def __init__(self, build):
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(build,), name="napari-flag model", daemon=True)
        self._thread.start()

    def _run(self, build) -> None:
        try:
            self._box["model"] = build()
        except BaseException as exc:  # re-raised by result(), in the caller's thread
            self._box["error"] = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    def result(self):
        self.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["model"]


def _open_model(path, device):
    """``(meta, build)``: a checkpoint read and checked, and how to build its model on ``device``."""
    if path is None:
        path = default_checkpoint_path()
        if not Path(path).is_file():
            raise FlagInputError(NO_DEFAULT_MODEL, setting="checkpoint")
    ckpt = load_checkpoint(path, map_location="cpu")
    meta = CheckpointMeta({k: v for k, v in ckpt.items() if k not in ("model", *TRAINING_ONLY)})
    meta["path"] = str(Path(path))

    def build():
        model = build_model(ckpt, path)
        return model.to(resolve_device(device)) if isinstance(model, torch.nn.Module) else model

    return meta, build
