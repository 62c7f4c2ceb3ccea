"""The course's exercises: for each one, what is checked and how its expected answer is computed.

A notebook checks an exercise with `hart_mini.course.check.check_answer("NN.k", answer, **given)`. The reference
below receives only `given` (the data, a model, the problem's numbers) and recomputes the answer with the
package's own functions, so it never depends on the student's code, and no notebook cell holds an
expected value.

Build steps (the pieces of HART a student writes: the mask, attention, the losses, the head, its sampler,
the sampling loop) are checked for what they are for. Where the answer is a function, the exercise's `run`
calls it itself in a setting where every part of the piece shows: a loss on a copy of the model with
non-trivial scale weights and head weight (`loss_setting`), its value and the gradient of every trained
part; a sampler with both samplers; a sampling loop stage by stage (each scale's tokens exactly, then the
latent and the images within a tolerance that reordered floating-point sums never reach).
`tests/test_exercises.py` feeds every build step several right ways to write it (loops, einsum, SDPA,
float64, reordered sums), which must pass, and several wrong ones, which must fail.

Instructors: `notebooks/instructor_guide.md` discusses every exercise; this file is the answer key.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class WrongForm(ValueError):
    """A build step's function returned something of the wrong form (check_answer reports it)."""


@dataclass(frozen=True)
class Exercise:
    name: str  # what is checked, printed on the check's line
    reference: Callable[..., object]  # given -> the expected answer, computed independently
    how: str | dict = "close"  # "exact", "close" or "gradient"; or {part: how} for a dict answer, where a
    # part is looked up by its whole name, then by its first word ("tokens 2x2" -> "tokens")
    atol: float = 1e-5
    rtol: float = 1e-4
    prepare: Callable[[object], object] | None = None  # the student's answer -> what is compared
    run: Callable[..., object] | None = None  # build steps: (the student's function, **given) -> what is compared


EXERCISES: dict[str, Exercise] = {}


def exercise(key: str, name: str, how: str | dict = "close", atol: float = 1e-5, rtol: float = 1e-4,
             prepare: Callable | None = None, run: Callable | None = None):
    """Register the decorated function as the reference of exercise `key` ('NN.k')."""

    def register(reference: Callable) -> Callable:
        EXERCISES[key] = Exercise(name, reference, how, atol, rtol, prepare, run)
        return reference

    return register


def _tokens(scales) -> int:
    return sum(p * p for p in scales)  # L = sum pn^2


# --- build steps: the settings a student's piece runs in ------------------------------------------------


def loss_setting(model, head: bool):
    """A copy of `model` in which every term of a loss shows, in eval mode (every last-scale token scored):
    scale weights (pn_k^2)^-0.5 if the model weighs its scales equally, head weight 0.5 if it is 1 or 0 (the
    cpu preset's transformer trains on CE alone, its head only in its stage), and for the cross-entropy alone
    (head=False, notebook 05) no head. A loss that forgets a weight then fails."""
    m = copy.deepcopy(model).eval()
    if m.cfg.scale_balance == 0:
        m.cfg = dataclasses.replace(m.cfg, scale_balance=0.5)
        sizes = torch.cat([torch.full((p * p,), float(p * p)) for p in m.scales])
        weights = sizes.pow(-0.5)
        m.token_weights = (weights / weights.mean()).to(m.token_weights.device)
    if not head:
        m.head_cfg = m.head_cfg.for_mode("off")
    elif m.head_cfg.loss_weight in (0, 1):
        m.head_cfg = dataclasses.replace(m.head_cfg, loss_weight=0.5)
    map_head = m.head_cfg.network == "map"
    if head and m.head_cfg.mode == "last" and (map_head or not m.head.cond_embed.weight.requires_grad):
        # A head that reads nothing (HeadConfig.condition 'none': its weights on z zero and frozen), or one that
        # denoises whole maps (HeadConfig.network 'map', one noise level per image), while the loss a student
        # writes is HART's, per token: give the copy HART's recipe and MLP, with small fixed weights on z (a map
        # head: every weight), so that a loss that conditions on the wrong token or detaches z shows.
        m.head_cfg = dataclasses.replace(m.head_cfg, condition="hidden+token", network="mlp", guided=True,
                                         stage_steps=0, sampled_tokens=True, true_token_share=0.0)
        g = torch.Generator().manual_seed(0)
        if map_head:
            m.reset_head()  # HART's MLP, on the model's device
            with torch.no_grad():
                for p in m.head.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        else:
            weight = m.head.cond_embed.weight
            drawn = torch.randn(weight.shape, generator=g) * 0.02
            m.head.cond_embed.weight = nn.Parameter(drawn.to(weight.device, weight.dtype))
    m.zero_grad(set_to_none=True)
    return m


def _flat_grad(params: list) -> torch.Tensor | None:
    """Every parameter's gradient in one flat tensor (zeros where one has none); None if none has any."""
    if all(p.grad is None for p in params):
        return None
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in params]).detach()


def _loss_terms(loss_fn: Callable, model, images, captions, seed: int, head: bool) -> dict:
    """Run a loss (the student's, or HART.loss) from `seed` in the loss setting: its value, its logged terms
    (with the head) and the gradient that reaches each trained part."""
    m = loss_setting(model, head)
    with torch.enable_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)  # fixes the random draws: the caption dropout, r_K, then t and the noise
        out = loss_fn(m, images, captions)
        loss, logs = out if isinstance(out, tuple) else (out, {})
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise WrongForm("the loss should be a one-number tensor (it trains the model), not "
                            f"{type(loss).__name__}")
        if loss.requires_grad:
            loss.backward()
    terms = {"loss": float(loss.detach())}
    if head:
        if not isinstance(logs, dict) or not {"ce", "diff"} <= set(logs):
            raise WrongForm("return (loss, {'ce': ..., 'diff': ...})")
        terms.update(ce=float(logs["ce"]), diff=float(logs["diff"]))
    terms["gradient: transformer"] = _flat_grad(list(m.transformer.parameters()))
    if head:
        terms["gradient: head"] = _flat_grad([*m.head.parameters(), *m.cond_norm.parameters()])
    return terms


LOSS_PARTS = {"loss": "close", "ce": "close", "diff": "close", "gradient: transformer": "gradient",
              "gradient: head": "gradient"}


def _loop_stages(out, hart) -> dict:
    """A sampling loop's output -> its stages in the order they happen: each scale's tokens, the latent the
    decoder reads, the images. The first stage that differs is the one the check names."""
    if not isinstance(out, dict) or not {"indices", "latent", "image"} <= set(out):
        raise WrongForm("return a dict with 'indices' (the K token maps), 'latent' (what the decoder reads) "
                        "and 'image'")
    if len(out["indices"]) != hart.K:
        raise WrongForm(f"{len(out['indices'])} token maps in 'indices', one per scale expected ({hart.K})")
    stages = {}
    for r, pn in zip(out["indices"], hart.scales):
        if torch.as_tensor(r).numel() % (pn * pn):
            raise WrongForm(f"the {pn}x{pn} scale's tokens have {torch.as_tensor(r).numel()} entries")
        stages[f"tokens {pn}x{pn}"] = torch.as_tensor(r).reshape(-1, pn, pn)
    return {**stages, "latent": out["latent"], "image": out["image"]}


def _odd_head_sampling(hart):
    """The same HART (its modules shared) whose head samples in one step more than its config says, and guided at
    its own cfg 0.5: a loop that reads hart.head_cfg.sampling_steps and cfg_scale follows, one that hard-codes
    them (HART's 8 steps, the logits' guidance) shows, even when the model's own values are those."""
    odd = copy.copy(hart)  # a shallow copy: its own attributes, the same modules and weights
    odd.head_cfg = dataclasses.replace(hart.head_cfg, sampling_steps=hart.head_cfg.sampling_steps + 1,
                                       cfg_scale=0.5)
    return odd


def _run_loop(fn: Callable, hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0) -> dict:
    hart = _odd_head_sampling(hart)
    with torch.no_grad():
        return _loop_stages(fn(hart, prompts, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, seed=seed), hart)


@torch.no_grad()
def _loop_reference(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0) -> dict:
    hart = _odd_head_sampling(hart)  # as _run_loop gives the answer
    out = hart.sample_latent(prompts, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, seed=seed)
    return _loop_stages({**out, "image": hart.decode(out)}, hart)


LOOP_HOW = {"tokens": "exact", "latent": "close", "image": "close"}  # "tokens 2x2" is a "tokens" part


def _head_inputs(state: dict, n: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed inputs (x_t (n, C), t (n,), z (n, D)) for a head of this state, with both ends of the chain."""
    C, D = state["input_proj.weight"].shape[1], state["cond_embed.weight"].shape[1]
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (n,), generator=g)
    t[0], t[1] = 0, 999
    return torch.randn(n, C, generator=g), t, torch.randn(n, D, generator=g)


def _run_head(module, state, cfg) -> torch.Tensor:
    try:
        module.load_state_dict(state)  # the same weights as the package's head
    except RuntimeError as e:
        raise WrongForm(f"your head's parameters should be named as the package's MLPHead's: {e}") from None
    with torch.no_grad():
        return module(*_head_inputs(state))


@torch.no_grad()
def _head_reference(state, cfg) -> torch.Tensor:
    from hart_mini.model.diffusion import MLPHead

    x_t, t, z = _head_inputs(state)
    head = MLPHead(cfg, x_t.shape[1], z.shape[1])
    head.load_state_dict(state)
    return head(x_t, t, z)


def _head_loss_terms(loss_fn: Callable, head, batch_mul: int = 4, seed: int = 0) -> dict:
    """A diffusion loss (the student's or the package's) on a copy of `head`, v and eps, from `seed`: the value
    and the gradient of the head's parameters."""
    from hart_mini.model.diffusion import CosineSchedule

    C, D = head.input_proj.in_features, head.cond_embed.in_features
    g = torch.Generator().manual_seed(1)
    x0, z, terms = torch.randn(64, C, generator=g), torch.randn(64, D, generator=g), {}
    for prediction in ("v", "eps"):
        h = copy.deepcopy(head)
        h.zero_grad(set_to_none=True)
        with torch.enable_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)  # the steps t first, then the noise
            loss = loss_fn(h, x0, z, CosineSchedule(1000), prediction, batch_mul)
            if not torch.is_tensor(loss) or loss.numel() != 1:
                raise WrongForm(f"the loss should be a one-number tensor, not {type(loss).__name__}")
            if loss.requires_grad:
                loss.backward()
        terms[f"loss, {prediction}"] = float(loss.detach())
        terms[f"gradient, {prediction}"] = _flat_grad(list(h.parameters()))
    return terms


HEAD_LOSS_HOW = {"loss, v": "close", "gradient, v": "gradient", "loss, eps": "close", "gradient, eps": "gradient"}


def _head_draws(sample_fn: Callable, head, steps: int = 8, seed: int = 0) -> dict:
    """A sampler (the student's or the package's) drawing 64 residuals from `head` with fixed conditions:
    DDIM and the ancestral (DDPM) step, v-prediction, from one seeded generator each."""
    from hart_mini.model.diffusion import CosineSchedule

    C, D = head.input_proj.in_features, head.cond_embed.in_features
    z = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    out = {}
    with torch.no_grad():
        for method in ("ddim", "ddpm"):
            generator = torch.Generator().manual_seed(seed)
            out[f"{method}, {steps} steps"] = sample_fn(lambda x, t: head(x, t, z), (64, C), CosineSchedule(1000),
                                                       steps, "v", method, generator)
    return out


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


def _hart_loss(m, images, captions):
    return m.loss(images, captions)


@exercise("05.3", "next-scale cross-entropy (vs HART.loss)", how=LOSS_PARTS,
          run=lambda fn, model, images, captions, seed=0: _loss_terms(fn, model, images, captions, seed, False))
def _(model, images, captions, seed=0):
    return _loss_terms(_hart_loss, model, images, captions, seed, head=False)


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


@exercise("07.1", "the head's MLP (vs the package's MLPHead, the same weights)", run=_run_head)
def _(state, cfg):
    return _head_reference(state, cfg)


@exercise("07.2", "the head's diffusion loss (vs diffusion_loss)", how=HEAD_LOSS_HOW,
          run=lambda fn, head, batch_mul=4, seed=0: _head_loss_terms(fn, head, batch_mul, seed))
def _(head, batch_mul=4, seed=0):
    from hart_mini.model.diffusion import diffusion_loss

    return _head_loss_terms(diffusion_loss, head, batch_mul, seed)


@exercise("07.3", "the head's sampler (vs diffusion.sample)", atol=1e-4,
          run=lambda fn, head, steps=8, seed=0: _head_draws(fn, head, steps, seed))
def _(head, steps=8, seed=0):
    from hart_mini.model.diffusion import sample

    return _head_draws(sample, head, steps, seed)  # (model, shape, schedule, steps, prediction, method, generator)


@exercise("07.4", "share of the full token's variance the residual keeps, per channel")
def _(residual, full):
    per_channel = lambda x: x.transpose(0, 1).flatten(1).var(1)  # (C,)
    return per_channel(residual) / per_channel(full)


@exercise("07.5", "the head's condition z")
@torch.no_grad()
def _(hart, h, idx):
    return hart.condition(h, idx)


@exercise("07.6", "the head's MLP passes over single tokens (32 px, 1024 px)", how="exact")
def _(sampling_steps, last_scales, guidance=True):
    return [sampling_steps * (2 if guidance else 1) * pn * pn for pn in last_scales]


# --- 08 HART end to end -------------------------------------------------------------------------------


@exercise("08.1", "your sampling loop (vs HART.sample_latent)", how=LOOP_HOW, atol=1e-4, run=_run_loop)
def _(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0):
    return _loop_reference(hart, prompts, cfg_scale, top_k, top_p, seed)


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


@exercise("12.1", "multi-scale residual VQ: tokens and f_hat (vs the package's quantizer)",
          how={"tokens": "exact", "f_hat": "close"}, prepare=_tokens_and_f_hat)
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


EXERCISES["12.3"] = dataclasses.replace(EXERCISES["07.1"])  # notebook 07's head, pasted: the same checks
EXERCISES["12.4"] = dataclasses.replace(EXERCISES["07.2"])
EXERCISES["12.5"] = dataclasses.replace(EXERCISES["07.3"])


@exercise("12.6", "HART's loss (vs HART.loss)",
          how=LOSS_PARTS, run=lambda fn, model, images, captions, seed=0: _loss_terms(fn, model, images, captions,
                                                                                      seed, True))
def _(model, images, captions, seed=0):
    return _loss_terms(_hart_loss, model, images, captions, seed, head=True)


@exercise("12.7", "your sampling loop (vs HART.sample_latent)", how=LOOP_HOW, atol=1e-4,
          run=_run_loop)
def _(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0):
    return _loop_reference(hart, prompts, cfg_scale, top_k, top_p, seed)


@exercise("12.8", "prompt accuracy of each model")
@torch.no_grad()
def _(models, judge, prompts, seed=0):
    from hart_mini.measure.judge import prompt_accuracy

    return {name: prompt_accuracy(judge, model.generate(prompts, seed=seed) * 2 - 1, prompts)["prompt_accuracy"]
            for name, model in models.items()}


@exercise("12.9", "held-out token cross-entropy of each model")
@torch.no_grad()
def _(models, images, captions, seed=0):
    return {name: float(_loss_logs(model, images, captions, seed)["ce"]) for name, model in models.items()}
