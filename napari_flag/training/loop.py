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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import FlagInputError
from .config import LOWER_IS_BETTER, TrainConfig
from .data import PreparedData, SlideData, prepare_data

__all__ = ["TrainCallbacks", "TrainResult", "train", "validate", "predict_slide", "resolve_device"]

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


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` = cuda > mps > cpu; under torchrun each rank gets its own GPU."""
    from ..features.encoders import resolve_device as _rd

    dev = _rd(device)
    if dev.type == "cuda" and local_rank is not None and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


# ----------------------------------------------------------------------------- distributed
def _dist_env() -> tuple[int, int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _dist_init(device: torch.device) -> bool:
    """Start the process group if torchrun asked for one; returns whether this call created it."""
    import torch.distributed as dist

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
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ----------------------------------------------------------------------------- pieces
class _StepModule(nn.Module):
    """encode_slide + loss as one forward, so DDP sees (and syncs) the whole computation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats, graph, x0, idx):
        h = self.model.encode_slide(feats, graph)
        if idx is not None:
            h = h[idx]
        return self.model.loss(x0, h)


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


def _target_floor(transform: str, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardised value of the smallest valid target (0 on every supported scale)."""
    return ((0.0 - mean) / std).astype(np.float32)


@torch.no_grad()
def predict_slide(model, slide: SlideData, mean, std, transform: str, steps: int | None = None,
                  samples: int | None = None, seed: int = 0, progress=None, return_samples: bool = False,
                  solver: str | None = None):
    """Target-scale ``(mean, std, samples|None)`` numpy arrays for one prepared slide."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if not isinstance(model, nn.Module):  # ridge / MLP baseline
        z = np.asarray(model.predict(slide.feats.cpu().numpy()), dtype=np.float32)
        pred = np.maximum(z * std + mean, 0.0)
        if progress:
            progress(1, 1)
        return pred, np.zeros_like(pred), (pred[None] if return_samples else None)
    model.eval()
    dev = model.device
    h = model.encode_slide(slide.feats.to(dev), slide.graph.to(dev) if slide.graph is not None else None)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    floor = torch.from_numpy(_target_floor(transform, mean, std)).to(dev)
    out = model.sample(h, steps=steps, samples=samples, generator=gen, return_samples=return_samples,
                       progress=progress, clip_min=floor, solver=solver)
    m, s = out["mean"].float().cpu().numpy(), out["std"].float().cpu().numpy()
    pred = np.maximum(m * std + mean, 0.0)
    sd = s * std
    smp = None
    if return_samples and out.get("samples") is not None:
        smp = np.maximum(out["samples"].float().cpu().numpy() * std + mean, 0.0)
    return pred, sd, smp


def validate(model, slides: Sequence[SlideData], data: PreparedData, cfg: TrainConfig) -> dict:
    """Mean metrics over the validation slides (few-step sampler), plus ``per_slide``."""
    from ..metrics import evaluate_slide, summarize

    per = {}
    for sl in slides:
        pred, _, _ = predict_slide(model, sl, data.mean, data.std, data.transform,
                                   steps=cfg.val_steps, samples=cfg.val_samples, seed=cfg.seed)
        ok = sl.gene_ok if sl.gene_ok is not None else np.ones(pred.shape[1], bool)
        per[sl.sample_id] = evaluate_slide(
            pred[:, ok], sl.truth[:, ok], sl.coords, grid=sl.grid or "auto",
            genes=[g for g, o in zip(data.genes, ok) if o], seed=cfg.seed,
        )
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


# FlagConfig keys that only change sampling (prediction, validation), not what is trained.
SAMPLER_KEYS = ("sample_solver", "sample_steps", "sample_count", "sample_temperature", "sample_antithetic",
                "guidance", "align_dim")


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
        have = {k: v for k, v in ckpt["model_config"].items() if k not in SAMPLER_KEYS}
        want = {k: v for k, v in cfg.flag_config().to_dict().items() if k not in SAMPLER_KEYS}
        diff = sorted(k for k in set(have) | set(want)
                      if json.dumps(have.get(k), sort_keys=True) != json.dumps(want.get(k), sort_keys=True))
        if diff:
            k = diff[0]
            more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
            return f"model {k}={have.get(k)!r} in the checkpoint, {want.get(k)!r} in the config{more}"
    return None


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    _atomic_text(path, "".join(ln + "\n" for ln in keep))


def _json_line(path: Path, rec: dict) -> None:
    from ..metrics import jsonable

    with open(path, "a") as fh:
        fh.write(json.dumps(jsonable(rec)) + "\n")


# ----------------------------------------------------------------------------- main entry
def train(
    cfg: TrainConfig,
    callbacks=None,
    stop=None,
    resume: bool = False,
    data: PreparedData | None = None,
) -> TrainResult:
    """Train (or fit a baseline) as ``cfg`` says; returns where the checkpoints went.

    ``stop``: ``threading.Event`` or any object with ``is_set()``; checked before
    and after every step, so a request is honoured within one step: the current
    state is saved to ``out_dir/last.pt`` and the function returns with status
    ``"stopped"``.  ``resume=True`` continues from ``out_dir/last.pt`` (if present)
    at its saved step, with its gene panel and standardisation.  ``data`` reuses
    an already prepared :class:`PreparedData` (its panel wins over ``cfg``).
    """
    from ..checkpoint import load_checkpoint, save_checkpoint

    t0 = time.time()
    rank, world, local_rank = _dist_env()
    device = resolve_device(cfg.device, local_rank if world > 1 else None)
    created_pg = _dist_init(device)
    is_main = rank == 0
    emit = _Dispatch(callbacks, enabled=is_main)
    out_dir = Path(cfg.out_dir).expanduser()
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    log_path = out_dir / "train_log.jsonl"
    try:
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("last.pt", "best.pt", "config.yaml", "train_log.jsonl"):
                for tmp in out_dir.glob(f".{name}.*.tmp"):  # left by a killed run's atomic write
                    tmp.unlink(missing_ok=True)

        ckpt = None
        if resume and last_path.is_file():
            ckpt = load_checkpoint(last_path, map_location="cpu")
            if ckpt.get("method") != cfg.method:
                raise FlagInputError(
                    f"{last_path}: was trained with method {ckpt.get('method')!r}, config says {cfg.method!r}"
                )
            if ckpt.get("train_state") is None or ckpt.get("model_raw") is None and not cfg.is_baseline:
                raise FlagInputError(f"{last_path}: holds no training state (an exported model?); cannot resume")
            if data is not None and list(data.genes) != list(ckpt["genes"]):
                raise FlagInputError(f"{last_path}: gene panel differs from the prepared data's; cannot resume")
            problem = _resume_mismatch(ckpt, cfg)
            if problem:
                raise FlagInputError(f"{last_path}: {problem}; cannot resume (use its settings or a new out_dir)")
            if is_main:
                _trim_log(log_path, int(ckpt["step"]))
            emit("on_log", f"resuming from {last_path} at step {ckpt['step']}")
        else:
            if resume:
                emit("on_log", f"nothing to resume in {out_dir}; starting fresh")
            if is_main:  # a fresh run replaces an earlier one: no stale best.pt or log lines
                for stale in (best_path, log_path):
                    stale.unlink(missing_ok=True)

        if data is None:
            genes = stats = None
            if ckpt is not None:
                genes = list(ckpt["genes"])
                stats = (ckpt["mean"].numpy(), ckpt["std"].numpy())
            emit("on_log", "preparing data")
            data = prepare_data(cfg, progress=lambda *a: emit("on_progress", *a), genes=genes, stats=stats,
                                device=device)
        if is_main:
            _atomic_text(out_dir / "config.yaml", cfg.to_yaml())
        emit("on_log", f"{len(data.train)} training / {len(data.val)} validation slides, "
                       f"{len(data.genes)} genes, features {data.feat_dim}-d, device {device}")

        common = dict(
            method=cfg.method, genes=data.genes, mean=data.mean, std=data.std, transform=data.transform,
            encoder=data.encoder, train_config=cfg.to_dict(), graph=data.graph, feat_dim=data.feat_dim,
        )
        if cfg.is_baseline:
            return _fit_baseline(cfg, data, common, emit, out_dir, t0, is_main)

        # ---- model, EMA, optimiser ----------------------------------------
        torch.manual_seed(cfg.seed)
        flag_cfg = cfg.flag_config()
        from ..model.flag import FlagModel

        model = FlagModel(flag_cfg, n_genes=len(data.genes), feat_dim=data.feat_dim,
                          gene_prior=data.gene_prior, prior_mask=data.prior_mask)
        model.set_feature_stats(torch.cat([s.feats for s in data.train]).cpu())
        model.to(device)
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
        state = {"best": None, "best_step": None, "bad": 0, "history": [], "status": "running"}
        start = 0
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model_raw"])
                ema.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise FlagInputError(f"{last_path}: does not match this config's model "
                                     f"({' '.join(str(exc).split())[:240]})") from exc
            start = int(ckpt["step"])
            state.update(ckpt["train_state"])
        common["model_config"] = model.cfg.to_dict()
        common["gene_prior"] = data.gene_prior
        common["prior_mask"] = data.prior_mask

        n_train = len(data.train)
        total = cfg.steps if cfg.epochs is None else cfg.epochs * math.ceil(n_train / world)
        train_slides = [s.to(device) for s in data.train]
        step_mod: nn.Module = _StepModule(model)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_mod = DDP(step_mod, device_ids=[device.index] if device.type == "cuda" else None,
                           find_unused_parameters=True)

        def save(path: Path, step: int) -> Path:
            if not is_main:
                return path
            rng = {"torch": torch.get_rng_state(), "seed": cfg.seed}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            save_checkpoint(
                path, model_state=ema.state_dict(), model_raw=model.state_dict(), optimizer=opt.state_dict(),
                rng=rng, train_state=dict(state), step=step, epoch=_epoch_of(step, world, n_train),
                metrics=state["history"][-1] if state["history"] else {}, **common,
            )
            emit("on_checkpoint", str(path))
            return path

        def run_validation(step: int) -> bool:
            """Validate on rank 0; returns True when early stopping triggers (on every rank)."""
            stop_now = False
            if is_main and data.val:
                metrics = validate(ema, data.val, data, cfg)
                metrics["step"] = step
                state["history"].append({k: v for k, v in metrics.items()})
                val = float(metrics.get(cfg.val_metric, float("nan")))
                improved = _better(val, state["best"], cfg.val_metric)
                if improved:
                    state["best"], state["best_step"], state["bad"] = val, step, 0
                else:
                    state["bad"] += 1
                _json_line(log_path, {"event": "validation", **{k: v for k, v in metrics.items()}})
                emit("on_validation", step, metrics)
                if improved:
                    save(best_path, step)
                stop_now = cfg.patience > 0 and state["bad"] >= cfg.patience
            return _any_rank(stop_now, world, device)

        # ---- loop ----------------------------------------------------------
        step = start
        status = "finished"
        stopped = lambda: stop is not None and stop.is_set()  # noqa: E731
        last_val_step = start if ckpt is not None and state["history"] else -1
        while step < total:
            if _any_rank(stopped(), world, device):
                status = "stopped"
                break
            si, epoch = _slide_for(step, rank, world, n_train, cfg.seed)
            sl = train_slides[si]
            torch.manual_seed(_step_seed(cfg.seed, step, rank))
            idx = None
            if 0 < cfg.batch_spots < sl.n_spots:
                idx = torch.randperm(sl.n_spots)[: cfg.batch_spots].to(device)
            x0 = sl.targets if idx is None else sl.targets[idx]
            lr = _lr_at(cfg, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            losses = step_mod(sl.feats, sl.graph, x0, idx)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            params = [p for p in model.parameters() if p.grad is not None]
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            opt.step()
            _ema_update(ema, model, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
            step += 1
            rec = {k: float(v.detach()) for k, v in losses.items()}
            rec.update(lr=lr, grad_norm=float(gn), slide=sl.sample_id)
            if not np.isfinite(rec["loss"]):
                raise FloatingPointError(f"training diverged at step {step} (loss {rec['loss']}); lower lr")
            emit("on_step", step, rec)
            if is_main and (step % max(cfg.log_every, 1) == 0 or step == total):
                _json_line(log_path, {"event": "step", "step": step, **rec})
            if _epoch_of(step, world, n_train) > _epoch_of(step - 1, world, n_train):
                emit("on_epoch", _epoch_of(step, world, n_train), {"step": step, "loss": rec["loss"]})
            early = False
            if cfg.val_every > 0 and step % cfg.val_every == 0 and step < total:
                early = run_validation(step)
                last_val_step = step
                save(last_path, step)
            elif cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0:
                save(last_path, step)
            elif cfg.ckpt_every == 0 and _epoch_of(step, world, n_train) > _epoch_of(step - 1, world, n_train):
                save(last_path, step)  # once per epoch: a killed run loses at most one epoch
            if early:
                status = "early_stopped"
                break
        if status == "finished" and data.val and last_val_step != step:
            run_validation(step)
        state["status"] = status
        save(last_path, step)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        return TrainResult(
            out_dir=str(out_dir),
            last_path=str(last_path),
            best_path=str(best_path if best_path.is_file() else last_path),
            step=step,
            epoch=_epoch_of(step, world, n_train),
            status=status,
            best_metric=state["best"],
            genes=list(data.genes),
            history=list(state["history"]),
            seconds=time.time() - t0,
            model=ema,
        )
    finally:
        if created_pg:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit_baseline(cfg, data, common, emit, out_dir: Path, t0: float, is_main: bool) -> TrainResult:
    """Ridge / MLP: fit once on every training spot, validate, save (rank 0 only)."""
    from ..checkpoint import save_checkpoint
    from ..model.baselines import MLPBaseline, RidgeBaseline

    cls = {"ridge": RidgeBaseline, "mlp": MLPBaseline}[cfg.method]
    kw = dict(cfg.baseline)
    kw.setdefault("seed", cfg.seed)
    model = cls(**kw)
    emit("on_log", f"fitting {cfg.method} on {sum(s.n_spots for s in data.train)} spots")
    model.fit([s.feats.cpu().numpy() for s in data.train], [s.targets.cpu().numpy() for s in data.train])
    history, best = [], None
    if data.val:
        metrics = validate(model, data.val, data, cfg)
        metrics["step"] = 1
        history.append(metrics)
        best = float(metrics.get(cfg.val_metric, float("nan")))
        emit("on_validation", 1, metrics)
        if is_main:
            _json_line(out_dir / "train_log.jsonl", {"event": "validation", **metrics})
    last = out_dir / "last.pt"
    if is_main:
        state = {"best": best, "best_step": 1, "bad": 0, "history": history, "status": "finished"}
        save_checkpoint(last, model_state=model.state_dict(), step=1, epoch=1, train_state=state,
                        metrics=history[-1] if history else {}, **common)
        emit("on_checkpoint", str(last))
    return TrainResult(str(out_dir), str(last), str(last), 1, 1, "finished", best, list(data.genes),
                       history, time.time() - t0, model)
