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
from typing import Callable

import torch

from .config import SOLVERS

__all__ = ["EDM", "SOLVERS"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EDM:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 1.0
    P_mean: float = -1.2
    P_std: float = 1.2
    rho: float = 7.0

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
