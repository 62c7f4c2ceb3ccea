"""The transformer block shared by the text encoder and the next-scale transformer.

    Attention   multi-head self-attention on a boolean mask, with optional 2-D RoPE and a KV cache
    Block       pre-norm attention + MLP; with AdaLN-Zero, modulated by a condition vector (VAR, DiT)

x (B, N, D) -> (B, N, D). At sampling time each layer keeps the keys and values of the tokens run so far
(LayerCache), so a new scale costs one pass over its own tokens (VAR's KV cache, VAR issue #120).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope_angles(coords: torch.Tensor, head_dim: int, base: float = 100.0) -> torch.Tensor:
    """2-D rotary angles (N, head_dim // 2): half the pairs rotate with x, half with y."""
    quarter = head_dim // 4
    freq = base ** (-torch.arange(quarter, dtype=torch.float32, device=coords.device) / quarter)  # (d/4,)
    return torch.cat([coords[:, :1] * freq, coords[:, 1:] * freq], dim=1)  # (N, d/2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_2i, x_2i+1) of x (B, H, N, d) by angles (N, d/2)."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class LayerCache:
    """Keys and values of one attention layer for the tokens run so far (sampling only)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (B, H, N_so_far, d)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class KVCache:
    """One LayerCache per block, plus which cached keys are real (not padding)."""

    def __init__(self, depth: int):
        self.layers = [LayerCache() for _ in range(depth)]
        self.valid: torch.Tensor | None = None  # (B, N_so_far) bool
        self.length = 0  # tokens run so far


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attend: torch.Tensor, rope: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # (B,H,N,d)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, H, N_cached + N, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # attend: bool, True = may attend
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm attention + MLP. With adaln, x += gamma * f(LN(x) * (1 + scale) + shift), (gamma, scale,
    shift) computed from the condition. scale and shift start at zero; the gate gamma at `gate`: 0 is
    AdaLN-Zero (DiT, VAR: every block starts as the identity, and its attention learns nothing until its gate
    has grown, since the gradient reaching q and k is proportional to gamma), 1 starts as a plain pre-norm
    block (HART's text-to-image blocks have no AdaLN at all)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, adaln: bool = True, gate: float = 0.0):
        super().__init__()
        self.adaln = adaln
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not adaln)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not adaln)
        self.attn = Attention(width, num_heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        if adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)
            nn.init.constant_(self.modulation[1].bias[:2 * width], gate)  # gamma1, gamma2 start at `gate`

    def forward(self, x: torch.Tensor, attend: torch.Tensor, cond: torch.Tensor | None = None,
                rope: torch.Tensor | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        if not self.adaln:
            x = x + self.attn(self.norm1(x), attend, rope, cache)
            return x + self.mlp(self.norm2(x))
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond)[:, None].chunk(6, dim=-1)  # (B,1,D)
        x = x + gamma1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, attend, rope, cache)
        return x + gamma2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
