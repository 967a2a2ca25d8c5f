"""Predict time and peak memory: one HER2ST section (warm and cold) and synthetic slides.

    python benchmarks/scaling.py --checkpoint CKPT

Every measurement runs in a fresh subprocess, which reports its own wall time
and peak resident memory (``ru_maxrss``):
- ``section-warm``: predict a HER2ST section with its image features cached
  (what ``napari-flag predict her2st:C2`` does a second time: reads the count
  table and positions, loads the model, encodes, samples);
- ``section-loaded``: the same with the section already in memory, as in
  napari where the slide is open and *Predict* is clicked;
- ``section-cold``: the same with an empty pyramid and feature cache (JPEG
  decode, patch extraction and encoding included);
- ``synthetic-N``: N spots on a realistic hexagonal grid (Visium pitch) with
  random features: spatial graph, slide encoding and sampling at the model's
  default steps and samples.
- ``train-fold``: train FLAG for one leave-one-section-out fold
  (``configs/her2st_loso_<SECTION>.yaml``: 800 steps on the other four
  sections; features cached), data preparation included.
Writes ``benchmarks/results/scaling.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _result import command, machine, write_json


def _section(ckpt: str, section, cold: bool) -> dict:
    from napari_flag.inference import predict_sample

    t0 = time.perf_counter()
    src = f"her2st:{section}" if isinstance(section, str) else section
    out = predict_sample(src, checkpoint=ckpt, device="cpu", feature_cache=not cold)
    return {"seconds": time.perf_counter() - t0, "spots": int(out.n_obs), "genes": int(out.n_vars),
            "steps": out.uns["flag"]["steps"], "samples": out.uns["flag"]["samples"],
            "solver": out.uns["flag"].get("solver")}


def _synthetic(ckpt: str, n: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from napari_flag.checkpoint import load_model
    from napari_flag.graph import build_spatial_graph
    from napari_flag.model import sample_expression

    model, meta = load_model(ckpt, "cpu")
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    r, c = np.divmod(np.arange(n), side)
    coords_um = np.stack([c * 100.0 + (r % 2) * 50.0, r * 100.0 * np.sqrt(3) / 2], 1)  # Visium pitch
    feats = rng.normal(size=(n, int(meta.get("feat_dim") or meta.encoder["dim"]))).astype(np.float32)
    t0 = time.perf_counter()
    graph = build_spatial_graph(coords_um, feats, k=int((meta.get("graph") or {}).get("k", 8)))
    t_graph = time.perf_counter() - t0
    with torch.no_grad():
        h = model.encode_slide(torch.from_numpy(feats), graph)
        t_enc = time.perf_counter() - t0 - t_graph
        sampler = model.cfg.sampler
        steps, samples = sampler.steps, sampler.samples
        nb = graph.neighbour_matrix() if getattr(model, "is_joint", False) else None  # joint: whole slide at once
        sample_expression(model, h, steps=steps, samples=samples, generator=torch.Generator().manual_seed(seed),
                          neighbours=nb)
    return {"seconds": time.perf_counter() - t0, "graph_s": t_graph, "encode_s": t_enc, "spots": n, "steps": steps,
            "samples": samples, "solver": sampler.solver, "mean_rule": sampler.mean,
            "mean_like": sampler.mean_like, "joint": bool(getattr(model, "is_joint", False))}


def child(kind: str, ckpt: str, arg: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if kind == "section-warm":
        _section(ckpt, arg, cold=False)  # fill the caches, then measure
        rec = _section(ckpt, arg, cold=False)
    elif kind == "section-loaded":
        from napari_flag.data import load_sample

        sample = load_sample(f"her2st:{arg}")
        _section(ckpt, sample, cold=False)
        rec = _section(ckpt, sample, cold=False)
    elif kind == "train-fold":
        from napari_flag.training import TrainConfig, train

        cfg_path = Path(__file__).resolve().parent.parent / "configs" / f"her2st_loso_{arg}.yaml"
        out = tempfile.mkdtemp(prefix="napari-flag-train-")
        cfg = TrainConfig.from_yaml(cfg_path, [f"out_dir={out}", "device=cpu", "val=[]", "test=[]"])
        t0 = time.perf_counter()
        res = train(cfg)
        rec = {"seconds": time.perf_counter() - t0, "steps": res.step, "config": str(cfg_path.name)}
    elif kind == "section-cold":
        rec = _section(ckpt, arg, cold=True)
    else:
        rec = _synthetic(ckpt, int(arg))
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT " + json.dumps(rec), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--section", default="C2")
    ap.add_argument("--spots", type=int, nargs="+", default=[5000, 20000, 50000, 100000])
    ap.add_argument("--no-train", action="store_true", help="skip the training-time row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/scaling.json")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "CKPT", "ARG"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child, threads=a.threads)
        return 0
    from napari_flag.checkpoint import default_checkpoint_path

    ckpt = str(a.checkpoint or default_checkpoint_path())
    runs = [("section-warm", a.section), ("section-loaded", a.section), ("section-cold", a.section)]
    if not a.no_train:
        runs.append(("train-fold", a.section))
    runs += [("synthetic", str(n)) for n in a.spots]
    rows = []
    for kind, arg in runs:
        env = dict(os.environ)
        if kind == "section-cold":
            tmp = tempfile.mkdtemp(prefix="napari-flag-cold-")
            env["NAPARI_FLAG_PYRAMID_DIR"] = str(Path(tmp) / "pyramids")
            env["NAPARI_FLAG_FEATURE_DIR"] = str(Path(tmp) / "features")
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--child", kind, ckpt, arg],
                           env=env, capture_output=True, text=True)
        line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if p.returncode or not line:
            print(p.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{kind} {arg} failed")
        rec = {"kind": kind, "arg": arg, **json.loads(line[0][7:]), "process_s": time.perf_counter() - t0}
        if "spots" in rec:
            rec["s_per_1000_spots"] = 1000.0 * rec["seconds"] / rec["spots"]
        rows.append(rec)
        print(f"{kind:13s} {arg:>6s}: {rec['seconds']:7.2f} s  peak RSS {rec['peak_rss_mb']:7.0f} MB", flush=True)
    result = {
        "checkpoint": ckpt, "rows": rows,
        "command": command(argv),
        "machine": machine(f"{a.threads} threads"),
    }
    write_json(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
