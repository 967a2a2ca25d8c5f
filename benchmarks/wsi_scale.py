"""Whole-slide scale: time and peak memory of ``napari-flag predict`` on a ~40,000 x 40,000 px slide.

    python benchmarks/wsi_scale.py --work /tmp/wsi_scale --runs 40000:default 40000:200

1. **Build** (once): HER2ST C2's H&E, a centred square of ``--period`` px
   (divisible by every level's factor), repeated to SIZE x SIZE
   px and written as a tiled (256 px, JPEG) pyramidal OME-TIFF with C2's
   pixel size.  Every level is written tile by tile from the period halved
   ``k`` times, so building it holds one period's pyramid (~0.4 GB), never
   the slide (4.8 GB raw at 40,000 px).
2. **Streaming probe** (in this process, cheap): the slide's levels wrapped in
   read counters; tissue detection and the virtual spots are run, then the
   patches of the first ``--probe-spots`` spots are read as
   ``compute_features`` reads them.  Records which level each read hit and
   the largest window: level 0 must see only patch windows, tissue only a
   coarse level.
3. **Predict**: for each ``--runs SIZE:SPACING`` (``default``: predict's
   default pitch, 100 um for the bundled model; or a pitch in um,
   ``--spacing-um``, e.g. the model's own 200 um),
   ``napari-flag predict SLIDE --out OUT.h5ad`` runs as a child process with
   an empty feature cache; its wall time (open to written output) and peak
   RSS (``os.wait4`` rusage of that child) are recorded.  Linux carries the
   parent's high-water mark into a child at ``exec``, so ``peak_rss_mb`` is
   the larger of the child's peak and this process's peak before the spawn
   (about 1 GB after building and probing): an upper bound of the child's.
   ``own_peak_rss_mb`` is the child's own (``VmHWM`` as it exits, after the
   output is written); the child runs the CLI's ``main`` for that.

The model is the bundled one unless ``--checkpoint`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _result import command, machine, write_json

TILE = 256


def _period_pyramid(section: str, period: int, n_levels: int):
    """A centred ``period`` x ``period`` crop of the section's H&E, halved ``n_levels - 1`` times."""
    import numpy as np
    from PIL import Image

    from napari_flag.data import load_sample

    m = load_sample(f"her2st:{section}")
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        im = Image.open(m.image.path).convert("RGB")
    finally:
        Image.MAX_IMAGE_PIXELS = old
    w, h = im.size
    if period > min(w, h):
        raise SystemExit(f"--period {period} is larger than {section}'s image ({w} x {h})")
    x0, y0 = (w - period) // 2, (h - period) // 2
    im = im.crop((x0, y0, x0 + period, y0 + period))
    levels = [np.asarray(im)]
    for _ in range(1, n_levels):
        im = im.reduce(2)  # exact 2 x 2 means: the period is divisible by every factor
        levels.append(np.asarray(im))
    return levels, float(m.pixel_size_um)


def _tiles(src, shape):
    """Tiles of ``src`` repeated periodically over ``shape``, row by row (as TIFF stores them)."""
    import numpy as np

    h, w = shape
    p = src.shape[0]
    for y in range(0, h, TILE):
        ys = np.arange(y, y + TILE) % p
        rows = src[ys]
        for x in range(0, w, TILE):
            yield rows[:, np.arange(x, x + TILE) % p]


def build_slide(path: Path, size: int, period: int, section: str) -> dict:
    """Write the tiled pyramidal OME-TIFF tile by tile (layout as :func:`write_ome_tiff`)."""
    import math
    import uuid

    import tifffile

    from napari_flag.data.images import PYRAMID_MIN_PX

    shapes = [(size, size)]
    while max(shapes[-1]) >= PYRAMID_MIN_PX:
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    if period % 2 ** (len(shapes) - 1):
        raise SystemExit(f"--period must be divisible by {2 ** (len(shapes) - 1)}")
    t0 = time.perf_counter()
    srcs, px = _period_pyramid(section, period, len(shapes))
    meta = {"axes": "YXS", "PhysicalSizeX": px, "PhysicalSizeY": px,
            "PhysicalSizeXUnit": "\u00b5m", "PhysicalSizeYUnit": "\u00b5m"}
    kw = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 90},
              "dtype": "uint8", "resolutionunit": "CENTIMETER"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.{path.name}")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
            tw.write(_tiles(srcs[0], shapes[0]), shape=(*shapes[0], 3), subifds=len(shapes) - 1, metadata=meta,
                     resolution=(1e4 / px, 1e4 / px), **kw)
            for i in range(1, len(shapes)):
                f = px * 2**i
                tw.write(_tiles(srcs[i], shapes[i]), shape=(*shapes[i], 3), subfiletype=1, metadata=None,
                         resolution=(1e4 / f, 1e4 / f), **kw)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(path), "size_px": [size, size], "levels": [list(s) for s in shapes], "period_px": period,
            "section": section, "pixel_size_um": px, "file_bytes": path.stat().st_size,
            "build_s": time.perf_counter() - t0}


class _Counted:
    """A pyramid level that records every read: how many, and the largest window in pixels."""

    def __init__(self, arr, log: dict):
        self._arr, self.log = arr, log
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key):
        out = self._arr[key]
        n = int(out.shape[0]) * int(out.shape[1]) if getattr(out, "ndim", 0) >= 2 else 1
        self.log["reads"] += 1
        self.log["max_window_px"] = max(self.log["max_window_px"], n)
        return out


def probe(path: Path, checkpoint: str | None, n_spots: int, spacing_um: float | None) -> dict:
    """Which levels tissue detection and patch reading touch on this slide, and how much of them."""
    from napari_flag.checkpoint import default_checkpoint_path, load_model
    from napari_flag.data import load_sample
    from napari_flag.data.sample import SlideImage
    from napari_flag.features.patches import extract_patches, patch_side_px
    from napari_flag.inference import spots_for

    sample = load_sample(str(path))
    logs = [{"reads": 0, "max_window_px": 0} for _ in sample.image.levels]
    img = sample.image
    sample.image = SlideImage([_Counted(lv, lg) for lv, lg in zip(img.levels, logs)], scale=img.scale,
                              path=img.path, downsamples=list(img.downsamples))
    _, meta = load_model(checkpoint or default_checkpoint_path(), "cpu")
    t0 = time.perf_counter()
    spots = spots_for(sample, meta, spacing_um)
    t_tissue = time.perf_counter() - t0
    tissue = [dict(lg) for lg in logs]
    for lg in logs:
        lg.update(reads=0, max_window_px=0)
    patch_um, patch_px = float(meta.encoder["patch_um"]), int(meta.encoder["patch_px"])
    side = patch_side_px(spots, patch_um)
    t0 = time.perf_counter()
    n = 0
    for batch in extract_patches(spots, range(min(n_spots, spots.n_spots)), patch_um, patch_px, 32):
        n += len(batch)
    t_patch = time.perf_counter() - t0
    return {
        "levels": [list(lv.shape) for lv in img.levels],
        "tissue": {"reads_per_level": [lg["reads"] for lg in tissue],
                   "max_window_px_per_level": [lg["max_window_px"] for lg in tissue],
                   "level": int(spots.metadata["tissue"]["level"]), "seconds": t_tissue},
        "virtual_spots": int(spots.n_spots),
        "patches": {"spots": n, "side_px": side, "reads_per_level": [lg["reads"] for lg in logs],
                    "max_window_px_per_level": [lg["max_window_px"] for lg in logs],
                    "seconds": t_patch},
    }


_TISSUE = """
import sys
from napari_flag.data import load_sample
from napari_flag.data.tissue import detect_tissue

def hwm():  # this process's own high-water mark (ru_maxrss would carry the parent's across exec)
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024

s = load_sample(sys.argv[1])
before = hwm()
t = detect_tissue(s.image, s.pixel_size_um, source=sys.argv[1])
print(before, hwm(), t.fraction, t.level)
"""


def tissue_peak(path: Path) -> dict:
    """Peak RSS (VmHWM) of tissue detection alone, in a fresh process: after opening the slide, after detecting."""
    out = subprocess.run([sys.executable, "-c", _TISSUE, str(path)], capture_output=True, text=True, check=True)
    opened, detected, fraction, level = out.stdout.split()
    return {"opened_peak_rss_mb": float(opened), "tissue_peak_rss_mb": float(detected),
            "tissue_fraction": float(fraction), "level": int(level)}


#: ``napari-flag predict`` (its ``main``), then the process's own high-water mark (VmHWM) into $WSI_SCALE_HWM
_CLI = """
import os, sys
from napari_flag.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
    open(os.environ["WSI_SCALE_HWM"], "w").write(str(hwm))
sys.exit(rc)
"""


def predict(path: Path, out: Path, work: Path, checkpoint: str | None, spacing_um: float | None,
            extra: list[str], threads: int, timeout_s: float) -> dict:
    """``napari-flag predict`` as a child with an empty feature cache: wall time and its own peak RSS."""
    import shutil

    feat = work / f"features-{out.stem}"
    shutil.rmtree(feat, ignore_errors=True)
    if out.exists():
        out.unlink()
    argv = [sys.executable, "-c", _CLI, "predict", str(path), "--out", str(out), "--device", "cpu"]
    if checkpoint:
        argv += ["--checkpoint", checkpoint]
    if spacing_um:
        argv += ["--spacing-um", f"{spacing_um:g}"]
    argv += extra
    log = work / f"{out.stem}.log"
    hwm = log.with_suffix(".hwm")
    hwm.unlink(missing_ok=True)
    env = dict(os.environ, NAPARI_FLAG_FEATURE_DIR=str(feat), WSI_SCALE_HWM=str(hwm), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    res = {"argv": ["napari-flag", *argv[3:]], "rc": rc, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024,
           "own_peak_rss_mb": float(hwm.read_text()) if hwm.is_file() else None,
           "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "log": str(log)}
    if rc == 0:
        import anndata as ad

        a = ad.read_h5ad(out, backed="r")
        info = a.uns["flag"]
        res.update(spots=int(a.n_obs), genes=int(a.n_vars), steps=int(info["steps"]), samples=int(info["samples"]),
                   solver=str(info["solver"]), spot_geometry=dict(info["spot_geometry"]),
                   tissue_fraction=float(info["tissue"]["fraction"]),
                   compatibility=sorted(info["compatibility"]))
        a.file.close()
    else:
        res["log_tail"] = log.read_text()[-2000:]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/wsi_scale.json")
    ap.add_argument("--work", default="/tmp/wsi_scale", help="slides, outputs and feature caches go here")
    ap.add_argument("--runs", nargs="+", default=["40000:default", "40000:200"],
                    help="SIZE:SPACING pairs: slide side in px, and 'default' (predict's default pitch) or a pitch in um")
    ap.add_argument("--period", type=int, default=9216, help="side of the repeated crop of the section, in px")
    ap.add_argument("--section", default="C2")
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--probe-spots", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=3600, help="a prediction running longer is killed")
    ap.add_argument("--tissue-peak", action="store_true",
                    help="also measure tissue detection alone in a fresh process (peak RSS)")
    ap.add_argument("--skip-predict", action="store_true", help="build and probe only")
    ap.add_argument("extra", nargs="*", help="more 'napari-flag predict' options, after --")
    a = ap.parse_args(argv)

    work = Path(a.work)
    result: dict = {"slides": {}, "runs": []}
    for run in a.runs:
        size_s, sp = run.split(":")
        size = int(size_s)
        slide = work / f"{a.section}_x{size}.ome.tif"
        if str(size) not in result["slides"]:
            info_path = slide.with_suffix(".json")
            if slide.is_file() and info_path.is_file():
                built = json.loads(info_path.read_text())
            else:
                built = build_slide(slide, size, a.period, a.section)
                info_path.write_text(json.dumps(built))
            print(f"slide: {built}", flush=True)
            built["probe"] = probe(slide, a.checkpoint, a.probe_spots, None)
            print(f"probe: {built['probe']}", flush=True)
            if a.tissue_peak:
                built["tissue_alone"] = tissue_peak(slide)
                print(f"tissue alone: {built['tissue_alone']}", flush=True)
            result["slides"][str(size)] = built
        if a.skip_predict:
            continue
        spacing = None if sp == "default" else float(sp)
        tag = f"{size}_" + ("default" if spacing is None else f"{spacing:g}um")
        r = predict(slide, work / f"pred_{tag}.h5ad", work, a.checkpoint, spacing, a.extra, a.threads, a.timeout_s)
        r.update(size_px=size, spacing=sp)
        result["runs"].append(r)
        print(f"{tag}: {r}", flush=True)
        result.update(command=command(argv), machine=machine(f"{a.threads} threads for the predicting process, cpu"))
        write_json(result, a.out)  # after every run: a later one killed keeps the earlier ones
    result.update(command=command(argv), machine=machine(f"{a.threads} threads for the predicting process, cpu"))
    write_json(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
