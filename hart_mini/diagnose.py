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

from hart_mini.model.data import POSITIONS, RELATIONS, ToyShapes, parse_caption

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
    logits, _ = model.transformer(ids, mask, inputs, drop)  # (B, L, V)
    targets = torch.cat([i.flatten(1) for i in indices], dim=1)  # (B, L)
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, L)
    starts = model.transformer.starts
    return torch.stack([ce[:, starts[k]:starts[k + 1]].mean(1) for k in range(model.K)], dim=1)


def caption_sensitivity(model, data_config, n: int = 500, batch_size: int = 100) -> dict:
    """Per scale, how much the true tokens' CE rises when the caption's position / relation is flipped.

    Uses the first held-out (test split) images whose caption can be flipped, n of each kind at most.
    Returns {'scales', 'position': {'n', 'ce_true', 'ce_flipped', 'sensitivity'}, 'relation': {...}}.
    """
    if n < 1:
        raise ValueError(f"n={n} is invalid: expected at least 1 caption of each kind")
    data = ToyShapes(data_config, "test", size=max(20 * n, 100))
    device = next(model.parameters()).device
    picked = {"position": [], "relation": []}  # (index, flipped caption)
    for i in range(len(data)):
        flipped = flip_caption(data.scene(i).caption)
        if flipped is not None and len(picked[flipped[1]]) < n:
            picked[flipped[1]].append((i, flipped[0]))
        if all(len(v) == n for v in picked.values()):
            break
    out = {"scales": list(model.scales)}
    for kind, rows in picked.items():
        true_ce, flipped_ce = [], []
        for start in tqdm(range(0, len(rows), batch_size), desc=f"sensitivity ({kind})", leave=False):
            chunk = rows[start:start + batch_size]
            batch = data.batch([i for i, _ in chunk])
            images = batch["image"].to(device)
            true_ce.append(scale_cross_entropy(model, images, batch["caption"]))
            flipped_ce.append(scale_cross_entropy(model, images, [c for _, c in chunk]))
        t, f = torch.cat(true_ce), torch.cat(flipped_ce)  # (N, K)
        diff = f - t
        out[kind] = {"n": len(rows), "ce_true": _rounded(t.mean(0)), "ce_flipped": _rounded(f.mean(0)),
                     "sensitivity": _rounded(diff.mean(0)),
                     "sensitivity_se": _rounded(diff.std(0) / max(len(rows), 1) ** 0.5)}
    return out


def forced_scales(model, judge, data_config, n: int = 500, cfg_scale: float = 3.0, seed: int = 0,
                  batch_size: int = 100, ks: list[int] | None = None) -> list[dict]:
    """Prompt accuracy when the true tokens of scales 1..k are given and the model draws the rest.

    One row per k in ks (default 0..K): {'k', 'forced_tokens', 'n', 'prompt_accuracy', 'acc_*'}. k = 0 is
    plain sampling; k = K decodes the true discrete tokens with the head's residual on top.
    """
    from hart_mini.measure.evaluate import held_out
    from hart_mini.measure.judge import prompt_accuracy

    if n < 1:
        raise ValueError(f"n={n} is invalid: expected at least 1 prompt")
    ks = list(range(model.K + 1)) if ks is None else ks
    device = next(model.parameters()).device
    real = held_out(data_config, n)
    rows = []
    for k in tqdm(ks, desc="forced scales", leave=False):
        hits, total = {}, 0
        for start in range(0, n, batch_size):
            images = real["image"][start:start + batch_size].to(device)
            captions = real["caption"][start:start + batch_size]
            truth = model.tokenizer.tokenize(images).indices
            out = model.sample_latent(captions, cfg_scale=cfg_scale, seed=seed + start, forced=truth[:k])
            fakes = model.tokenizer.decode(out["latent"], out["path"]).clamp(-1, 1)
            part = prompt_accuracy(judge, fakes, captions)
            for key, value in part.items():
                if key != "n":
                    hits[key] = hits.get(key, 0.0) + value * part["n"]
            total += part["n"]
        rows.append({"k": k, "forced_tokens": sum(p * p for p in model.scales[:k]), "n": total,
                     **{key: round(v / total, 4) for key, v in hits.items()}})
    return rows


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
    right.set_xticks(ks, ["none"] + [f"1..{scales[k - 1]}x{scales[k - 1]}" for k in ks[1:]], rotation=30)
    right.set_xlabel("true tokens given for scales")
    right.set_ylim(0, 1.02)
    right.set_title("force the true coarse scales, sample the rest")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
