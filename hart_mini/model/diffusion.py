"""Diffusion for HART's residual head: the schedule, the loss, the samplers and the MLP (HART section 3.2, MAR).

One token at a time: the head models p(x0 | z) for a C-dimensional vector x0 (a scaled residual),
conditioned on a D-dimensional z from the transformer. There is no attention between tokens (MAR's
"Diffusion Loss").

    forward noising   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,  t in 0..T-1, T = 1000, cosine abar
    eps-prediction    the head predicts eps
    v-prediction      the head predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0   (Salimans & Ho)
    sampling          DDIM (deterministic) or ancestral DDPM over any respaced subset of the T steps

HART's own head is eps-prediction with a learned variance, sampled in 8 ancestral steps with x0 clipped
(`clip_x0` here). hart_mini defaults to v-prediction, which needs no clipping bound: notebook 06 shows why.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from hart_mini.config import HeadConfig, require


class CosineSchedule:
    """abar_t = cos^2(((t+1)/T + s) / (1 + s) * pi/2) / cos^2(s / (1 + s) * pi/2), s = 0.008 (Nichol & Dhariwal).

    Index t = 0 is the least noisy step (abar near 1), t = T - 1 the noisiest (abar near 0).
    """

    def __init__(self, steps: int = 1000, s: float = 0.008):
        require(isinstance(steps, int) and steps >= 2, "steps", steps, "an integer >= 2")
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        abar = [min(f((t + 1) / steps) / f(0.0), 1.0) for t in range(steps)]
        # iDDPM clips each beta_t = 1 - abar_t / abar_{t-1} at 0.999, which keeps abar_{T-1} > 0.
        betas = [min(1 - a / p, 0.999) for a, p in zip(abar, [1.0, *abar[:-1]])]
        self.steps = steps
        self.abar = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)  # (T,) float64
        self._on = {}  # device -> abar there: copied once, not in every step (a copy to a GPU waits for it)

    def at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for a batch of step indices t (N,), shaped to broadcast against `like` (N, ...)."""
        if like.device not in self._on:
            self._on[like.device] = self.abar.to(like.device)
        a = self._on[like.device][t].to(like.dtype)
        return a.view(-1, *([1] * (like.ndim - 1)))

    def noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.at(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps  # x_t

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        if prediction == "eps":
            return eps
        a = self.at(t, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0  # v

    def split(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str):
        """A head output -> (x0, eps) estimates."""
        a = self.at(t, x_t)
        if prediction == "eps":
            eps = out
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
            eps = (1 - a).sqrt() * x_t + a.sqrt() * out
        return x0, eps

    def respaced(self, sampling_steps: int) -> list[int]:
        """sampling_steps step indices from the noisiest (T-1) down, evenly strided by T / sampling_steps.

        "Trailing" spacing (Lin et al. 2024, arXiv 2305.08891, table 2): t_i = round(T (n - i) / n) - 1. Each
        of the n steps is a model call that removes real noise; the last call is at t = T/n - 1, not at t = 0,
        where x_t is already x0 and the call would do nothing (so "2 steps" used to be one useful call).
        """
        require(isinstance(sampling_steps, int) and 1 <= sampling_steps <= self.steps, "sampling_steps",
                sampling_steps, f"an integer in [1, {self.steps}]")
        n = sampling_steps
        return [round(self.steps * (n - i) / n) - 1 for i in range(n)]


def diffusion_loss(head: nn.Module, x0: torch.Tensor, z: torch.Tensor, schedule: CosineSchedule,
                   prediction: str, batch_mul: int = 4, group: int = 1) -> torch.Tensor:
    """MSE of the head's eps or v prediction; each (x0, z) pair gets batch_mul noise draws (MAR issue #14).
    group: consecutive rows that share one noise level t (1: every token its own, MAR's; pn^2: an image's
    whole map, for the map head, which denoises the map jointly)."""
    require(isinstance(group, int) and group >= 1 and x0.shape[0] % group == 0, "group", group,
            f"an integer >= 1 that divides the {x0.shape[0]} rows")
    x0, z = x0.repeat(batch_mul, 1), z.repeat(batch_mul, 1)  # (N * batch_mul, C), (N * batch_mul, D)
    t = torch.randint(0, schedule.steps, (x0.shape[0] // group,), device=x0.device).repeat_interleave(group)
    eps = torch.randn_like(x0)
    out = head(schedule.noise(x0, t, eps), t, z)
    return (out.float() - schedule.target(x0, eps, t, prediction).float()).pow(2).mean()


@torch.no_grad()
def sample(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
           schedule: CosineSchedule, sampling_steps: int, prediction: str, method: str = "ddim",
           generator: torch.Generator | None = None, device: torch.device | str = "cpu",
           clip_x0: float | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Draw x0 of `shape` by running model(x_t, t) -> eps or v over a respaced chain of steps.

    DDIM (eta = 0):  x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat
    DDPM (ancestral) on the respaced chain: beta = 1 - abar_t / abar_t', x_{t'} ~ q(x_t' | x_t, x0_hat).
    clip_x0: clamp x0_hat to [-clip_x0, clip_x0] at every step, and take eps_hat consistent with the clamped
    x0_hat (HART's head does this in its scaled units: iDDPM's clip_denoised=True, clip_x0 = 1).
    temperature: the start x_T ~ N(0, temperature^2 I), and DDPM's fresh noise scaled alike (MAR's sampler
    temperature); 0 draws no noise at all: DDIM then follows the model's means from x_T = 0.
    """
    require(method in ("ddim", "ddpm"), "method", method, "'ddim' or 'ddpm'")
    require(temperature >= 0, "temperature", temperature, "a number >= 0 (1 = the model's own spread)")
    steps = schedule.respaced(sampling_steps)
    x = torch.randn(shape, generator=generator, device=device) * temperature
    for i, t in enumerate(steps):
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        x0, eps = schedule.split(model(x, t_batch), x, t_batch, prediction)
        if clip_x0 is not None:
            a_t = schedule.at(t_batch, x)
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        if i == len(steps) - 1:
            return x0
        a, a_next = schedule.abar[t].item(), schedule.abar[steps[i + 1]].item()
        if method == "ddim":
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        else:
            beta = 1 - a / a_next
            mean = (math.sqrt(a_next) * beta / (1 - a)) * x0 + (math.sqrt(1 - beta) * (1 - a_next) / (1 - a)) * x
            var = beta * (1 - a_next) / (1 - a)
            x = mean + temperature * math.sqrt(var) * torch.randn(shape, generator=generator, device=device)
    return x


# --- the head -----------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the step index t (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ResBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift); (shift, scale, gate) from the condition, zero at init."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class MLPHead(nn.Module):
    """MAR's SimpleMLPAdaLN: (x_t (N, C), t (N,), z (N, D)) -> eps or v (N, C). Outputs zero at init."""

    def __init__(self, cfg: HeadConfig, latent_channels: int, cond_width: int, reads_condition: bool = True):
        super().__init__()
        W = cfg.width
        self.freq_dim = cfg.freq_dim
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.cond_embed = nn.Linear(cond_width, W)
        if not reads_condition:  # HeadConfig.condition 'none': z meets zero weights that never train
            nn.init.zeros_(self.cond_embed.weight)
            self.cond_embed.weight.requires_grad_(False)
        self.input_proj = nn.Linear(latent_channels, W)
        self.blocks = nn.ModuleList(ResBlock(W) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(W, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.output = nn.Linear(W, latent_channels)
        for layer in (self.final_modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(timestep_embedding(t, self.freq_dim)) + self.cond_embed(z)  # (N, W)
        x = self.input_proj(x_t)  # (N, W)
        for block in self.blocks:
            x = block(x, y)
        shift, scale = self.final_modulation(y).chunk(2, dim=-1)
        return self.output(self.final_norm(x) * (1 + scale) + shift)  # (N, C)
