"""What the residual holds, and what any head could add: `python -m hart_mini diagnose residual`.

HART's head draws r = f - f_hat, the part of the continuous latent f the discrete tokens lost, and the
decoder reads f_hat + r. `diagnose head` measures a trained head. This probe asks the tokenizer first:
with every token true, which residuals r' would bring the decoded image closer to the real one? Each
column decodes f_hat + r' for the same held-out images:

    none            r' = 0                                    the discrete image (head off)
    true            r' = f - f_hat                            the image's own residual: the ceiling
    noise           r' ~ N(0, Sigma) per latent cell          Sigma the real residuals' covariance
    same_code       r' = the real residual of a random pool cell whose last-scale token is this cell's:
                    an exact draw from p(r | token), what a perfect per-token head that reads its token adds
    shuffled        this image's own residuals, moved to random cells of the same image: the right
                    residuals in the wrong places
    predicted       r' = a least-squares prediction of r from the k x k discrete latent around the cell
                    (fitted on the pool): the part of r its neighbourhood determines, in latent units
    for_pixels      r' = a small CNN of the whole discrete latent, trained through the frozen decoder to
                    minimise the pixel error (pixel_steps > 0): the part of r the decoder's output needs
                    that the tokens determine

Per column: the latent error |f_hat + r' - f|^2 and the pixel error |decode(f_hat + r') - x|^2 (means), the
share of the pixel gap it closes, (pixel error of none - of r') / (of none - of true), then FD, prompt and
texture accuracy by the judge, the high-frequency energy ratio, and the background detail: the grain a column's
backgrounds show, rms of (image - the scene drawn without noise) over background pixels, against the real
images' (measure/regions.py). And the real residual's rms on object cells and on background cells: where the
detail the tokens lose sits. A head can add no more than the columns
that know only what it knows: the pixel gap a deterministic prediction closes is the detail the tokens
determine; the rest is detail they do not, which a sampler can only draw at random.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from hart_mini.diagnose_head import covariance_factor, noise_control
from hart_mini.measure.evaluate import evaluate_generator, held_out
from hart_mini.measure.metrics import high_frequency_ratio
from hart_mini.measure.regions import background_detail, held_out_regions, region_rms
from hart_mini.model.data import ToyShapes
from hart_mini.model.hart import map_to_tokens

COLUMNS = ("none", "true", "noise", "same_code", "shuffled", "predicted", "for_pixels")


@torch.no_grad()
def latents(tokenizer, images: torch.Tensor, batch_size: int = 500) -> dict:
    """Images (N, 3, H, W) in [-1, 1] -> f, f_hat (N, C, h, w) and the last scale's tokens (N, h, w)."""
    parts = [tokenizer.tokenize(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return {"f": torch.cat([t.f for t in parts]), "f_hat": torch.cat([t.f_hat for t in parts]),
            "last": torch.cat([t.indices[-1] for t in parts])}


def cells(x: torch.Tensor) -> torch.Tensor:
    """A latent map (N, C, h, w) -> one C-vector per cell (N h w, C), cells in row-major order."""
    return map_to_tokens(x).flatten(0, 1)


def uncells(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of `cells`: (N h w, C) -> (N, C, h, w) shaped like `like`."""
    N, C, h, w = like.shape
    return x.view(N, h, w, C).permute(0, 3, 1, 2)


def same_code_draws(codes: torch.Tensor, pool_codes: torch.Tensor, pool_r: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """For each code (M,), the residual (C,) of a random pool cell with the same code: a draw from the pool's
    p(r | code). A code the pool never used gets r = 0. pool_codes (P,), pool_r (P, C) -> (M, C)."""
    order = torch.argsort(pool_codes)
    sorted_codes = pool_codes[order]
    first = torch.searchsorted(sorted_codes, codes)  # (M,) the first pool cell with that code
    count = torch.searchsorted(sorted_codes, codes, right=True) - first  # (M,) how many there are
    u = torch.rand(len(codes), generator=generator)
    pick = first + (u * count.clamp(min=1)).long().clamp(max=count.clamp(min=1) - 1)
    drawn = pool_r[order[pick.clamp(max=len(order) - 1)]]
    return torch.where((count > 0)[:, None], drawn, torch.zeros_like(drawn))


def shuffled_within(r: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's residual cells (N, C, h, w) moved to a random permutation of its own cells."""
    N, C, h, w = r.shape
    flat = r.flatten(2)  # (N, C, h w)
    perm = torch.stack([torch.randperm(h * w, generator=generator) for _ in range(N)])  # (N, h w)
    return torch.gather(flat, 2, perm[:, None, :].expand(-1, C, -1)).view_as(r)


def patches(f_hat: torch.Tensor, k: int) -> torch.Tensor:
    """The k x k neighbourhood of every cell (zero outside the map), and a 1 for the bias: (N h w, C k k + 1)."""
    p = F.unfold(f_hat, k, padding=k // 2).transpose(1, 2).flatten(0, 1)  # (N h w, C k k), row-major cells
    return torch.cat([p, torch.ones(len(p), 1, dtype=p.dtype)], dim=1)


def fit_ridge(f_hat: torch.Tensor, r: torch.Tensor, k: int, ridge: float = 1e-2, batch_size: int = 500) -> torch.Tensor:
    """W minimising |patches(f_hat) W - cells(r)|^2 + ridge |W|^2, accumulated in batches (fp64)."""
    xtx, xty = 0.0, 0.0
    for i in range(0, len(f_hat), batch_size):
        x, y = patches(f_hat[i:i + batch_size], k).double(), cells(r[i:i + batch_size]).double()
        xtx, xty = xtx + x.T @ x, xty + x.T @ y
    return torch.linalg.solve(xtx + ridge * torch.eye(len(xtx), dtype=torch.float64), xty).float()


def predict_ridge(f_hat: torch.Tensor, W: torch.Tensor, k: int) -> torch.Tensor:
    """The ridge prediction of r, as a latent map shaped like f_hat."""
    return uncells(patches(f_hat, k) @ W, f_hat)


def r_squared(r: torch.Tensor, predicted: torch.Tensor) -> float:
    """1 - |r - predicted|^2 / |r - mean r|^2, the mean per channel over cells."""
    centred = r - r.mean(dim=(0, 2, 3), keepdim=True)
    return 1.0 - float((r - predicted).pow(2).sum() / centred.pow(2).sum().clamp(min=1e-12))


class PixelPredictor(nn.Module):
    """f_hat (N, C, h, w) -> a residual r' (N, C, h, w): three 3x3 conv layers (a 7 x 7 field), zero output at
    start; trained through the frozen decoder on the pixel error (train_pixel_predictor)."""

    def __init__(self, channels: int, width: int = 96, scale: float = 1.0):
        super().__init__()
        self.scale = scale  # the residuals' std: the net works in units of it
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, channels, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.net(f_hat) * self.scale


def train_pixel_predictor(tokenizer, images: torch.Tensor, f_hat: torch.Tensor, steps: int, batch_size: int = 64,
                          lr: float = 1e-3, seed: int = 0) -> PixelPredictor:
    """Minimise mean |decode(f_hat + P(f_hat)) - x|^2 over the pool, the decoder frozen; AdamW, cosine lr."""
    torch.manual_seed(seed)
    images, f_hat = images.detach(), f_hat.detach()
    with torch.no_grad():
        residual_std = float((tokenizer.encode(images[:500]) - f_hat[:500]).std())
    predictor = PixelPredictor(f_hat.shape[1], scale=residual_std).to(f_hat.device)
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr)
    frozen = [(p, p.requires_grad) for p in tokenizer.parameters()]
    tokenizer.requires_grad_(False)  # gradients reach the predictor through the decoder, not the decoder
    try:
        for step in tqdm(range(steps), desc="pixel predictor", leave=False):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            pick = torch.randint(len(images), (batch_size,))
            fh = f_hat[pick]
            loss = (tokenizer.decode(fh + predictor(fh), "continuous") - images[pick]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return predictor.eval()


@torch.no_grad()
def residual_table(tokenizer, judge, data_config, n: int = 1000, pool: int = 10_000, patch: int = 5,
                   pixel_steps: int = 2000, seed: int = 0, batch_size: int = 100, examples: dict | None = None) -> dict:
    """Every column for n held-out images, the pool drawn from the first `pool` training images.
    examples: a dict to fill with each column's first 8 images, for `figure`."""
    if n < 2:
        raise ValueError(f"n={n} is invalid: FD needs at least 2 samples")
    if pool < 1:
        raise ValueError(f"pool={pool} is invalid: the same-code and predicted columns need training images")
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch={patch} is invalid: expected an odd neighbourhood size >= 1 (1, 3, 5, ...)")
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    bar = tqdm(total=4, desc="diagnose residual", leave=False)
    train_images = torch.cat([ToyShapes(data_config, "train").batch(range(i, min(i + 500, pool)))["image"]
                              for i in range(0, pool, 500)]).to(device)
    P = latents(tokenizer, train_images)
    pool_r = P["f"] - P["f_hat"]
    real = held_out(data_config, n)
    x = real["image"].to(device)
    T = latents(tokenizer, x)
    r = T["f"] - T["f_hat"]
    regions = held_out_regions(data_config, n, r.shape[-1])
    bar.update(1)
    generator = torch.Generator().manual_seed(seed)
    pool_cells = cells(pool_r).cpu()
    W = fit_ridge(P["f_hat"].cpu(), pool_r.cpu(), patch)  # fp64 on the CPU: MPS has no fp64
    residuals = {
        "none": torch.zeros_like(r),
        "true": r,
        "noise": noise_control(torch.zeros_like(r).cpu(), covariance_factor(pool_cells), generator).to(device),
        "same_code": uncells(same_code_draws(T["last"].flatten().cpu(), P["last"].flatten().cpu(), pool_cells,
                                             generator).to(device), r),
        "shuffled": shuffled_within(r.cpu(), generator).to(device),
        "predicted": predict_ridge(T["f_hat"].cpu(), W, patch).to(device),
    }
    bar.update(1)
    if pixel_steps:
        with torch.enable_grad():
            predictor = train_pixel_predictor(tokenizer, train_images, P["f_hat"], pixel_steps, seed=seed)
        residuals["for_pixels"] = torch.cat([predictor(T["f_hat"][i:i + 500]) for i in range(0, n, 500)])
    bar.update(1)
    table = {"n": n, "pool_images": pool, "patch": patch, "pixel_steps": pixel_steps, "seed": seed,
             "residual_rms": round(float(r.pow(2).mean().sqrt()), 4),
             "residual_rms_by_region": {k: round(v, 4) for k, v in region_rms(r.cpu(), regions).items()},
             "real_background_detail": round(background_detail(real["image"], regions), 4),
             "r2_predicted": round(r_squared(r, residuals["predicted"]), 4), "columns": {}}
    if pixel_steps:
        table["r2_for_pixels"] = round(r_squared(r, residuals["for_pixels"]), 4)
    pixel_error = {}
    for name, added in residuals.items():
        images = torch.cat([tokenizer.decode(T["f_hat"][i:i + batch_size] + added[i:i + batch_size],
                                             "continuous" if name != "none" else "discrete").clamp(-1, 1)
                            for i in range(0, n, batch_size)])
        pixel_error[name] = float((images - x).pow(2).mean())
        row = evaluate_generator(lambda p, i, im=images: im[i:i + len(p)].add(1).div(2), judge, data_config, n,
                                 batch_size, reference=real)
        table["columns"][name] = {
            "latent_error": round(float((T["f_hat"] + added - T["f"]).pow(2).mean()), 6),
            "pixel_error": round(pixel_error[name], 6), "added_rms": round(float(added.pow(2).mean().sqrt()), 4),
            "fd": row["fd"], "prompt_accuracy": row["prompt_accuracy"], "acc_texture": row["acc_texture"],
            "hf_ratio": round(high_frequency_ratio(images.cpu(), real["image"]), 4),
            "background_detail": round(background_detail(images.cpu(), regions), 4)}
        if examples is not None:
            examples[name] = images[:8].cpu()
    gap = pixel_error["none"] - pixel_error["true"]
    for name, column in table["columns"].items():
        column["pixel_gap_closed"] = round((pixel_error["none"] - pixel_error[name]) / gap, 4) if gap else None
    bar.update(1)
    bar.close()
    return table


def format_table(table: dict) -> str:
    """The table for people: one line per column."""
    lines = [f"diagnose residual: N = {table['n']} held-out images, every token true; pool {table['pool_images']} "
             f"training images; real residual rms {table['residual_rms']:.3f}; R^2 of the {table['patch']}x"
             f"{table['patch']} prediction {table['r2_predicted']:.2f}"
             + (f", of the pixel predictor {table['r2_for_pixels']:.2f}" if "r2_for_pixels" in table else ""),
             f"{'column':<12}{'rms added':>10}{'latent err':>11}{'pixel err':>11}{'gap closed':>11}{'FD':>8}"
             f"{'prompt':>8}{'texture':>8}{'HF ratio':>9}{'bg detail':>10}"]
    for name in [c for c in COLUMNS if c in table["columns"]]:  # the order of the text, whatever the JSON's
        c = table["columns"][name]
        lines.append(f"{name:<12}{c['added_rms']:>10.3f}{c['latent_error']:>11.5f}{c['pixel_error']:>11.5f}"
                     f"{_share(c['pixel_gap_closed']):>11}{c['fd']:>8.3f}{c['prompt_accuracy']:>8.3f}"
                     f"{c['acc_texture']:>8.3f}{c['hf_ratio']:>9.3f}"
                     + (f"{c['background_detail']:>10.4f}" if "background_detail" in c else ""))  # older tables lack it
    if "real_background_detail" in table:
        where = table["residual_rms_by_region"]
        lines.append(f"real images' background detail {table['real_background_detail']:.4f}; the real residual's rms "
                     f"on object cells {where['object']:.3f}, on background cells {where['background']:.3f}")
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def figure(examples: dict, real: torch.Tensor):
    """The real images, then each column's first images, one row each."""
    from hart_mini.course import viz

    return viz.image_rows({"real": real[:8], **examples})
