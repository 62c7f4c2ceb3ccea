"""Evaluation: the numbers behind every claim of the course.

Tokenizer: reconstruction quality of the discrete path (decode f_hat) and the continuous path (decode f),
how much of the codebook is used, how much high-frequency detail each path keeps, and (with a judge) the
Frechet distance of each path's reconstructions to the originals.
Generators (HART, its ablations, the diffusion baseline): FD of judge features, generated vs held-out
real images, and prompt accuracy, on N prompts taken from held-out captions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hart_mini.data import ToyShapes
from hart_mini.metrics import frechet_distance, high_frequency_ratio, mse, psnr


@torch.no_grad()
def evaluate_tokenizer(tokenizer, data: ToyShapes, n: int = 1000, batch_size: int = 250, judge=None) -> dict:
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
        tokens = tokenizer.tokenize(x)
        counts += torch.bincount(tokens.sequence.flatten().cpu(), minlength=V).double()
        for path, latent in (("discrete", tokens.f_hat), ("continuous", tokens.f)):
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
    if judge is not None:
        real = judge_features(judge, originals)
        for path in ("discrete", "continuous"):
            result[f"fd_{path}"] = round(frechet_distance(judge_features(judge, torch.cat(recons[path])), real), 4)
    return result


@torch.no_grad()
def judge_features(judge, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Judge features of images (N, 3, H, W) in [-1, 1], (N, F) on the CPU."""
    device = next(judge.parameters()).device
    return torch.cat([judge.features(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


def held_out(data_config, n: int) -> dict:
    """The first n images of the test split: the real reference set and the prompts for generation."""
    return ToyShapes(data_config, "test", size=max(n, 1)).batch(range(n))


@torch.no_grad()
def evaluate_generator(generate: Callable[[list[str], int], torch.Tensor], judge, data_config, n: int = 1000,
                       batch_size: int = 100, reference: dict | None = None) -> dict:
    """FD and prompt accuracy of generate(prompts, seed) -> images in [0, 1], on n held-out captions.

    reference: held_out(data_config, n), when the caller already has it.
    """
    from hart_mini.judge import prompt_accuracy

    if n < 2:
        raise ValueError(f"n={n} is invalid: FD needs at least 2 samples")
    real = reference or held_out(data_config, n)
    fakes = torch.cat([generate(real["caption"][i:i + batch_size], i).float().cpu() * 2 - 1
                       for i in range(0, n, batch_size)])
    fd = frechet_distance(judge_features(judge, fakes), judge_features(judge, real["image"]))
    device = next(judge.parameters()).device
    acc = {}
    for i in range(0, n, 500):
        part = prompt_accuracy(judge, fakes[i:i + 500].to(device), real["caption"][i:i + 500])
        for k, v in part.items():
            acc[k] = acc.get(k, 0) + v * part["n"]
    result = {"n": n, "fd": round(fd, 4)}
    result.update({k: round(v / n, 4) for k, v in acc.items() if k != "n"})
    return result
