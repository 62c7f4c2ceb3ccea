"""Every exercise checker is a real test: it passes right answers, fails plausible wrong ones, and gives
nothing away in the student notebooks.

Two kinds of case:

* CASES (every exercise that is not a build step): what the notebook gives the check (tiny, untrained
  `smoke` models where a model is needed), a right answer written the way a student would write it, and
  plausible wrong answers (an off-by-one, a missing factor, the wrong slot, a sign-only guess).
* BUILD_CASES (the build steps: the pieces of HART a student writes): what the notebook gives the check,
  at least three *right* ways to write the piece, equal in exact arithmetic (einsum or matmul, SDPA or by
  hand, a Python loop over heads or scales, float64 inside, sums in another order, the package's helpers
  or one's own), which must all pass, and at least three plausible mistakes, which must all fail. Where a
  build step's answer is a function (a loss, the head, its sampler, the sampling loop), the case gives the
  function itself and the exercise runs it in its own setting.

The build cases use what the notebooks give their checks: the shipped cpu HART (`hart_mini.pretrained`,
offline) and its 16 validation images for the losses, its trained head for the head's pieces (and, in one
more test, a random smoke-size head), its 8 prompts and the notebooks' knobs for the sampling loops.
"""

import copy
import dataclasses
import functools
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_mini.config import SCALES_64, get_preset
from hart_mini.course.check import CheckFailed, check_answer, check_close, check_exact
from hart_mini.course.exercises import EXERCISES
from hart_mini.course.student import SOLUTION_TAG, student_notebook
from hart_mini.model.blocks import Attention, LayerCache, apply_rope, rope_angles
from hart_mini.model.data import RELATIONS, TEXTURES, ToyShapes
from hart_mini.model.diffusion import CosineSchedule, diffusion_loss
from hart_mini.model.diffusion import sample as diffusion_sample
from hart_mini.model.hart import HART, caption_dropout, filter_logits, guide, map_to_tokens, sample, tokens_to_map
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer, bicubic_up

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SMOKE = get_preset("smoke")
CHECK_CALL = re.compile(r"check_answer\(\s*\"(\d\d\.\d)\"")
PROMPTS = [  # the prompts notebooks 08 and 12 sample
    "a large red striped circle at the top left", "a small blue square at the center",
    "a large yellow dotted triangle at the bottom right", "a large green diamond at the top",
    "a small purple striped circle left of a large orange square",
    "a large blue dotted triangle above a small yellow circle",
    "a large orange striped square at the left", "a small red dotted diamond right of a large green circle",
]


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _tokenizer(seed=0):
    torch.manual_seed(seed)
    return HybridTokenizer(SMOKE.tokenizer).eval()


def _hart(seed=0):
    torch.manual_seed(seed)
    model = HART(SMOKE.transformer, _tokenizer(seed), CaptionTokenizer.toyshapes(), SMOKE.head).eval()
    with torch.no_grad():  # make the head's output depend on its inputs
        for p in model.head.parameters():
            p.normal_(0, 0.1)
    return model


def _images(n=4, split="test"):
    return ToyShapes(SMOKE.data, split=split).batch(range(n))["image"]


@functools.cache
def _shipped():
    """The shipped cpu HART, what notebooks 05, 07, 08 and 12 check against (the checks copy it, never change it)."""
    from hart_mini import pretrained

    return pretrained.load("hart", "cpu")


def _val(n=16):
    """The notebooks' fixed batch for the loss checks: the first n validation images of the cpu preset."""
    return ToyShapes(get_preset("cpu").data, split="val").batch(range(n))


# --- one case per exercise that is not a build step: (given, right answer, [wrong answers]) -------------


def case_00_1():
    s = SCALES_64
    L = sum(p * p for p in s)
    return {"scales": s}, [L, len(s), L], [[sum(s), len(s), sum(s)], [L, L, len(s)]]


def case_00_2():
    image = _images(1)

    def share(scales, centred=True):
        rest = image.clone()
        for pn in scales:
            rest = rest - F.interpolate(F.interpolate(rest, size=(pn, pn), mode="area"), size=(32, 32), mode="bicubic")
        return rest.pow(2).mean() / ((image - image.mean()) if centred else image).pow(2).mean()

    return {"image": image}, share((1, 2, 4, 8, 16)), [share((1, 2, 3, 4, 6, 8)), share((1, 2, 4, 8, 16), False)]


def case_00_3():
    return {}, 14 + 8 / 20, [14 + 8, 14 * 8 / 20]


def case_01_1():
    images = _images(3)

    def spectrum(x, centre=True):
        x = x.double()
        if centre:
            x = x - x.mean(dim=(-2, -1), keepdim=True)
        H = x.shape[-1]
        power = torch.fft.fft2(x).abs().pow(2).mean(dim=(0, 1)) / (H * H)
        freq = torch.fft.fftfreq(H, d=1.0 / H)
        radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).round().long()
        return torch.stack([power[radius == k].mean() for k in range(H // 2 + 1)])

    summed = torch.stack([spectrum(images)[k] * 2 for k in range(17)])  # the sum, not the mean, of a ring
    return {"images": images}, spectrum(images), [spectrum(images, centre=False), summed]


def case_01_2():
    labels = ToyShapes(SMOKE.data, split="val").batch(range(200))["labels"]
    striped = TEXTURES.index("striped")
    right = float(((labels[:, 3] == striped) | (labels[:, 8] == striped)).float().mean())
    first_slot_only = float((labels[:, 3] == striped).float().mean())
    per_object = float((labels[:, [3, 8]] == striped).sum() / (labels[:, [3, 8]] >= 0).sum())
    return {"data": SMOKE.data, "split": "val", "n": 200}, right, [first_slot_only, per_object]


def case_01_3():
    def table(holds):
        return [[[holds(r, a, b) for b in range(9)] for a in range(9)] for r in RELATIONS]

    def right(r, a, b):
        (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
        return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[r]

    def loose(r, a, b):  # <= instead of <: also "holds" for two objects in one column
        (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
        return {"left of": ca <= cb, "right of": ca >= cb, "above": ra <= rb, "below": ra >= rb}[r]

    def rows_for_columns(r, a, b):  # row and column swapped
        return right(r, 3 * (a % 3) + a // 3, 3 * (b % 3) + b // 3)

    return {}, table(right), [table(loose), table(rows_for_columns)]


def case_02_1():
    counts = torch.tensor([9, 3, 0, 1, 7])
    p = counts.double() / counts.sum()
    p = p[p > 0]
    right = float(torch.exp(-(p * p.log()).sum()))
    entropy = float(-(p * p.log()).sum())
    return {"counts": counts}, right, [float((counts > 0).sum()), entropy, math.exp(-math.log(p.max()))]


def case_02_2():
    torch.manual_seed(0)
    z, cb = torch.randn(6, 2), torch.randn(5, 2)

    def answer(swap_beta=False, straight_through=True):
        zz, cc = z.clone().requires_grad_(True), cb.clone().requires_grad_(True)
        e = cc[torch.cdist(zz.detach(), cc.detach()).argmin(1)]
        w_code, w_commit = (0.25, 1.0) if swap_beta else (1.0, 0.25)
        loss = w_code * F.mse_loss(e, zz.detach()) + w_commit * F.mse_loss(zz, e.detach())
        z_q = zz + (e - zz).detach() if straight_through else e
        (z_q.sum() + loss).backward()
        return {"z_q": z_q.detach(), "loss": loss.detach(), "z_grad": zz.grad, "codebook_grad": cc.grad}

    return {"z": z, "codebook": cb}, answer(), [answer(swap_beta=True), answer(straight_through=False)]


def case_02_3():
    images = _images(2)
    torch.manual_seed(0)
    codebooks = [torch.randn(16, 48) * 0.3, torch.randn(64, 48) * 0.3]

    def patch_mse(cb, reduce="mean"):
        B, C, H, W = images.shape
        v = images.reshape(B, C, H // 4, 4, W // 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(-1, 48)
        err = (cb[torch.cdist(v, cb).argmin(1)] - v).pow(2)
        return float(err.mean() if reduce == "mean" else err.sum(1).mean())

    right = [patch_mse(cb) for cb in codebooks]
    return ({"codebooks": codebooks, "images": images}, right,
            [[patch_mse(cb, "sum") for cb in codebooks], [math.sqrt(m) for m in right]])


def case_03_1():
    s = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    L = sum(p * p for p in s)
    return {"scales": s}, [L, L / len(s)], [[L, len(s) / L], [sum(s), sum(s) / len(s)]]


def case_03_2():
    tokenizer, x = _tokenizer(), _images(2)
    q, scales = tokenizer.quantizer, SMOKE.tokenizer.scales
    with torch.no_grad():
        indices = tokenizer.tokenize(x).indices
        partials = [q.indices_to_f_hat(indices[: k + 1]) for k in range(len(scales) - 1)]  # after scales 1..k+1

    def inputs(mode="area", shift=1):
        return {scales[k + shift]: F.interpolate(f, size=(scales[k + shift],) * 2, mode=mode)
                for k, f in enumerate(partials)}

    return {"partials": partials, "quantizer": q}, inputs(), [inputs(mode="bilinear"), inputs(shift=0)]


def case_03_3():
    tokenizer, x = _tokenizer(), _images(2)
    with torch.no_grad():
        indices = tokenizer.tokenize(x).indices
    V = SMOKE.tokenizer.codebook_size
    random_codes = [torch.randint(V, i.shape, generator=torch.Generator().manual_seed(k))
                    for k, i in enumerate(indices)]
    q = tokenizer.quantizer

    def damage(cumulative=False, against=None):
        out = []
        for k in range(len(indices)):
            broken = [random_codes[j] if (j <= k if cumulative else j == k) else idx for j, idx in enumerate(indices)]
            with torch.no_grad():
                rec = tokenizer.decode(q.indices_to_f_hat(broken), "discrete")
                target = x if against is None else against
                out.append(F.mse_loss(rec, target).item())
        return out

    with torch.no_grad():
        clean = tokenizer.decode(q.indices_to_f_hat(indices), "discrete")
    given = {"tokenizer": tokenizer, "indices": indices, "random_codes": random_codes, "images": x}
    return given, damage(), [damage(cumulative=True), damage(against=clean)]


def case_04_1():
    torch.manual_seed(0)
    residual = torch.randn(30, 8, 4, 4) * torch.rand(30, 1, 1, 1)
    labels = ToyShapes(SMOKE.data, split="test").batch(range(30))["labels"]

    def by_texture(column=3, norm=lambda r: r.norm(dim=1)):
        per_image = norm(residual).flatten(1).mean(1)
        return {name: float(per_image[labels[:, column] == i].mean()) for i, name in enumerate(TEXTURES)}

    return ({"residual": residual, "labels": labels}, by_texture(),
            [by_texture(column=8), by_texture(norm=lambda r: r.abs().mean(1))])


def case_04_2():
    from hart_mini.measure.metrics import psnr

    tokenizer, x = _tokenizer(), _images(3)
    with torch.no_grad():
        tokens = tokenizer.tokenize(x)
        d, c = tokenizer.decode(tokens.f_hat, "discrete"), tokenizer.decode(tokens.f, "continuous")
    right = [float(psnr(d, x).mean()), float(psnr(c, x).mean())]
    on_01 = [float(psnr((d + 1) / 2, (x + 1) / 2, data_range=2.0).mean()), float(psnr((c + 1) / 2, (x + 1) / 2).mean())]
    return {"tokenizer": tokenizer, "images": x}, right, [right[::-1], on_01]


def case_04_3():
    from hart_mini.measure.metrics import psnr

    tokenizer, x = _tokenizer(), _images(3)
    with torch.no_grad():
        tokens = tokenizer.tokenize(x)
    noise = torch.randn(tokens.residual.shape, generator=torch.Generator().manual_seed(0))

    def answer(std):
        with torch.no_grad():
            return float(psnr(tokenizer.decode(tokens.f_hat + std * noise, "continuous"), x).mean())

    per_channel = tokens.residual.std(dim=(0, 2, 3), keepdim=True)
    return ({"tokenizer": tokenizer, "tokens": tokens, "noise": noise, "images": x}, answer(per_channel),
            [answer(tokens.residual.std()), answer(1.0)])


def case_05_4():
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0))
    ks = (1, 5, 50)

    def top_k(k, keep_one_less=False):
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits <= kth if keep_one_less else logits < kth, float("-inf"))

    right = torch.stack([top_k(k) for k in ks])
    return {"logits": logits, "ks": ks}, right, [torch.stack([top_k(k, True) for k in ks])]


def case_05_5():
    K = 6
    return ({"cfg_scale": 3.0, "K": K}, [3.0 * k / (K - 1) for k in range(K)],
            [[3.0 * k / K for k in range(K)], [3.0 * (k + 1) / K for k in range(K)]])


def case_05_6():
    L = sum(p * p for p in SCALES_64)
    return ({"scales": SCALES_64, "text_len": 16}, {"without": 16 + L - 1, "with": 2 * (16 + L - 1)},
            [{"without": 16 + L, "with": 2 * (16 + L)}, {"without": 16 + L - 1, "with": 16 + L - 1}])


def case_06_1():
    schedule = CosineSchedule(1000)
    x0, eps, t = torch.randn(10, 2), torch.randn(10, 2), torch.randint(0, 1000, (10,))
    a = schedule.abar[t].float()[:, None]
    return ({"x0": x0, "t": t, "eps": eps, "schedule": schedule}, a.sqrt() * x0 + (1 - a).sqrt() * eps,
            [a * x0 + (1 - a) * eps, (1 - a).sqrt() * x0 + a.sqrt() * eps])


def case_06_2():
    schedule = CosineSchedule(1000)
    first = int((schedule.abar < 0.5).nonzero()[0])
    return {"schedule": schedule}, first, [first - 1, 500]


def case_06_3():
    schedule = CosineSchedule(1000)
    x0_hat, eps_hat = torch.randn(10, 2), torch.randn(10, 2)
    a = schedule.abar[300].item()
    return ({"x0_hat": x0_hat, "eps_hat": eps_hat, "t_next": 300, "schedule": schedule},
            math.sqrt(a) * x0_hat + math.sqrt(1 - a) * eps_hat,
            [a * x0_hat + (1 - a) * eps_hat, math.sqrt(a) * eps_hat + math.sqrt(1 - a) * x0_hat])


def case_07_4():
    torch.manual_seed(0)
    full = torch.randn(20, 8, 4, 4) * torch.linspace(0.5, 2, 8)[None, :, None, None]
    residual = 0.3 * torch.randn(20, 8, 4, 4)
    per_channel = lambda x: x.transpose(0, 1).flatten(1).var(1)
    right = per_channel(residual) / per_channel(full)
    overall = (residual.var() / full.var()).expand(8)
    stds = residual.transpose(0, 1).flatten(1).std(1) / full.transpose(0, 1).flatten(1).std(1)
    return {"residual": residual, "full": full}, right, [overall, stds]


def case_07_5():
    hart = _hart()
    h = torch.randn(1, 10, SMOKE.transformer.width)
    idx = torch.randint(SMOKE.tokenizer.codebook_size, (1, 10))
    with torch.no_grad():
        w_e = hart.transformer.word_embed(hart.tokenizer.quantizer.codebook(idx))
        right, no_norm, h_only = hart.cond_norm(h + w_e), h + w_e, hart.cond_norm(h)
    return {"hart": hart, "h": h, "idx": idx}, right, [no_norm, h_only]


def case_07_6():
    return ({"sampling_steps": 8, "last_scales": (8, 64)}, [8 * 2 * 64, 8 * 2 * 64 * 64],
            [[8 * 64, 8 * 64 * 64], [8 * 2 * 8, 8 * 2 * 64]])


def case_08_2():
    right = "a small green dotted square below a large purple triangle"
    swapped = "a large purple triangle below a small green dotted square"
    above = "a small green dotted square above a large purple triangle"
    return {}, right, [swapped, above, "a small green dotted square at the bottom"]


def case_08_3():
    hart, prompts = _hart(), ["a large red striped circle at the top left", "a small blue square at the center"]
    with torch.no_grad():
        out = hart.sample_latent(prompts, seed=1)
    drawn = out["latent"] - out["f_hat"]
    return ({"hart": hart, "prompts": prompts}, float(drawn.pow(2).mean().sqrt()),
            [float(out["latent"].pow(2).mean().sqrt()), float(drawn.abs().mean())])


def case_08_4():
    hart, prompts = _hart(), ["a large red striped circle at the top left", "a small blue square at the center"]
    with torch.no_grad():
        discrete = hart.generate(prompts, seed=1, use_head=False)
        hybrid = hart.generate(prompts, seed=1)
        other = hart.generate(prompts, seed=2, use_head=False)
    mean_abs = lambda a, b: float((a - b).abs().mean())
    return ({"hart": hart, "prompts": prompts}, [mean_abs(hybrid, discrete), mean_abs(other, discrete)],
            [[float((hybrid - discrete).mean()), float((other - discrete).mean())],
             [float((hybrid - discrete).abs().max()), float((other - discrete).abs().max())]])


def case_09_1():
    from hart_mini.measure.evaluate import evaluate_generator
    from hart_mini.measure.judge import Judge

    hart = _hart()
    torch.manual_seed(0)
    judge = Judge(32, width=8).eval()
    fd = lambda offset: evaluate_generator(lambda p, s: hart.generate(p, seed=s + offset), judge, SMOKE.data, 6)["fd"]
    a, b = fd(0), fd(1000)
    return {"hart": hart, "judge": judge, "data": SMOKE.data, "n": 6}, [a, b], [[a, a], [a, fd(1)]]


def case_09_2():
    head = {"rows": [{"fd": 0.824}, {"fd": 0.865}, {"fd": 1.391}], "fd_better_with_head_vs_discrete_model": 0.4076}
    return {"head_result": head}, 1 - 0.824 / 1.391, [1.391 / 0.824 - 1, 1 - 0.824 / 0.865]


def case_10_1():
    from torch.utils.flop_counter import FlopCounterMode

    from hart_mini.model.baselines import LatentDiffusion
    from hart_mini.model.text import text_condition

    torch.manual_seed(0)
    baseline = LatentDiffusion(SMOKE.transformer, _tokenizer(), CaptionTokenizer.toyshapes(), SMOKE.baseline).eval()
    prompt = "a large red striped circle at the top left"

    def macs(batch):
        ids, mask = baseline.encode_text([prompt] * batch)
        drop = torch.tensor([False, True][:batch])
        prefix = text_condition(baseline.text, baseline.text_proj, ids, mask, drop)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            baseline.denoise(torch.randn(batch, 8, 8, 8), torch.full((batch,), 500), prefix)
        return counter.get_total_flops() / 2

    return {"baseline": baseline, "prompt": prompt}, macs(2), [macs(1), 2 * macs(2)]


def case_10_2():
    profile = {"transformer": 0.6, "head": 0.2, "decoder": 0.1, "other": 0.3}
    return {"profile": profile}, 0.2 / 1.2, [0.2 / 0.6, 0.2]


def case_10_3():
    macs = {"HART": 4.7e8, "diffusion, 30 steps": 3.9e9}
    seconds = {"HART": 0.12, "baseline": 0.95}
    right = {"HART": 4.7e8 * 8 / 0.12, "baseline": 3.9e9 * 8 / 0.95}
    per_batch = {"HART": 4.7e8 / 0.12, "baseline": 3.9e9 / 0.95}
    return {"macs": macs, "batch": 8, "seconds": seconds}, right, [per_batch, {"HART": right["HART"]}]


def case_11_1():
    return ({"flops": 1.2e12, "seconds": 0.040, "peak_tflops": 989}, 1.2e12 / 0.040 / 989e12,
            [100 * 1.2e12 / 0.040 / 989e12, 1.2e12 * 0.040 / 989e12])


def case_11_2():
    return {"global_batch": 256, "processes": 4, "grad_accum": 2}, 32, [64, 128]


def case_11_3():
    hart = _hart()
    params = hart.parameter_counts()["transformer"]
    T, L, B = SMOKE.transformer.text_len, SMOKE.tokenizer.num_tokens, 8
    return ({"model": hart, "preset": SMOKE, "batch_size": B}, 6 * params * (T + L - 1) * B,
            [6 * params * L * B, 2 * params * (T + L - 1) * B])


def _two_models():
    from hart_mini import pretrained

    return {"yours": _hart(), "shipped": pretrained.load("hart", "cpu")}


def case_12_8():
    from hart_mini import pretrained
    from hart_mini.measure.judge import prompt_accuracy

    models, judge = _two_models(), pretrained.load("judge", "cpu")
    prompts = ToyShapes(get_preset("cpu").data, split="test").batch(range(24))["caption"]
    with torch.no_grad():
        scores = {name: prompt_accuracy(judge, m.generate(prompts, seed=0) * 2 - 1, prompts)
                  for name, m in models.items()}
    right = {name: s["prompt_accuracy"] for name, s in scores.items()}
    return ({"models": models, "judge": judge, "prompts": prompts, "seed": 0}, right,
            [{"yours": right["shipped"], "shipped": right["yours"]}, {n: 1 - v for n, v in right.items()},
             {n: s["acc_colour"] for n, s in scores.items()}])


def case_12_9():
    models = _two_models()
    batch = ToyShapes(get_preset("cpu").data, split="test").batch(range(8))

    def ce(model, seed=0, split_batch=batch):
        torch.manual_seed(seed)
        with torch.no_grad():
            return float(_ce_loss(model, split_batch["image"], split_batch["caption"]))

    right = {name: ce(m) for name, m in models.items()}
    train = ToyShapes(get_preset("cpu").data, split="train").batch(range(8))
    return ({"models": models, "images": batch["image"], "captions": batch["caption"], "seed": 0}, right,
            [{name: ce(m, split_batch=train) for name, m in models.items()},
             {"yours": right["shipped"], "shipped": right["yours"]}])


CASES = {name[len("case_"):].replace("_", "."): fn for name, fn in globals().items() if name.startswith("case_")}


# --- build steps: (given, {right way: answer}, {mistake: answer}) ------------------------------------------
#
# Each helper below writes a piece of HART out by hand. `style` picks one of several right ways to write it
# (all equal in exact arithmetic), `mistake` one plausible error. The first right way of each case is the
# notebook's own solution.


def _levels_and_padding():
    """17 positions: 4 text tokens (then scales 2x2, 3x3); the first caption has 1 pad, the second 2."""
    level = torch.tensor([0] * 4 + [1] * 4 + [2] * 9)
    key_valid = torch.ones(2, 17, dtype=torch.bool)
    key_valid[0, :1], key_valid[1, :2] = False, False
    return level, key_valid


def _mask(level, key_valid, rule=lambda q, k: q >= k, padding=True):
    allowed = rule(level[None, :, None], level[None, None, :])  # (1, N, N)
    return allowed & key_valid[:, None, :] if padding else allowed.expand(len(key_valid), -1, -1)


def _mask_by_loops(level, key_valid):
    B, N = key_valid.shape
    mask = torch.zeros(B, N, N, dtype=torch.bool)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                mask[b, i, j] = bool(level[j] <= level[i]) and bool(key_valid[b, j])
    return mask


def build_05_1():
    level, key_valid = _levels_and_padding()
    right = {
        "broadcast >=": _mask(level, key_valid),
        "loops over captions, queries, keys": _mask_by_loops(level, key_valid),
        "not later: ~(k > q), key padding by unsqueeze": ~(level[None, None, :] > level[None, :, None])
                                                        & key_valid.unsqueeze(1),
        "difference of levels, as 0/1 integers": ((level[:, None] - level[None, :] >= 0)[None]
                                                  & key_valid[:, None, :]).long(),
    }
    wrong = {
        "keys of later scales (q <= k)": _mask(level, key_valid, lambda q, k: q <= k),
        "padding kept": _mask(level, key_valid, padding=False),
        "own scale masked (q > k)": _mask(level, key_valid, lambda q, k: q > k),
        "padding masked on the queries": _mask(level, key_valid, padding=False) & key_valid[:, :, None],
    }
    return {"level": level, "key_valid": key_valid}, right, wrong


def _rope_complex(x, angles):
    """RoPE through complex numbers: each pair (x_2i, x_2i+1) times e^(i angle)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


def _rope_halves(x, angles):
    """A plausible RoPE mistake: rotating x_i with x_(i + d/2) (the 'rotate_half' layout) instead of pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _attention(module, x, attend, rope=None, cache=None, style="matmul", mistake=None):
    """Multi-head attention written out with the weights of `module` (the package's Attention)."""
    B, N, D = x.shape
    H = module.num_heads
    d = D // H
    qkv = module.qkv(x)
    if mistake == "heads before q, k, v":  # splits the wrong columns
        q, k, v = qkv.view(B, N, H, 3, d).permute(3, 0, 2, 1, 4)
    else:
        q, k, v = qkv.view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # (B, H, N, d) each
    if rope is not None and mistake != "no rope":
        rotate = _rope_complex if style == "complex rope" else _rope_halves if mistake == "rope halves" else apply_rope
        q, k = rotate(q, rope), rotate(k, rope)
        if mistake == "rope on v too":
            v = apply_rope(v, rope)
    if cache is not None:
        k, v = cache.extend(k, v)
    scale = 1.0 if mistake == "no 1/sqrt(d)" else math.sqrt(d)
    if style == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
    elif style == "loop over heads":
        heads = []
        for i in range(H):
            scores = q[:, i] @ k[:, i].transpose(-2, -1) / scale  # (B, N, N_keys)
            heads.append(scores.masked_fill(~attend[:, 0], float("-inf")).softmax(-1) @ v[:, i])
        out = torch.stack(heads, 1)
    else:
        if style == "float64":
            q, k, v = q.double(), k.double(), v.double()
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) if style == "einsum" else q @ k.transpose(-2, -1)
        weights = (scores / scale).masked_fill(~attend, float("-inf"))
        out = (weights.softmax(-2 if mistake == "softmax over the queries" else -1) @ v).to(x.dtype)
    return module.proj(out.transpose(1, 2).reshape(B, N, D))


def build_05_2():
    level, key_valid = _levels_and_padding()
    torch.manual_seed(0)
    module, x = Attention(16, 2), torch.randn(2, 17, 16)
    given = {"state": module.state_dict(), "num_heads": 2, "x": x, "level": level, "key_valid": key_valid}
    attend = _mask(level, key_valid)[:, None]
    with torch.no_grad():
        right = {style: _attention(module, x, attend, style=style)
                 for style in ("matmul", "einsum", "sdpa", "loop over heads", "float64")}
        wrong = {mistake: _attention(module, x, attend, mistake=mistake)
                 for mistake in ("no 1/sqrt(d)", "heads before q, k, v", "softmax over the queries")}
        wrong["mask of later scales"] = _attention(module, x, _mask(level, key_valid, lambda q, k: q <= k)[:, None])
        wrong["padding kept"] = _attention(module, x, _mask(level, key_valid, padding=False)[:, None])
    return given, right, wrong


def _ce_loss(model, images, captions, style="plain", mistake=None, parts=False):
    """The teacher-forced next-scale cross-entropy (notebook 05); parts=True also returns what HART's loss
    builds on: (ce, logits, h, tokens, f_hat of scales 1..K-1)."""
    q, scales, K = model.tokenizer.quantizer, model.scales, model.K
    with torch.no_grad():
        tokens = model.tokenizer.tokenize(images)
        if style == "teacher_forcing_inputs":
            inputs = q.teacher_forcing_inputs(tokens.indices)
            f_hat = tokens.f_hat - q.contribution(tokens.indices[-1], K - 1)
        else:
            f_hat, inputs = torch.zeros_like(tokens.f), []
            for k in range(K - 1):
                part = q.contribution(tokens.indices[k], k)
                f_hat = part if mistake == "f_hat not cumulative" else f_hat + part
                mode = "bilinear" if mistake == "bilinear inputs" else "area"
                inputs.append(map_to_tokens(F.interpolate(f_hat, size=(scales[k + 1],) * 2, mode=mode)))
            inputs = torch.cat(inputs, 1)
    ids, mask = model.encode_text(captions)
    if style == "teacher_forcing_inputs":
        drop = caption_dropout(len(captions), model.cfg.cond_dropout, ids.device)
    else:
        drop = torch.rand(len(captions)) < model.cfg.cond_dropout
    if mistake == "no caption dropout":
        drop = torch.zeros_like(drop)
    logits, h = model.transformer(ids, mask, inputs, drop)  # (B, L, V), (B, L, D)
    sizes = torch.cat([torch.full((p * p,), float(p * p)) for p in scales])
    weights = sizes.pow(-model.cfg.scale_balance)
    if mistake == "unweighted":
        weights = torch.ones_like(weights)
    if style == "loop over scales":  # sum_k w_k * (sum of scale k's CE) / sum_k w_k * (its token count)
        logp, total, count, start = logits.log_softmax(-1), 0.0, 0.0, 0
        for pn, target in zip(scales, tokens.indices):
            n, w = pn * pn, (pn * pn) ** -model.cfg.scale_balance
            nll = -logp[:, start:start + n].gather(-1, target.flatten(1)[..., None]).sum()  # -log p of the truth
            total, count, start = total + w * nll, count + w * len(images) * n, start + n
        ce = total / count
    elif style == "float64":
        ce = F.cross_entropy(logits.double().transpose(1, 2), tokens.sequence, reduction="none")
        ce = (ce * model.token_weights.double()).mean().float()
    elif style == "teacher_forcing_inputs":
        ce = (F.cross_entropy(logits.transpose(1, 2), tokens.sequence, reduction="none") * model.token_weights).mean()
    else:
        ce = F.cross_entropy(logits.transpose(1, 2), tokens.sequence, reduction="none")  # (B, L)
        ce = (ce * weights / (1.0 if mistake == "weights not normalised" else weights.mean())).mean()
    if parts:
        return ce, logits, h, tokens, f_hat
    if mistake == "a Python float":
        return ce.item()
    return ce.detach() if mistake == "detached" else ce


def _loss_fn(fn, **how):
    return lambda model, images, captions: fn(model, images, captions, **how)


def build_05_3():
    """The notebook's setting: the shipped cpu HART on 16 validation images (the check runs it with scale
    weights 0.5 and no head)."""
    batch = _val()
    given = {"model": _shipped(), "images": batch["image"], "captions": batch["caption"], "seed": 0}
    right = {style: _loss_fn(_ce_loss, style=style)
             for style in ("plain", "teacher_forcing_inputs", "loop over scales", "float64")}
    wrong = {mistake: _loss_fn(_ce_loss, mistake=mistake)
             for mistake in ("unweighted", "weights not normalised", "f_hat not cumulative", "bilinear inputs",
                             "no caption dropout", "a Python float", "detached")}
    return given, right, wrong


class _Head(nn.Module):
    """The head's MLP (MAR's SimpleMLPAdaLN) with MLPHead's parameter names, written out (notebook 07)."""

    def __init__(self, C, D, cfg, style="plain", mistake=None):
        super().__init__()
        W = cfg.width
        self.freq_dim, self.style, self.mistake = cfg.freq_dim, style, mistake
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.cond_embed = nn.Linear(D, W)
        self.input_proj = nn.Linear(C, W)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"mlp": nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W)),
                           "modulation": nn.Sequential(nn.SiLU(), nn.Linear(W, 3 * W))}) for _ in range(cfg.depth))
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.output = nn.Linear(W, C)
        if style == "float64":
            self.double()  # load_state_dict copies the float32 weights into float64

    def embed_time(self, t):
        half = self.freq_dim // 2
        i = torch.arange(half, dtype=torch.float64 if self.style == "float64" else torch.float32)
        if self.style == "10000 ** (-i / half)":
            freqs = 10_000 ** (-i / half)
        else:
            freqs = torch.exp(-math.log(10_000) * i / half)
        angles = t.to(freqs.dtype)[:, None] * freqs[None]
        if self.mistake == "sin, cos swapped":
            return torch.cat([angles.sin(), angles.cos()], -1)
        return torch.cat([angles.cos(), angles.sin()], -1)

    def norm(self, x):
        if self.style == "LayerNorm by hand":
            mean = x.mean(-1, keepdim=True)
            return (x - mean) / ((x - mean).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        return F.layer_norm(x, x.shape[-1:])

    def forward(self, x_t, t, z):
        dtype = self.output.weight.dtype
        if self.mistake == "t not embedded":  # the raw step index where its sinusoidal features belong
            time = t.to(dtype)[:, None].expand(-1, self.freq_dim)
        else:
            time = self.embed_time(t).to(dtype)
        y = self.time_embed(time) + self.cond_embed(z.to(dtype))
        x = self.input_proj(x_t.to(dtype))
        for block in self.blocks:
            m = block["modulation"](y)
            if self.style == "unbind":
                shift, scale, gate = m.view(*m.shape[:-1], 3, -1).unbind(-2)
            elif self.mistake == "chunks as (scale, shift, gate)":
                scale, shift, gate = m.chunk(3, -1)
            else:
                shift, scale, gate = m.chunk(3, -1)
            out = block["mlp"](self.norm(x) * (1 + scale) + shift)
            x = x + (out if self.mistake == "no gate" else gate * out)
        shift, scale = self.final_modulation(y).chunk(2, -1)
        x = x if self.mistake == "no final LayerNorm" else self.norm(x)
        return self.output(x * (1 + scale) + shift).float()


def _head_mlp_case(state, cfg):
    C, D = state["output.weight"].shape[0], state["cond_embed.weight"].shape[1]
    right = {style: _Head(C, D, cfg, style)
             for style in ("plain", "unbind", "LayerNorm by hand", "float64", "10000 ** (-i / half)")}
    wrong = {mistake: _Head(C, D, cfg, mistake=mistake)
             for mistake in ("sin, cos swapped", "chunks as (scale, shift, gate)", "no gate", "no final LayerNorm",
                             "t not embedded")}
    return {"state": state, "cfg": cfg}, right, wrong


def build_07_1():  # notebook 07: the shipped head's weights
    return _head_mlp_case(_shipped().head.state_dict(), _shipped().head_cfg)


def _head_loss(head, x0, z, schedule, prediction, batch_mul, style="plain", mistake=None):
    """The head's diffusion loss: batch_mul noisings of each (x0, z), t first, then the noise."""
    if mistake != "batch_mul ignored":
        x0, z = (torch.cat([x0] * batch_mul), torch.cat([z] * batch_mul)) if style == "helpers" else (
            x0.repeat(batch_mul, 1), z.repeat(batch_mul, 1))
    t = torch.randint(0, schedule.steps, (len(x0),))
    eps = torch.randn_like(x0)
    if style == "helpers":
        return F.mse_loss(head(schedule.noise(x0, t, eps), t, z), schedule.target(x0, eps, t, prediction))
    a = schedule.abar[t][:, None]  # float64
    if style != "float64":
        a = a.float()
    x0_, eps_ = x0.to(a.dtype), eps.to(a.dtype)
    if mistake == "sqrt missing in the noising":
        x_t = a * x0_ + (1 - a) * eps_
    else:
        x_t = a.sqrt() * x0_ + (1 - a).sqrt() * eps_
    if prediction == "eps" or mistake == "eps target under v":
        target = eps_
    elif mistake == "v with the wrong sign":
        target = (1 - a).sqrt() * x0_ - a.sqrt() * eps_
    else:
        target = a.sqrt() * eps_ - (1 - a).sqrt() * x0_
    err = (head(x_t.float(), t, z).to(a.dtype) - target).pow(2)
    if mistake == "sum, not mean":
        return err.sum().float()
    if style == "rows, then channels":
        return (err.sum(1).mean() / x0.shape[1]).float()
    return err.mean().float()


def _head_loss_fn(**how):
    return lambda head, x0, z, schedule, prediction, batch_mul: _head_loss(head, x0, z, schedule, prediction,
                                                                            batch_mul, **how)


def _head_loss_case(head):
    right = {style: _head_loss_fn(style=style) for style in ("plain", "helpers", "float64", "rows, then channels")}
    wrong = {mistake: _head_loss_fn(mistake=mistake)
             for mistake in ("eps target under v", "v with the wrong sign", "batch_mul ignored", "sum, not mean",
                             "sqrt missing in the noising")}
    return {"head": head}, right, wrong


def build_07_2():
    return _head_loss_case(_shipped().head)


def _head_sampler(model, shape, schedule, steps, prediction, method, generator, style="plain", mistake=None):
    """DDIM or the ancestral step over the package's trailing chain t_i = round(T (n - i) / n) - 1."""
    T = schedule.steps
    if mistake == "chain from T - 1 to 0 (linspace)":
        chain = torch.linspace(T - 1, 0, steps).round().long().tolist()
    elif mistake == "leading chain, ending at t = 0":
        chain = [T // steps * (steps - 1 - i) for i in range(steps)]
    elif style == "helpers":
        chain = schedule.respaced(steps)
    else:
        chain = [round(T * (steps - i) / steps) - 1 for i in range(steps)]
    dtype = torch.float64 if style == "float64" else torch.float32
    x = torch.randn(shape, generator=generator).to(dtype)
    if mistake == "one noise for every ancestral step":
        noise = torch.randn(shape, generator=generator).to(dtype)  # drawn once, before the loop, and reused
    for i, t in enumerate(chain):
        t_batch = torch.full((shape[0],), t, dtype=torch.long)
        out = model(x.float(), t_batch).to(dtype)
        a = schedule.abar[t].item()
        if style == "helpers":
            x0, eps = schedule.split(out, x, t_batch, prediction)
        elif prediction == "eps" or mistake == "v read as eps":
            eps = out
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        else:
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a) if style == "rewritten" else (
                math.sqrt(1 - a) * x + math.sqrt(a) * out)
        if i == len(chain) - 1:
            return (x if mistake == "returns x, not x0, at the end" else x0).float()
        a_next = schedule.abar[chain[i + 1]].item()
        if method == "ddim":
            if mistake == "DDIM with eps and x0 swapped":
                x = math.sqrt(a_next) * eps + math.sqrt(1 - a_next) * x0
            elif style == "rewritten":  # x_t' = sqrt(a') x0 + sqrt((1 - a') / (1 - a)) (x_t - sqrt(a) x0)
                x = math.sqrt(a_next) * x0 + math.sqrt((1 - a_next) / (1 - a)) * (x - math.sqrt(a) * x0)
            else:
                x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        else:
            beta = 1 - a / a_next
            if style == "rewritten":  # the posterior mean over one denominator, alpha = a / a'
                mean = (math.sqrt(a_next) * beta * x0 + math.sqrt(a / a_next) * (1 - a_next) * x) / (1 - a)
            else:
                mean = math.sqrt(a_next) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_next) / (1 - a) * x
            std = math.sqrt(beta if mistake == "beta as the variance" else beta * (1 - a_next) / (1 - a))
            if mistake == "ancestral step without fresh noise":
                x = mean
            elif mistake == "one noise for every ancestral step":
                x = mean + std * noise
            else:
                x = mean + std * torch.randn(shape, generator=generator).to(dtype)
    return x.float()


def _sampler_fn(**how):
    return lambda model, shape, schedule, steps, prediction, method, generator: _head_sampler(
        model, shape, schedule, steps, prediction, method, generator, **how)


def _head_sampler_case(head):
    right = {style: _sampler_fn(style=style) for style in ("plain", "helpers", "float64", "rewritten")}
    wrong = {mistake: _sampler_fn(mistake=mistake)
             for mistake in ("DDIM with eps and x0 swapped", "ancestral step without fresh noise",
                             "one noise for every ancestral step", "beta as the variance",
                             "chain from T - 1 to 0 (linspace)", "leading chain, ending at t = 0",
                             "returns x, not x0, at the end", "v read as eps")}
    return {"head": head}, right, wrong


def build_07_3():
    return _head_sampler_case(_shipped().head)


@torch.no_grad()
def _loop(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0, style="plain", mistake=None):
    """HART's sampling loop (notebooks 08 and 12): one doubled batch [cond; uncond] through the KV cache,
    a guided, filtered draw per scale, then the head's guided residual at the last scale."""
    q, tf, K, B = hart.tokenizer.quantizer, hart.transformer, hart.K, len(prompts)
    generator = torch.Generator().manual_seed(seed)
    head_generator = generator
    if mistake == "tokens from the global RNG":
        torch.manual_seed(seed)  # the same stream as the generator: the tokens agree, the head's noise not
    ids, mask = hart.encode_text(prompts)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    drop = torch.arange(2 * B) >= B
    logits, h, cache, cond = tf.start(ids, mask, drop)
    C, size = hart.tokenizer.cfg.latent_channels, hart.scales[-1]
    f_hat, indices = torch.zeros(B, C, size, size), []
    for k, pn in enumerate(hart.scales):
        if k > 0:
            x = map_to_tokens(q.next_input(f_hat, k - 1))
            logits, h = tf.step(torch.cat([x, x]), k, cache, cond)
        t = {"no guidance ramp": cfg_scale, "ramp over K, not K - 1": cfg_scale * k / K}.get(
            mistake, cfg_scale * k / (K - 1))
        if style == "package helpers":
            r = sample(guide(logits, k, K, cfg_scale), top_k, top_p, generator)
        else:
            c, u = logits.chunk(2)
            if style == "reordered sums":
                guided = c + t * (c - u)
            elif style == "float64":
                guided = (1 + t) * c.double() - t * u.double()
            else:
                guided = (1 + t) * c - t * u
            if mistake != "no top-k / top-p":
                guided = filter_logits(guided, top_k, top_p)
            draws = None if mistake == "tokens from the global RNG" else generator
            r = torch.multinomial(guided.softmax(-1).flatten(0, 1), 1, generator=draws).view(B, pn * pn)
        indices.append(r.view(B, pn, pn))
        if k < K - 1:
            f_hat = f_hat + q.contribution(r.view(B, pn, pn), k)
    e = q.codebook(r)  # (B, pn^2, C)
    if style == "package helpers":
        z = hart.condition(h, torch.cat([r, r])).flatten(0, 1)
    else:
        z = hart.cond_norm(h + tf.word_embed(torch.cat([e, e]))).flatten(0, 1)

    if mistake != "the head guided as the logits" and hart.head_cfg.cfg_scale is not None:
        t = hart.head_cfg.cfg_scale  # the head's own guidance

    def head(x_t, step):
        if mistake == "head without guidance":
            return hart.head(x_t, step, z[: len(x_t)])
        c, u = hart.head(torch.cat([x_t, x_t]), torch.cat([step, step]), z).chunk(2)
        return c + t * (c - u) if style == "reordered sums" else (1 + t) * c - t * u

    steps = 8 if mistake == "HART's 8 head steps, not the model's" else hart.head_cfg.sampling_steps
    if style == "package helpers":
        d = diffusion_sample(head, (B * pn * pn, C), hart.schedule, steps,
                             hart.head_cfg.prediction, hart.head_cfg.sampler, head_generator)
    else:
        d = _head_sampler(head, (B * pn * pn, C), hart.schedule, steps,
                          hart.head_cfg.prediction, hart.head_cfg.sampler, head_generator)
    d = d.view(B, pn * pn, C)
    if mistake != "residual_scale forgotten":
        d = d * hart.residual_scale
    if mistake == "phi at the last scale":
        latent = f_hat + q.phi(K - 1)(tokens_to_map(e + d, pn))
    elif style == "reordered sums":  # (f_hat + e) + d, not f_hat + (e + d)
        latent = (f_hat + tokens_to_map(e, pn)) + tokens_to_map(d, pn)
    else:
        latent = f_hat + tokens_to_map(e + d, pn)
    image = hart.tokenizer.decode(latent, "continuous").clamp(-1, 1)
    if mistake != "images left in [-1, 1]":
        image = image.add(1).div(2)
    return {"indices": indices, "latent": latent, "image": image}


def _loop_fn(**how):
    def run(hart, prompts, cfg_scale=3.0, top_k=0, top_p=1.0, seed=0):
        with torch.random.fork_rng():  # a loop that seeds the global RNG leaves the tests' RNG alone
            return _loop(hart, prompts, cfg_scale, top_k, top_p, seed, **how)

    return run


LOOP_STYLES = ("plain", "reordered sums", "float64", "package helpers")


def build_08_1():
    """The notebook's setting: the shipped cpu HART, its 8 prompts, cfg 3, top_k 100, top_p 0.95, seed 0."""
    given = {"hart": _shipped(), "prompts": PROMPTS, "cfg_scale": 3.0, "top_k": 100, "top_p": 0.95, "seed": 0}
    right = {style: _loop_fn(style=style) for style in LOOP_STYLES}
    wrong = {mistake: _loop_fn(mistake=mistake)
             for mistake in ("no guidance ramp", "ramp over K, not K - 1", "no top-k / top-p",
                             "HART's 8 head steps, not the model's", "the head guided as the logits",
                             "phi at the last scale",
                             "residual_scale forgotten", "tokens from the global RNG", "images left in [-1, 1]")}
    return given, right, wrong


def _quantize(f, q, style="cdist", mistake=None):
    """Multi-scale residual VQ written out: each scale quantizes the area-downsampled rest."""
    cb, rest, f_hat, indices = q.codebook.weight, f, torch.zeros_like(f), []
    for k, pn in enumerate(q.scales):
        source = f if mistake == "not residual" else rest
        target = F.interpolate(source, size=(pn, pn), mode="bilinear" if mistake == "bilinear downsampling" else "area")
        B, C = target.shape[:2]
        v = target.permute(0, 2, 3, 1).reshape(-1, C)  # (B pn pn, C)
        if mistake == "nearest by dot product":
            idx = (v @ cb.t()).argmax(1)
        elif style == "expanded distances":
            idx = (v.pow(2).sum(1, keepdim=True) - 2 * v @ cb.t() + cb.pow(2).sum(1)).argmin(1)
        elif style == "broadcast differences":
            idx = (v[:, None] - cb[None]).pow(2).sum(-1).argmin(1)
        elif style == "float64":
            idx = torch.cdist(v.double(), cb.double()).argmin(1)
        else:
            idx = torch.cdist(v, cb).argmin(1)
        idx = idx.view(B, pn, pn)
        e = cb[idx].permute(0, 3, 1, 2)  # (B, C, pn, pn)
        last = k == len(q.scales) - 1
        if mistake == "no phi (plain bicubic)":
            part = F.interpolate(e, size=f.shape[-2:], mode="bicubic")
        elif mistake == "phi at the last scale" and last:
            part = q.phi(k)(e)
        elif style == "expanded distances":  # phi_k(up(e)) by hand, nothing at the last scale
            part = e if last else q.phi(k)(bicubic_up(e, f.shape[-1]))
        else:
            part = q.lift(e, k)
        f_hat, rest = f_hat + part, rest - part
        indices.append(idx)
    return indices, f_hat


def build_12_1():
    """The notebook's setting: the shipped tokenizer's latents of 16 validation images."""
    q = _shipped().tokenizer.quantizer
    with torch.no_grad():
        f = _shipped().tokenizer.encode(_val()["image"])
        right = {style: _quantize(f, q, style)
                 for style in ("cdist", "expanded distances", "broadcast differences", "float64")}
        wrong = {mistake: _quantize(f, q, mistake=mistake)
                 for mistake in ("not residual", "no phi (plain bicubic)", "phi at the last scale",
                                 "bilinear downsampling", "nearest by dot product")}
    return {"f": f, "quantizer": q}, right, wrong


def _attention_both_ways(module, x, attend, rope, split, style="matmul", mistake=None):
    """The capstone's check: one pass, then [0, split) and the rest against the cached keys and values."""
    cache = LayerCache()
    first = _attention(module, x[:, :split], attend[..., :split, :split], rope[:split], cache, style, mistake)
    if mistake == "cache not used":  # the rest attends to itself only
        then = _attention(module, x[:, split:], attend[..., split:, split:], rope[split:], None, style, mistake)
    else:
        then = _attention(module, x[:, split:], attend[..., split:, :], rope[split:], cache, style, mistake)
    one_pass = _attention(module, x, attend, rope, None, style, mistake)
    return {"one pass": one_pass, "cached": torch.cat([first, then], 1)}


def build_12_2():
    level, key_valid = _levels_and_padding()
    torch.manual_seed(0)
    module, x = Attention(16, 2), torch.randn(2, 17, 16)
    attend = _mask(level, key_valid)[:, None]
    rope = rope_angles(torch.rand(17, 2) * 8, 8)
    given = {"state": module.state_dict(), "num_heads": 2, "x": x, "attend": attend, "rope": rope, "split": 8}
    with torch.no_grad():
        right = {style: _attention_both_ways(module, x, attend, rope, 8, style)
                 for style in ("matmul", "sdpa", "einsum", "complex rope", "loop over heads")}
        wrong = {mistake: _attention_both_ways(module, x, attend, rope, 8, mistake=mistake)
                 for mistake in ("no rope", "cache not used", "rope on v too", "rope halves", "no 1/sqrt(d)")}
    return given, right, wrong


def build_12_3():  # the capstone: notebook 07's head pasted, checked against the shipped head again
    return _head_mlp_case(_shipped().head.state_dict(), _shipped().head_cfg)


def build_12_4():
    return _head_loss_case(_shipped().head)


def build_12_5():
    return _head_sampler_case(_shipped().head)


def _full_loss(model, images, captions, style="plain", mistake=None):
    """HART's loss (the capstone): the weighted CE + loss_weight * the head's diffusion loss at the last
    scale, z = norm(h_K + word_embed(e(r_K))) with r_K drawn from the model's own logits."""
    q = model.tokenizer.quantizer
    ce_style = {"helpers": "teacher_forcing_inputs", "float64": "loop over scales"}.get(style, "plain")
    ce_mistake = mistake if mistake in ("unweighted", "no caption dropout") else None
    ce, logits, h, tokens, f_hat = _ce_loss(model, images, captions, ce_style, ce_mistake, parts=True)
    last = model.transformer.starts[-2]  # the first token of the last scale
    truth = tokens.indices[-1].flatten(1)
    with torch.no_grad():
        r = sample(logits[:, last:].float(), 0, 1.0, None)
    h_last = h[:, last:].detach() if mistake == "z detached from the transformer" else h[:, last:]
    given_token = truth if mistake == "conditioned on the true token" else r
    if style == "helpers":
        z = model.condition(h_last, given_token)
    else:
        z = model.cond_norm(h_last + model.transformer.word_embed(q.codebook(given_token)))
    rest = map_to_tokens(tokens.f - f_hat)  # what scales 1..K-1 left, (B, pn_K^2, C)
    target = rest - q.codebook(truth if mistake == "target against the true token" else r)
    scale = 1.0 if mistake == "residual_scale missing" else model.residual_scale
    x0, zz = (target / scale).flatten(0, 1), z.flatten(0, 1)
    cfg = model.head_cfg
    if style == "helpers":
        diff = diffusion_loss(model.head, x0, zz, model.schedule, cfg.prediction, cfg.batch_mul)
    else:
        diff = _head_loss(model.head, x0, zz, model.schedule, cfg.prediction, cfg.batch_mul,
                          style="float64" if style == "float64" else "plain")
    weight = 1.0 if mistake == "head's loss weight ignored" else cfg.loss_weight
    loss = ce if mistake == "CE alone" else ce + weight * diff
    if style == "reordered sums":
        loss = weight * diff + ce
    if mistake == "a Python float":
        loss = loss.item()
    return loss, {"ce": ce.detach(), "diff": diff.detach()}


def build_12_6():
    """The notebook's setting: the shipped cpu HART on 16 validation images (the check runs it with scale
    weights 0.5 and head weight 0.5)."""
    batch = _val()
    given = {"model": _shipped(), "images": batch["image"], "captions": batch["caption"], "seed": 0}
    right = {style: _loss_fn(_full_loss, style=style) for style in ("plain", "helpers", "float64", "reordered sums")}
    wrong = {mistake: _loss_fn(_full_loss, mistake=mistake)
             for mistake in ("CE alone", "head's loss weight ignored", "unweighted", "no caption dropout",
                             "conditioned on the true token", "target against the true token",
                             "residual_scale missing", "z detached from the transformer", "a Python float")}
    return given, right, wrong


def build_12_7():
    """The capstone's setting: the shipped cpu HART, the same 8 prompts, the default knobs (cfg 3, seed 0)."""
    given = {"hart": _shipped(), "prompts": PROMPTS, "seed": 0}
    right = {style: _loop_fn(style=style) for style in LOOP_STYLES}
    wrong = {mistake: _loop_fn(mistake=mistake)
             for mistake in ("no guidance ramp", "HART's 8 head steps, not the model's", "phi at the last scale",
                             "residual_scale forgotten", "tokens from the global RNG",
                             "images left in [-1, 1]")}
    return given, right, wrong


BUILD_CASES = {name[len("build_"):].replace("_", "."): fn for name, fn in globals().items()
               if name.startswith("build_")}


def _as_case(build):
    """A build case as a plain case (given, its first right answer, its wrong answers), for the tests that
    read every exercise alike."""
    def case():
        given, right, wrong = build()
        return given, next(iter(right.values())), list(wrong.values())

    return case


CASES.update({key: _as_case(build) for key, build in BUILD_CASES.items()})



# --- the tests --------------------------------------------------------------------------------------------


def test_every_exercise_has_a_case_here():
    assert set(CASES) == set(EXERCISES)


BUILD_STEPS = ("05.1", "05.2", "05.3", "07.1", "07.2", "07.3", "08.1", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6",
               "12.7")


def test_every_build_step_has_a_build_case():
    assert set(BUILD_CASES) == set(BUILD_STEPS)
    assert all(EXERCISES[key].run is not None for key in BUILD_STEPS if key not in ("05.1", "05.2", "12.1", "12.2"))


@pytest.mark.parametrize("key", sorted(set(EXERCISES) - set(BUILD_CASES)))
def test_checker_passes_a_right_answer_and_fails_every_plausible_wrong_one(key, capsys):
    given, right, wrong = CASES[key]()
    check_answer(key, right, **given)
    assert wrong, "a case needs at least one wrong answer"
    for answer in wrong:
        with pytest.raises(CheckFailed):
            check_answer(key, answer, **given)
    printed = capsys.readouterr().out
    expected = EXERCISES[key].reference(**given)
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):  # a failure never prints the value
        for text in {f"{expected}", f"{expected:.3g}", f"{expected:.4f}", f"{expected:.2f}"}:
            assert text not in printed.split("✗", 1)[-1], f"a failing check printed the expected value {text}"


@pytest.mark.parametrize("key", sorted(BUILD_CASES))
def test_build_step_passes_every_right_way_to_write_it_and_fails_every_plausible_mistake(key, capsys):
    given, right, wrong = BUILD_CASES[key]()
    assert len(right) >= 3 and len(wrong) >= 3, "a build step needs three right ways and three mistakes"
    rejected, accepted = [], []
    for way, answer in right.items():
        try:
            check_answer(key, answer, **given)
        except CheckFailed as e:
            rejected.append(f"{way}: {e}")
    for mistake, answer in wrong.items():
        try:
            check_answer(key, answer, **given)
            accepted.append(mistake)
        except CheckFailed:
            pass
    assert not rejected, f"{key} rejects right answers: {rejected}"
    assert not accepted, f"{key} accepts plausible mistakes: {accepted}"
    failures = "\n".join(line for line in capsys.readouterr().out.splitlines() if line.startswith("✗"))
    expected = EXERCISES[key].reference(**given)
    for v in (expected.values() if isinstance(expected, dict) else [expected]):
        if isinstance(v, float):  # a loss's value: a failure says how far off, never the value
            for text in {t for t in (f"{v:.3g}", f"{v:.4f}", f"{v:.2f}") if len(t) >= 3}:  # "1" is in any text
                assert text not in failures, f"a failing check printed the expected value {text}"


@pytest.mark.parametrize("key", ["07.1", "07.2", "07.3"])
def test_the_head_checks_hold_on_a_random_smoke_size_head_too(key):
    """The notebooks check the head's pieces on the shipped, trained head; a random one (weights N(0, 0.1),
    every gate open) must tell the same right ways from the same mistakes."""
    head = _hart().head
    build = {"07.1": lambda: _head_mlp_case(head.state_dict(), SMOKE.head), "07.2": lambda: _head_loss_case(head),
             "07.3": lambda: _head_sampler_case(head)}[key]
    given, right, wrong = build()
    for answer in right.values():
        check_answer(key, answer, **given)
    for answer in wrong.values():
        with pytest.raises(CheckFailed):
            check_answer(key, answer, **given)


@pytest.mark.parametrize(("key", "mistake", "stage"), [
    ("08.1", "no guidance ramp", "'tokens 1x1'"),  # t_1 = cfg, not 0: the very first draw differs
    ("08.1", "ramp over K, not K - 1", "'tokens (?!1x1)"),  # t_1 = 0 is right: a later scale is the first wrong
    ("08.1", "HART's 8 head steps, not the model's", "'latent'"),  # every token right, the head's residual not
    ("12.7", "residual_scale forgotten", "'latent'"),
    ("12.7", "images left in [-1, 1]", "'image'"),  # every token and the latent right
])
def test_a_loop_check_names_the_first_wrong_stage(key, mistake, stage):
    given, _, wrong = BUILD_CASES[key]()
    with pytest.raises(CheckFailed, match=rf"\[{stage}"):
        check_answer(key, wrong[mistake], **given)


def test_a_build_step_wants_the_function_and_its_answer_in_the_right_form():
    hart = _shipped()
    with torch.no_grad():
        images = hart.generate(PROMPTS[:2], seed=0)
    with pytest.raises(CheckFailed, match="give your function"):  # what the loop returned, not the loop
        check_answer("08.1", images, hart=hart, prompts=PROMPTS[:2], seed=0)
    with pytest.raises(CheckFailed, match="wrong form"):  # the loop returns the images alone
        check_answer("08.1", lambda hart, prompts, **knobs: hart.generate(prompts, **knobs), hart=hart,
                     prompts=PROMPTS[:2], seed=0)
    batch = _val(4)
    with pytest.raises(CheckFailed, match="wrong form"):  # HART's loss without its logs
        check_answer("12.6", lambda m, x, c: m.loss(x, c)[0], model=hart, images=batch["image"],
                     captions=batch["caption"], seed=0)
    with pytest.raises(CheckFailed, match="named as the package"):  # a head whose parameters are named otherwise
        check_answer("07.1", nn.Linear(2, 2), state=hart.head.state_dict(), cfg=hart.head_cfg)


def test_failure_messages_say_how_far_off_not_what_was_expected(capsys):
    with pytest.raises(CheckFailed, match="not the expected value"):
        check_exact("L", 696, 680)
    with pytest.raises(CheckFailed, match="off by about 10%"):
        check_close("share", 0.99, 0.9)
    with pytest.raises(CheckFailed, match="1 of 3 entries differ, the first at index"):
        check_exact("tokens", [1, 2, 4], [1, 2, 3])
    assert "680" not in capsys.readouterr().out


def test_a_dict_answer_must_have_every_key():
    with pytest.raises(CheckFailed, match="missing"):
        check_answer("05.6", {"without": 695}, scales=SCALES_64, text_len=16)
    with pytest.raises(CheckFailed, match="should be a dict"):
        check_answer("05.6", [695, 1390], scales=SCALES_64, text_len=16)


def _exercises_in(path):
    """(solution cell source, the checker cells that follow it) for every exercise of a notebook."""
    cells, out = _cells(path), []
    for i, cell in enumerate(cells):
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            following = []
            for nxt in cells[i + 1:]:
                if nxt["cell_type"] != "code" or SOLUTION_TAG in nxt.get("metadata", {}).get("tags", []):
                    break
                following.append(_source(nxt))
            out.append((_source(cell), following))
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_in_a_notebook_is_checked_by_check_answer_with_its_own_key(path):
    prefix = path.name[:2]
    exercises = _exercises_in(path)
    assert exercises
    keys = []
    for solution, checkers in exercises:
        found = [k for s in checkers for k in CHECK_CALL.findall(s)]
        assert found, f"a solution cell in {path.name} has no check_answer after it:\n{solution[:200]}"
        keys += found
        for s in checkers:  # no expected value in a checker cell: the comparisons live in hart_mini.course.exercises
            by_hand = re.search(r"\bcheck_(close|exact|true)\(", s)
            assert not by_hand, f"{path.name}: a checker cell compares by hand:\n{s}"
    assert all(k.startswith(prefix + ".") for k in keys), keys
    assert set(keys) == {k for k in EXERCISES if k.startswith(prefix + ".")}
    assert len(set(keys)) == len(exercises), "one exercise key per solution cell"


def _solution_lines(source):
    if "### BEGIN SOLUTION" in source:
        source = source.split("### BEGIN SOLUTION", 1)[1].split("### END SOLUTION", 1)[0]
    return [line.strip() for line in source.splitlines() if len(line.strip()) > 12 and not line.strip().startswith("#")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_notebook_holds_no_solution_code_no_outputs_and_no_expected_values(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    student = student_notebook(nb)
    code = [_source(c) for c in student["cells"] if c["cell_type"] == "code"]
    text = "\n".join(code)
    given = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "code"
                      and SOLUTION_TAG not in c.get("metadata", {}).get("tags", []))
    for solution, _ in _exercises_in(path):
        for line in _solution_lines(solution):
            if line not in given:  # a line the notebook also uses outside its solutions gives nothing away
                assert line not in text, f"{path.name}: the student version still holds solution code: {line!r}"
    for cell in student["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    # the exercise cells (stubs and checkers) never spell out an expected whole number
    exercise_cells = "\n".join(c for c in code if "check_answer(" in c or "NotImplementedError" in c)
    for key in (k for k in EXERCISES if k.startswith(path.name[:2] + ".")):
        given, _, _ = CASES[key]()
        expected = EXERCISES[key].reference(**given)
        values = list(expected.values()) if isinstance(expected, dict) else expected
        values = values if isinstance(values, list) else [values]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 100:
                spelled = re.search(rf"(?<![\w.]){v}(?![\d.]|\s*px)", exercise_cells)  # not "1024 px", not x_1024
                assert not spelled, f"{path.name}: {v}, an answer of {key}, is written in an exercise cell"


def test_notebook_exercises_match_the_course_answer_key():
    keys = {k for path in NOTEBOOKS for _, checkers in _exercises_in(path)
            for s in checkers for k in CHECK_CALL.findall(s)}
    assert keys == set(EXERCISES)



def test_a_loop_without_head_guidance_fails_against_a_head_that_reads_its_condition():
    # Against a head that reads nothing (the cpu head shipped until 2026-12-07) guiding changes nothing, both
    # halves drawing alike, so a check cannot see that mistake; against HART's head, which reads z, it must fail.
    from hart_mini import pretrained

    hart = pretrained.load("hart", "cpu")  # its own copy: _shipped() is shared
    hart.head_cfg = dataclasses.replace(hart.head_cfg, condition="hidden+token")
    torch.manual_seed(0)
    hart.reset_head()
    with torch.no_grad():
        for p in hart.head.parameters():
            p.normal_(0, 0.1)
    given = {"hart": hart, "prompts": PROMPTS[:2], "cfg_scale": 3.0, "seed": 0}
    check_answer("08.1", _loop_fn(style="plain"), **given)
    with pytest.raises(CheckFailed, match="'latent'"):
        check_answer("08.1", _loop_fn(mistake="head without guidance"), **given)


def test_the_capstone_loss_check_works_on_a_hart_whose_head_denoises_whole_maps():
    """A HART with a map head (HeadConfig.network 'map'): the loss a student writes is HART's, per token, so the
    check gives its copy HART's MLP head; every right way still passes and every mistake still fails."""
    given, right, wrong = build_12_6()
    model = copy.deepcopy(given["model"])
    model.head_cfg = dataclasses.replace(model.head_cfg, network="map", condition="hidden+token",
                                         true_token_share=0.5, guided=False)
    model.reset_head()
    assert type(model.head).__name__ == "MapHead"
    given = {**given, "model": model}
    for answer in right.values():
        check_answer("12.6", answer, **given)
    for answer in wrong.values():
        with pytest.raises(CheckFailed):
            check_answer("12.6", answer, **given)
    assert type(model.head).__name__ == "MapHead", "the check must copy the model, not change it"
