"""Diagnostics: which scales of a HART read the caption, and which scales decide whether a prompt is met.

Two measurements, each a function and a part of `python -m hart_mini diagnose`:

caption_sensitivity   teacher-forced cross-entropy of each scale's true tokens, with the true caption and
                      with a caption whose position (or relation) is flipped. A scale that reads the
                      words that place objects predicts its tokens worse under the flipped caption:

                          sensitivity_k = mean CE_k(flipped caption) - mean CE_k(true caption)   (nats/token)

                      ~0 at a coarse scale means that scale ignores where the caption puts things.
forced_scales         for k = 0..K, give the model the true tokens of scales 1..k (from the held-out image
                      the caption describes), let it draw scales k+1..K, and judge the result. The k at
                      which prompt accuracy jumps is the scale the model gets wrong on its own.

Flips: a position is reflected through the image centre (top left <-> bottom right, left <-> right, top
<-> bottom; "center" captions are skipped); a relation is reversed (left of <-> right of, above <-> below).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hart_mini.model.data import COLOUR_NAMES, POSITIONS, RELATIONS, SHAPES, SIZES, TEXTURES, ToyShapes, parse_caption
from hart_mini.model.text import text_condition

OPPOSITE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def mirrored_position(position: int) -> int:
    """The cell reflected through the centre of the 3x3 grid: (row, col) -> (2 - row, 2 - col)."""
    row, col = divmod(position, 3)
    return (2 - row) * 3 + (2 - col)


def flip_caption(caption: str) -> tuple[str, str] | None:
    """(flipped caption, 'position' or 'relation'), or None when the caption has nothing to flip."""
    parsed = parse_caption(caption)
    if parsed["position"] is not None:
        p = parsed["position"]
        if mirrored_position(p) == p:
            return None
        head = caption[: caption.rindex(" at the ")]
        return f"{head} at the {POSITIONS[mirrored_position(p)]}", "position"
    phrase = RELATIONS[parsed["relation"]]
    first, second = caption.split(f" {phrase} ", 1)
    return f"{first} {OPPOSITE_RELATION[phrase]} {second}", "relation"


@torch.no_grad()
def scale_cross_entropy(model, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Teacher-forced cross-entropy of each image's true tokens, averaged within each scale: (B, K)."""
    model.eval()
    indices, inputs, _ = model._targets(images)
    ids, mask = model.encode_text(captions)
    drop = torch.zeros(len(captions), dtype=torch.bool, device=ids.device)
    logits, _ = model.transformer(ids, mask, inputs, drop, prev=model.previous_codes(indices))  # (B, L, V)
    targets = torch.cat([i.flatten(1) for i in indices], dim=1)  # (B, L)
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, L)
    starts = model.transformer.starts
    return torch.stack([ce[:, starts[k]:starts[k + 1]].mean(1) for k in range(model.K)], dim=1)


@torch.no_grad()
def denoising_error(model, images: torch.Tensor, captions: list[str], draws: int = 8, seed: int = 0) -> torch.Tensor:
    """The diffusion baseline's counterpart of scale_cross_entropy: each image's denoising error, (B, 1).

        error = mean over j and latent elements of (v_model(x_t, t_j, caption) - v)^2,  x_t = noise(x0, eps_j, t_j)

    at `draws` noise levels t_j spread evenly over the schedule. eps_j comes from a generator seeded with
    `seed`, so two calls on the same images differ only by their captions (common random numbers): the
    difference is the caption's effect, not sampling noise. The training loss is this error at random t; a
    lower error under a caption means the model finds the image likelier under it (the diffusion bound is a
    weighted sum of such errors over t)."""
    model.eval()
    x0 = model.tokenizer.encode(images) / model.latent_scale  # (B, C, h, w)
    ids, mask = model.encode_text(captions)
    drop = torch.zeros(len(captions), dtype=torch.bool, device=ids.device)
    prefix = text_condition(model.text, model.text_proj, ids, mask, drop)
    generator = torch.Generator().manual_seed(seed)
    error = torch.zeros(len(captions), device=x0.device)
    for j in range(draws):
        t = torch.full((len(captions),), (2 * j + 1) * model.schedule.steps // (2 * draws), device=x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        target = model.schedule.target(x0, eps, t, model.diffusion.prediction)
        v = model.denoise(model.schedule.noise(x0, t, eps), t, prefix)
        error += (v.float() - target.float()).pow(2).mean((1, 2, 3)) / draws
    return error[:, None]


def paired_cross_entropy(model, data: ToyShapes, rows: list[tuple[int, str]], batch_size: int, desc: str,
                         measure=scale_cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows (image index, other caption): each image's per-scale CE (scale_cross_entropy) under its own
    caption and under the other one, (N, K) each, on the CPU; or what `measure` gives instead (the diffusion
    baseline's denoising_error, (N, 1) each)."""
    device = next(model.parameters()).device
    true_ce, other_ce = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        chunk = rows[start:start + batch_size]
        batch = data.batch([i for i, _ in chunk])
        images = batch["image"].to(device)
        true_ce.append(measure(model, images, batch["caption"]).cpu())
        other_ce.append(measure(model, images, [c for _, c in chunk]).cpu())
    return torch.cat(true_ce), torch.cat(other_ce)


def caption_sensitivity(model, data_config, n: int = 500, batch_size: int = 100) -> dict:
    """Per scale, how much the true tokens' CE rises when the caption's position / relation is flipped.

    Uses the first held-out (test split) images whose caption can be flipped, n of each kind at most.
    Returns {'scales', 'position': {'n', 'ce_true', 'ce_flipped', 'sensitivity'}, 'relation': {...}}.
    """
    if n < 1:
        raise ValueError(f"n={n} is invalid: expected at least 1 caption of each kind")
    data = ToyShapes(data_config, "test", size=max(20 * n, 100))
    picked = {"position": [], "relation": []}  # (index, flipped caption)
    for i in range(len(data)):
        flipped = flip_caption(data.scene(i).caption)
        if flipped is not None and len(picked[flipped[1]]) < n:
            picked[flipped[1]].append((i, flipped[0]))
        if all(len(v) == n for v in picked.values()):
            break
    out = {"scales": list(model.scales)}
    for kind, rows in picked.items():
        t, f = paired_cross_entropy(model, data, rows, batch_size, f"sensitivity ({kind})")  # (N, K) each
        diff = f - t
        out[kind] = {"n": len(rows), "ce_true": _rounded(t.mean(0)), "ce_flipped": _rounded(f.mean(0)),
                     "sensitivity": _rounded(diff.mean(0)),
                     "sensitivity_se": _rounded(diff.std(0) / max(len(rows), 1) ** 0.5)}
    return out


def forced_scales(model, judge, data_config, n: int = 500, cfg_scale: float = 3.0, seed: int = 0,
                  batch_size: int = 100, ks: list[int] | None = None) -> list[dict]:
    """Prompt accuracy when the true tokens of scales 1..k are given and the model draws the rest.

    One row per k in ks (default 0..K): {'k', 'forced_tokens', 'n', 'prompt_accuracy', 'acc_*', 'objects_two'}.
    k = 0 is plain sampling; k = K decodes the true discrete tokens with the head's residual on top.
    objects_two: per-object accuracy in the two-object images drawn with two objects (judge.object_accuracy),
    objects_one the same for one-object images: which scale loses a two-object scene's shapes.
    """
    from hart_mini.measure.evaluate import held_out
    from hart_mini.measure.judge import object_accuracy, prompt_accuracy

    if n < 1:
        raise ValueError(f"n={n} is invalid: expected at least 1 prompt")
    ks = list(range(model.K + 1)) if ks is None else ks
    device = next(model.parameters()).device
    real = held_out(data_config, n)
    rows = []
    for k in tqdm(ks, desc="forced scales", leave=False):
        fakes = []
        for start in range(0, n, batch_size):
            images = real["image"][start:start + batch_size].to(device)
            truth = model.tokenizer.tokenize(images).indices
            out = model.sample_latent(real["caption"][start:start + batch_size], cfg_scale=cfg_scale,
                                      seed=seed + start, forced=truth[:k])
            fakes.append(model.tokenizer.decode(out["latent"], out["path"]).clamp(-1, 1).cpu())
        fakes = torch.cat(fakes)  # (n, 3, H, W)
        row = {"k": k, "forced_tokens": sum(p * p for p in model.scales[:k]),
               **{key: round(v, 4) for key, v in prompt_accuracy(judge, fakes, real["caption"]).items()}}
        for objects, name in ((1, "objects_one"), (2, "objects_two")):
            row[name] = {key: round(v, 4) for key, v in object_accuracy(judge, fakes, real["caption"], objects).items()}
        rows.append(row)
    return rows


# --- does the model read the caption's words *in order*? (`python -m hart_mini diagnose text`) ---------

TEXT_EDITS = ("relation mirrored", "colours swapped", "shapes swapped", "colour changed")


def caption_of(parsed: dict) -> str:
    """The caption the grammar writes for a parse_caption result (its inverse)."""
    def words(shape: int, colour: int, size: int, texture: int) -> str:
        textured = f"{TEXTURES[texture]} " if texture else ""  # 'plain' is left out of captions
        return f"a {SIZES[size]} {COLOUR_NAMES[colour]} {textured}{SHAPES[shape]}"

    first = words(*parsed["objects"][0])
    if parsed["position"] is not None:
        return f"{first} at the {POSITIONS[parsed['position']]}"
    return f"{first} {RELATIONS[parsed['relation']]} {words(*parsed['objects'][1])}"


def edit_caption(caption: str, edit: str) -> str | None:
    """A two-object caption with one thing changed, or None when the edit changes nothing (both objects share
    the swapped attribute) or the caption has one object. Only word order tells the first three apart from
    the truth: the same words stand in another order. The last changes a word (a control)."""
    parsed = parse_caption(caption)
    if len(parsed["objects"]) != 2:
        return None
    a, b = parsed["objects"]
    if edit == "relation mirrored":
        return flip_caption(caption)[0]
    field = {"colours swapped": 1, "shapes swapped": 0}.get(edit)
    if field is not None:
        if a[field] == b[field]:
            return None
        a2, b2 = list(a), list(b)
        a2[field], b2[field] = b[field], a[field]
        return caption_of({**parsed, "objects": [tuple(a2), tuple(b2)]})
    if edit == "colour changed":  # the first object's colour becomes one that neither object has
        other = next(c for c in range(len(COLOUR_NAMES)) if c not in (a[1], b[1]))
        return caption_of({**parsed, "objects": [(a[0], other, a[2], a[3]), b]})
    raise ValueError(f"edit={edit!r} is invalid: expected one of {TEXT_EDITS}")


def text_probe(model, data_config, n: int = 400, batch_size: int = 100) -> dict:
    """The likelihood test: for n held-out two-object images, the true tokens' cross-entropy under the true
    caption and under each edit of it. Per edit: the CE rise per scale (nats/token, with its SE), the rise
    over all tokens, and the share of images whose true caption explains their tokens better (lower CE over
    all tokens; chance 0.5 for a model blind to the edit), with its binomial SE. For the diffusion baseline
    (a LatentDiffusion) the same, with its denoising error (denoising_error) in place of the CE: one column.

    A word-order-blind caption encoder scores 'colours swapped', 'shapes swapped' and 'relation mirrored'
    at chance: their words are the true caption's words in another order."""
    from hart_mini.measure.evaluate import binomial_se

    if n < 1:
        raise ValueError(f"n={n} is invalid: expected at least 1 two-object caption")
    data = ToyShapes(data_config, "test", size=max(10 * n, 100))
    rows = {edit: [] for edit in TEXT_EDITS}  # (index, edited caption)
    for i in range(len(data)):
        caption = data.scene(i).caption
        for edit in TEXT_EDITS:
            edited = edit_caption(caption, edit)
            if edited is not None and len(rows[edit]) < n:
                rows[edit].append((i, edited))
        if all(len(r) == n for r in rows.values()):
            break
    if hasattr(model, "scales"):  # HART: CE per scale, the scales weighted by their tokens
        measure, sizes = scale_cross_entropy, torch.tensor([p * p for p in model.scales], dtype=torch.float64)
        out = {"scales": list(model.scales), "unit": "CE rise, nats/token", "edits": {}}
    else:  # the diffusion baseline: one column, its denoising error
        measure, sizes = denoising_error, torch.ones(1, dtype=torch.float64)
        out = {"columns": ["denoising"], "unit": "denoising error rise, per latent element", "edits": {}}
    for edit, picked in rows.items():
        pair = paired_cross_entropy(model, data, picked, batch_size, f"text probe ({edit})", measure)
        t, e = (x.double() for x in pair)
        diff = e - t
        overall = (diff * sizes).sum(1) / sizes.sum()  # (N,): the rise over all image tokens
        wins = float((overall > 0).double().mean())
        out["edits"][edit] = {"n": len(picked), "sensitivity": _rounded(diff.mean(0)),
                              "sensitivity_se": _rounded(diff.std(0) / len(picked) ** 0.5),
                              "overall": round(float(overall.mean()), 5),
                              "true_caption_wins": round(wins, 4),
                              "true_caption_wins_se": round(binomial_se(wins, len(picked)), 4)}
    return out


def format_text_probe(result: dict) -> str:
    """The probe as a table for people: one line per edit, the CE rise per scale, and who wins."""
    columns = result.get("columns") or [f"{p}x{p}" for p in result["scales"]]
    lines = [f"{'edit':<19}{'n':>5}{''.join(f'{c:>11}' for c in columns)}{'all':>12}   true caption wins",
             f"{'':<24}({result.get('unit', 'CE rise, nats/token')})"]
    for edit, r in result["edits"].items():
        per = "".join(f"{v:>11.4f}" for v in r["sensitivity"])
        lines.append(f"{edit:<19}{r['n']:>5}{per}{r['overall']:>12.5f}   {r['true_caption_wins']:.3f} "
                     f"± {r['true_caption_wins_se']:.3f}")
    return "\n".join(lines)


def _rounded(x: torch.Tensor) -> list[float]:
    return [round(float(v), 4) for v in x]


def figure(result: dict):
    """Two panels: sensitivity per scale (position and relation), and prompt accuracy against forced scales."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    scales = result["sensitivity"]["scales"]
    x = torch.arange(len(scales)).float()
    for offset, kind in ((-0.2, "position"), (0.2, "relation")):
        part = result["sensitivity"][kind]
        left.bar(x + offset, part["sensitivity"], width=0.4, yerr=part["sensitivity_se"], label=f"{kind} flipped")
    left.set_xticks(x.tolist(), [f"{p}x{p}" for p in scales])
    left.set_xlabel("scale")
    left.set_ylabel("CE(flipped) - CE(true), nats/token")
    left.set_title("which scales read where the caption puts things")
    left.axhline(0, color="k", lw=0.5)
    left.legend()
    rows = result["forced"]
    ks = [r["k"] for r in rows]
    for key, label in (("prompt_accuracy", "prompt accuracy"), ("acc_position", "position"),
                       ("acc_relation", "relation"), ("acc_shape", "shape")):
        right.plot(ks, [r.get(key, float("nan")) for r in rows], marker="o", label=label)
    if "objects_two" in rows[0]:  # files written before 2026-12-06 lack it
        right.plot(ks, [r["objects_two"]["shape"] for r in rows], marker="s", ls="--",
                   label="shape per object, two-object images")
    right.set_xticks(ks, ["none"] + [f"1..{scales[k - 1]}x{scales[k - 1]}" for k in ks[1:]], rotation=30)
    right.set_xlabel("true tokens given for scales")
    right.set_ylim(0, 1.02)
    right.set_title("force the true coarse scales, sample the rest")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
