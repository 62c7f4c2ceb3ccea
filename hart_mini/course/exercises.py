"""The course's exercises: for each one, what is checked and how its expected answer is computed.

A notebook checks an exercise with `hart_mini.course.check.check_answer("NN.k", answer, **given)`. The reference
below receives only `given` (the data, a model, the problem's numbers) and recomputes the answer with the
package's own functions, so it never depends on the student's code, and no notebook cell holds an
expected value. `tests/test_exercises.py` feeds every exercise a plausible wrong answer and checks that
it fails.

Instructors: `notebooks/instructor_guide.md` discusses every exercise; this file is the answer key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Exercise:
    name: str  # what is checked, printed on the check's line
    reference: Callable[..., object]  # given -> the expected answer, computed independently
    how: str = "close"  # "exact" or "close"
    atol: float = 1e-5
    rtol: float = 1e-4
    prepare: Callable[[object], object] | None = None  # the student's answer -> what is compared


EXERCISES: dict[str, Exercise] = {}


def exercise(key: str, name: str, how: str = "close", atol: float = 1e-5, rtol: float = 1e-4,
             prepare: Callable | None = None):
    """Register the decorated function as the reference of exercise `key` ('NN.k')."""

    def register(reference: Callable) -> Callable:
        EXERCISES[key] = Exercise(name, reference, how, atol, rtol, prepare)
        return reference

    return register


def _tokens(scales) -> int:
    return sum(p * p for p in scales)  # L = sum pn^2


# --- 00 welcome ---------------------------------------------------------------------------------------


@exercise("00.1", "L, and forward passes (next-scale, raster)", how="exact")
def _(scales):
    return [_tokens(scales), len(scales), _tokens(scales)]


@exercise("00.2", "residual share of the variance with a 16x16 last scale")
def _(image, scales=(1, 2, 4, 8, 16)):
    H = image.shape[-1]
    rest = image.clone()
    for pn in scales:  # the pixel version of coarse-to-fine: area down, bicubic up, subtract
        rest = rest - F.interpolate(F.interpolate(rest, size=(pn, pn), mode="area"), size=(H, H), mode="bicubic")
    return float(rest.pow(2).mean() / (image - image.mean()).pow(2).mean())


@exercise("00.3", "HART's cost in transformer-pass equivalents")
def _(ar_passes=14, mlp_passes=8, mlp_cost=1 / 20):
    return ar_passes + mlp_passes * mlp_cost


# --- 01 ToyShapes -------------------------------------------------------------------------------------


@exercise("01.1", "radial power spectrum", rtol=1e-6)
def _(images):
    from hart_mini.measure.metrics import radial_power_spectrum

    return radial_power_spectrum(images)


@exercise("01.2", "share of images with a striped object")
def _(data, split="val", n=1000):
    from hart_mini.model.data import TEXTURES, ToyShapes

    striped = TEXTURES.index("striped")
    scenes = [ToyShapes(data, split=split).scene(i) for i in range(n)]  # from the scenes, not the labels
    return sum(any(o.texture == striped for o in s.objects) for s in scenes) / n


@exercise("01.3", "which relation holds between every pair of cells", how="exact")
def _():
    from hart_mini.model.data import RELATIONS, true_relations

    return [[[r in true_relations(a, b) for b in range(9)] for a in range(9)] for r in range(len(RELATIONS))]


# --- 02 vector quantization ---------------------------------------------------------------------------


@exercise("02.1", "perplexity of the code counts")
def _(counts):
    p = torch.as_tensor(counts, dtype=torch.float64)
    p = p / p.sum()
    entropy = -torch.special.xlogy(p, p).sum()  # 0 log 0 = 0
    return float(entropy.exp())


@exercise("02.2", "quantized vectors, VQ loss and both gradients")
def _(z, codebook, beta=0.25):
    z, cb = z.detach().clone().requires_grad_(True), codebook.detach().clone().requires_grad_(True)
    e = cb[torch.cdist(z.detach(), cb.detach()).argmin(1)]  # nearest codes
    z_q = z + (e - z).detach()  # straight through
    loss = (e - z.detach()).pow(2).mean() + beta * (z - e.detach()).pow(2).mean()
    (z_q.sum() + loss).backward()
    return {"z_q": z_q.detach(), "loss": loss.detach(), "z_grad": z.grad, "codebook_grad": cb.grad}


def _patch_vectors(images: torch.Tensor, size: int = 4) -> torch.Tensor:
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // size, size, W // size, size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, C * size * size)  # (patches, C * size * size)


@exercise("02.3", "patch MSE of each codebook")
def _(codebooks, images):
    v = _patch_vectors(images)
    return [float((cb[torch.cdist(v, cb).argmin(1)] - v).pow(2).mean()) for cb in codebooks]


# --- 03 multi-scale residual VQ -----------------------------------------------------------------------


@exercise("03.1", "L, and how many times fewer passes than raster")
def _(scales):
    return [_tokens(scales), _tokens(scales) / len(scales)]


@exercise("03.2", "the transformer's input for each next scale")
@torch.no_grad()
def _(partials, quantizer):
    scales = quantizer.cfg.scales
    return {scales[k + 1]: quantizer.next_input(f_hat, k) for k, f_hat in enumerate(partials)}  # f_hat after scale k


@exercise("03.3", "reconstruction MSE with one scale's tokens replaced", atol=1e-6, rtol=1e-4)
@torch.no_grad()
def _(tokenizer, indices, random_codes, images):
    q, out = tokenizer.quantizer, []
    for k in range(len(indices)):
        broken = [random_codes[j] if j == k else idx for j, idx in enumerate(indices)]
        out.append(float(F.mse_loss(tokenizer.decode(q.indices_to_f_hat(broken), "discrete"), images)))
    return out


# --- 04 hybrid tokenizer ------------------------------------------------------------------------------


@exercise("04.1", "mean residual norm per texture of the first object")
def _(residual, labels):
    from hart_mini.model.data import TEXTURES

    per_image = residual.norm(dim=1).flatten(1).mean(1)  # (B,): mean over positions of the norm over channels
    return {name: float(per_image[labels[:, 3] == i].mean()) for i, name in enumerate(TEXTURES)}


@exercise("04.2", "mean PSNR of the discrete and the continuous path", atol=1e-3)
@torch.no_grad()
def _(tokenizer, images):
    from hart_mini.measure.metrics import psnr

    rec = tokenizer.reconstruct(images)
    return [float(psnr(rec["discrete"], images).mean()), float(psnr(rec["continuous"], images).mean())]


@exercise("04.3", "PSNR with a random residual of the right size per channel", atol=1e-3)
@torch.no_grad()
def _(tokenizer, tokens, noise, images):
    from hart_mini.measure.metrics import psnr

    std = tokens.residual.std(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1): each channel's spread
    return float(psnr(tokenizer.decode(tokens.f_hat + std * noise, "continuous"), images).mean())


# --- 05 next-scale transformer ------------------------------------------------------------------------


@exercise("05.1", "block-causal mask", how="exact")
def _(level, key_valid):
    from hart_mini.model.transformer import block_causal_mask

    return block_causal_mask(level, key_valid)


@exercise("05.2", "multi-head attention with the block-causal mask (vs the package's Attention)")
@torch.no_grad()
def _(state, num_heads, x, level, key_valid):
    from hart_mini.model.blocks import Attention
    from hart_mini.model.transformer import block_causal_mask

    attention = Attention(x.shape[-1], num_heads)
    attention.load_state_dict(state)  # the same weights as the answer's module
    return attention(x, block_causal_mask(level, key_valid)[:, None])


def _loss_logs(model, images, captions, seed: int) -> dict:
    """HART.loss's logs for a fixed batch and seed, in eval mode (every last-scale token scored)."""
    was = model.training
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the caption dropout draw (then the head's draws) come from this seed
        _, logs = model.eval().loss(images, captions)
    model.train(was)
    return logs


@exercise("05.3", "teacher-forced next-scale cross-entropy (vs HART.loss)")
@torch.no_grad()
def _(model, images, captions, seed=0):
    return float(_loss_logs(model, images, captions, seed)["ce"])


@exercise("05.4", "top-k filtered logits", how="exact")
def _(logits, ks):
    from hart_mini.model.hart import filter_logits

    return torch.stack([filter_logits(logits, k, 1.0) for k in ks])


@exercise("05.5", "guidance t_k at every scale")
def _(cfg_scale, K):
    from hart_mini.model.hart import guide

    one_zero = torch.tensor([[1.0], [0.0]])  # [cond; uncond] logits: guide() returns (1 + t) * 1 - t * 0
    return [float(guide(one_zero, k, K, cfg_scale)[0, 0]) - 1 for k in range(K)]


@exercise("05.6", "positions the transformer runs, without and with guidance", how="exact")
def _(scales, text_len):
    one = text_len + _tokens(scales) - 1  # the text, then L - 1 inputs: the last text position predicts 1x1
    return {"without": one, "with": 2 * one}


# --- 06 diffusion -------------------------------------------------------------------------------------


@exercise("06.1", "forward noising")
def _(x0, t, eps, schedule):
    return schedule.noise(x0, t, eps)


@exercise("06.2", "first step where the SNR drops below 1", how="exact")
def _(schedule):
    snr = schedule.abar / (1 - schedule.abar)
    return int(torch.nonzero(snr < 1)[0])


@exercise("06.3", "one DDIM step")
def _(x0_hat, eps_hat, t_next, schedule):
    return schedule.noise(x0_hat, torch.full((len(x0_hat),), t_next), eps_hat)


# --- 07 residual head ---------------------------------------------------------------------------------


@exercise("07.1", "share of the full token's variance the residual keeps, per channel")
def _(residual, full):
    per_channel = lambda x: x.transpose(0, 1).flatten(1).var(1)  # (C,)
    return per_channel(residual) / per_channel(full)


@exercise("07.2", "the head's condition z")
@torch.no_grad()
def _(hart, h, idx):
    return hart.condition(h, idx)


@exercise("07.3", "the head's MLP passes over single tokens (32 px, 1024 px)", how="exact")
def _(sampling_steps, last_scales, guidance=True):
    return [sampling_steps * (2 if guidance else 1) * pn * pn for pn in last_scales]


# --- 08 HART end to end -------------------------------------------------------------------------------


@exercise("08.1", "images from your sampling loop, bit for bit (vs HART.generate)", how="exact")
@torch.no_grad()
def _(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0):
    return hart.generate(prompts, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, seed=seed)


def _parsed(caption: str) -> list[int]:
    """A caption -> (shape, colour, size, texture) of each object, then the relation (-1 for none)."""
    from hart_mini.model.data import parse_caption

    p = parse_caption(caption)
    return [v for o in p["objects"] for v in o] + [-1 if p["relation"] is None else p["relation"]]


@exercise("08.2", "the prompt's objects and relation", how="exact", prepare=_parsed)
def _():
    from hart_mini.model.data import COLOUR_NAMES, RELATIONS, SHAPES, SIZES, TEXTURES

    first = [SHAPES.index("square"), COLOUR_NAMES.index("green"), SIZES.index("small"), TEXTURES.index("dotted")]
    second = [SHAPES.index("triangle"), COLOUR_NAMES.index("purple"), SIZES.index("large"), TEXTURES.index("plain")]
    return [*first, *second, RELATIONS.index("below")]


@exercise("08.3", "RMS of the residual the head drew", atol=1e-6)
@torch.no_grad()
def _(hart, prompts, seed=1):
    out = hart.sample_latent(prompts, seed=seed)
    return float((out["latent"] - out["f_hat"]).pow(2).mean().sqrt())  # latent = f_hat + the head's residual


@exercise("08.4", "mean |pixel difference|: the head, another seed", atol=1e-6)
@torch.no_grad()
def _(hart, prompts, seed=1, other_seed=2):
    discrete = hart.generate(prompts, seed=seed, use_head=False)
    head = (hart.generate(prompts, seed=seed) - discrete).abs().mean()
    other = (hart.generate(prompts, seed=other_seed, use_head=False) - discrete).abs().mean()
    return [float(head), float(other)]


# --- 09 ablations -------------------------------------------------------------------------------------


@exercise("09.1", "FD with seeds offset by 0 and by 1000", atol=1e-4)
@torch.no_grad()
def _(hart, judge, data, n):
    from hart_mini.measure.evaluate import evaluate_generator

    return [evaluate_generator(lambda p, s, o=offset: hart.generate(p, seed=s + o), judge, data, n)["fd"]
            for offset in (0, 1000)]


@exercise("09.2", "FD improvement of HART over the discrete-only model", atol=1e-3)
def _(head_result):
    return head_result["fd_better_with_head_vs_discrete_model"]  # written by `ablate head`


# --- 10 efficiency ------------------------------------------------------------------------------------


@exercise("10.1", "MACs of one guided denoising step of the baseline", rtol=1e-6)
@torch.no_grad()
def _(baseline, prompt):
    from torch.utils.flop_counter import FlopCounterMode

    from hart_mini.model.text import text_condition

    ids, mask = baseline.encode_text([prompt, prompt])
    prefix = text_condition(baseline.text, baseline.text_proj, ids, mask, torch.tensor([False, True]))
    C, h = baseline.tokenizer.cfg.latent_channels, baseline.tokenizer.cfg.latent_size
    with FlopCounterMode(display=False) as counter:
        baseline.denoise(torch.zeros(2, C, h, h), torch.tensor([500, 500]), prefix)
    return counter.get_total_flops() / 2


@exercise("10.2", "the head's share of the sampling time")
def _(profile):
    return profile["head"] / sum(profile.values())


@exercise("10.3", "MACs per second, HART and baseline")
def _(macs, batch, seconds):
    return {"HART": macs["HART"] * batch / seconds["HART"],
            "baseline": macs["diffusion, 30 steps"] * batch / seconds["baseline"]}


# --- 11 scaling up ------------------------------------------------------------------------------------


@exercise("11.1", "model FLOP utilisation")
def _(flops, seconds, peak_tflops):
    return flops / seconds / (peak_tflops * 1e12)


@exercise("11.2", "images per micro-batch", how="exact")
def _(global_batch, processes, grad_accum):
    return global_batch // (processes * grad_accum)


@exercise("11.3", "the 6 N D estimate of a training step's FLOPs")
def _(model, preset, batch_size):
    params = model.parameter_counts()["transformer"]
    tokens = (preset.transformer.text_len + preset.tokenizer.num_tokens - 1) * batch_size  # text + L - 1 inputs
    return 6 * params * tokens


# --- 12 capstone --------------------------------------------------------------------------------------


def _tokens_and_f_hat(answer) -> dict:
    """(indices: K maps (B, pn, pn), f_hat) -> {'tokens': (B, L), 'f_hat'}: one sequence, whatever the scales."""
    indices, f_hat = answer
    return {"tokens": torch.cat([i.flatten(1) for i in indices], 1), "f_hat": f_hat}


@exercise("12.1", "multi-scale residual VQ: tokens and f_hat (vs the package's quantizer)", prepare=_tokens_and_f_hat)
@torch.no_grad()
def _(f, quantizer):
    indices, f_hat, _, _ = quantizer.quantize(f)
    return _tokens_and_f_hat((indices, f_hat))


@exercise("12.2", "attention in one pass and through the KV cache (vs the package's Attention)")
@torch.no_grad()
def _(state, num_heads, x, attend, rope, split):
    from hart_mini.model.blocks import Attention, LayerCache

    attention = Attention(x.shape[-1], num_heads)
    attention.load_state_dict(state)
    cache = LayerCache()  # positions [0, split) first, then the rest against their cached keys and values
    first = attention(x[:, :split], attend[..., :split, :split], rope[:split], cache)
    then = attention(x[:, split:], attend[..., split:, :], rope[split:], cache)
    return {"one pass": attention(x, attend, rope), "cached": torch.cat([first, then], 1)}


@exercise("12.3", "HART's loss, cross-entropy and diffusion terms (vs HART.loss, same seed)")
@torch.no_grad()
def _(model, images, captions, seed=0):
    logs = _loss_logs(model, images, captions, seed)
    return {"ce": float(logs["ce"]), "diff": float(logs["diff"])}


@exercise("12.4", "images from your sampling loop, bit for bit (vs HART.generate)", how="exact")
@torch.no_grad()
def _(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0):
    return hart.generate(prompts, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, seed=seed)


@exercise("12.5", "prompt accuracy of each model")
@torch.no_grad()
def _(models, judge, prompts, seed=0):
    from hart_mini.measure.judge import prompt_accuracy

    return {name: prompt_accuracy(judge, model.generate(prompts, seed=seed) * 2 - 1, prompts)["prompt_accuracy"]
            for name, model in models.items()}


@exercise("12.6", "held-out token cross-entropy of each model")
@torch.no_grad()
def _(models, images, captions, seed=0):
    return {name: float(_loss_logs(model, images, captions, seed)["ce"]) for name, model in models.items()}
