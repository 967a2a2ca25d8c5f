"""The training loop shared by ``napari-flag-train`` and the napari trainer widget.

One step = one training slide: the graph encoder runs on the whole slide, the
loss on a batch of its spots.  Weights are averaged (EMA) for prediction;
checkpoints are atomic and carry everything needed to resume bit-for-bit
(every step reseeds the RNG from ``(seed, step, rank)``, so a resumed run
draws exactly the noise the uninterrupted run would have drawn).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) the model is
wrapped in DistributedDataParallel; each rank takes a different slide per
step and only rank 0 validates and writes files.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .._io import atomic_write_text
from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.panel import GenePanel
from ..errors import FlagInputError
from ..features.encoders import resolve_device
from ..inference import SlideData, predict_arrays
from ..metrics import evaluate, jsonable, summarize
from ..model import BASELINES, FlagConfig, FlagModel
from ..model.config import FLAT_KEYS
from .config import LOWER_IS_BETTER, TrainConfig
from .data import PreparedData, prepare_data

__all__ = ["TrainCallbacks", "TrainEvent", "event_callbacks", "TrainResult", "train", "validate"]

CALLBACK_NAMES = ("on_progress", "on_log", "on_step", "on_epoch", "on_validation", "on_checkpoint")


class TrainCallbacks:
    """Override any of these; all are optional and called on rank 0 only.

    * ``on_progress(stage, done, total)`` while data are prepared (loading, features, graphs)
    * ``on_log(message)`` one-line status messages
    * ``on_step(step, losses)`` after every optimiser step; ``losses`` holds floats
      (``loss``, ``denoise``, ``align``, ``lr``, ``grad_norm``); ``step`` counts completed steps
    * ``on_epoch(epoch, info)`` when a pass over the training slides completes
    * ``on_validation(step, metrics)`` mean validation metrics (plus ``per_slide``)
    * ``on_checkpoint(path)`` after a checkpoint file is written
    """

    def on_progress(self, stage: str, done: int, total: int) -> None: ...
    def on_log(self, message: str) -> None: ...
    def on_step(self, step: int, losses: dict) -> None: ...
    def on_epoch(self, epoch: int, info: dict) -> None: ...
    def on_validation(self, step: int, metrics: dict) -> None: ...
    def on_checkpoint(self, path: str) -> None: ...


class _Dispatch:
    """Fan an event out to callback objects or ``{"on_step": fn}`` mappings."""

    def __init__(self, callbacks, enabled: bool = True):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Mapping) or not isinstance(callbacks, Sequence):
            callbacks = [callbacks]
        for cb in callbacks:
            if isinstance(cb, Mapping):
                bad = set(cb) - set(CALLBACK_NAMES)
                if bad:
                    raise ValueError(f"unknown callback name(s): {', '.join(sorted(bad))}")
        self.callbacks = list(callbacks)
        self.enabled = enabled

    def __call__(self, name: str, *args) -> None:
        if not self.enabled:
            return
        for cb in self.callbacks:
            fn = cb.get(name) if isinstance(cb, Mapping) else getattr(cb, name, None)
            if fn is not None:
                fn(*args)


@dataclass(frozen=True)
class TrainEvent:
    """One report of a training run, for consumers that take events rather than callbacks (the widget).

    ``kind`` is the callback name without ``on_``; ``data`` is ``(stage, done,
    total)`` for progress, the message for log, the losses for step, the
    epoch info for epoch, the metrics (without ``per_slide``) for validation and
    the path for checkpoint.
    """

    kind: str
    step: int = 0
    data: Any = None


def event_callbacks(emit: Callable[[TrainEvent], None]) -> dict:
    """Callbacks for :func:`train` that turn every report into a :class:`TrainEvent` for ``emit``."""
    return {
        "on_progress": lambda stage, done, total: emit(TrainEvent("progress", 0, (str(stage), int(done), int(total)))),
        "on_log": lambda msg: emit(TrainEvent("log", 0, str(msg))),
        "on_step": lambda step, losses: emit(TrainEvent("step", int(step), dict(losses))),
        "on_epoch": lambda epoch, info: emit(TrainEvent("epoch", int(info.get("step", 0)), dict(info, epoch=epoch))),
        "on_validation": lambda step, metrics: emit(
            TrainEvent("validation", int(step), {k: v for k, v in metrics.items() if k != "per_slide"})),
        "on_checkpoint": lambda path: emit(TrainEvent("checkpoint", 0, str(path))),
    }


@dataclass
class TrainResult:
    out_dir: str
    last_path: str | None
    best_path: str | None
    step: int
    epoch: int
    status: str  # "finished" | "stopped" | "early_stopped"
    best_metric: float | None
    genes: list[str]
    history: list[dict] = field(default_factory=list)  # validations
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)  # EMA model (or fitted baseline), ready to predict


# ----------------------------------------------------------------------------- distributed
def _dist_env() -> tuple[int, int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _dist_init(device: torch.device) -> bool:
    """Start the process group if torchrun asked for one; returns whether this call created it."""
    _, world, _ = _dist_env()
    if world <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (stop requests, early stopping)."""
    if world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ----------------------------------------------------------------------------- pieces
class _StepModule(nn.Module):
    """encode_slide + loss as one forward, so DDP sees (and syncs) the whole computation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats, graph, x0, idx, neighbours=None):
        h = self.model.encode_slide(feats, graph)
        if idx is not None:
            h = h[idx]
        return self.model.loss(x0, h, neighbours=neighbours)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    msd = model.state_dict()
    for k, v in ema.state_dict().items():
        src = msd[k]
        if v.dtype.is_floating_point:
            v.mul_(decay).add_(src.detach(), alpha=1.0 - decay)
        else:
            v.copy_(src)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up over the first 5% (at most 100 steps), then cosine to 10%."""
    warm = min(100, max(1, total // 20))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(rank) * 104_729) % (2**63 - 1)


def _slide_for(step: int, rank: int, world: int, n: int, seed: int) -> tuple[int, int]:
    """(slide index, epoch): each epoch visits every slide once in a seeded order, ranks interleaved."""
    g = step * world + rank
    epoch, pos = divmod(g, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_777 + epoch))
    return int(perm[pos]), epoch


def _epoch_of(step: int, world: int, n: int) -> int:
    """Completed epochs after ``step`` completed steps."""
    return (step * world) // n


def validate(model, slides: Sequence[SlideData], panel: GenePanel, cfg: TrainConfig) -> dict:
    """Mean metrics over the validation slides (few-step sampler), plus ``per_slide``."""
    per = {}
    for sl in slides:
        pred, _, _ = predict_arrays(model, sl, panel, steps=cfg.val_steps, samples=cfg.val_samples, seed=cfg.seed)
        per[sl.sample_id] = evaluate(pred, sl.truth, sl.coords, sl.array_rc, sl.grid, genes=panel.genes,
                                     seed=cfg.seed)
    summ = summarize(per)
    out = dict(summ["mean"])
    out["per_slide"] = summ["slides"]
    return out


def _better(a: float, b: float | None, metric: str) -> bool:
    if not np.isfinite(a):
        return False
    if b is None or not np.isfinite(b):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b




def _resume_mismatch(ckpt: dict, cfg: TrainConfig) -> str | None:
    """Why ``cfg`` would not continue the run saved in ``ckpt`` (None when it would).

    Resuming with another panel, target scale, encoder or model silently mixes
    two different runs, so each of these is an error instead.
    """
    tc = ckpt.get("train_config") or {}
    genes = list(ckpt["genes"])
    if ckpt.get("transform") != cfg.transform:
        return f"checkpoint transform {ckpt.get('transform')!r} differs from config transform {cfg.transform!r}"
    if cfg.genes is not None and list(cfg.genes) != genes:
        return f"gene panel differs (checkpoint {len(genes)} genes, config genes list {len(cfg.genes)})"
    if cfg.genes is None and tc.get("genes") is not None:
        return f"checkpoint was trained on a fixed panel of {len(genes)} genes, config selects its own"
    if cfg.genes is None and int(tc.get("n_genes", cfg.n_genes)) != cfg.n_genes:
        return f"gene panel differs (checkpoint n_genes={tc.get('n_genes')}, config n_genes={cfg.n_genes})"
    for key in ("encoder", "encoder_kw", "graph_k", "graph_radius_um"):
        if key in tc and json.dumps(tc[key], sort_keys=True) != json.dumps(getattr(cfg, key), sort_keys=True):
            return f"checkpoint {key}={tc[key]!r} differs from config {key}={getattr(cfg, key)!r}"
    if not cfg.is_baseline and isinstance(ckpt.get("model_config"), dict):
        return _model_mismatch(FlagConfig.from_dict(ckpt["model_config"]), cfg.flag_config())
    return None


def _model_mismatch(have: FlagConfig, want: FlagConfig) -> str | None:
    """The first network or noise field (by flat key) where the saved run's config differs from the
    config's; the sampler may differ (it changes no training)."""
    diff = [(flat, part, name) for flat, (part, name) in sorted(FLAT_KEYS.items())
            if part != "sampler" and getattr(getattr(have, part), name) != getattr(getattr(want, part), name)]
    if not diff:
        return None
    flat, part, name = diff[0]
    more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
    return (f"model {flat}={getattr(getattr(have, part), name)!r} in the checkpoint, "
            f"{getattr(getattr(want, part), name)!r} in the config{more}")


def _trim_log(path: Path, step: int) -> None:
    """Drop log records past the resumed step (a killed run logged steps its checkpoint lacks)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            past = isinstance(rec, dict) and int(rec.get("step", 0) or 0) > step
        except (ValueError, TypeError):  # a line cut short by the kill
            continue
        if isinstance(rec, dict) and not past:
            keep.append(line)
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _json_line(path: Path, rec: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(jsonable(rec)) + "\n")


# ----------------------------------------------------------------------------- the run
class _Run:
    """One training run, in named stages: open (resume), prepare data, build, steps, validate, save.

    Holds what the stages share (config, ranks, device, paths, model, EMA,
    optimiser, early-stopping state) so each stage is a short method.
    """

    def __init__(self, cfg: TrainConfig, callbacks, stop, resume: bool):
        self.cfg, self.stop, self.resume = cfg, stop, resume
        self.rank, self.world, local_rank = _dist_env()
        self.device = resolve_device(cfg.device, local_rank if self.world > 1 else None)
        self.is_main = self.rank == 0
        self.emit = _Dispatch(callbacks, enabled=self.is_main)
        self.out_dir = Path(cfg.out_dir).expanduser()
        self.last_path, self.best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        self.log_path = self.out_dir / "train_log.jsonl"
        self.t0 = time.time()
        self.ckpt: dict | None = None
        self.state = {"best": None, "best_step": None, "bad": 0, "history": [], "status": "running"}

    # -- stage 1: the output folder and what to resume from ------------------
    def open(self, data: PreparedData | None) -> None:
        cfg = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("last.pt", "best.pt", "config.yaml", "train_log.jsonl"):
                for tmp in self.out_dir.glob(f".{Path(name).stem}.*.tmp*"):  # left by a killed run's write
                    tmp.unlink(missing_ok=True)
        if not (self.resume and self.last_path.is_file()):
            if self.resume:
                self.emit("on_log", f"nothing to resume in {self.out_dir}; starting fresh")
            if self.is_main:  # a fresh run replaces an earlier one: no stale best.pt or log lines
                for stale in (self.best_path, self.log_path):
                    stale.unlink(missing_ok=True)
            return
        ckpt = load_checkpoint(self.last_path, map_location="cpu")
        where = self.last_path
        if ckpt.get("method") != cfg.method:
            raise FlagInputError(f"{where}: was trained with method {ckpt.get('method')!r}, config says {cfg.method!r}")
        if ckpt.get("train_state") is None or ckpt.get("model_raw") is None and not cfg.is_baseline:
            raise FlagInputError(f"{where}: holds no training state (an exported model?); cannot resume")
        if data is not None and list(data.genes) != list(ckpt["genes"]):
            raise FlagInputError(f"{where}: gene panel differs from the prepared data's; cannot resume")
        problem = _resume_mismatch(ckpt, cfg)
        if problem:
            raise FlagInputError(f"{where}: {problem}; cannot resume (use its settings or a new out_dir)")
        if self.is_main:
            _trim_log(self.log_path, int(ckpt["step"]))
        self.emit("on_log", f"resuming from {where} at step {ckpt['step']}")
        self.ckpt = ckpt

    # -- stage 2: data -------------------------------------------------------
    def prepare(self, data: PreparedData | None) -> PreparedData:
        if data is None:
            panel = GenePanel.from_checkpoint(self.ckpt) if self.ckpt is not None else None
            self.emit("on_log", "preparing data")
            data = prepare_data(self.cfg, progress=lambda *a: self.emit("on_progress", *a), panel=panel,
                                device=self.device)
        if self.is_main:
            atomic_write_text(self.out_dir / "config.yaml", self.cfg.to_yaml())
        self.emit("on_log", f"{len(data.train)} training / {len(data.val)} validation slides, "
                            f"{len(data.genes)} genes, features {data.feat_dim}-d, device {self.device}")
        self.data = data
        p = data.panel
        self.common = dict(
            method=self.cfg.method, genes=list(p.genes), mean=p.mean, std=p.std, transform=p.transform,
            encoder=data.encoder, train_config=self.cfg.to_dict(), graph=data.graph, feat_dim=data.feat_dim,
            spot_geometry=data.spot_geometry, training_slides=list(data.training_slides), stain=data.stain,
        )
        return data

    # -- stage 3: model, EMA, optimiser (restored when resuming) -------------
    def build(self) -> None:
        cfg, data = self.cfg, self.data
        torch.manual_seed(cfg.seed)
        model = FlagModel(cfg.flag_config(), n_genes=len(data.genes), feat_dim=data.feat_dim,
                          gene_prior=data.gene_prior, prior_mask=data.prior_mask)
        model.set_feature_stats(torch.cat([s.feats for s in data.train]).cpu())
        model.to(self.device)
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        self.start = 0
        if self.ckpt is not None:
            try:
                model.load_state_dict(self.ckpt["model_raw"])
                ema.load_state_dict(self.ckpt["model"])
                opt.load_state_dict(self.ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise FlagInputError(f"{self.last_path}: does not match this config's model "
                                     f"({' '.join(str(exc).split())[:240]})") from exc
            self.start = int(self.ckpt["step"])
            self.state.update(self.ckpt["train_state"])
        self.model, self.ema, self.opt = model, ema, opt
        self.common.update(model_config=model.cfg.to_dict(), gene_prior=data.gene_prior, prior_mask=data.prior_mask)
        self.n_train = len(data.train)
        self.total = cfg.steps if cfg.epochs is None else cfg.epochs * math.ceil(self.n_train / self.world)
        self.slides = [s.to(self.device) for s in data.train]
        # joint denoising reads every spot's neighbours: one sparse matrix per slide, built once
        self.nbr_w = [s.graph.neighbour_matrix() if model.is_joint else None for s in self.slides]
        self.step_mod: nn.Module = _StepModule(model)
        if self.world > 1:
            self.step_mod = DDP(self.step_mod, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                find_unused_parameters=True)

    # -- stage 4: one optimiser step -------------------------------------------
    def one_step(self, step: int) -> dict:
        cfg = self.cfg
        si, _ = _slide_for(step, self.rank, self.world, self.n_train, cfg.seed)
        sl = self.slides[si]
        torch.manual_seed(_step_seed(cfg.seed, step, self.rank))
        idx = None
        if 0 < cfg.batch_spots < sl.n_spots:
            idx = torch.randperm(sl.n_spots)[: cfg.batch_spots].to(self.device)
        x0 = sl.targets if idx is None else sl.targets[idx]
        lr = _lr_at(cfg, step, self.total)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        feats, graph = sl.feats, sl.graph
        if sl.views:  # stain augmentation: the slide as scanned or one of its re-stained copies
            feats, graph = sl.view(int(torch.randint(len(sl.views) + 1, ())))
        nb = (self.nbr_w[si], sl.targets, idx) if self.model.is_joint else None
        losses = self.step_mod(feats, graph, x0, idx, nb)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.opt.step()
        _ema_update(self.ema, self.model, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
        rec = {k: float(v.detach()) for k, v in losses.items()}
        rec.update(lr=lr, grad_norm=float(gn), slide=sl.sample_id)
        if not np.isfinite(rec["loss"]):
            raise FloatingPointError(f"training diverged at step {step + 1} (loss {rec['loss']}); lower lr")
        return rec

    # -- stage 5: validation and early stopping --------------------------------
    def validate(self, step: int) -> bool:
        """Validate on rank 0; True when early stopping triggers (on every rank)."""
        stop_now = False
        if self.is_main and self.data.val:
            metrics = validate(self.ema, self.data.val, self.data.panel, self.cfg)
            metrics["step"] = step
            st = self.state
            st["history"].append(dict(metrics))
            val = float(metrics.get(self.cfg.val_metric, float("nan")))
            improved = _better(val, st["best"], self.cfg.val_metric)
            if improved:
                st["best"], st["best_step"], st["bad"] = val, step, 0
            else:
                st["bad"] += 1
            _json_line(self.log_path, {"event": "validation", **metrics})
            self.emit("on_validation", step, metrics)
            if improved:
                self.save(self.best_path, step)
            stop_now = self.cfg.patience > 0 and st["bad"] >= self.cfg.patience
        return _any_rank(stop_now, self.world, self.device)

    # -- stage 6: checkpoints ------------------------------------------------
    def save(self, path: Path, step: int) -> None:
        if not self.is_main:
            return
        rng = {"torch": torch.get_rng_state(), "seed": self.cfg.seed}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        st = self.state
        save_checkpoint(
            path, model_state=self.ema.state_dict(), step=step, epoch=_epoch_of(step, self.world, self.n_train),
            metrics=st["history"][-1] if st["history"] else {},
            resume={"model_raw": self.model.state_dict(), "optimizer": self.opt.state_dict(), "rng": rng,
                    "train_state": dict(st)},
            **self.common,
        )
        self.emit("on_checkpoint", str(path))

    def _checkpoint_due(self, step: int) -> bool:
        """``last.pt`` every ``ckpt_every`` steps, or once per epoch (a killed run loses at most one)."""
        every = self.cfg.ckpt_every
        if every > 0:
            return step % every == 0
        return every == 0 and _epoch_of(step, self.world, self.n_train) > _epoch_of(step - 1, self.world, self.n_train)

    # -- the loop ------------------------------------------------------------
    def loop(self) -> tuple[int, str]:
        cfg, world, n = self.cfg, self.world, self.n_train
        step, status = self.start, "finished"
        last_val = self.start if self.ckpt is not None and self.state["history"] else -1
        while step < self.total:
            if _any_rank(self.stop is not None and self.stop.is_set(), world, self.device):
                status = "stopped"
                break
            rec = self.one_step(step)
            step += 1
            self.emit("on_step", step, rec)
            if self.is_main and (step % max(cfg.log_every, 1) == 0 or step == self.total):
                _json_line(self.log_path, {"event": "step", "step": step, **rec})
            if _epoch_of(step, world, n) > _epoch_of(step - 1, world, n):
                self.emit("on_epoch", _epoch_of(step, world, n), {"step": step, "loss": rec["loss"]})
            if cfg.val_every > 0 and step % cfg.val_every == 0 and step < self.total:
                early, last_val = self.validate(step), step
                self.save(self.last_path, step)
                if early:
                    status = "early_stopped"
                    break
            elif self._checkpoint_due(step):
                self.save(self.last_path, step)
        if status == "finished" and self.data.val and last_val != step:
            self.validate(step)
        self.state["status"] = status
        self.save(self.last_path, step)
        return step, status

    def result(self, step: int, status: str) -> TrainResult:
        return TrainResult(
            out_dir=str(self.out_dir), last_path=str(self.last_path),
            best_path=str(self.best_path if self.best_path.is_file() else self.last_path),
            step=step, epoch=_epoch_of(step, self.world, self.n_train), status=status,
            best_metric=self.state["best"], genes=list(self.data.genes), history=list(self.state["history"]),
            seconds=time.time() - self.t0, model=self.ema,
        )


def train(
    cfg: TrainConfig,
    callbacks=None,
    stop=None,
    resume: bool = False,
    data: PreparedData | None = None,
) -> TrainResult:
    """Train (or fit a baseline) as ``cfg`` says; returns where the checkpoints went.

    ``stop``: ``threading.Event`` or any object with ``is_set()``; checked before
    every step, so a request is honoured within one step: the current state is
    saved to ``out_dir/last.pt`` and the function returns with status
    ``"stopped"``.  ``resume=True`` continues from ``out_dir/last.pt`` (if present)
    at its saved step, with its gene panel and standardisation.  ``data`` reuses
    an already prepared :class:`PreparedData` (its panel wins over ``cfg``).
    """
    run = _Run(cfg, callbacks, stop, resume)
    created_pg = _dist_init(run.device)
    try:
        run.open(data)
        run.prepare(data)
        if cfg.is_baseline:
            return _fit_baseline(run)
        run.build()
        step, status = run.loop()
        if run.world > 1:
            dist.barrier()
        return run.result(step, status)
    finally:
        if created_pg:
            dist.destroy_process_group()


def _fit_baseline(run: _Run) -> TrainResult:
    """Ridge / MLP: fit once on every training spot, validate, save (rank 0 only)."""
    cfg, data = run.cfg, run.data
    kw = dict(cfg.baseline)
    kw.setdefault("seed", cfg.seed)
    model = BASELINES[cfg.method](**kw)
    run.emit("on_log", f"fitting {cfg.method} on {sum(s.n_spots for s in data.train)} spots")
    model.fit([s.feats.cpu().numpy() for s in data.train], [s.targets.cpu().numpy() for s in data.train])
    history, best = [], None
    if data.val:
        metrics = validate(model, data.val, data.panel, cfg)
        metrics["step"] = 1
        history.append(metrics)
        best = float(metrics.get(cfg.val_metric, float("nan")))
        run.emit("on_validation", 1, metrics)
        if run.is_main:
            _json_line(run.log_path, {"event": "validation", **metrics})
    if run.is_main:
        state = {"best": best, "best_step": 1, "bad": 0, "history": history, "status": "finished"}
        save_checkpoint(run.last_path, model_state=model.state_dict(), step=1, epoch=1,
                        resume={"train_state": state}, metrics=history[-1] if history else {}, **run.common)
        run.emit("on_checkpoint", str(run.last_path))
    return TrainResult(str(run.out_dir), str(run.last_path), str(run.last_path), 1, 1, "finished", best,
                       list(data.genes), history, time.time() - run.t0, model)
