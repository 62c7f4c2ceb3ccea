"""A residual head that denoises the whole last-scale map at once (HeadConfig.network 'map').

HART's and MAR's head (model/diffusion.py, MLPHead) denoises one token at a time: p(x0 | z) for each
C-vector on its own. A stripe on ToyShapes is a 3.5-pixel grating whose phase runs across the 4-pixel tokens
of an object, and the last scale's tokens, drawn in parallel, often break it; a per-token head cannot redraw
it coherently, because no token sees its neighbours' noise. The map head models p(x0_map | z_map) for the
whole (pn x pn) map of an image: the MLP blocks become residual blocks of two 3x3 convolutions, so each
token's denoising reads its neighbours' noisy residuals and conditions, and all of an image's tokens share
one noise level t (diffusion_loss(group=pn^2), and the sampler's t is shared anyway). Notebook 07, section
5 measures what it buys.

It takes and returns the same flat shapes as MLPHead, (N, C) with N = B * pn^2 rows grouped image by image
in row-major token order (map_to_tokens), so HART's loss and sampler call either head the same way.

    y     = time_embed(t) + W_y z                      per token (N, W)
    x     = W_in x_t + W_z z                           the condition also enters the convolved stream
    x     = x + gate * conv3(SiLU(conv3(norm(x) * (1 + scale) + shift)))   (shift, scale, gate) = W_m SiLU(y)
    out   = W_out (LN(x) * (1 + scale') + shift')     zero at init, like MLPHead

With HeadConfig.map_conv 'depthwise' a block reads its neighbours more cheaply: one depthwise 3x3 convolution
(each channel its own 3x3 filter: 9 W multiplies per token) before the MLP block's two per-token layers, as in
ConvNeXt, instead of two full 3x3 convolutions (18 W^2):

    x     = x + gate * W_2 SiLU(W_1 dwconv3(norm(x) * (1 + scale) + shift))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_mini.config import HeadConfig
from hart_mini.model.diffusion import timestep_embedding


class MapBlock(nn.Module):
    """x + gate * conv2(SiLU(conv1(norm(x) * (1 + scale) + shift))) on (B, W, pn, pn) maps; the modulation
    comes per token from y (B, W, pn, pn) and is zero at init. conv 'full': conv1 and conv2 are 3x3
    convolutions; 'depthwise': conv1 is a depthwise 3x3 then a per-token linear layer, conv2 per-token."""

    def __init__(self, width: int, conv: str = "full"):
        super().__init__()
        self.norm = nn.GroupNorm(1, width, affine=False)  # over the channels and the map of each image
        if conv == "full":
            self.conv1 = nn.Conv2d(width, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        else:  # 1x1 convolutions are per-token linear layers
            self.conv1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1))
            self.conv2 = nn.Conv2d(width, width, 1)
        self.modulation = nn.Conv2d(width, 3 * width, 1)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(y)).chunk(3, dim=1)  # 3 x (B, W, pn, pn)
        return x + gate * self.conv2(F.silu(self.conv1(self.norm(x) * (1 + scale) + shift)))


class MapHead(nn.Module):
    """(x_t (N, C), t (N,), z (N, D)) -> eps or v (N, C), N = B * pn^2, denoising each image's map jointly."""

    def __init__(self, cfg: HeadConfig, latent_channels: int, cond_width: int, pn: int,
                 reads_condition: bool = True):
        super().__init__()
        W = cfg.width
        self.pn, self.freq_dim = pn, cfg.freq_dim
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.cond_embed = nn.Linear(cond_width, W)
        self.input_proj = nn.Linear(latent_channels, W)
        self.cond_input = nn.Linear(cond_width, W)
        if not reads_condition:  # HeadConfig.condition 'none': z meets zero weights that never train
            for layer in (self.cond_embed, self.cond_input):
                nn.init.zeros_(layer.weight)
                layer.weight.requires_grad_(False)
        self.blocks = nn.ModuleList(MapBlock(W, cfg.map_conv) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(W, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.output = nn.Linear(W, latent_channels)
        for layer in (self.final_modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B pn^2, W) rows, image by image, row-major -> (B, W, pn, pn)."""
        n = self.pn * self.pn
        if x.shape[0] % n:
            raise ValueError(f"the map head needs whole maps: {x.shape[0]} rows is not a multiple of pn^2 = {n}")
        return x.view(-1, self.pn, self.pn, x.shape[-1]).permute(0, 3, 1, 2)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(timestep_embedding(t, self.freq_dim)) + self.cond_embed(z)  # (N, W)
        x = self.to_map(self.input_proj(x_t) + self.cond_input(z))  # (B, W, pn, pn)
        y_map = self.to_map(y)
        for block in self.blocks:
            x = block(x, y_map)
        x = x.permute(0, 2, 3, 1).reshape(y.shape)  # (N, W), back to rows
        shift, scale = self.final_modulation(y).chunk(2, dim=-1)
        return self.output(self.final_norm(x) * (1 + scale) + shift)  # (N, C)
