"""The next-scale autoregressive transformer (VAR, arXiv 2404.02905; HART, arXiv 2410.10812, section 3.2).

One sequence per image: the caption's T text tokens, then the image tokens of scales 2..K.

    position      T-1 (last word)   | scale 2 inputs | scale 3 inputs | ... | scale K inputs
    predicts      scale 1 (1 token) | scale 2 tokens | scale 3 tokens | ... | scale K tokens

The input for scale k+1 is the cumulative discrete latent after scales 1..k, area-downsampled to
pn_{k+1} (tokenizer.teacher_forcing_inputs) and projected by `word_embed`. Attention is **block-causal**:
a token sees every token of its own scale and of earlier scales (the text counts as scale 1), never a
later scale, never padding. Blocks are pre-norm with AdaLN-Zero from the pooled text. At sampling time
`start` runs the text and `step` runs one new scale against a KV cache, so each scale costs one pass
over its own pn^2 tokens.

Raster scales (TransformerConfig.raster_scales, ours): in the first raster_scales scales a token sees only the
tokens before it in its own scale (row by row), and its input also carries the code of the token just before
it, `prev_embed(e(r_{k, j-1}))`; sampling then draws those scales one token at a time, like a plain
autoregressive model. The mask is still "key order <= query order", with order = (scale, index in the scale)
on raster scales and (scale, 0) elsewhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from hart_mini.config import TransformerConfig, require
from hart_mini.model.blocks import Block, KVCache, rope_angles
from hart_mini.model.text import TextEncoder, text_condition


def grid_embedding(coords: torch.Tensor, finest: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin/cos features (N, width) of token centres coords (N, 2) on a finest x finest grid.

    u = coords / finest in (0, 1); angular frequencies w_j = pi * finest^(j / (width/4 - 1)), from half a turn
    across the image (left vs right) to half a turn per finest cell; features [sin(u_x w), cos(u_x w),
    sin(u_y w), cos(u_y w)]. A 2x2 cell and the 3x3 or 8x8 cells at the same place get similar features.
    """
    quarter = width // 4
    exponent = torch.arange(quarter, dtype=torch.float32) / max(quarter - 1, 1)
    freq = math.pi * float(finest) ** exponent  # (width/4,)
    u = coords.float() / finest  # (N, 2)
    x, y = u[:, :1] * freq, u[:, 1:] * freq  # (N, width/4) each
    out = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, 4 * quarter)
    return torch.nn.functional.pad(out, (0, width - out.shape[1]))


def block_causal_mask(level: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """level (N,): the scale of every position (text = 0), or any order that refines it (raster scales);
    key_valid (B, N): False on padding.
    Returns (B, N, N) bool, True where query i may attend to key j: level_j <= level_i and j is real."""
    return (level[None, :, None] >= level[None, None, :]) & key_valid[:, None, :]


class NextScaleTransformer(nn.Module):
    """Text prefix + next-scale prediction over a multi-scale token pyramid."""

    def __init__(self, cfg: TransformerConfig, scales: tuple[int, ...], latent_channels: int, codebook_size: int,
                 text_vocab_size: int, article_id: int | None = None):
        super().__init__()
        self.cfg, self.scales = cfg, tuple(scales)
        D, K, L = cfg.width, len(scales), sum(p * p for p in scales)
        self.text = TextEncoder(text_vocab_size, cfg.text_len, D, cfg.text_depth, cfg.num_heads, cfg.text_position,
                                article_id)
        self.text_proj = nn.Linear(D, D)  # HART's context_embed
        self.word_embed = nn.Linear(latent_channels, D)  # latent vectors (C) -> tokens (D)
        self.level_embed = nn.Embedding(K, D)
        self.pos_embed = nn.Parameter(torch.randn(L, D) * 0.02) if cfg.position != "rope" else None
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio, adaln=True, gate=cfg.adaln_gate)
                                    for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(D, elementwise_affine=False)
        self.head_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))  # AdaLN before the head
        self.head = nn.Linear(D, codebook_size)
        nn.init.zeros_(self.head_modulation[1].weight)
        nn.init.zeros_(self.head_modulation[1].bias)
        # raster scales: the code of the token before, e(r_{k, j-1}) (C) -> D; zero at the start (the mask alone
        # already lets a token see the hidden states of the ones before it)
        self.prev_embed = nn.Linear(latent_channels, D) if cfg.raster_scales else None
        if self.prev_embed is not None:
            nn.init.zeros_(self.prev_embed.weight)
            nn.init.zeros_(self.prev_embed.bias)
        # Per image token: its scale index, and its (x, y) centre on the finest grid (for RoPE).
        levels = torch.cat([torch.full((p * p,), k) for k, p in enumerate(scales)])
        coords = torch.cat([self._grid(p, scales[-1]) for p in scales])
        self.register_buffer("levels", levels, persistent=False)  # (L,)
        # attention order (L,): level * L + index in the scale on raster scales, level * L elsewhere
        self.register_buffer("raster", levels < cfg.raster_scales, persistent=False)  # (L,) on a raster scale
        within = torch.cat([torch.arange(p * p) for p in scales]) * self.raster  # index in the scale, or 0
        self.register_buffer("order", levels * L + within, persistent=False)  # (L,)
        self.register_buffer("coords", coords, persistent=False)  # (L, 2)
        # 'grid': fixed position features on the coarse scales (pn <= finest / 2), whose inputs are (nearly) the
        # same vector at every position (at 2x2, the 1x1 token upsampled and averaged back): without them, the
        # four 2x2 tokens differ only by a learned vector of std 0.02 beside a level vector of std 1, and the model
        # never learned to put an object where the caption says (notebook 09). The finer scales' inputs already
        # show where things are; fixed features there cost texture and FD in our runs, so they get none.
        coarse = (torch.tensor(scales)[levels] <= scales[-1] // 2)[:, None]  # (L, 1): the token's scale is coarse
        grid = grid_embedding(coords, scales[-1], D) * coarse if cfg.position == "grid" else torch.zeros(L, D)
        self.register_buffer("grid", grid, persistent=False)  # (L, D), fixed
        self.starts = [sum(p * p for p in scales[:k]) for k in range(K + 1)]  # first token of each scale

    @staticmethod
    def _grid(pn: int, finest: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(pn), torch.arange(pn), indexing="ij")
        return torch.stack([xs.flatten(), ys.flatten()], 1).float().add(0.5).mul(finest / pn)  # (pn*pn, 2)

    # --- pieces shared by training and sampling ---

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor):
        """-> (x (B, T, D), valid (B, T), cond (B, D)). Dropped captions become HART's unconditional branch:
        zero features, only the last position valid, zero pooled condition."""
        x, valid, pooled = text_condition(self.text, self.text_proj, ids, mask, drop)
        scale1 = self.level_embed.weight[0] + self.grid[0] + (self.pos_embed[0] if self.pos_embed is not None else 0)
        x = torch.cat([x[:, :-1], x[:, -1:] + scale1], dim=1)  # the last position is scale 1's query
        return x, valid, pooled

    def embed_at(self, inputs: torch.Tensor, pos: slice | torch.Tensor, prev: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Latent inputs (B, n, C) for the image tokens at positions `pos` (a slice or n indices) -> (B, n, D).
        prev (B, n, C), raster scales only: the code of the token before each one in its scale (0 for none)."""
        x = self.word_embed(inputs) + self.level_embed(self.levels[pos]) + self.grid[pos]
        if self.prev_embed is not None:  # a parallel scale reads zeros, no token before: prev_embed(0) = its bias
            require(prev is not None or not self.raster[pos].any(), "prev", prev, "the previous tokens' codes "
                    "(B, n, C): these positions are on raster scales (HART.previous_codes)")
            x = x + (self.prev_embed(prev) if prev is not None else self.prev_embed.bias)
        return x + self.pos_embed[pos] if self.pos_embed is not None else x

    def rope(self, n_text: int, image_positions: slice | torch.Tensor | None) -> torch.Tensor | None:
        """RoPE angles for text positions (1-D, before the image) and/or image positions (2-D)."""
        if self.cfg.position != "rope":
            return None
        head_dim = self.cfg.width // self.cfg.num_heads
        parts = []
        if n_text:
            t = torch.arange(n_text, device=self.levels.device, dtype=torch.float32) - n_text
            parts.append(torch.stack([t, t], 1))  # the text on the diagonal, at negative coordinates
        if image_positions is not None:
            parts.append(self.coords[image_positions])
        return rope_angles(torch.cat(parts), head_dim)

    def logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.head_modulation(cond)[:, None].chunk(2, dim=-1)
        return self.head(self.head_norm(h) * (1 + scale) + shift)

    # --- training: one teacher-forced pass ---

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, inputs: torch.Tensor, drop: torch.Tensor,
                keep: torch.Tensor | None = None, prev: torch.Tensor | None = None):
        """ids, mask (B, T); inputs (B, n, C), the teacher-forcing inputs of the first n image tokens after
        scale 1 (n = L - 1 for all scales); drop (B,) bool. Returns logits (B, 1 + n, V) for image tokens
        0..n and the hidden states h (B, 1 + n, D) they came from.

        keep (HART's token subsampling, all scales given): indices in [0, pn_K^2) of the last scale's tokens
        that stay in the sequence; the others leave it, as queries and as keys. Earlier scales never attend to
        the last one (block-causal), so their outputs do not change. Then n = L - 1 - pn_K^2 + len(keep).
        prev (B, n, C), with raster scales: the code of the token before each input's token in its scale."""
        x_text, valid, cond = self.embed_text(ids, mask, drop)
        pos = slice(1, 1 + inputs.shape[1])  # the image tokens the inputs stand for
        if keep is not None:
            last = self.starts[-2]  # first token of the last scale
            pos = torch.cat([torch.arange(1, last, device=keep.device), last + keep])  # (n,)
            inputs = inputs[:, pos - 1]  # (B, n, C)
            prev = prev[:, pos - 1] if prev is not None else None
        T, n = x_text.shape[1], inputs.shape[1]
        x = torch.cat([x_text, self.embed_at(inputs, pos, prev)], dim=1)  # (B, T + n, D)
        level = torch.cat([torch.zeros(T, dtype=torch.long, device=x.device), self.order[pos]])  # (T+n,)
        key_ok = torch.cat([valid, valid.new_ones(x.shape[0], n)], dim=1)  # (B, T + n)
        attend = block_causal_mask(level, key_ok)  # (B, T + n, T + n)
        rope = self.rope(T, pos)
        for block in self.blocks:
            x = block(x, attend[:, None], cond, rope)
        h = x[:, T - 1:]  # the last text position predicts scale 1, then each input its own token
        return self.logits(h, cond), h

    # --- sampling: the text once, then one scale at a time against the cache ---

    def start(self, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor):
        """Run the text prefix. Returns (logits (B, 1, V) for scale 1, h (B, 1, D), cache, cond)."""
        x, valid, cond = self.embed_text(ids, mask, drop)
        cache = KVCache(len(self.blocks))
        attend = valid[:, None, None, :].expand(-1, 1, x.shape[1], -1)  # the text attends to all real text
        rope = self.rope(x.shape[1], None)
        for block, layer in zip(self.blocks, cache.layers):
            x = block(x, attend, cond, rope, layer)
        cache.valid, cache.length = valid, x.shape[1]
        h = x[:, -1:]
        return self.logits(h, cond), h, cache, cond

    def step(self, inputs: torch.Tensor, k: int, cache: KVCache, cond: torch.Tensor, prev: torch.Tensor | None = None,
             offset: int = 0):
        """Run scale k (k >= 1) from its inputs (B, pn_k^2, C). Returns (logits (B, pn_k^2, V), h).
        A raster scale runs one token at a time: inputs (B, 1, C) for its token `offset`, prev (B, 1, C) the
        code of the token before it (zeros for the first)."""
        first = self.starts[k] + offset
        n = inputs.shape[1]
        require(k >= self.cfg.raster_scales or n == 1, "inputs", f"{n} tokens",
                f"one token at a time at scale {k + 1}, a raster scale")
        x = self.embed_at(inputs, slice(first, first + n), prev)
        cache.valid = torch.cat([cache.valid, cache.valid.new_ones(x.shape[0], n)], dim=1)
        attend = cache.valid[:, None, None, :].expand(-1, 1, n, -1)  # all earlier real tokens + this scale
        rope = None
        if self.cfg.position == "rope":
            rope = rope_angles(self.coords[first:first + n], self.cfg.width // self.cfg.num_heads)
        for block, layer in zip(self.blocks, cache.layers):
            x = block(x, attend, cond, rope, layer)
        cache.length += n
        return self.logits(x, cond), x


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

