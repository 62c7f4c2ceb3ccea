"""Every exercise checker is a real test: it passes a right answer, fails a plausible wrong one, and gives
nothing away in the student notebooks.

For each exercise in `hart_mini.course.exercises`, CASES builds what the notebook gives it (tiny, untrained
`smoke` models where a model is needed), a right answer written the way a student would write it, and
plausible wrong answers (an off-by-one, a missing factor, the wrong slot, a sign-only guess).
"""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hart_mini.config import SCALES_64, get_preset
from hart_mini.course.check import CheckFailed, check_answer, check_close, check_exact
from hart_mini.course.exercises import EXERCISES
from hart_mini.course.student import SOLUTION_TAG, student_notebook
from hart_mini.model.blocks import Attention, apply_rope
from hart_mini.model.data import RELATIONS, TEXTURES, ToyShapes
from hart_mini.model.diffusion import CosineSchedule
from hart_mini.model.hart import HART
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SMOKE = get_preset("smoke")
CHECK_CALL = re.compile(r"check_answer\(\s*\"(\d\d\.\d)\"")


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


# --- one case per exercise: (given, right answer, [wrong answers]) ----------------------------------------


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


def _levels_and_padding():
    """17 positions: 4 text tokens (then scales 2x2, 3x3); the first caption has 1 pad, the second 2."""
    level = torch.tensor([0] * 4 + [1] * 4 + [2] * 9)
    key_valid = torch.ones(2, 17, dtype=torch.bool)
    key_valid[0, :1], key_valid[1, :2] = False, False
    return level, key_valid


def _mask(level, key_valid, rule=lambda q, k: q >= k, padding=True):
    allowed = rule(level[None, :, None], level[None, None, :])  # (1, N, N)
    return allowed & key_valid[:, None, :] if padding else allowed.expand(len(key_valid), -1, -1)


def case_05_1():
    level, key_valid = _levels_and_padding()
    given = {"level": level, "key_valid": key_valid}
    return given, _mask(level, key_valid), [_mask(level, key_valid, lambda q, k: q <= k),
                                           _mask(level, key_valid, padding=False),
                                           _mask(level, key_valid, lambda q, k: q > k)]


def _by_hand_attention(module, x, attend, rope=None, cache=None, scale=True, layout="qkv-heads"):
    """Multi-head attention written out; the keyword arguments make the plausible mistakes."""
    B, N, D = x.shape
    H = module.num_heads
    d = D // H
    qkv = module.qkv(x)
    if layout == "qkv-heads":
        q, k, v = qkv.view(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # (B, H, N, d) each
    else:  # heads first: splits the wrong columns
        q, k, v = qkv.view(B, N, H, 3, d).permute(3, 0, 2, 1, 4)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    if cache is not None:
        k, v = cache.extend(k, v)
    scores = q @ k.transpose(-2, -1) / (math.sqrt(d) if scale else 1.0)
    out = scores.masked_fill(~attend, float("-inf")).softmax(-1) @ v
    return module.proj(out.transpose(1, 2).reshape(B, N, D))


def case_05_2():
    level, key_valid = _levels_and_padding()
    torch.manual_seed(0)
    module, x = Attention(16, 2), torch.randn(2, 17, 16)
    given = {"state": module.state_dict(), "num_heads": 2, "x": x, "level": level, "key_valid": key_valid}
    with torch.no_grad():
        right = _by_hand_attention(module, x, _mask(level, key_valid)[:, None])
        wrong = [_by_hand_attention(module, x, _mask(level, key_valid)[:, None], scale=False),
                 _by_hand_attention(module, x, _mask(level, key_valid)[:, None], layout="heads-qkv"),
                 _by_hand_attention(module, x, _mask(level, key_valid, lambda q, k: q <= k)[:, None]),
                 _by_hand_attention(module, x, _mask(level, key_valid, padding=False)[:, None])]
    return given, right, wrong


def _gates_open(model):
    with torch.no_grad():  # AdaLN-Zero starts every block as the identity: open the gates and the head
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("head."):
                p.normal_(0, 0.1)
    return model.eval()


def _by_hand_ce(model, images, captions, weighted=True, cumulative=True, dropout=True, with_logits=False):
    """The teacher-forced next-scale cross-entropy written out; the keyword arguments make the mistakes."""
    q, scales = model.tokenizer.quantizer, model.scales
    with torch.no_grad():
        tokens = model.tokenizer.tokenize(images)
        f_hat, inputs = torch.zeros_like(tokens.f), []
        for k in range(len(scales) - 1):
            part = q.contribution(tokens.indices[k], k)
            f_hat = f_hat + part if cumulative else part
            inputs.append(F.interpolate(f_hat, size=(scales[k + 1],) * 2, mode="area").flatten(2).transpose(1, 2))
    ids, mask = model.encode_text(captions)
    drop = torch.rand(len(captions)) < model.cfg.cond_dropout
    logits, h = model.transformer(ids, mask, torch.cat(inputs, 1), drop if dropout else torch.zeros_like(drop))
    ce = F.cross_entropy(logits.transpose(1, 2), tokens.sequence, reduction="none")  # (B, L)
    sizes = torch.cat([torch.full((p * p,), float(p * p)) for p in scales])
    weights = sizes.pow(-model.cfg.scale_balance) if weighted else torch.ones_like(sizes)
    ce = (ce * weights / weights.mean()).mean()
    return (ce, logits, h, tokens, f_hat) if with_logits else ce


def _loss_model(mode="off"):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMOKE.transformer, scale_balance=0.5, cond_dropout=0.5)  # weights and drops matter
    model = HART(cfg, _tokenizer(), CaptionTokenizer.toyshapes(), dataclasses.replace(SMOKE.head, mode=mode))
    model.measure_residual_scale(_images(8, "val"))
    return _gates_open(model)


def case_05_3():
    model, batch = _loss_model(), ToyShapes(SMOKE.data, split="val").batch(range(8))
    given = {"model": model, "images": batch["image"], "captions": batch["caption"], "seed": 0}

    def ce(**mistake):
        torch.manual_seed(0)
        with torch.no_grad():
            return float(_by_hand_ce(model, batch["image"], batch["caption"], **mistake))

    return given, ce(), [ce(weighted=False), ce(cumulative=False), ce(dropout=False)]


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


def case_07_1():
    torch.manual_seed(0)
    full = torch.randn(20, 8, 4, 4) * torch.linspace(0.5, 2, 8)[None, :, None, None]
    residual = 0.3 * torch.randn(20, 8, 4, 4)
    per_channel = lambda x: x.transpose(0, 1).flatten(1).var(1)
    right = per_channel(residual) / per_channel(full)
    overall = (residual.var() / full.var()).expand(8)
    stds = residual.transpose(0, 1).flatten(1).std(1) / full.transpose(0, 1).flatten(1).std(1)
    return {"residual": residual, "full": full}, right, [overall, stds]


def case_07_2():
    hart = _hart()
    h = torch.randn(1, 10, SMOKE.transformer.width)
    idx = torch.randint(SMOKE.tokenizer.codebook_size, (1, 10))
    with torch.no_grad():
        w_e = hart.transformer.word_embed(hart.tokenizer.quantizer.codebook(idx))
        right, no_norm, h_only = hart.cond_norm(h + w_e), h + w_e, hart.cond_norm(h)
    return {"hart": hart, "h": h, "idx": idx}, right, [no_norm, h_only]


def case_07_3():
    return ({"sampling_steps": 8, "last_scales": (8, 64)}, [8 * 2 * 64, 8 * 2 * 64 * 64],
            [[8 * 64, 8 * 64 * 64], [8 * 2 * 8, 8 * 2 * 64]])


@torch.no_grad()
def _by_hand_generate(hart, prompts, cfg_scale, top_k, top_p, seed, ramp=True, head_guidance=True,
                      continuous_last=True, filtered=True):
    """The sampling loop written out; the keyword arguments make the plausible mistakes."""
    from hart_mini.model.diffusion import sample as diffusion_sample
    from hart_mini.model.hart import filter_logits, map_to_tokens, tokens_to_map

    q, tf, K, B = hart.tokenizer.quantizer, hart.transformer, hart.K, len(prompts)
    g = torch.Generator().manual_seed(seed)
    ids, mask = hart.encode_text(prompts)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    drop = torch.arange(2 * B) >= B
    logits, h, cache, cond = tf.start(ids, mask, drop)
    C = hart.tokenizer.cfg.latent_channels
    f_hat = torch.zeros(B, C, hart.scales[-1], hart.scales[-1])
    for k, pn in enumerate(hart.scales):
        if k > 0:
            x = map_to_tokens(q.next_input(f_hat, k - 1))
            logits, h = tf.step(torch.cat([x, x]), k, cache, cond)
        t = cfg_scale * k / (K - 1) if ramp else cfg_scale
        c, u = logits.chunk(2)
        guided = filter_logits((1 + t) * c - t * u, top_k, top_p) if filtered else (1 + t) * c - t * u
        r = torch.multinomial(guided.softmax(-1).flatten(0, 1), 1, generator=g).view(B, pn * pn)
        if k < K - 1:
            f_hat = f_hat + q.contribution(r.view(B, pn, pn), k)
    e = q.codebook(r)
    z = hart.cond_norm(h + tf.word_embed(q.codebook(torch.cat([r, r])))).flatten(0, 1)

    def head(x, t_):
        if not head_guidance:
            return hart.head(x, t_, z[: len(x)])
        c, u = hart.head(torch.cat([x, x]), torch.cat([t_, t_]), z).chunk(2)
        return (1 + t) * c - t * u

    d = diffusion_sample(head, (B * pn * pn, C), hart.schedule, hart.head_cfg.sampling_steps,
                         hart.head_cfg.prediction, hart.head_cfg.sampler, g)
    d = d.view(B, pn * pn, C) * hart.residual_scale
    if continuous_last:  # f_hat_{<K} + (e(r_K) + d)
        latent = f_hat + tokens_to_map(e + d, pn)
    else:  # (f_hat_{<K} + e(r_K)) + d: the same sum, rounded differently
        latent = (f_hat + tokens_to_map(e, pn)) + tokens_to_map(d, pn)
    return hart.tokenizer.decode(latent, "continuous").clamp(-1, 1).add(1).div(2)


def _sampling_case():
    hart, prompts = _hart(), ["a large red striped circle at the top left", "a small blue square at the center"]
    knobs = {"cfg_scale": 3.0, "top_k": 20, "top_p": 0.9, "seed": 1}
    draw = lambda **mistake: _by_hand_generate(hart, prompts, **knobs, **mistake)
    return ({"hart": hart, "prompts": prompts, **knobs}, draw(),
            [draw(ramp=False), draw(head_guidance=False), draw(continuous_last=False), draw(filtered=False)])


def case_08_1():
    return _sampling_case()


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


def case_12_1():
    tokenizer = _tokenizer()
    q = tokenizer.quantizer
    with torch.no_grad():
        f = tokenizer.encode(_images(3))

    def quantize(residual=True, phi=True):
        cb, rest, f_hat, indices = q.codebook.weight, f, torch.zeros_like(f), []
        for k, pn in enumerate(q.scales):
            target = F.interpolate(rest if residual else f, size=(pn, pn), mode="area")
            B, C = target.shape[:2]
            v = target.permute(0, 2, 3, 1).reshape(-1, C)
            idx = torch.cdist(v, cb).argmin(1).view(B, pn, pn)
            e = cb[idx].permute(0, 3, 1, 2)
            part = q.lift(e, k) if phi else F.interpolate(e, size=f.shape[-2:], mode="bicubic")
            f_hat, rest = f_hat + part, rest - part
            indices.append(idx)
        return indices, f_hat

    with torch.no_grad():
        return {"f": f, "quantizer": q}, quantize(), [quantize(residual=False), quantize(phi=False)]


def case_12_2():
    from hart_mini.model.blocks import LayerCache, rope_angles

    level, key_valid = _levels_and_padding()
    torch.manual_seed(0)
    module, x = Attention(16, 2), torch.randn(2, 17, 16)
    attend = _mask(level, key_valid)[:, None]
    rope = rope_angles(torch.rand(17, 2) * 8, 8)
    given = {"state": module.state_dict(), "num_heads": 2, "x": x, "attend": attend, "rope": rope, "split": 8}

    def answer(rope_on=True, cached=True):
        r = rope if rope_on else None
        cache = LayerCache() if cached else None
        first = _by_hand_attention(module, x[:, :8], attend[..., :8, :8], r if r is None else r[:8], cache)
        then = _by_hand_attention(module, x[:, 8:], attend[..., 8:, :] if cached else attend[..., 8:, 8:],
                                  r if r is None else r[8:], cache)
        return {"one pass": _by_hand_attention(module, x, attend, r), "cached": torch.cat([first, then], 1)}

    with torch.no_grad():
        return given, answer(), [answer(rope_on=False), answer(cached=False)]


def _by_hand_hart_loss(model, images, captions, sampled=True, against="chosen"):
    from hart_mini.model.diffusion import diffusion_loss
    from hart_mini.model.hart import map_to_tokens, sample

    q = model.tokenizer.quantizer
    ce, logits, h, tokens, f_hat_before_last = _by_hand_ce(model, images, captions, with_logits=True)
    last = model.transformer.starts[-2]
    truth = tokens.indices[-1].flatten(1)
    r = sample(logits[:, last:].detach(), 0, 1.0, None) if sampled else truth
    z = model.cond_norm(h[:, last:] + model.transformer.word_embed(q.codebook(r)))
    rest = map_to_tokens(tokens.f - f_hat_before_last)  # what scales 1..K-1 left
    target = rest - q.codebook(r if against == "chosen" else truth)
    diff = diffusion_loss(model.head, (target / model.residual_scale).flatten(0, 1), z.flatten(0, 1),
                          model.schedule, model.head_cfg.prediction, model.head_cfg.batch_mul)
    return {"ce": float(ce), "diff": float(diff)}


def case_12_3():
    model, batch = _loss_model("last"), ToyShapes(SMOKE.data, split="val").batch(range(8))
    given = {"model": model, "images": batch["image"], "captions": batch["caption"], "seed": 0}

    def loss(**mistake):
        torch.manual_seed(0)
        with torch.no_grad():
            return _by_hand_hart_loss(model, batch["image"], batch["caption"], **mistake)

    return given, loss(), [loss(sampled=False), loss(against="truth")]


def case_12_4():
    return _sampling_case()


def _two_models():
    from hart_mini import pretrained

    return {"yours": _hart(), "shipped": pretrained.load("hart", "cpu")}


def case_12_5():
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


def case_12_6():
    models = _two_models()
    batch = ToyShapes(get_preset("cpu").data, split="test").batch(range(8))

    def ce(model, seed=0, split_batch=batch):
        torch.manual_seed(seed)
        with torch.no_grad():
            return float(_by_hand_ce(model, split_batch["image"], split_batch["caption"]))

    right = {name: ce(m) for name, m in models.items()}
    train = ToyShapes(get_preset("cpu").data, split="train").batch(range(8))
    return ({"models": models, "images": batch["image"], "captions": batch["caption"], "seed": 0}, right,
            [{name: ce(m, split_batch=train) for name, m in models.items()},
             {"yours": right["shipped"], "shipped": right["yours"]}])


CASES = {name[len("case_"):].replace("_", "."): fn for name, fn in globals().items() if name.startswith("case_")}


# --- the tests --------------------------------------------------------------------------------------------


def test_every_exercise_has_a_case_here():
    assert set(CASES) == set(EXERCISES)


@pytest.mark.parametrize("key", sorted(EXERCISES))
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

