"""Command line: ``napari-flag predict|evaluate|train|demo`` and ``napari-flag-train``.

Errors a user can fix (a missing file, an unknown dataset id, a bad option)
are reported as one line, ``napari-flag: error: <message>``, with exit status
1; no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence


from ._io import atomic_write_text, check_output
from .errors import FlagCancelled, FlagInputError, with_remedy
from .metrics import format_table, jsonable, summarize
from .record import PredictionRecord

__all__ = ["main", "train_main"]

PROG = "napari-flag"


#: what a command-line user does about an error's setting (the widgets say it with their controls)
CLI_REMEDIES = {
    "checkpoint": "pass --checkpoint",
    "pixel_size_um": "pass --pixel-size-um",
    "spacing_um": "pass --spacing-um",
    "overwrite": "use --overwrite to replace it",
    "truth": "pass --truth TRUTH.h5ad",
    "stain_norm": "pass --no-stain-norm",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in the same format as runtime errors."""

    def error(self, message: str):  # noqa: D401 - argparse API
        _fail(f"{message} (see {self.prog} --help)", status=2)


def _note(message: str) -> None:
    """A one-line remark on stderr for a run that still succeeds."""
    print(f"{PROG}: note: {' '.join(str(message).split())}", file=sys.stderr)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of microns, got {text}")
    return v


def _warn(notice) -> None:
    """A model-slide warning: always on stderr, ``--quiet`` or not (a result it spoils must not look fine)."""
    print(f"{PROG}: warning: {' '.join(str(notice.message).split())}", file=sys.stderr, flush=True)


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
        _fail(with_remedy(exc, CLI_REMEDIES))
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

    from .profiling import STAGE_UNITS

    state: dict = {"bar": None, "msg": None}

    def progress(done: int, total: int, message: str) -> None:
        if quiet:
            return
        if state["msg"] != message or state["bar"] is None:
            if state["bar"] is not None:
                state["bar"].close()
            # tqdm's rate and remaining time; features count spots, other stages their own steps
            state["bar"] = tqdm(total=max(int(total), 1), desc=message, leave=False, disable=None,
                                file=sys.stderr, dynamic_ncols=True, unit=" " + STAGE_UNITS.get(message, "steps"))
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
def _out_name(source: str) -> str:
    """Output file name of a slide in a cohort: the dataset id's section or the file's stem."""
    src = str(source)
    if ":" in src and not Path(src).exists():  # a dataset id such as her2st:C2
        return src.split(":", 1)[1].replace("/", "_")
    p = Path(src.rstrip("/"))
    name = p.name
    for ext in (".ome.tif", ".ome.tiff", ".ome.zarr", ".tiff", ".tif", ".svs", ".zarr", ".h5ad", ".jpg", ".jpeg", ".png"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or name
    return p.parent.name if name == "outs" else name


def _unique(names: list[str], again: str) -> list[str]:
    """``names`` with the k-th repeat of a name (k ≥ 2) written as ``again.format(name, k)``."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else again.format(n, seen[n]))
    return out


def _cohort_outputs(slides, out_dir: Path) -> list[Path]:
    # two slides with one name keep both outputs
    return [out_dir / f"{n}.h5ad" for n in _unique([_out_name(s) for s in slides], "{}_{}")]


def _predict_one(source, out: Path, args, device) -> Path:
    from .inference import predict_sample, write_prediction

    from .profiling import PhaseClock

    bars, clock, t0 = _bars(args.quiet), PhaseClock(), _process_times()
    try:
        adata = predict_sample(
            source, checkpoint=args.checkpoint, steps=args.steps, samples=args.samples, device=device,
            seed=args.seed, progress=lambda ev: bars(ev.done, ev.total, ev.stage), notice=_warn,
            feature_cache=not args.no_cache, spacing_um=args.spacing_um, pixel_size_um=args.pixel_size_um,
            tissue=args.tissue, tiles=not args.no_tiles, stain_norm=args.stain_norm,
        )
    finally:
        bars.close()
    with clock.phase("writing"):
        write_prediction(adata, out, overwrite=args.overwrite)
    if args.profile:
        _write_profile(args.profile, adata, clock, t0, args.overwrite)
    if not args.quiet:
        info = PredictionRecord.of(adata)
        solver = f" {info.solver}" if info.solver else ""
        what = "virtual spots" if info.virtual_spots else "spots"
        print(f"wrote {out}: {adata.n_obs} {what} x {adata.n_vars} genes "
              f"({info.method}, {info.steps}{solver} steps x {info.samples} samples"
              f"{', with truth' if 'truth' in adata.layers else ''})", flush=True)
    return out


def _process_times() -> dict:
    import resource
    import time

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter(), "user": ru.ru_utime, "sys": ru.ru_stime, "minflt": ru.ru_minflt}


def _write_profile(path, adata, clock, t0: dict, overwrite: bool) -> None:
    """The run's phases (``uns["flag"]["timings"]`` plus writing) and the process's totals, as JSON."""
    from .profiling import peak_rss_mb

    t1 = _process_times()
    phases = dict(PredictionRecord.of(adata).timings)
    phases.update(clock.as_dict())
    doc = {"spots": int(adata.n_obs), "phases": phases,
           "total": {"wall_s": t1["wall"] - t0["wall"], "user_s": t1["user"] - t0["user"],
                     "sys_s": t1["sys"] - t0["sys"], "minflt": t1["minflt"] - t0["minflt"],
                     "peak_rss_mb": peak_rss_mb()}}
    atomic_write_text(check_output(path, overwrite), json.dumps(jsonable(doc), indent=1))


def _cmd_predict(args) -> int:
    from .features.encoders import resolve_device

    slides = list(args.sample)
    if args.out_dir is None:
        if args.out is None:
            raise FlagInputError("--out OUT.h5ad (one slide) or --out-dir DIR (one .h5ad per slide) is required")
        if len(slides) > 1:
            raise FlagInputError(f"{len(slides)} slides given: use --out-dir DIR for one .h5ad per slide")
        out = Path(args.out).expanduser()
        if out.suffix != ".h5ad":
            raise FlagInputError(f"{out}: output must end in .h5ad")
        _predict_one(slides[0], check_output(out, args.overwrite), args, args.device)
        return 0
    return _predict_cohort(slides, args, resolve_device)


def _predict_cohort(slides, args, resolve_device) -> int:
    """One .h5ad per slide; done slides are skipped, a broken slide is reported and the rest go on.

    Under ``torchrun`` every rank takes every ``WORLD_SIZE``-th slide (and its own GPU).
    """
    if args.out is not None:
        raise FlagInputError("give either --out or --out-dir, not both")
    if args.profile:
        raise FlagInputError("--profile times one slide: use it with --out, not --out-dir")
    if args.tissue:
        raise FlagInputError("--tissue is one slide's mask: use it with --out, not --out-dir")
    out_dir = Path(args.out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise FlagInputError(f"{out_dir}: --out-dir is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else None
    device = resolve_device(args.device, local)
    jobs = list(zip(slides, _cohort_outputs(slides, out_dir)))[rank::world]
    failed, done, skipped = [], 0, 0
    for source, out in jobs:
        if out.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            _predict_one(source, out, args, device)
            done += 1
        except FlagCancelled:
            raise
        except (FlagInputError, OSError, ValueError, RuntimeError) as exc:  # this slide only
            failed.append(source)
            print(f"{PROG}: error: {with_remedy(exc, CLI_REMEDIES)}", file=sys.stderr, flush=True)
    tag = f"rank {rank}/{world}: " if world > 1 else ""
    if not args.quiet or failed:
        print(f"{tag}{done} predicted, {skipped} already done, {len(failed)} failed"
              + (f" ({', '.join(map(str, failed))})" if failed else "") + f"; outputs in {out_dir}",
              file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


# ----------------------------------------------------------------------------- evaluate
def _evaluate_one(path, truth_path, grid: str, layer: str, truth_scale: str = "auto"):
    """``(sample id, metrics, in-sample note)`` of one prediction file (:func:`napari_flag.truth.evaluate_file`)."""
    from .truth import evaluate_file

    return evaluate_file(path, truth_path, grid=grid, layer=layer, truth_scale=truth_scale)


def _row_names(paths) -> list[str]:
    """Rows are named by file: the name, or more of the path where names repeat."""
    names = [Path(p).name for p in paths]
    if len(set(names)) < len(names) and len({str(p) for p in paths}) == len(paths):
        names = [str(p) for p in paths]
    return _unique(names, "{} ({})")  # the same file given twice


def _cmd_evaluate(args) -> int:
    truths = args.truth or []
    if truths and len(truths) not in (1, len(args.pred)) or (len(truths) == 1 and len(args.pred) > 1):
        raise FlagInputError(f"--truth: give one truth file per prediction ({len(args.pred)}), got {len(truths)}")
    # checked before the work, so a refusal costs nothing
    out = check_output(args.json, args.overwrite) if args.json else None
    per, slides = {}, {}
    for name, (i, p) in zip(_row_names(args.pred), enumerate(args.pred)):
        sid, m, note = _evaluate_one(p, truths[i] if truths else None, args.grid, args.layer, args.truth_scale)
        if note:
            print(f"{PROG}: note: {name}: {note}; its scores are not a held-out estimate", file=sys.stderr)
        per[name], slides[name] = m, sid
    result = summarize(per)
    result["sample_ids"] = slides
    if len(set(slides.values())) < 2:  # files of one slide: a mean/std over them would mean nothing
        result.pop("mean"), result.pop("std")
    print(format_table(result))
    if out is not None:
        atomic_write_text(out, json.dumps(jsonable(result), indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- regions
def _add_regions_parser(sub) -> None:
    p = sub.add_parser("regions", help="what regions of a prediction express, and how two differ",
                       description="Per region of REGIONS.geojson: its spots and each gene's average predicted "
                                   "expression with a 95%% credible interval, from joint posterior samples drawn "
                                   "again with the checkpoint and slide PRED.h5ad records; with --compare A B, "
                                   "the difference of the two regions' averages per gene.")
    p.add_argument("pred", help="prediction .h5ad written by 'napari-flag predict'")
    p.add_argument("--regions", required=True, metavar="REGIONS.geojson",
                   help="FeatureCollection of Polygon/MultiPolygon features in the slide's full-resolution pixels "
                        "(QuPath's annotation export); a region's name is properties.name, else "
                        "properties.classification.name; features with one name are one region")
    p.add_argument("--out", required=True, metavar="SUMMARY.csv",
                   help="per region and gene: region, gene, n_spots, mean, lower, upper (and measured, when the "
                        "prediction has the truth)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None, help="two region names to compare")
    p.add_argument("--de", default=None, metavar="DE.csv",
                   help="with --compare: gene, difference (A - B), lower, upper, prob_greater = P(A > B), sorted "
                        "by |difference|")
    p.add_argument("--geojson", default=None, metavar="OUT.geojson",
                   help="also write the regions with their measurements (QuPath GeoJSON)")
    p.add_argument("--draws", type=_positive_int, default=None,
                   help="joint posterior samples (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the posterior samples")
    p.add_argument("--checkpoint", default=None, help="the model that made PRED (default: the one it records)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    p.set_defaults(func=_cmd_regions)


def _cmd_regions(args) -> int:
    from .roi import DEFAULT_DRAWS, region_stats, write_geojson, write_table
    from .truth import read_h5ad

    if args.de and not args.compare:
        raise FlagInputError("--de needs --compare A B")
    outs = [o for o in (args.out, args.de, args.geojson) if o]
    for o in outs:  # checked before the work, so a refusal costs nothing
        check_output(o, args.overwrite)
    adata = read_h5ad(args.pred)
    res = region_stats(adata, args.regions, n_draws=args.draws or DEFAULT_DRAWS, seed=args.seed,
                       checkpoint=args.checkpoint, compare=args.compare, source=str(args.regions))
    de = res.de
    write_table(res.summary(), args.out, args.overwrite)
    if de is not None and args.de:
        write_table(de, args.de, args.overwrite)
    if args.geojson:
        write_geojson(res, args.geojson, args.overwrite)
    sizes = ", ".join(f"{n} {k}" for n, k in zip(res.names, res.n_spots))
    print(f"{len(res.names)} regions ({sizes} spots), {res.info['n_draws']} joint samples of "
          f"{res.info['sampled_spots']} spots (theirs and their neighbours') in {res.info['seconds']:.1f} s: {args.out}")
    if de is not None:
        print(de.head(10).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
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
def _add_predict_parser(sub) -> None:
    """``napari-flag predict``'s arguments."""
    p = sub.add_parser("predict", help="predict every spot of a slide (or a cohort) into .h5ad files",
                       description="Predict the expression of every spot of SAMPLE and write OUT.h5ad "
                                   "(X = mean, layers std/sample/truth, obsm spatial, uns flag and spatial). "
                                   "A slide without spots (a routine H&E image) gets virtual spots over its "
                                   "tissue with the model's spot geometry. Several slides: --out-dir.")
    p.add_argument("sample", nargs="+",
                   help="dataset id (her2st:C2), Space Ranger outs/ folder, HEST folder, .h5ad or image "
                        "(SVS/TIFF/OME-TIFF/OME-Zarr/JPEG)")
    p.add_argument("--out", default=None, help="output .h5ad of one slide (never overwritten without --overwrite)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="one .h5ad per slide in DIR; slides already done are skipped, a broken one is reported "
                        "and the rest go on (exit 1 at the end); under torchrun each rank takes its share")
    p.add_argument("--spacing-um", type=_positive_float, default=None,
                   help="centre spacing of virtual spots in microns (default: the model's training pitch, "
                        "divided by the smallest whole number that lets the encoder's patches tile the tissue: "
                        "100 um for legacy ST models)")
    p.add_argument("--pixel-size-um", type=_positive_float, default=None,
                   help="microns per full-resolution pixel, for images whose file records none (or a wrong one)")
    p.add_argument("--tissue", default=None, metavar="MASK",
                   help="where to lay virtual spots instead of the detected tissue: a PNG/TIFF mask (nonzero = "
                        "tissue, any resolution, stretched over the slide), QuPath GeoJSON annotations in the "
                        "slide's pixels (classification Ignore*/Exclude subtracts; only those: subtracted from "
                        "the detected tissue), or an earlier prediction .h5ad (its recorded mask)")
    p.add_argument("--no-tiles", action="store_true",
                   help="predict the virtual spots of a whole slide at once instead of region by region "
                        "(tiles of ~2,300 spots, the first ones ~580, with a halo of neighbours; the same predictions, "
                        "memory of a tile)")
    p.add_argument("--stain-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="map the slide's haematoxylin and eosin onto the model's training stains (Macenko, "
                        "estimated once per slide) before encoding; default: as the model records "
                        "(on for the bundled model)")
    p.add_argument("--checkpoint", default=None, help="trained model (.pt); default: the bundled model")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampler steps, >= 1 (default: the model's)")
    p.add_argument("--samples", type=_positive_int, default=None,
                   help="samples per spot, >= 1 (default: the model's)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary line")
    p.add_argument("--profile", default=None, metavar="OUT.json",
                   help="also write where the time went (wall and CPU seconds and page faults per phase: "
                        "tissue, features with reading and encoding, graph, sampling, writing) as JSON")
    p.set_defaults(func=_cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Predict spatial gene expression from H&E slides with FLAG.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    _add_predict_parser(sub)

    p = sub.add_parser("evaluate", help="metrics of predictions against the truth",
                       description="Metrics (PCC, MSE, GSC, SSC, ...) of one or more prediction files, "
                                   "one slide each; the table goes to stdout.")
    p.add_argument("pred", nargs="+", help="prediction .h5ad file(s) written by 'napari-flag predict'")
    p.add_argument("--truth", nargs="+", default=None,
                   help="truth .h5ad per prediction (counts in layers['counts'], .raw or X, a log-scale X, "
                        "or a prediction file with layers['truth']); "
                        "default: each prediction's layers['truth']")
    p.add_argument("--grid", choices=("auto", "square", "hex"), default="auto",
                   help="spot lattice for Moran's I (auto: from the file, else inferred)")
    p.add_argument("--layer", default="X", help="what to evaluate: X (mean) or a layer such as 'sample'")
    p.add_argument("--truth-scale", choices=("auto", "counts", "target"), default="auto",
                   help="scale of --truth's values: counts (transformed like the prediction), target "
                        "(already on its scale); auto: layers['counts'], .raw or an integer X are counts, "
                        "a non-integer X is on the target scale")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the metrics as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.json if it exists")
    p.set_defaults(func=_cmd_evaluate)

    _add_regions_parser(sub)

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
    """``napari-flag``; ``argv=None``: this process's command line (see :func:`_ends_process`)."""
    args = build_parser().parse_args(argv)
    with _ends_process(argv is None and args.func is not _cmd_demo):
        return _guard(args.func, args)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``napari-flag-train``; ``argv=None`` as in :func:`main`."""
    parser = _Parser(prog="napari-flag-train", description="Train FLAG or a baseline from a YAML config.")
    _add_train_args(parser)
    args = parser.parse_args(argv)
    with _ends_process(argv is None):
        return _guard(_cmd_train, args)


@contextlib.contextmanager
def _ends_process(ends: bool):
    """When the process ends with this command, freeze what is left for the garbage collector.

    Tearing down torch, torch_geometric (torch._dynamo, sympy) and anndata
    otherwise spends about a second collecting garbage after the command is
    done (1.1-1.3 s after ``predict`` on a 2-core CPU; 0.2 s frozen).  Nothing
    of the command's output depends on it: files are written, closed and
    renamed before.  Called with ``argv`` (tests, scripts), nothing changes.
    """
    try:
        yield
    finally:
        if ends:
            gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
