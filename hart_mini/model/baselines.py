"""The "traditional diffusion" HART is measured against: a DiT-style latent diffusion model.

It denoises the tokenizer's *continuous* latent f (B, C, h, w) as h*w tokens, conditioned on the caption
the same way as HART: the text tokens are a prefix the latent tokens attend to, and AdaLN blocks read the
pooled text, here plus the diffusion time. It has about HART's parameter count, uses the same blocks and
the same text encoder, and samples with DDIM over >= 30 steps. Each step is a full pass over all
T + h*w tokens, with classifier-free guidance doubling the batch. That cost is what HART avoids.

    v-prediction:  the network predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 for x0 = f / latent_scale
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from hart_mini import checkpoint
from hart_mini.config import BaselineConfig, TransformerConfig
from hart_mini.model.blocks import Block
from hart_mini.model.diffusion import CosineSchedule, sample, timestep_embedding
from hart_mini.model.hart import caption_dropout, check_sampling, mix_guidance
from hart_mini.model.text import CaptionTokenizer, TextEncoder, text_condition
from hart_mini.model.tokenizer import HybridTokenizer


class LatentDiffusion(nn.Module):
    """Text-conditioned DiT over the continuous latent, with a frozen tokenizer to encode and decode."""

    def __init__(self, cfg: TransformerConfig, tokenizer: HybridTokenizer, text_tokenizer: CaptionTokenizer,
                 diffusion: BaselineConfig | None = None):
        super().__init__()
        self.cfg, self.text_tokenizer = cfg, text_tokenizer
        self.diffusion = diffusion or BaselineConfig()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        D, C, h = cfg.width, tokenizer.cfg.latent_channels, tokenizer.cfg.latent_size
        self.text = TextEncoder(text_tokenizer.vocab_size, cfg.text_len, D, cfg.text_depth, cfg.num_heads,
                                cfg.text_position, text_tokenizer.article_id)
        self.text_proj = nn.Linear(D, D)
        self.time_embed = nn.Sequential(nn.Linear(64, D), nn.SiLU(), nn.Linear(D, D))
        self.in_proj = nn.Linear(C, D)
        # A learned vector per latent position. (HART's coarse 'grid' features are not needed here: every
        # token's input is its own noisy latent vector, and this baseline places objects right already.)
        self.pos_embed = nn.Parameter(torch.randn(h * h, D) * 0.02)
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio, adaln=True, gate=cfg.adaln_gate)
                                    for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(D, elementwise_affine=False)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.out = nn.Linear(D, C)
        for layer in (self.out_modulation[1], self.out):  # the prediction starts at zero, as in DiT
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.schedule = CosineSchedule(self.diffusion.train_steps)
        self.register_buffer("latent_scale", torch.ones(()))  # std of f, measured from data

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.tokenizer.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("tokenizer.")]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def encode_text(self, captions: list[str] | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions, or captions already tokenized as (ids, mask) by the data pipeline -> ids, mask (B, T)."""
        ids, mask = captions if isinstance(captions, tuple) else self.text_tokenizer(captions)
        device = self.pos_embed.device
        return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)

    @torch.no_grad()
    def measure_latent_scale(self, images: torch.Tensor) -> float:
        self.latent_scale.fill_(float(self.tokenizer.encode(images).std()))
        return float(self.latent_scale)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, prefix: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x_t (B, C, h, w), t (B,), prefix = text_condition(...) -> v (B, C, h, w)."""
        text, valid, pooled = prefix
        B, C, h, _ = x_t.shape
        x = self.in_proj(x_t.flatten(2).transpose(1, 2)) + self.pos_embed  # (B, h*h, D)
        x = torch.cat([text, x], dim=1)  # (B, T + h*h, D)
        keys = torch.cat([valid, valid.new_ones(B, h * h)], dim=1)
        attend = keys[:, None, None, :].expand(-1, 1, x.shape[1], -1)  # full attention, padding masked
        cond = pooled + self.time_embed(timestep_embedding(t, 64))  # (B, D)
        for block in self.blocks:
            x = block(x, attend, cond)
        scale, shift = self.out_modulation(cond)[:, None].chunk(2, dim=-1)
        out = self.out(self.out_norm(x[:, text.shape[1]:]) * (1 + scale) + shift)  # (B, h*h, C)
        return out.transpose(1, 2).reshape(B, C, h, h)

    def loss(self, images: torch.Tensor, captions: list[str] | tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            x0 = self.tokenizer.encode(images, check_values=False) / self.latent_scale
        ids, mask = self.encode_text(captions)
        drop = caption_dropout(ids.shape[0], self.cfg.cond_dropout, ids.device)
        t = torch.randint(0, self.schedule.steps, (ids.shape[0],), device=ids.device)
        eps = torch.randn_like(x0)
        target = self.schedule.target(x0, eps, t, self.diffusion.prediction)
        v = self.denoise(self.schedule.noise(x0, t, eps), t, text_condition(self.text, self.text_proj, ids, mask, drop))
        loss = (v.float() - target.float()).pow(2).mean()
        return loss, {"diff": loss.detach()}

    @torch.no_grad()
    def generate(self, prompts: list[str], cfg_scale: float = 3.0, sampling_steps: int | None = None,
                 seed: int = 0, **_) -> torch.Tensor:
        """Prompts -> images (B, 3, H, W) in [0, 1]. Guidance: (1 + cfg) cond - cfg uncond at every step."""
        check_sampling(cfg_scale, 0, 1.0)
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError("prompts must be a non-empty list of strings")
        self.eval()
        steps = sampling_steps or self.diffusion.sampling_steps
        ids, mask = self.encode_text(list(prompts))
        B, guided = len(prompts), cfg_scale > 0
        if guided:
            ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
        drop = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        drop[B:] = True
        prefix = text_condition(self.text, self.text_proj, ids, mask, drop)  # the text runs once

        def model(x, t):
            if not guided:
                return self.denoise(x, t, prefix)
            return mix_guidance(self.denoise(torch.cat([x, x]), torch.cat([t, t]), prefix), cfg_scale)  # fp32

        C, h = self.tokenizer.cfg.latent_channels, self.tokenizer.cfg.latent_size
        generator = torch.Generator(device=ids.device).manual_seed(seed)
        x0 = sample(model, (B, C, h, h), self.schedule, steps, self.diffusion.prediction, self.diffusion.sampler,
                    generator, ids.device)
        return self.tokenizer.decode(x0 * self.latent_scale, "continuous").clamp(-1, 1).add(1).div(2)

    def save(self, path, tokenizer_file, extra: dict | None = None) -> None:
        """Save everything but the tokenizer, which is referenced by file name and sha256 (same folder)."""
        meta = {"kind": "diffusion", "transformer": dataclasses.asdict(self.cfg),
                "diffusion": dataclasses.asdict(self.diffusion), "tokenizer": dataclasses.asdict(self.tokenizer.cfg),
                "text": self.text_tokenizer.to_dict(), **HybridTokenizer.reference(path, tokenizer_file),
                "parameters": self.parameter_count(), **(extra or {})}
        checkpoint.save(path, {k: v for k, v in self.state_dict().items() if not k.startswith("tokenizer.")}, meta)

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> LatentDiffusion:
        tensors, meta = checkpoint.load(path)
        if meta.get("kind") != "diffusion":
            raise ValueError(f"{str(path)!r} holds a {meta.get('kind')!r}, not a latent diffusion model")
        cfg = checkpoint.config_from(TransformerConfig, meta, "transformer", path)
        diffusion = checkpoint.config_from(BaselineConfig, meta, "diffusion", path)
        model = cls(cfg, HybridTokenizer.beside(path, meta), CaptionTokenizer.from_dict(meta["text"]), diffusion)
        own = {k: v for k, v in model.state_dict().items() if k.startswith("tokenizer.")}
        checkpoint.load_module(model, {**own, **tensors}, str(path))
        model.meta = meta
        return model.to(device).eval()
