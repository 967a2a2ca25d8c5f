"""Forward-pass efficiency: achieved GFLOP/s of the DiT next to the machine's large-matmul GFLOP/s.

    python benchmarks/kernel_profile.py --threads 2

FLOPs are counted analytically from the config (multiply-add = 2 FLOP),
per (spot, sample) row and network evaluation:

* per block and token: qkv ``2*W*3W``, attention output ``2*W*W``, MLP
  ``2*2*W*H`` (H = mlp_ratio * W); per block and row: scores ``2*G*G*W`` and
  weighted values ``2*G*G*W`` (all heads together);
* value embedding ``2*(2F+1)*W`` (twice with joint denoising: the neighbours' values too) and
  final projection ``2*W`` per token;
* per row: noise MLP, condition MLP and the adaLN modulations.

Elementwise work (norms, softmax, activations) is not counted, so the figure
is a lower bound on work done.  The same run times ``torch.matmul`` of two
square float32 matrices (``--matmul-n``) as the machine's reference, and
profiles one chunk of the default sampler by operator, times the forward
under bf16 autocast (`bf16_autocast`: its speed against float32) and the same
network with its attention in ``--heads`` heads (random weights, same FLOPs:
``heads_random_weights``).  Writes
``benchmarks/results/kernel_profile.json``.
"""
from __future__ import annotations

import argparse
import sys
import time

from _result import command, machine, write_json


def forward_flops(cfg, n_genes: int) -> dict:
    w, g = cfg.width, n_genes
    hid = int(w * cfg.mlp_ratio)
    tok_block = 2 * w * 3 * w + 2 * w * w + 2 * 2 * w * hid
    attn_block = 2 * 2 * g * g * w
    per_row = {
        "linear_tokens": cfg.depth * g * tok_block + g * (2 * (2 * cfg.value_fourier + 1) * w + 2 * w),
        "attention": cfg.depth * attn_block,
        "per_row": 2 * (64 * w + w * w) + 2 * (cfg.cond_dim * w + w * w) + cfg.depth * 2 * w * 6 * w + 2 * w * 2 * w,
    }
    if cfg.joint:  # the neighbours' values get their own embedding per token
        per_row["neighbour_embedding"] = g * 2 * (2 * cfg.value_fourier + 1) * w
    per_row["total"] = sum(per_row.values())
    return per_row


def best_of(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[256], help="rows (spot x sample) per forward")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--heads", type=int, nargs="*", default=[1, 2], help="head counts timed with random weights")
    ap.add_argument("--out", default="benchmarks/results/kernel_profile.json")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from napari_flag.checkpoint import default_checkpoint_path, load_model

    ckpt = str(a.checkpoint or default_checkpoint_path())
    model, _ = load_model(ckpt, "cpu")
    model.eval()
    n = a.matmul_n
    x, y = torch.randn(n, n), torch.randn(n, n)
    t_mm = best_of(lambda: torch.matmul(x, y), a.reps)
    mm_gflops = 2 * n**3 / t_mm / 1e9

    flops = forward_flops(model.cfg.network, model.n_genes)
    gen = torch.Generator().manual_seed(0)
    # one set of denoiser inputs per row count: (x, sigma, h, neighbours' values or None)
    inputs = {b: (torch.randn(b, model.n_genes, generator=gen), torch.full((b, 1), 2.0),
                  torch.randn(b, model.cfg.network.cond_dim, generator=gen),
                  torch.randn(b, model.n_genes, generator=gen) if model.is_joint else None) for b in a.rows}

    def forward(b):
        xs, sig, h, nb = inputs[b]
        return model.denoise(xs, sig, h, nbr=nb)

    rows = []
    for b in a.rows:
        with torch.no_grad():
            t = best_of(lambda: forward(b), a.reps)
        gf = flops["total"] * b / t / 1e9
        rows.append({"rows": b, "seconds": t, "ms_per_row": 1e3 * t / b, "gflops": gf,
                     "fraction_of_matmul": gf / mm_gflops})
        print(f"rows={b:5d}: {1e3 * t:8.2f} ms  {gf:6.1f} GFLOP/s  ({100 * gf / mm_gflops:4.1f}% of matmul "
              f"{mm_gflops:.0f} GFLOP/s)", flush=True)

    # bf16 autocast (this CPU has AVX-512 bf16): only worth a metric check if it is faster
    bf16 = []
    for b in a.rows:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            t = best_of(lambda: forward(b), a.reps)
        fp32 = next(r["seconds"] for r in rows if r["rows"] == b)
        bf16.append({"rows": b, "seconds": t, "speedup_vs_fp32": fp32 / t})
        print(f"rows={b:5d}: bf16 autocast {1e3 * t:8.2f} ms  ({fp32 / t:.2f}x the float32 speed)", flush=True)

    # the same network with its attention split into more heads (same FLOPs, random weights): why 1 head
    heads = []
    for nh in sorted({model.cfg.network.heads, *a.heads}):
        other = type(model)(model.cfg.replace(heads=nh), model.n_genes, model.feat_dim).eval()
        for b in a.rows:
            xs, sig, h, nb = inputs[b]
            with torch.no_grad():
                t = best_of(lambda: other.denoise(xs, sig, h, nbr=nb), a.reps)
            heads.append({"heads": nh, "rows": b, "seconds": t, "ms_per_row": 1e3 * t / b,
                          "gflops": flops["total"] * b / t / 1e9})
            print(f"heads={nh} rows={b:5d}: {1e3 * t:8.2f} ms  {heads[-1]['gflops']:6.1f} GFLOP/s", flush=True)

    from torch.profiler import ProfilerActivity, profile

    b = a.rows[0]
    with torch.no_grad():
        forward(b)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.reps):
                forward(b)
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev)
    ops = [{"op": e.key, "self_ms_per_forward": e.self_cpu_time_total / 1e3 / a.reps,
            "share": e.self_cpu_time_total / total} for e in ev[:15]]
    for o in ops:
        print(f"  {o['op']:40s} {o['self_ms_per_forward']:8.2f} ms  {100 * o['share']:5.1f}%")
    result = {
        "checkpoint": ckpt, "n_genes": model.n_genes,
        "config": {k: getattr(model.cfg.network, k) for k in ("width", "depth", "heads", "mlp_ratio", "value_fourier")},
        "flop_per_row": flops, "matmul": {"n": n, "seconds": t_mm, "gflops": mm_gflops},
        "forward": rows, "bf16_autocast": bf16, "heads_random_weights": heads, "profile_rows": b,
        "profile_top_ops": ops,
        "torch": torch.__version__,
        "command": command(argv), "machine": machine(f"{a.threads} threads"),
    }
    write_json(result, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
