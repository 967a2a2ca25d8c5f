"""Pilot of the training noise share at sigma_max (``P_max``) on one nested fold, validation section only.

    python benchmarks/noise_share_pilot.py --runs /work/runs --variants 0 0.25

The nested fold of test section C2 (``her2st_loso.py --nested``): trains on
C4, C5 and C6 and validates on C3, every ``--val-every`` steps with early
stopping; C2 is never read.  One run per ``P_max`` in ``--variants`` (one
process each, one thread, run side by side), all else equal (joint
denoising, one head).  The best validated weights are then scored on C3:
the one-shot denoiser ``D(x_T; sigma_max)`` (the posterior-mean estimate the
default prediction is anchored on), and the default sampler's mean and one
sample at temperatures 0.5 / 0.7 / 1.0, with the samples' first call shared
or not (``sample_share_first``).  Writes ``benchmarks/results/noise_share_pilot.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _result import command, machine, write_json

TRAIN, VAL = ["her2st:C4", "her2st:C5", "her2st:C6"], "her2st:C3"


def child(p_max: float, out_dir: str, steps: int, val_every: int, patience: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from napari_flag.checkpoint import load_model
    from napari_flag.inference import predict_arrays
    from napari_flag.metrics import evaluate
    from napari_flag.training import TrainConfig, prepare_data, train

    cfg = TrainConfig(train=TRAIN, val=[VAL], steps=steps, val_every=val_every, patience=patience, seed=0,
                      device="cpu", log_every=100, out_dir=out_dir, lr=0.002, ema_decay=0.995, batch_spots=48,
                      model={"preset": "cpu", "joint": True, "heads": 1, "P_max": p_max, "sample_temperature": 1.0,
                             "sample_mean_like": 6, "sample_share_first": False})
    sampler = cfg.flag_config().sampler
    cfg = cfg.replace(val_samples=sampler.samples, val_steps=sampler.steps)
    data = prepare_data(cfg)
    t0 = time.time()
    out = train(cfg, data=data)
    res: dict = {"P_max": p_max, "train_s": time.time() - t0, "stopped_at": out.step}
    model, meta = load_model(out.best_path, "cpu")
    res["kept_step"] = int(meta["step"])
    sl = data.val[0]

    def score(x):
        m = evaluate(x, sl.truth, sl.coords, sl.array_rc, sl.grid, genes=data.genes, seed=0)
        return {k: float(m[k]) for k in ("PCC", "GSC", "GSC-CCC", "SSC")}

    for tau in (0.5, 0.7, 1.0):
        model.set_sampler(temperature=tau)
        for share in (False, True):
            pred, _, smp = predict_arrays(model, sl, data.panel, seed=0, return_samples=True, share_first=share)
            res[f"tau{tau}_share{int(share)}"] = {"mean": score(pred), "sample": score(smp[0])}
    res["one_shot"] = score(predict_arrays(model, sl, data.panel, seed=0, steps=1, samples=1)[0])
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="the runs go to RUNS/noise_share_<P_max>")
    ap.add_argument("--variants", type=float, nargs="+", default=[0.0, 0.25])
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/noise_share_pilot.json")
    ap.add_argument("--child", nargs=2, metavar=("P_MAX", "OUT_DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(float(a.child[0]), a.child[1], a.steps, a.val_every, a.patience)))
        return 0
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--steps", str(a.steps), "--val-every", str(a.val_every),
                               "--patience", str(a.patience), "--child", str(v), str(Path(a.runs) / f"noise_share_{v:g}")],
                              stdout=subprocess.PIPE, text=True) for v in a.variants]
    runs = []
    for p in procs:
        out, _ = p.communicate()
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            raise SystemExit("a pilot run failed")
        runs.append(json.loads(line[0][7:]))
    for r in runs:
        print(f"P_max={r['P_max']:g}: kept step {r['kept_step']}, one-shot "
              + " ".join(f"{k}={v:.3f}" for k, v in r["one_shot"].items()))
        for tau in (0.5, 0.7, 1.0):
            v = r[f"tau{tau}_share0"]
            print(f"  tau {tau}: mean " + " ".join(f"{k}={x:.3f}" for k, x in v["mean"].items())
                  + " | sample " + " ".join(f"{k}={x:.3f}" for k, x in v["sample"].items()))
    write_json({"fold": {"train": TRAIN, "validation": VAL, "test_never_read": "her2st:C2"}, "runs": runs,
                "command": command(argv), "machine": machine("runs side by side, 1 thread each"),
                "wall_s": time.time() - t0}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
