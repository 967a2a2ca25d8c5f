"""EDM-style continuous-noise diffusion (Karras et al., NeurIPS 2022).

Why EDM rather than the VE-SDE of the reference implementation: its
preconditioning keeps the network's input and target at unit variance at every
noise level, and its rho schedule lets a deterministic ODE solver reach good
samples in a handful of steps (DPM-Solver++(2M): 4 network evaluations per
sample), which is what makes CPU prediction practical: 32 evaluations per spot
for 8 samples instead of ~1,600.

Data are assumed standardised per gene, so ``sigma_data`` is about 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import fields
from typing import Callable

import torch

from .config import SOLVERS, FlagConfig

__all__ = ["EDM", "SOLVERS", "sample_expression"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


_NOISE = {f.name: f.default for f in fields(FlagConfig)}


@dataclass
class EDM:
    """Noise schedule and preconditioning; defaults are :class:`FlagConfig`'s (one source)."""

    sigma_min: float = _NOISE["sigma_min"]
    sigma_max: float = _NOISE["sigma_max"]
    sigma_data: float = _NOISE["sigma_data"]
    P_mean: float = _NOISE["P_mean"]
    P_std: float = _NOISE["P_std"]
    rho: float = _NOISE["rho"]

    @classmethod
    def from_config(cls, cfg) -> "EDM":
        return cls(cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, cfg.P_mean, cfg.P_std, cfg.rho)

    # -- preconditioning ----------------------------------------------------
    def precond(self, sigma: torch.Tensor):
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape).

        The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``.
        """
        sd2 = self.sigma_data**2
        s2 = sigma**2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1.0 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out^2: makes the loss on F unit-weighted at every sigma."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_sigma(self, n: int, generator=None, device=None) -> torch.Tensor:
        """Training noise levels: log-normal with (P_mean, P_std)."""
        z = torch.randn(n, generator=generator, device=_gen_device(generator, device))
        return (z * self.P_std + self.P_mean).exp().to(device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
        """``(x_noisy, c_in, c_noise, target_F)`` with ``sigma`` broadcastable to ``x0``.

        Regressing F on ``target_F`` with plain MSE equals the EDM loss
        ``lambda(sigma) ||D - x0||^2``.
        """
        x = x0 + noise * sigma
        c_skip, c_out, c_in, c_noise = self.precond(sigma)
        return x, c_in, c_noise, (x0 - c_skip * x) / c_out

    # -- sampling -------------------------------------------------------------
    def schedule(self, steps: int, device=None) -> torch.Tensor:
        """``steps + 1`` noise levels from ``sigma_max`` down to 0 (rho schedule)."""
        if steps < 1:
            raise ValueError("steps must be >= 1")
        if steps == 1:
            t = torch.tensor([self.sigma_max], dtype=torch.float64)
        else:
            i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
            a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
            t = (a + i * (b - a)) ** self.rho
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)]).to(torch.float32).to(device)

    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        x: torch.Tensor,
        steps: int,
        solver: str = "heun",
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Integrate the probability-flow ODE from ``x`` (noise already at ``sigma_max``).

        ``denoise(x, sigma)`` returns D(x; sigma) with ``sigma`` of shape (rows, 1).
        Heun costs ``2 steps - 1`` evaluations (the last step is Euler, landing
        on sigma=0); Euler costs ``steps``.  ``steps=1`` is the one-shot
        denoiser ``D(x; sigma_max)`` with either solver.
        """
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        ts = self.schedule(steps, device=x.device)
        ones = torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype)
        if solver == "dpm2m":
            return self._sample_dpm2m(denoise, x, ts, ones, on_step)
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            d = (x - denoise(x, ones * t)) / t
            x_next = x + (t_next - t) * d
            if solver == "heun" and t_next > 0:
                d2 = (x_next - denoise(x_next, ones * t_next)) / t_next
                x_next = x + (t_next - t) * 0.5 * (d + d2)
            x = x_next
            if on_step is not None:
                on_step(i + 1)
        return x

    @staticmethod
    def _sample_dpm2m(denoise, x, ts, ones, on_step):
        """DPM-Solver++(2M) (Lu et al. 2022) in EDM's x = x0 + sigma*eps form.

        One network call per step: the second-order correction extrapolates
        from the previous step's denoised estimate instead of a second call,
        so it reaches Heun's accuracy at about half the evaluations.
        """
        d_prev, h_prev = None, None
        steps = len(ts) - 1
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            d = denoise(x, ones * t)
            if t_next == 0:
                x = d  # last step: the denoised estimate itself
            else:
                h = torch.log(t / t_next)  # lambda = -log(sigma)
                d_hat = d
                if d_prev is not None:
                    r = h_prev / h
                    d_hat = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
                ratio = t_next / t
                x = ratio * x + (1 - ratio) * d_hat
                d_prev, h_prev = d, h
            if on_step is not None:
                on_step(i + 1)
        return x

    @staticmethod
    def nfe(steps: int, solver: str = "heun") -> int:
        """Network evaluations per sample."""
        return 2 * steps - 1 if solver == "heun" else steps


@torch.no_grad()
def sample_expression(
    model,
    h: torch.Tensor,
    steps: int | None = None,
    samples: int | None = None,
    generator: torch.Generator | None = None,
    return_samples: bool = False,
    progress: Callable[[int, int], None] | None = None,
    clip_min: torch.Tensor | None = None,
    clip_max: torch.Tensor | None = None,
    solver: str | None = None,
    guidance: float | None = None,
    chunk_rows: int = 256,
    temperature: float | None = None,
    antithetic: bool | None = None,
) -> dict[str, torch.Tensor | None]:
    """Expression of every spot of a slide, in the model's standardised units.

    ``model`` is the network (a :class:`~napari_flag.model.FlagModel`: ``denoise``,
    ``predict_regression``, ``edm``, ``cfg``, ``n_genes``); ``h`` its slide
    condition (S, cond_dim), computed once by ``model.encode_slide``.  Draws
    ``samples`` samples per spot with a deterministic ``solver`` ODE of
    ``steps`` steps (defaults: the model config's; see :meth:`EDM.nfe`),
    ``chunk_rows`` (spot x sample) rows at a time: 256 rows keep a block's
    activations (~6 MB) in cache, measured 1.5x faster per row on CPU than
    1,500-row chunks.  Each sample is clipped to ``[clip_min, clip_max]`` (per
    gene) before ``mean``/``std`` (zero for one sample).  ``progress(done,
    total)`` follows the steps.  ``temperature`` scales the initial noise.
    ``antithetic`` starts the last ``M//2`` samples from the negated noise of
    the first ``M//2``; ``std`` is then the population std, since the mean of
    antithetic pairs carries (almost) no sample noise to correct for.  The
    initial noise is drawn for all spots up front, so results do not depend on
    ``chunk_rows``.

    Returns ``dict(mean=(S, G), std=(S, G), samples=(M, S, G) or None)``.
    """
    cfg = model.cfg
    steps = int(steps or cfg.sample_steps)
    solver = solver or cfg.sample_solver
    m = int(samples or cfg.sample_count)
    guidance = cfg.guidance if guidance is None else float(guidance)
    was_training = model.training
    model.eval()
    try:
        h = h.to(model.device, torch.float32)
        s, g = h.shape[0], model.n_genes
        lo = None if clip_min is None else torch.as_tensor(clip_min, dtype=torch.float32, device=h.device)
        hi = None if clip_max is None else torch.as_tensor(clip_max, dtype=torch.float32, device=h.device)

        def clip(x):
            return torch.clamp(x, min=lo, max=hi) if lo is not None or hi is not None else x

        per = max(1, chunk_rows // m)
        chunks = [(a, min(a + per, s)) for a in range(0, s, per)]
        if cfg.mode == "regression":
            pred = torch.empty(s, g, device=h.device)
            for j, (a, b) in enumerate(chunks):
                pred[a:b] = clip(model.predict_regression(h[a:b]))
                if progress is not None:
                    progress(j + 1, len(chunks))
            return {
                "mean": pred,
                "std": torch.zeros_like(pred),
                "samples": pred[None].expand(m, s, g).clone() if return_samples else None,
            }

        anti = bool(cfg.sample_antithetic if antithetic is None else antithetic) and m > 1
        half = m // 2 if anti else 0
        noise = torch.randn((m - half, s, g), generator=generator, device=_gen_device(generator, h.device))
        noise = noise.to(h.device)
        if half:
            noise = torch.cat([noise, -noise[:half]])
        tau = cfg.sample_temperature if temperature is None else float(temperature)
        edm = model.edm
        noise.mul_(edm.sigma_max * tau)
        total = len(chunks) * steps
        mean = torch.empty(s, g, device=h.device)
        std = torch.zeros(s, g, device=h.device)
        for j, (a, b) in enumerate(chunks):
            n = b - a
            hh = h[a:b].repeat(m, 1)  # row r -> spot a + r % n, sample r // n
            x = noise[:, a:b].reshape(m * n, g)

            def step_cb(i, j=j):
                if progress is not None:
                    progress(j * steps + i, total)

            x = edm.sample(lambda x, sg: model.denoise(x, sg, hh, guidance), x, steps, solver, step_cb)
            x = clip(x.view(m, n, g))
            noise[:, a:b] = x  # reuse the buffer for the finished samples
            mean[a:b] = x.mean(0)
            if m > 1:
                std[a:b] = x.std(0, unbiased=not anti)
        return {"mean": mean, "std": std, "samples": noise if return_samples else None}
    finally:
        model.train(was_training)


def _gen_device(generator, device):
    if generator is not None:
        return generator.device
    return device


def timestep_features(c_noise: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of a scalar noise level (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half
    )
    # c_noise = ln(sigma)/4 lies in about [-1.6, 1.1]; stretch it so the
    # fast frequencies actually vary across the noise range.
    arg = (c_noise.float() * 250.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
