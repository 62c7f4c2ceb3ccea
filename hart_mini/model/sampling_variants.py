"""The sampler's variants, kept out of HART's main loop (`HART.sample_latent` in hart.py):

- **the no-cache reference**: instead of extending a KV cache, scale k re-runs one full masked pass over the
  text and every input so far, and keeps the outputs of scale k's positions. It must give the cached loop's
  tokens (tests/test_transformer.py); notebook 05 and the benchmark time the cache against it.
- **the ablation head modes** (notebook 09, hart_mini/ablate.py):
    full   MAR-style: no tokens at the last scale; the head draws the whole last-scale latent from norm(h)
    early  the head corrects every scale: scale k contributes lift(e(r_k) + d_k), and this continuous
           latent, not f_hat, is what the next scale reads

One loop serves all of them. It follows the main loop step for step and draws the same random numbers in
the same order, so the reference gives the main loop's images for the same seed.

    latent = 0                                          what the next scale reads (= f_hat unless 'early')
    for k = 1..K:   logits, h = run(scale k, area_down(latent, pn_k))
                    r_k ~ guided logits                 ('full', last scale: the head draws e instead)
                    f_hat  += lift(e(r_k))
                    latent += lift(e(r_k) + d_k)        d_k from the head: every scale ('early'), the last ('last')
"""

from __future__ import annotations

import torch

from hart_mini.config import require
from hart_mini.model.hart import HART, both_branches, guidance_scale, map_to_tokens, tokens_to_map


class CachedScales:
    """Scale k through the KV cache: the text once (`start`), then one pass over scale k's tokens (`step`)."""

    def __init__(self, model: HART, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor):
        self.model, self.text = model, (ids, mask, drop)

    def __call__(self, k: int, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            logits, h, self.cache, self.cond = self.model.transformer.start(*self.text)
            return logits, h
        return self.model.transformer.step(x, k, self.cache, self.cond)


class FullPasses:
    """Scale k as one full masked pass over the text and the inputs of scales 2..k: no cache, the reference."""

    def __init__(self, model: HART, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor):
        self.model, self.text = model, (ids, mask, drop)
        C = model.tokenizer.cfg.latent_channels
        self.inputs = [torch.zeros(ids.shape[0], 0, C, device=ids.device)]  # (B', n, C) each

    def __call__(self, k: int, x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x is not None:
            self.inputs.append(x)
        ids, mask, drop = self.text
        logits, h = self.model.transformer(ids, mask, torch.cat(self.inputs, 1), drop)  # (B', 1 + n, V | D)
        start = self.model.transformer.starts[k]  # keep scale k's positions
        return logits[:, start:], h[:, start:]


@torch.no_grad()
def sample_latent_variant(model: HART, prompts: list[str], cfg_scale: float, top_k: int, top_p: float,
                          steps: int, seed: int, use_cache: bool, head: bool, forced: list[torch.Tensor]) -> dict:
    """`HART.sample_latent` without the cache (use_cache=False) or with the head in mode 'full' or 'early'.
    The knobs are already checked; head: whether the head runs. Returns what sample_latent returns."""
    model.eval()
    q, K, B, guided = model.tokenizer.quantizer, model.K, len(prompts), cfg_scale > 0
    mode = model.mode if head else "off"
    ids, mask, drop = model.text_batch(prompts, guided)
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    run = (CachedScales if use_cache else FullPasses)(model, ids, mask, drop)
    C, size = model.tokenizer.cfg.latent_channels, model.scales[-1]
    f_hat = torch.zeros(B, C, size, size, device=ids.device)  # the discrete latent
    latent = torch.zeros_like(f_hat)  # what the next scale reads (differs from f_hat only in 'early')
    indices, raw_logits = [], []
    for k, pn in enumerate(model.scales):
        x = both_branches(map_to_tokens(q.next_input(latent, k - 1)), guided) if k > 0 else None  # (B', pn^2, C)
        logits, h = run(k, x)
        raw_logits.append(logits[:B])
        t_k = guidance_scale(cfg_scale, k, K)
        if mode == "full" and k == K - 1:  # MAR-style: the head draws the whole last scale from norm(h)
            e = model._head_sample(model.condition(h, None), t_k, guided, steps, generator)  # (B, pn^2, C)
            latent = latent + tokens_to_map(e, pn)
            indices.append(None)
            break
        if k < len(forced):
            r = forced[k].to(ids.device).flatten(1)  # (B, pn^2), given instead of drawn
        else:
            r = model.draw_tokens(logits, k, cfg_scale, top_k, top_p, generator)  # (B, pn^2)
        indices.append(r.view(B, pn, pn))
        f_hat = f_hat + q.contribution(r.view(B, pn, pn), k)
        code = q.codebook(r)  # (B, pn^2, C): e(r_k)
        if mode == "early" or (mode == "last" and k == K - 1):  # the head's d_k joins the code
            cfg = model.head_cfg  # HART.sample_latent's rule: a blind or unguided last-scale head runs once
            g = guided and (mode == "early" or (cfg.guided and cfg.condition != "none"))
            z = model.condition(h if g else h[:B], both_branches(r, g))  # norm(h + word_embed(e(r_k)))
            code = code + model._head_sample(z, t_k, g, steps, generator)
        latent = latent + q.lift(tokens_to_map(code, pn), k)
    return {"indices": indices, "f_hat": f_hat, "latent": latent if head else f_hat,
            "path": "continuous" if head else "discrete", "logits": raw_logits, "h": h[:B]}


@torch.no_grad()
def sample_latent(model: HART, prompts: list[str], cfg_scale: float = 3.0, top_k: int = 0, top_p: float = 1.0,
                  sampling_steps: int | None = None, seed: int = 0, use_cache: bool = True, use_head: bool = True,
                  forced: list[torch.Tensor] | None = None) -> dict:
    """`HART.sample_latent` for any head mode, with the KV cache or without it (the reference). The main
    loop's cases go to HART.sample_latent itself; the others run the variant loop above."""
    head = use_head and model.mode != "off"
    if use_cache and not (head and model.mode in ("full", "early")):
        return model.sample_latent(prompts, cfg_scale, top_k, top_p, sampling_steps, seed, use_head, forced)
    steps, forced = model._sampling_inputs(prompts, cfg_scale, top_k, top_p, sampling_steps, forced)
    require(model.cfg.raster_scales == 0, "raster_scales", model.cfg.raster_scales,
            "0 here: the variants draw every scale in one pass (HART.sample_latent draws raster scales)")
    return sample_latent_variant(model, prompts, cfg_scale, top_k, top_p, steps, seed, use_cache, head, forced)


@torch.no_grad()
def generate(model: HART, prompts: list[str], cfg_scale: float = 3.0, top_k: int = 0, top_p: float = 1.0,
             sampling_steps: int | None = None, seed: int = 0, use_cache: bool = True,
             use_head: bool = True) -> torch.Tensor:
    """`HART.generate` for any head mode, with or without the KV cache: prompts -> images (B, 3, H, W) in [0, 1]."""
    return model.decode(sample_latent(model, prompts, cfg_scale, top_k, top_p, sampling_steps, seed, use_cache,
                                      use_head))
