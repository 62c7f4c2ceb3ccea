"""What the residual head adds: `python -m hart_mini diagnose head`.

HART's head draws the continuous residual d that the discrete tokens lost; the decoder then reads
f_hat + d instead of f_hat. This probe asks whether d helps, in three regimes of ever better tokens:

    free      the model draws every scale                          (what a user gets)
    own       the true tokens of scales 1..K-1 are given, the model   (what the head was trained on: h and
              draws the last scale, the head its residual              the model's own last-scale token)
    true      every token is the true one; only the head draws      (a perfect transformer)

and in six columns: head on (f_hat + d), head off (f_hat, the discrete path), the noise control (f_hat + n,
n drawn per latent cell from N(0, Sigma), Sigma the covariance of real residuals: what a head that knew
nothing but the residuals' size and channel mix would add; a head that adds detail must beat it), the pixel
noise control (the head-off image plus the data's own per-pixel noise, i.i.d. N(0, 0.01^2) in [0, 1] units:
grain, which no latent carries and the judge's features read), head on plus the same grain (so that head on and
off can be compared with the data's grain in both) and, where the true image is known (own, true), the true
residual (f, the tokenizer's continuous reconstruction).
Per cell: FD, prompt accuracy, texture accuracy, the high-frequency energy ratio against real images, and for
the head the size of what it adds, against the real residual:

    rms(d)               sqrt(mean d^2) over every latent entry      the real residual's: rms(f - f_hat_true)
    size ratio           |d| / |f - f_hat|                          (own, true: the residual it should draw)
    cosine               <d, f - f_hat> / (|d| |f - f_hat|)         1 = the right direction

Why a column's FD moves: FD = ||mu - mu_real||^2 + a covariance term (judge features); `fd_mean` is the first
term, the part a shift of the features' mean makes. And where the head's draw d puts its energy, per image:

    d = global + coarse + fine      global: d's mean over the map; coarse: the rest averaged over 2x2 cells
                                    (upsampled back); fine: what is left, cell to cell
    a draw white across cells has coarse = rms/2 and fine = rms sqrt(3)/2; the real residual's is printed beside

and, where the scene is the real one (own, true), d's rms on object cells and on background cells against the real
residual's (measure/regions.py).

Where the scene is the real one (own, true), the texture the judge reads on every object cell, against the true
one: a confusion table (true x read: plain, striped, dotted) for head on and head off, and the paired texture
gain (head on right - head off right, per object cell) with its SE. It shows which way the head moves textures:
it restores dots and stripes the tokens lost, or paints mottle that reads as dots on a plain object.

The head-on and head-off images of a seed share their tokens (the head draws after the last token), so
their difference is the head's alone: per regime, the FD gain (head off - head on, seed by seed) with its sd
over seeds, the noise a gain must beat. Noise otherwise: FD's sd over sampling seeds, binomial SE of accuracies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hart_mini.measure.evaluate import (
    aggregate_seeds,
    attribute_counts,
    evaluate_generator,
    held_out,
    judge_features,
    seed_spread,
)
from hart_mini.measure.judge import NONE, cell_targets
from hart_mini.measure.metrics import frechet_mean_term, high_frequency_ratio
from hart_mini.measure.regions import held_out_regions, region_sums
from hart_mini.model.data import _NOISE_STD as PIXEL_NOISE_STD  # the data's per-pixel noise, in [0, 1] units
from hart_mini.model.data import TEXTURES

REGIONS = ("object", "background")

REGIMES = ("free", "own", "true")
COLUMNS = ("head_on", "head_off", "noise_control", "pixel_noise", "head_on_pixel_noise", "true_residual")


TEXTURE_COLUMNS = ("head_on", "head_off")  # the columns whose texture reading is tabled (own, true)


@torch.no_grad()
def texture_reading(judge, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The texture the judge reads on every object cell of images (N, 3, H, W) in [0, 1], whose scenes are
    `labels`' (N, LABEL_DIM): (confusion (T, T) counts, true texture x read texture; right (M,) 1.0 where
    the reading is the true texture, one entry per object cell, in order)."""
    device = next(judge.parameters()).device
    read = torch.cat([judge.predict(images[i:i + 500].to(device) * 2 - 1)["texture"].cpu()
                      for i in range(0, len(images), 500)])  # (N, 9)
    target = cell_targets(labels.cpu())
    occupied = target["shape"] != NONE  # (N, 9)
    true, seen = target["texture"][occupied], read[occupied]  # (M,)
    T = len(TEXTURES)
    confusion = torch.bincount(true * T + seen, minlength=T * T).view(T, T)
    return confusion, (true == seen).float()


def forced_count(regime: str, K: int) -> int:
    """How many scales a regime gives the model: free 0, own K - 1, true K."""
    return {"free": 0, "own": K - 1, "true": K}[regime]


def _rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


SPLIT = ("global", "coarse", "fine")


def spatial_split(d: torch.Tensor) -> dict[str, float]:
    """Sums of squares of d (B, C, h, w) split by scale: global (each image's mean over the map), coarse (the
    rest's 2x2 cell means, upsampled; an odd map's last row and column in blocks of what is left) and fine (what
    is left). The three parts are orthogonal, so their sums add up to d's."""
    h, w = d.shape[-2:]
    overall = d.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
    blocks = F.avg_pool2d(d - overall, 2, ceil_mode=True)  # (B, C, ceil(h/2), ceil(w/2))
    coarse = F.interpolate(blocks, scale_factor=2, mode="nearest")[..., :h, :w]  # (B, C, h, w)
    fine = d - overall - coarse
    parts = (overall.expand_as(d), coarse, fine)
    return {name: float(part.double().pow(2).sum()) for name, part in zip(SPLIT, parts)}


@torch.no_grad()
def draw_regime(model, real: dict, regime: str, cfg_scale: float, seed: int, batch_size: int = 100,
                noise_factor: torch.Tensor | None = None, head_noise: float = 0.0,
                regions: dict | None = None) -> dict:
    """Images (N, 3, H, W) in [0, 1] of every column of one regime, for the held-out captions of `real`,
    batch i drawn with seed `seed + i`; and the head's residual statistics (sums over every latent entry).
    noise_factor: L (C, C) with L L^T = Sigma, the real residuals' covariance (residual_stats); the noise
    control's n = L g, g ~ N(0, I) per latent cell (its own generator, so the model's draws are unchanged).
    head_noise: s >= 0; the head-on column becomes f_hat + d + s n', n' a second draw of the noise control's noise
    (a probe: a head that draws the residual's structure, plus the cell-by-cell mottle it leaves out).
    The head's draw comes at the model's HeadConfig.draw_scale (set it to probe what the draw's size does).
    regions: held_out_regions of `real`, to sum d's squares over object and background cells
    (own and true regimes, where the scene is the real one)."""
    tok, K = model.tokenizer, model.K
    device = next(model.parameters()).device
    if noise_factor is None:
        noise_factor = residual_stats(model, real, batch_size)["factor"]
    images = {c: [] for c in COLUMNS}
    sums = {"d2": 0.0, "r2": 0.0, "dr": 0.0, "count": 0, **{name: 0.0 for name in SPLIT},
            **{name: [0.0, 0] for name in REGIONS}}
    for i in range(0, len(real["caption"]), batch_size):
        captions = real["caption"][i:i + batch_size]
        x = real["image"][i:i + batch_size].to(device)
        f = tok.encode(x)  # (B, C, h, w), the continuous latent
        truth = tok.tokenize(x).indices
        out = model.sample_latent(captions, cfg_scale=cfg_scale, seed=seed + i,
                                  forced=truth[:forced_count(regime, K)])
        if head_noise > 0:  # its own generator again: the head's and the noise control's draws stay as they were
            mottle = torch.Generator(device=device).manual_seed(seed + i + 2)
            out["latent"] = noise_control(out["latent"], head_noise * noise_factor, mottle)
        d = out["latent"] - out["f_hat"]  # (B, C, h, w): what the head added
        images["head_on"].append(model.decode(out).cpu())
        images["head_off"].append(model.decode({"latent": out["f_hat"], "path": "discrete"}).cpu())
        noisy = noise_control(out["f_hat"], noise_factor, torch.Generator(device=device).manual_seed(seed + i + 1))
        images["noise_control"].append(model.decode({"latent": noisy, "path": "continuous"}).cpu())
        grain = torch.randn(images["head_off"][-1].shape, generator=torch.Generator().manual_seed(seed + i + 3))
        images["pixel_noise"].append((images["head_off"][-1] + PIXEL_NOISE_STD * grain).clamp(0, 1))
        images["head_on_pixel_noise"].append((images["head_on"][-1] + PIXEL_NOISE_STD * grain).clamp(0, 1))
        if regime != "free":  # the residual the head should have drawn: f - f_hat
            residual = f - out["f_hat"]
            images["true_residual"].append(tok.decode(f, "continuous").clamp(-1, 1).add(1).div(2).cpu())
            sums["r2"] += float(residual.pow(2).sum())
            sums["dr"] += float((d * residual).sum())
            if regions is not None:
                for name, (total, count) in region_sums(d, regions, i).items():
                    sums[name][0] += total
                    sums[name][1] += count
        sums["d2"] += float(d.pow(2).sum())
        for name, value in spatial_split(d).items():
            sums[name] += value
        sums["count"] += d.numel()
    return {"images": {c: torch.cat(v) for c, v in images.items() if v}, "sums": sums}


@torch.no_grad()
def residual_stats(model, real: dict, batch_size: int = 100, regions: dict | None = None) -> dict:
    """The real residuals r = f - f_hat (the images' own tokens), one C-vector per latent cell: their rms
    sqrt(mean r^2) (the size of a real residual), its spatial split (rms of each part, spatial_split) and the
    factor L (C, C) of their covariance, L L^T = Sigma, Sigma = mean over cells of (r - mean r)(r - mean r)^T,
    for the noise control; with regions (held_out_regions of `real`), its rms on object and background cells.
    """
    device = next(model.parameters()).device
    cells, split, where = [], {name: 0.0 for name in SPLIT}, {name: [0.0, 0] for name in REGIONS}
    for i in range(0, len(real["caption"]), batch_size):
        x = real["image"][i:i + batch_size].to(device)
        f = model.tokenizer.encode(x)
        f_hat = model.tokenizer.quantizer.quantize(f)[1]  # the full discrete latent of the true tokens
        cells.append((f - f_hat).permute(0, 2, 3, 1).flatten(0, 2).cpu().double())  # (B h w, C); MPS has no fp64
        for name, value in spatial_split(f - f_hat).items():
            split[name] += value
        if regions is not None:
            for name, (total, count) in region_sums(f - f_hat, regions, i).items():
                where[name][0] += total
                where[name][1] += count
    r = torch.cat(cells)
    return {"rms": math.sqrt(float(r.pow(2).mean())), "factor": covariance_factor(r).to(device),
            "split": {name: math.sqrt(value / r.numel()) for name, value in split.items()},
            "by_region": {name: math.sqrt(total / max(count, 1)) for name, (total, count) in where.items()}}


def covariance_factor(r: torch.Tensor) -> torch.Tensor:
    """L (C, C), L L^T = Sigma = mean over cells of (r - mean r)(r - mean r)^T, for cell vectors r (M, C) on
    the CPU (fp64 inside; MPS has none)."""
    centred = r.double() - r.double().mean(0)
    sigma = centred.T @ centred / len(r)  # (C, C)
    jitter = 1e-10 * torch.eye(len(sigma), dtype=sigma.dtype)  # a channel the residual never uses
    return torch.linalg.cholesky(sigma + jitter).float()


def noise_control(f_hat: torch.Tensor, factor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """f_hat (B, C, h, w) + n, n = L g per latent cell, g ~ N(0, I): noise with the covariance L L^T."""
    g = torch.randn(f_hat.permute(0, 2, 3, 1).shape, generator=generator, device=f_hat.device)  # (B, h, w, C)
    return f_hat + (g @ factor.T).permute(0, 3, 1, 2)


def head_table(model, judge, data_config, n: int = 1000, seeds: tuple[int, ...] = (0, 1000, 2000),
               cfg_scale: float = 3.0, batch_size: int = 100, examples: dict | None = None,
               head_noise: float = 0.0) -> dict:
    """The whole table: {regime: {column: metrics}} with FD (sd over seeds), prompt and texture accuracy
    (binomial SE), high-frequency ratio; per regime the head's rms, size ratio and cosine (mean and sd over
    seeds); and the real residual's rms. One forward pass per (regime, seed) serves every column.
    examples: a dict to fill with the first seed's first 8 images of every cell, for `figure`.
    head_noise: s, the head-on column adds s times the noise control's noise to the head's draw (draw_regime).
    The head samples with the model's HeadConfig (steps, temperature, draw_scale, cfg_scale), recorded in
    head_sampling."""
    if model.mode != "last":
        raise ValueError(f"head mode {model.mode!r}: diagnose head needs a HART whose head draws the last "
                         "scale's residual (mode 'last')")
    if n < 2:
        raise ValueError(f"n={n} is invalid: FD needs at least 2 samples")
    if not (isinstance(head_noise, (int, float)) and 0 <= head_noise < math.inf):
        raise ValueError(f"head_noise={head_noise} is invalid: expected a finite number >= 0")
    real = held_out(data_config, n)
    counts = attribute_counts(real["caption"])
    regions = held_out_regions(data_config, n, model.scales[-1])
    stats = residual_stats(model, real, batch_size, regions)
    real_features = judge_features(judge, real["image"])
    table: dict = {"n": n, "seeds": list(seeds), "cfg": cfg_scale, "scales": list(model.scales),
                   "head_sampling": {"steps": model.head_cfg.sampling_steps,
                                     "temperature": model.head_cfg.temperature, "added_noise": head_noise,
                                     "scale": model.head_cfg.draw_scale,
                                     "cfg_scale": model.head_cfg.cfg_scale},
                   "real_residual_rms": round(stats["rms"], 4),
                   "real_residual_split": {k: round(v, 4) for k, v in stats["split"].items()},
                   "real_residual_by_region": {k: round(v, 4) for k, v in stats["by_region"].items()}, "regimes": {}}
    bar = tqdm(total=len(REGIMES) * len(seeds), desc="diagnose head", leave=False)
    for regime in REGIMES:
        rows = {c: [] for c in COLUMNS}
        head = {"rms": [], "size_ratio": [], "cosine": [], **{f"split_{name}": [] for name in SPLIT},
                **{f"rms_{name}": [] for name in REGIONS}}
        confusion, right = {c: 0 for c in TEXTURE_COLUMNS}, {c: [] for c in TEXTURE_COLUMNS}
        for seed in seeds:
            drawn = draw_regime(model, real, regime, cfg_scale, seed, batch_size, stats["factor"], head_noise,
                                regions)
            for column, images in drawn["images"].items():
                if examples is not None and seed == seeds[0]:
                    examples[f"{regime}: {column.replace('_', ' ')}"] = images[:8]
                row = evaluate_generator(lambda p, i, im=images: im[i:i + len(p)], judge, data_config, n,
                                         batch_size, reference=real)
                row["hf_ratio"] = round(high_frequency_ratio(images * 2 - 1, real["image"]), 4)
                row["fd_mean"] = frechet_mean_term(judge_features(judge, images * 2 - 1), real_features)
                rows[column].append(row)
                if regime != "free" and column in TEXTURE_COLUMNS:  # the scene is the real one: read each object
                    counts_read, hits = texture_reading(judge, images, real["labels"])
                    confusion[column] = confusion[column] + counts_read
                    right[column].append(hits)
            s = drawn["sums"]
            head["rms"].append(math.sqrt(s["d2"] / s["count"]))
            for name in SPLIT:
                head[f"split_{name}"].append(math.sqrt(s[name] / s["count"]))
            if regime != "free":
                head["size_ratio"].append(math.sqrt(s["d2"] / max(s["r2"], 1e-12)))
                head["cosine"].append(s["dr"] / max(math.sqrt(s["d2"] * s["r2"]), 1e-12))
                for name in REGIONS:
                    head[f"rms_{name}"].append(math.sqrt(s[name][0] / max(s[name][1], 1)))
            bar.update(1)
        cells = {}
        for column, per_seed in rows.items():
            if per_seed:
                cell = aggregate_seeds(per_seed, counts)
                for key in ("hf_ratio", "fd_mean"):  # means over seeds
                    cell[key] = round(sum(r[key] for r in per_seed) / len(per_seed), 4)
                cells[column] = {k: v for k, v in cell.items()
                                 if k in ("n", "fd", "fd_sd", "fd_mean", "hf_ratio") or k.startswith(("prompt_accuracy",
                                                                                           "acc_texture"))}
                cells[column]["fd_seeds"] = [round(r["fd"], 4) for r in per_seed]
        # Head on and off share their tokens seed by seed, so their FD difference is paired: its sd over seeds
        # is the noise a gain must beat (the columns' own sds also hold the tokens' seed-to-seed spread).
        # FD off - on (> 0: the head helps), plain and with the data's grain on both images (what the head adds
        # beyond grain)
        for name, on, off in (("fd_gain", "head_on", "head_off"),
                              ("fd_gain_with_grain", "head_on_pixel_noise", "pixel_noise")):
            gain, gain_sd = seed_spread([b["fd"] - a["fd"] for a, b in zip(rows[on], rows[off])])
            cells[name], cells[f"{name}_sd"] = round(gain, 4), round(gain_sd, 4)
        if regime != "free":  # per object cell, paired: the same scenes and tokens with the head on and off
            gain = torch.cat(right["head_on"]) - torch.cat(right["head_off"])  # (seeds x object cells,)
            cells["texture_confusion"] = {c: confusion[c].tolist() for c in TEXTURE_COLUMNS}
            cells["texture_gain"] = round(float(gain.mean()), 4)
            cells["texture_gain_se"] = round(float(gain.std() / math.sqrt(len(gain))), 4)
        for name, values in head.items():
            if values:
                mean, sd = seed_spread(values)
                cells[f"head_{name}"], cells[f"head_{name}_sd"] = round(mean, 4), round(sd, 4)
        table["regimes"][regime] = cells
    bar.close()
    return table


def format_table(table: dict) -> str:
    """The table for people: one line per regime and column."""
    drawn = table.get("head_sampling")  # tables written before it was stored lack it
    how = f"; the head in {drawn['steps']} steps at temperature {drawn['temperature']:g}" if drawn else ""
    if drawn and drawn.get("scale", 1) != 1:
        how += f", its draw x {drawn['scale']:g}"
    if drawn and drawn.get("cfg_scale") is not None:
        how += f", guided at its own cfg {drawn['cfg_scale']:g}"
    if drawn and drawn.get("guidance_share", 1) != 1:  # tables read with the share of 2026-12-07
        how += f", guided at {drawn['guidance_share']:g} x the logits' guidance"
    if drawn and drawn.get("added_noise"):
        how += f", plus {drawn['added_noise']:g} x the noise control's noise"
    lines = [f"diagnose head: N = {table['n']} x {len(table['seeds'])} seeds, cfg {table['cfg']}{how}; "
             f"real residual rms {table['real_residual_rms']:.3f}",
             f"{'regime':<7}{'column':<21}{'FD':>14}{'(mean term)':>13}{'prompt acc':>16}{'texture':>16}"
             f"{'HF ratio':>10}"]
    for regime, cells in table["regimes"].items():
        for column in COLUMNS:
            c = cells.get(column)
            if c is None:
                continue
            mean_term = f"{c['fd_mean']:>13.3f}" if "fd_mean" in c else f"{'':>13}"  # older tables lack it
            lines.append(f"{regime:<7}{column:<21}{c['fd']:>8.3f} ±{c['fd_sd']:.3f}{mean_term}"
                         f"{c['prompt_accuracy']:>9.3f} ±{c['prompt_accuracy_se']:.3f}"
                         f"{c['acc_texture']:>9.3f} ±{c['acc_texture_se']:.3f}{c['hf_ratio']:>10.3f}")
        extra = f"        head rms {cells['head_rms']:.3f}"
        if "fd_gain" in cells:  # tables written before the paired gain was stored lack it
            extra += f", FD gain (off - on, paired) {cells['fd_gain']:.3f} ±{cells['fd_gain_sd']:.3f}"
        if "fd_gain_with_grain" in cells:
            extra += (f"; with pixel noise on both {cells['fd_gain_with_grain']:.3f} "
                      f"±{cells['fd_gain_with_grain_sd']:.3f}")
        if "head_cosine" in cells:
            extra += (f", size ratio |d|/|f - f_hat| {cells['head_size_ratio']:.2f}, "
                      f"cosine {cells['head_cosine']:.2f}")
        lines.append(extra)
        if "head_split_fine" in cells:
            real = table["real_residual_split"]
            lines.append("        head draw by scale (rms): " + ", ".join(
                f"{name} {cells[f'head_split_{name}']:.3f}" for name in SPLIT) + "; the real residual's: "
                + ", ".join(f"{name} {real[name]:.3f}" for name in SPLIT))
        if "texture_confusion" in cells:
            lines.append(f"        texture per object cell, on - off (paired) {cells['texture_gain']:+.4f} "
                         f"±{cells['texture_gain_se']:.4f}; read as (" + ", ".join(TEXTURES) + ") when true is:")
            for column, table_ in cells["texture_confusion"].items():
                lines.append(f"          {column:<9}" + "; ".join(
                    f"{name} {row}" for name, row in zip(TEXTURES, table_)))
        if "head_rms_object" in cells:
            real = table["real_residual_by_region"]
            lines.append(f"        head rms on object cells {cells['head_rms_object']:.3f}, on background cells "
                         f"{cells['head_rms_background']:.3f}; the real residual's: {real['object']:.3f}, "
                         f"{real['background']:.3f}")
    return "\n".join(lines)


def figure(examples: dict, real: torch.Tensor):
    """The real images, then every cell's first images, one row each: what the head adds, to the eye."""
    from hart_mini.course import viz

    return viz.image_rows({"real": real[:8], **{k: v * 2 - 1 for k, v in examples.items()}})
