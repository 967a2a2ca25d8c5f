"""Command line: ``napari-flag predict|evaluate|train|demo`` and ``napari-flag-train``.

Errors a user can fix (a missing file, an unknown dataset id, a bad option)
are reported as one line, ``napari-flag: error: <message>``, with exit status
1; no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .errors import FlagCancelled, FlagInputError

__all__ = ["main", "train_main"]

PROG = "napari-flag"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in the same format as runtime errors."""

    def error(self, message: str):  # noqa: D401 - argparse API
        _fail(f"{message} (see {self.prog} --help)", status=2)


def _note(message: str) -> None:
    """A one-line remark on stderr for a run that still succeeds."""
    print(f"{PROG}: note: {' '.join(str(message).split())}", file=sys.stderr)


def _fail(message: str, status: int = 1):
    msg = " ".join(str(message).split())
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(status)


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one-line notes: no source line, no file and line number of ours."""
    _note(str(message))


def _positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (no hidden "0 = default")."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n} (leave it out for the model's default)")
    return n


def _guard(fn, args) -> int:
    """Run a subcommand; turn expected failures into one line on stderr."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_note
        return _run(fn, args)


def _run(fn, args) -> int:
    try:
        rc = fn(args)
        return int(rc or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except FlagCancelled:
        print(f"{PROG}: cancelled", file=sys.stderr)
        return 130
    except FlagInputError as exc:
        _fail(str(exc))
    except (OSError, ValueError) as exc:
        _fail(str(exc) or type(exc).__name__)
    except Exception as exc:  # unexpected: still one line; NAPARI_FLAG_DEBUG=1 shows the traceback
        if os.environ.get("NAPARI_FLAG_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc}")
    return 1  # pragma: no cover


def _bars(quiet: bool):
    """A ``progress(done, total, message)`` callable drawing one tqdm bar per stage (TTY only)."""
    from tqdm.auto import tqdm

    state: dict = {"bar": None, "msg": None}

    def progress(done: int, total: int, message: str) -> None:
        if quiet:
            return
        if state["msg"] != message or state["bar"] is None:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=max(int(total), 1), desc=message, leave=False, disable=None,
                                file=sys.stderr, dynamic_ncols=True)
            state["msg"] = message
        bar = state["bar"]
        if total and bar.total != total:
            bar.total = total
        bar.n = int(done)
        bar.refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    progress.close = close  # type: ignore[attr-defined]
    return progress


# ----------------------------------------------------------------------------- predict
def _cmd_predict(args) -> int:
    from .predict import predict_sample, write_prediction

    out = Path(args.out).expanduser()
    if out.suffix != ".h5ad":
        raise FlagInputError(f"{out}: output must end in .h5ad")
    if out.exists() and not args.overwrite:
        raise FlagInputError(f"{out}: already exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise FlagInputError(f"{out.parent}: output folder does not exist")
    bars = _bars(args.quiet)
    try:
        adata = predict_sample(
            args.sample, checkpoint=args.checkpoint, steps=args.steps, samples=args.samples,
            device=args.device, seed=args.seed, progress=bars, feature_cache=not args.no_cache,
        )
    finally:
        bars.close()
    write_prediction(adata, out, overwrite=args.overwrite)
    if not args.quiet:
        info = adata.uns["flag"]
        solver = f" {info['solver']}" if info.get("solver") else ""
        print(f"wrote {out}: {adata.n_obs} spots x {adata.n_vars} genes "
              f"({info['method']}, {info['steps']}{solver} steps x {info['samples']} samples"
              f"{', with truth' if 'truth' in adata.layers else ''})")
    return 0


# ----------------------------------------------------------------------------- evaluate
def _read_h5ad(path: str | Path):
    import anndata as ad

    p = Path(path).expanduser()
    if not p.is_file():
        raise FlagInputError(f"{p}: file not found")
    try:
        return ad.read_h5ad(p)
    except Exception as exc:  # h5py / anndata raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlagInputError(f"{p}: not a readable .h5ad file ({first[:200]})") from exc


def _dense(x):
    import numpy as np
    import scipy.sparse as sp

    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _flag_info(adata, path) -> dict:
    """``uns['flag']`` of a file, checked: it is read from the file, so it may hold anything."""
    from collections.abc import Mapping

    from .data.panel import TRANSFORMS

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
    return info


def _truth_from_file(path, genes, transform: str):
    """Truth matrix for ``genes`` from a prediction-format file (``layers['truth']``) or raw counts.

    A prediction-format truth must be on the prediction's scale (its
    ``uns['flag']['transform']``, when recorded); raw counts are transformed like
    the prediction.  Panel genes the truth lacks are left out of the metrics
    (noted on stderr); none shared is an error.
    """
    import numpy as np

    t = _read_h5ad(path)
    names = [str(g) for g in t.var_names]
    present = set(names)
    have = [g for g in genes if g in present]
    if not have:
        raise FlagInputError(f"{path}: shares no genes with the prediction's panel")
    if len(have) < len(genes):
        _note(f"{path}: lacks {len(genes) - len(have)} of the {len(genes)} panel genes; they are left out")
    if "truth" in t.layers:
        ttr = _flag_info(t, path).get("transform")
        if ttr is not None and ttr != transform:
            raise FlagInputError(f"{path}: truth is on the {ttr!r} scale but the prediction on {transform!r}")
        mat = _dense(t.layers["truth"])
        col = {g: i for i, g in enumerate(names)}
        out = np.full((t.n_obs, len(genes)), np.nan)
        for j, g in enumerate(genes):
            if g in col:
                out[:, j] = mat[:, col[g]]
        return out, [str(s) for s in t.obs_names]
    from .data.panel import panel_matrix

    first: dict = {}
    for i, g in enumerate(names):
        first.setdefault(g, i)
    X = t.X
    raw = _dense(X[:, [first[g] for g in have]])
    if not np.isfinite(raw).all() or (raw < 0).any():
        raise FlagInputError(f"{path}: X holds negative or non-finite values, not raw counts "
                             f"(pass counts, or a prediction file with layers['truth'])")
    if not np.allclose(raw, np.round(raw)):
        _note(f"{path}: X is not integer counts; it is transformed ({transform}) as if it were")
    out = np.full((t.n_obs, len(genes)), np.nan)
    out[:, [genes.index(g) for g in have]] = panel_matrix(t, have, transform)
    return out, [str(s) for s in t.obs_names]


def _evaluate_one(path, truth_path, grid: str, layer: str):
    import numpy as np

    from .metrics import evaluate_slide

    a = _read_h5ad(path)
    info = _flag_info(a, path)
    genes = [str(g) for g in a.var_names]
    if layer == "X":
        pred = _dense(a.X)
    elif layer in a.layers:
        pred = _dense(a.layers[layer])
    else:
        raise FlagInputError(f"{path}: has no layer {layer!r}")
    spots = [str(s) for s in a.obs_names]
    if truth_path is None:
        if "truth" not in a.layers:
            raise FlagInputError(f"{path}: no layers['truth']; pass --truth TRUTH.h5ad")
        truth = _dense(a.layers["truth"])
    else:
        transform = str(info.get("transform", "log2p1"))
        tmat, tspots = _truth_from_file(truth_path, genes, transform)
        pos = {s: i for i, s in enumerate(tspots)}
        keep = [i for i, s in enumerate(spots) if s in pos]
        if not keep:
            raise FlagInputError(f"{truth_path}: shares no spot ids with {path}")
        pred = pred[keep]
        truth = tmat[[pos[spots[i]] for i in keep]]
        a = a[keep]
    if "spatial" not in a.obsm:
        raise FlagInputError(f"{path}: no obsm['spatial'] spot coordinates")
    coords = np.asarray(a.obsm["spatial"], dtype=np.float64)
    ok = np.isfinite(truth).all(axis=0) & np.isfinite(pred).all(axis=0)
    if ok.sum() < 2:
        raise FlagInputError(f"{path}: fewer than 2 genes with finite prediction and truth")
    if grid == "auto" and info.get("grid") in ("square", "hex"):
        grid = str(info["grid"])
    metrics = evaluate_slide(pred[:, ok], truth[:, ok], coords, grid=grid, genes=[g for g, o in zip(genes, ok) if o])
    sid = str(info.get("sample_id") or Path(path).stem)
    return sid, metrics


def _cmd_evaluate(args) -> int:
    from .metrics import format_table, jsonable, summarize

    truths = args.truth or []
    if truths and len(truths) not in (1, len(args.pred)) or (len(truths) == 1 and len(args.pred) > 1):
        raise FlagInputError(f"--truth: give one truth file per prediction ({len(args.pred)}), got {len(truths)}")
    out = None
    if args.json:  # checked before the work, so a refusal costs nothing
        out = Path(args.json).expanduser()
        if out.exists() and not args.overwrite:
            raise FlagInputError(f"{out}: already exists (use --overwrite to replace it)")
        if not out.parent.is_dir():
            raise FlagInputError(f"{out.parent}: output folder does not exist")
    per: dict = {}
    for i, p in enumerate(args.pred):
        sid, m = _evaluate_one(p, truths[i] if truths else None, args.grid, args.layer)
        key, n = sid, 2
        while key in per:
            key, n = f"{sid}#{n}", n + 1
        per[key] = m
    result = summarize(per)
    print(format_table(result))
    if out is not None:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(jsonable(result), indent=2) + "\n")
            tmp.replace(out)
        except OSError as exc:
            raise FlagInputError(f"{out}: not written ({exc.strerror or exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)
    return 0


# ----------------------------------------------------------------------------- train
def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config (YAML); see configs/")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt at its saved step")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if OUT_DIR holds a run (its checkpoints and log are replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override config keys, e.g. steps=500 model.depth=4 'train=[her2st:C3,her2st:C4]'")


def _cmd_train(args) -> int:
    from tqdm.auto import tqdm

    from .training import TrainConfig, train

    cfg = TrainConfig.from_yaml(args.config, args.overrides)
    last = Path(cfg.out_dir).expanduser() / "last.pt"
    if last.is_file() and not (args.resume or args.overwrite):
        raise FlagInputError(f"{last}: a run exists in this out_dir (use --resume to continue it, "
                             f"--overwrite to start afresh, or another out_dir)")
    quiet = args.quiet
    prep = _bars(quiet)
    state: dict = {"bar": None}
    total = cfg.steps

    def say(msg: str) -> None:
        if not quiet:
            tqdm.write(msg, file=sys.stderr)

    class CB:
        def on_progress(self, stage, done, total_):
            prep(done, total_, stage)

        def on_log(self, message):
            say(message)

        def on_step(self, step, losses):
            if quiet:
                return
            if state["bar"] is None:
                prep.close()
                state["bar"] = tqdm(total=total, initial=step - 1, desc="train", disable=None,
                                    file=sys.stderr, dynamic_ncols=True)
            bar = state["bar"]
            bar.n = step
            bar.set_postfix(loss=f"{losses['loss']:.4f}", refresh=False)
            bar.refresh()

        def on_validation(self, step, metrics):
            keys = ("PCC", "PCC-50", "MSE", "GSC", "GSC-CCC", "SSC")
            say(f"step {step}: val " + " ".join(f"{k}={metrics[k]:.3f}" for k in keys if k in metrics))

        def on_checkpoint(self, path):
            pass

    try:
        res = train(cfg, callbacks=CB(), resume=args.resume)
    finally:
        prep.close()
        if state["bar"] is not None:
            state["bar"].close()
    if not quiet and os.environ.get("RANK", "0") == "0":
        best = "" if res.best_metric is None else f"; best {cfg.val_metric} {res.best_metric:.4f}"
        print(f"{res.status} at step {res.step}{best}; checkpoints in {res.out_dir} "
              f"(last: {Path(res.last_path).name}, best: {Path(res.best_path).name}); {res.seconds:.0f} s")
    return 0


# ----------------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    from ._demo import _first_line, _innermost, prefer_pyqt6, qt_problem

    prefer_pyqt6()
    problem = qt_problem()
    if problem:
        raise FlagInputError(f"demo unavailable: {problem}")
    try:
        from ._demo import run_demo

        run_demo(sample=args.sample)
    except ImportError as exc:  # napari's own message says "see cause above": give the cause
        inner = _innermost(exc)
        raise FlagInputError(f"demo unavailable: {_first_line(str(inner)) or type(inner).__name__}") from None
    return 0


# ----------------------------------------------------------------------------- entry points
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Predict spatial gene expression from H&E slides with FLAG.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("predict", help="predict every spot of a slide into an .h5ad",
                       description="Predict the expression of every spot of SAMPLE and write OUT.h5ad "
                                   "(X = mean, layers std/sample/truth, obsm spatial, uns flag).")
    p.add_argument("sample", help="dataset id (her2st:C2), Space Ranger outs/ folder, HEST folder, .h5ad or image")
    p.add_argument("--out", required=True, help="output .h5ad (never overwritten without --overwrite)")
    p.add_argument("--checkpoint", default=None, help="trained model (.pt); default: the bundled model")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampler steps, >= 1 (default: the model's)")
    p.add_argument("--samples", type=_positive_int, default=None,
                   help="samples per spot, >= 1 (default: the model's)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary line")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="metrics of predictions against the truth",
                       description="Metrics (PCC, MSE, GSC, SSC, ...) of one or more prediction files, "
                                   "one slide each; the table goes to stdout.")
    p.add_argument("pred", nargs="+", help="prediction .h5ad file(s) written by 'napari-flag predict'")
    p.add_argument("--truth", nargs="+", default=None,
                   help="truth .h5ad per prediction (raw counts, or a file with layers['truth']); "
                        "default: each prediction's layers['truth']")
    p.add_argument("--grid", choices=("auto", "square", "hex"), default="auto",
                   help="spot lattice for Moran's I (auto: from the file, else inferred)")
    p.add_argument("--layer", default="X", help="what to evaluate: X (mean) or a layer such as 'sample'")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.json if it exists")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train a model (same as napari-flag-train)",
                       description="Train FLAG or a baseline from a YAML config.")
    _add_train_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="open napari with a sample slide and the FLAG widgets",
                       description="Open napari with a HER2ST section and the FLAG widgets.")
    p.add_argument("sample", nargs="?", default="her2st:C2", help="slide to open (default: her2st:C2)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _guard(args.func, args)


def train_main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="napari-flag-train", description="Train FLAG or a baseline from a YAML config.")
    _add_train_args(parser)
    args = parser.parse_args(argv)
    return _guard(_cmd_train, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
