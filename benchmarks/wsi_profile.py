"""Whole-slide phase profile: ``napari-flag predict SLIDE`` on a pyramidal OME-TIFF with an empty feature cache.

    python benchmarks/wsi_profile.py --baseline /tmp/base --pairs 2

The slide is :mod:`wsi_scale`'s (HER2ST C2's H&E repeated to SIZE x SIZE px,
tiled 256 px JPEG, pyramidal OME-TIFF).  Each run is the CLI in a child
process with a fresh feature cache; recorded per run: wall, user and sys
seconds, minor page faults (``wait4``), the child's own peak RSS (``VmHWM``
as it exits), ms per spot, and the machine's float32 matmul GFLOP/s measured
just before it (the machine's speed drifts by tens of percent over minutes,
so compare runs through it).  The current code's runs also record their phases
(``predict --profile``): tissue, features (with the reader thread's CPU
seconds and the tiles decoded), graph, model wait, sampling, writing.

``--baseline DIR``: a checkout of other code (e.g. ``git worktree add DIR
<commit>``) whose ``napari_flag`` is run the same way, alternating with the
current code (baseline first in each pair); the speed-up is reported best
against best and as the median of the pairs, per spot (the codes may lay
different numbers of spots on the same slide) and in wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _result import command, machine, write_json
from wsi_scale import _CLI, build_slide

REPO = Path(__file__).resolve().parents[1]

_MATMUL = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    for _ in range(4):
        a @ b
    best = max(best, 4 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9)
print(best)
"""


def matmul_gflops(threads: int) -> float:
    """float32 2048^3 matmul, best of five, in a fresh process with ``threads`` threads."""
    out = subprocess.run([sys.executable, "-c", _MATMUL, str(threads)], capture_output=True, text=True, check=True)
    return round(float(out.stdout.split()[-1]), 1)


def _commit(code: Path) -> str:
    """The checkout's commit, with ``+changes`` when its work tree differs from it."""
    git = ["git", "-C", str(code)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def run_predict(code: Path, slide: Path, work: Path, tag: str, threads: int, profile: bool,
                extra: list[str]) -> dict:
    """One ``napari-flag predict`` of ``code``'s package as a child process, with a fresh feature cache."""
    feat = work / f"features-{tag}"
    shutil.rmtree(feat, ignore_errors=True)
    out, prof, hwm = work / f"{tag}.h5ad", work / f"{tag}.profile.json", work / f"{tag}.hwm"
    for p in (out, prof, hwm):
        p.unlink(missing_ok=True)
    argv = [sys.executable, "-c", _CLI, "predict", str(slide), "--out", str(out), "--device", "cpu",
            "--quiet", *extra] + (["--profile", str(prof)] if profile else [])
    # the checkout's package first on the path (before an installed one); wsi_scale's child writes its VmHWM
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               NAPARI_FLAG_FEATURE_DIR=str(feat), WSI_SCALE_HWM=str(hwm),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    where = subprocess.run([sys.executable, "-c", "import napari_flag; print(napari_flag.__file__)"], env=env,
                           cwd=str(work), capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(Path(code).resolve()):
        raise SystemExit(f"{tag}: the child imports {where}, not {code}'s package")
    gflops = matmul_gflops(threads)
    t0 = time.perf_counter()
    # cwd = the work folder: `python -c` puts the cwd first on sys.path, and run from a checkout's root
    # that checkout's package would shadow PYTHONPATH's
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(work))
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log = proc.stdout.read().decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{tag}: predict failed (exit {rc}):\n{log[-2000:]}")
    import anndata as ad

    a = ad.read_h5ad(out, backed="r")
    spots = int(a.n_obs)
    a.file.close()
    res = {"code": str(code), "commit": _commit(code), "wall_s": round(wall, 2), "user_s": round(ru.ru_utime, 2),
           "sys_s": round(ru.ru_stime, 2), "sys_over_user": round(ru.ru_stime / max(ru.ru_utime, 1e-9), 3),
           "minflt": int(ru.ru_minflt), "own_peak_rss_mb": round(float(hwm.read_text()), 1),
           "spots": spots, "ms_per_spot": round(1000 * wall / spots, 2), "matmul_gflops": gflops}
    if profile:
        res["profile"] = json.loads(prof.read_text())
    shutil.rmtree(feat, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/wsi_profile.json")
    ap.add_argument("--work", default="/tmp/wsi_profile", help="slide, outputs and feature caches go here")
    ap.add_argument("--size", type=int, default=20000, help="slide side in px")
    ap.add_argument("--period", type=int, default=9216)
    ap.add_argument("--section", default="C2")
    ap.add_argument("--baseline", default=None, help="checkout of the code to compare with (run first in each pair)")
    ap.add_argument("--pairs", type=int, default=1, help="runs of each code, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="more 'napari-flag predict' options, after --")
    a = ap.parse_args(argv)

    work = Path(a.work)
    slide = work / f"{a.section}_x{a.size}.ome.tif"
    info = slide.with_suffix(".json")
    built = json.loads(info.read_text()) if slide.is_file() and info.is_file() else None
    if built is None:
        built = build_slide(slide, a.size, a.period, a.section)
        info.write_text(json.dumps(built))
    result: dict = {"slide": built, "baseline": a.baseline, "runs": []}
    for i in range(a.pairs):
        if a.baseline:
            r = run_predict(Path(a.baseline), slide, work, f"baseline{i}", a.threads, False, a.extra)
            print(f"baseline {i}: {r}", flush=True)
            result["runs"].append({"which": "baseline", **r})
        r = run_predict(REPO, slide, work, f"current{i}", a.threads, True, a.extra)
        print(f"current {i}: { {k: v for k, v in r.items() if k != 'profile'} }", flush=True)
        result["runs"].append({"which": "current", **r})
        result.update(command=command(argv), machine=machine(f"{a.threads} threads, cpu"))
        write_json(result, a.out)  # after every pair: a later one killed keeps the earlier ones
    cur = [r for r in result["runs"] if r["which"] == "current"]
    base = [r for r in result["runs"] if r["which"] == "baseline"]
    if base:
        # per spot: the two codes may lay a different number of spots on the same slide (tissue detection)
        pairs = [b["ms_per_spot"] / c["ms_per_spot"] for b, c in zip(base, cur)]
        result["speedup"] = {"per_spot_best_against_best": round(min(b["ms_per_spot"] for b in base)
                                                                 / min(c["ms_per_spot"] for c in cur), 2),
                             "per_spot_median_pair": round(statistics.median(pairs), 2),
                             "per_spot_pairs": [round(p, 2) for p in pairs],
                             "wall_best_against_best": round(min(b["wall_s"] for b in base)
                                                             / min(c["wall_s"] for c in cur), 2)}
        print(f"speed-up: {result['speedup']}", flush=True)
    result.update(command=command(argv), machine=machine(f"{a.threads} threads, cpu"))
    write_json(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
