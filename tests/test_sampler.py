"""HART's sampler: the short main loop (KV cache, head at the last scale) and the variants kept out of it (the
no-cache reference, the 'full' and 'early' head modes) give, bit for bit, what the sampler gave before they
were split apart.

`_frozen_sample_latent` below is a verbatim copy of `HART.sample_latent` as it was before the split (one
loop for every mode and both paths), kept only here as the reference of that refactoring.
"""

import dataclasses

import pytest
import torch

from hart_mini.config import get_preset, require
from hart_mini.model import sampling_variants as variants
from hart_mini.model.data import ToyShapes
from hart_mini.model.diffusion import sample as diffusion_sample
from hart_mini.model.hart import HART, check_sampling, guide, map_to_tokens, sample, tokens_to_map
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer

PRESET = get_preset("smoke")
PROMPTS = ["a large red striped circle at the top left", "a small blue square left of a yellow triangle",
           "a large green dotted diamond at the bottom"]


def _frozen_head_sample(self, z, t_cfg, guided, sampling_steps, generator):
    B = z.shape[0] // 2 if guided else z.shape[0]
    n, C = z.shape[1], self.tokenizer.cfg.latent_channels
    zf = z.flatten(0, 1)

    def model(x, t):
        if not guided:
            return self.head(x, t, zf)
        cond, uncond = self.head(torch.cat([x, x]), torch.cat([t, t]), zf).chunk(2)
        return (1 + t_cfg) * cond - t_cfg * uncond

    x0 = diffusion_sample(model, (B * n, C), self.schedule, sampling_steps, self.head_cfg.prediction,
                          self.head_cfg.sampler, generator, z.device)
    return x0.view(B, n, C) * self.residual_scale


@torch.no_grad()
def _frozen_sample_latent(self, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, sampling_steps=None, seed=0,
                          use_cache=True, use_head=True, forced=None):
    check_sampling(cfg_scale, top_k, top_p)
    steps = self.head_cfg.sampling_steps if sampling_steps is None else sampling_steps
    require(isinstance(steps, int) and steps >= 1, "sampling_steps", steps, "an integer >= 1")
    forced = list(forced or [])
    self.eval()
    q, K = self.tokenizer.quantizer, self.K
    head = use_head and self.mode != "off"
    ids, mask = self.encode_text(list(prompts))
    B, device = len(prompts), ids.device
    generator = torch.Generator(device=device).manual_seed(seed)
    guided = cfg_scale > 0
    if guided:
        ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    drop = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    drop[B:] = True
    C, size = self.tokenizer.cfg.latent_channels, self.scales[-1]
    f_hat = torch.zeros(B, C, size, size, device=device)
    latent = torch.zeros_like(f_hat)
    indices, raw_logits, inputs_so_far = [], [], []
    for k, pn in enumerate(self.scales):
        if k == 0 and use_cache:
            logits, hidden, cache, cond = self.transformer.start(ids, mask, drop)
        elif use_cache:
            x = map_to_tokens(q.next_input(latent, k - 1))
            logits, hidden = self.transformer.step(x.repeat(2, 1, 1) if guided else x, k, cache, cond)
        else:
            if k > 0:
                inputs_so_far.append(map_to_tokens(q.next_input(latent, k - 1)))
            x = torch.cat(inputs_so_far, 1) if inputs_so_far else f_hat.new_zeros(B, 0, C)
            logits, hidden = self.transformer(ids, mask, x.repeat(2, 1, 1) if guided else x, drop)
            start = self.transformer.starts[k]
            logits, hidden = logits[:, start:], hidden[:, start:]
        raw_logits.append(logits[:B])
        t_k = cfg_scale * k / max(K - 1, 1)
        last = k == K - 1
        if head and self.mode == "full" and last:
            part = _frozen_head_sample(self, self.condition(hidden, None), t_k, guided, steps, generator)
            latent = latent + tokens_to_map(part, pn)
            indices.append(None)
            continue
        if k < len(forced):
            idx = forced[k].to(device).flatten(1)
        else:
            final = guide(logits, k, K, cfg_scale) if guided else logits
            idx = sample(final, top_k, top_p, generator)
        indices.append(idx.view(B, pn, pn))
        f_hat = f_hat + q.contribution(idx.view(B, pn, pn), k)
        code = q.codebook(idx)
        if head and (self.mode == "early" or (self.mode == "last" and last)):
            chosen = idx.repeat(2, 1) if guided else idx
            d = _frozen_head_sample(self, self.condition(hidden, chosen), t_k, guided, steps, generator)
            code = code + d
        latent = latent + q.lift(tokens_to_map(code, pn), k)
    path = "continuous" if head else "discrete"
    return {"indices": indices, "f_hat": f_hat, "latent": latent if head else f_hat, "path": path,
            "logits": raw_logits, "h": hidden[:B]}


def _model(mode, position="absolute"):
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESET.transformer, position=position)
    model = HART(cfg, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                 dataclasses.replace(PRESET.head, mode=mode))
    model.measure_residual_scale(ToyShapes(PRESET.data).batch(range(16))["image"])
    with torch.no_grad():  # switch every AdaLN gate and the head on, so that each path matters
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("head."):
                p.normal_(0, 0.1)
    return model.eval()


def _same(a: dict, b: dict) -> None:
    assert a["path"] == b["path"]
    for key in ("f_hat", "latent", "h"):
        assert torch.equal(a[key], b[key]), key
    assert len(a["indices"]) == len(b["indices"])
    for x, y in zip(a["indices"], b["indices"]):
        assert (x is None and y is None) or torch.equal(x, y)
    assert all(torch.equal(x, y) for x, y in zip(a["logits"], b["logits"], strict=True))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("mode", ["off", "last", "full", "early"])
def test_sampler_gives_the_pre_split_sampler_outputs_bit_for_bit(mode, use_cache):
    model = _model(mode)
    for knobs in ({"cfg_scale": 3.0}, {"cfg_scale": 0.0}, {"cfg_scale": 1.5, "top_k": 20, "top_p": 0.8},
                  {"cfg_scale": 2.0, "sampling_steps": 3, "seed": 5}):
        for use_head in (True, False):
            args = {"use_cache": use_cache, "use_head": use_head, **knobs}
            _same(variants.sample_latent(model, PROMPTS, **args), _frozen_sample_latent(model, PROMPTS, **args))
    old = _frozen_sample_latent(model, PROMPTS, cfg_scale=2.0, seed=3, use_cache=use_cache)
    image = model.tokenizer.decode(old["latent"], old["path"]).clamp(-1, 1).add(1).div(2)
    assert torch.equal(variants.generate(model, PROMPTS, cfg_scale=2.0, seed=3, use_cache=use_cache), image)
    if use_cache and mode in ("off", "last"):  # HART's own loop: the same images
        assert torch.equal(model.generate(PROMPTS, cfg_scale=2.0, seed=3), image)


@pytest.mark.parametrize("mode", ["off", "last"])
def test_forced_scales_give_the_pre_split_sampler_outputs(mode):
    model = _model(mode)
    truth = model.tokenizer.tokenize(ToyShapes(PRESET.data, "test").batch(range(3))["image"]).indices
    for n in (1, 3, len(truth)):
        for use_cache in (True, False):
            args = {"forced": truth[:n], "seed": 2, "use_cache": use_cache}
            _same(variants.sample_latent(model, PROMPTS, **args), _frozen_sample_latent(model, PROMPTS, **args))


def test_sampler_gives_the_pre_split_outputs_with_rope():
    model = _model("last", position="rope")
    for use_cache in (True, False):
        args = {"cfg_scale": 2.0, "seed": 1, "use_cache": use_cache}
        _same(variants.sample_latent(model, PROMPTS, **args), _frozen_sample_latent(model, PROMPTS, **args))


@pytest.mark.parametrize("mode", ["full", "early"])
def test_hart_refuses_the_ablation_modes_and_names_where_they_sample(mode):
    model = _model(mode)
    with pytest.raises(ValueError, match="sampling_variants.generate"):
        model.generate(PROMPTS)
    assert model.generate(PROMPTS, use_head=False).shape[0] == len(PROMPTS)  # the discrete image still works


def test_non_finite_logits_are_refused_before_any_token_is_drawn(monkeypatch):
    """On CUDA, torch.multinomial meets NaN probabilities with a device-side assert that ends the process; so
    the check must come first, on every device: here multinomial is never even called."""
    drawn = []
    real = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: drawn.append(a[0]) or real(*a, **k))
    logits = torch.zeros(2, 3, 8)
    logits[1, 2, 5] = float("nan")
    with pytest.raises(FloatingPointError, match="the token logits are not finite"):
        sample(logits, 0, 1.0, None)
    assert drawn == []
    model = _model("last")
    with torch.no_grad():
        model.transformer.head.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=f"not finite \\(NaN or inf\\) at scale 1 of {model.K}"):
        model.generate(PROMPTS)
    assert drawn == []
    assert sample(torch.zeros(2, 3, 8), 0, 1.0, None).shape == (2, 3) and len(drawn) == 1  # finite: drawn


def test_guidance_is_mixed_in_fp32_under_bf16_autocast(monkeypatch):
    from hart_mini.model import baselines, hart
    from hart_mini.model.hart import mix_guidance

    torch.manual_seed(0)
    halves = (torch.randn(2, 5, 64) * 4).to(torch.bfloat16)  # [cond; uncond], as bf16 autocast returns them
    mixed = guide(halves, 5, 6, 3.0)
    cond, uncond = halves.float().chunk(2)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, 4 * cond - 3 * uncond)
    in_bf16 = 4 * halves[:1] - 3 * halves[1:]
    assert not torch.equal(in_bf16.float(), mixed)  # what fp32 saves: bf16 rounds the guided logits
    seen = []  # the head's and the baseline's guided outputs, caught inside their samplers

    def spy(model, shape, *args, **kwargs):
        x = torch.randn(shape)
        seen.append(model(x, torch.full((shape[0],), 10)).dtype)
        return x

    monkeypatch.setattr(hart, "diffusion_sample", spy)
    monkeypatch.setattr(baselines, "sample", spy)
    tok, text = HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes()
    dit = baselines.LatentDiffusion(PRESET.transformer, tok, text, PRESET.baseline)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _model("last").generate(PROMPTS[:1], cfg_scale=3.0)
        dit.generate(PROMPTS[:1], cfg_scale=3.0)
        assert mix_guidance(torch.ones(2, 3, dtype=torch.bfloat16), 2.0).dtype == torch.float32
    assert seen == [torch.float32, torch.float32]
