"""Evaluation: the numbers behind every claim of the course.

Tokenizer: reconstruction quality of the discrete path (decode f_hat) and the continuous path (decode f),
how much of the codebook is used, and how much high-frequency detail each path keeps.
"""

from __future__ import annotations

import torch

from hart_mini.data import ToyShapes
from hart_mini.metrics import high_frequency_ratio, mse, psnr


@torch.no_grad()
def evaluate_tokenizer(tokenizer, data: ToyShapes, n: int = 1000, batch_size: int = 250) -> dict:
    """Reconstruction metrics on the first n images of `data` (held-out: use the 'test' split)."""
    if n < 1 or n > len(data):
        raise ValueError(f"n={n} is invalid: expected 1..{len(data)} images of the {data.split!r} split")
    device = next(tokenizer.parameters()).device
    tokenizer.eval()
    V = tokenizer.cfg.codebook_size
    counts = torch.zeros(V, dtype=torch.float64)
    sums = {"mse_discrete": 0.0, "mse_continuous": 0.0, "psnr_discrete": 0.0, "psnr_continuous": 0.0}
    originals, recons = [], {"discrete": [], "continuous": []}
    for start in range(0, n, batch_size):
        x = data.batch(range(start, min(start + batch_size, n)))["image"].to(device)
        t = tokenizer.tokenize(x)
        counts += torch.bincount(t.sequence.flatten().cpu(), minlength=V).double()
        for path, latent in (("discrete", t.f_hat), ("continuous", t.f)):
            rec = tokenizer.decode(latent, path).float().cpu()
            sums[f"mse_{path}"] += float(mse(rec, x.cpu()).sum())
            sums[f"psnr_{path}"] += float(psnr(rec, x.cpu()).sum())
            recons[path].append(rec)
        originals.append(x.cpu())
    originals = torch.cat(originals)
    p = counts / counts.sum()
    result = {k: round(v / n, 5) for k, v in sums.items()}
    result.update({
        "n": n,
        "codebook_usage": round(float((counts > 0).double().mean()), 4),  # share of the V codes used at all
        "perplexity": round(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), 2),  # effective codes
        "hf_ratio_discrete": round(high_frequency_ratio(torch.cat(recons["discrete"]), originals), 4),
        "hf_ratio_continuous": round(high_frequency_ratio(torch.cat(recons["continuous"]), originals), 4),
    })
    result["psnr_gain_db"] = round(result["psnr_continuous"] - result["psnr_discrete"], 3)
    return result
