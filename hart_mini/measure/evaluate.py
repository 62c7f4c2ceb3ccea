"""Evaluation: the numbers behind every claim of the course.

Tokenizer: reconstruction quality of the discrete path (decode f_hat) and the continuous path (decode f),
how much of the codebook is used, how much high-frequency detail each path keeps, and (with a judge) the
Frechet distance of each path's reconstructions to the originals.
Generators (HART, its ablations, the diffusion baseline): FD of judge features, generated vs held-out
real images, and prompt accuracy, on N prompts taken from held-out captions.

Noise. One number from one run hides how far it moves with the luck of the draw, so every generator
number comes with its spread: FD as mean +- sd over sampling seeds, each accuracy with its binomial
standard error sqrt(p (1 - p) / n). A difference between two results is called "inside the noise" when it
is smaller than their combined spread sqrt(noise_a^2 + noise_b^2), or, for the same trained models measured
two ways, than the spread of the per-training-seed differences (`verdict`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from hart_mini.measure.metrics import frechet_distance, high_frequency_ratio, mse, psnr
from hart_mini.model.data import ToyShapes, parse_caption


def in_time(deadline: float | None, last_s: float) -> bool:
    """Is there time for one more batch like the last one (which took last_s) before `deadline` (a
    time.perf_counter() value; None: no deadline)?"""
    return deadline is None or time.perf_counter() + last_s <= deadline


@torch.no_grad()
def evaluate_tokenizer(tokenizer, data: ToyShapes, n: int = 1000, batch_size: int = 250, judge=None,
                       deadline: float | None = None) -> dict:
    """Reconstruction metrics on the first n images of `data` (held-out: use the 'test' split). deadline:
    stop after the batch that leaves no time for another (then 'n' says how many were measured)."""
    if n < 1 or n > len(data):
        raise ValueError(f"n={n} is invalid: expected 1..{len(data)} images of the {data.split!r} split")
    device = next(tokenizer.parameters()).device
    tokenizer.eval()
    V = tokenizer.cfg.codebook_size
    counts = torch.zeros(V, dtype=torch.float64)
    sums = {"mse_discrete": 0.0, "mse_continuous": 0.0, "psnr_discrete": 0.0, "psnr_continuous": 0.0}
    originals, recons = [], {"discrete": [], "continuous": []}
    planned, n = n, 0
    while n < planned:
        tic = time.perf_counter()
        x = data.batch(range(n, min(n + batch_size, planned)))["image"].to(device)
        tokens = tokenizer.tokenize(x)
        counts += torch.bincount(tokens.sequence.flatten().cpu(), minlength=V).double()
        for path, latent in (("discrete", tokens.f_hat), ("continuous", tokens.f)):
            rec = tokenizer.decode(latent, path).float().cpu()
            sums[f"mse_{path}"] += float(mse(rec, x.cpu()).sum())
            sums[f"psnr_{path}"] += float(psnr(rec, x.cpu()).sum())
            recons[path].append(rec)
        originals.append(x.cpu())
        n += len(x)
        if not in_time(deadline, 2 * (time.perf_counter() - tic)):  # x 2: the spectra and FD come after
            break
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
    if judge is not None and n >= 2:
        real = judge_features(judge, originals)
        for path in ("discrete", "continuous"):
            result[f"fd_{path}"] = round(frechet_distance(judge_features(judge, torch.cat(recons[path])), real), 4)
    if n < planned:
        result.update(n_planned=planned, cut_by_deadline=True)
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


def attribute_counts(captions: list[str]) -> dict[str, int]:
    """How many trials each accuracy of `prompt_accuracy` counts: the position and prompt_accuracy_one only on
    one-object captions, the relation and prompt_accuracy_two only on two-object ones, everything else on
    every caption."""
    objects = [len(parse_caption(c)["objects"]) for c in captions]
    counts = {f"acc_{k}": len(captions) for k in ("count", "shape", "colour", "size", "texture")}
    counts.update(prompt_accuracy=len(captions), acc_position=objects.count(1), acc_relation=objects.count(2),
                  prompt_accuracy_one=objects.count(1), prompt_accuracy_two=objects.count(2))
    return counts


@torch.no_grad()
def evaluate_generator(generate: Callable[[list[str], int], torch.Tensor], judge, data_config, n: int = 1000,
                       batch_size: int = 100, reference: dict | None = None, deadline: float | None = None) -> dict:
    """FD and prompt accuracy of generate(prompts, seed) -> images in [0, 1], on n held-out captions.

    Batch i of the prompts is drawn with seed i (its first prompt's index). reference: held_out(data_config,
    n), when the caller already has it. deadline: stop after the batch that leaves no time for another
    (at least 2 samples); then 'n' says how many were measured, and FD compares them with as many real ones.
    """
    from hart_mini.measure.judge import prompt_accuracy

    if n < 2:
        raise ValueError(f"n={n} is invalid: FD needs at least 2 samples")
    real = reference or held_out(data_config, n)
    fakes, planned, n = [], n, 0
    while n < planned:
        tic = time.perf_counter()
        fakes.append(generate(real["caption"][n:min(n + batch_size, planned)], n).float().cpu() * 2 - 1)
        n += len(fakes[-1])
        if n >= 2 and not in_time(deadline, time.perf_counter() - tic):
            break
    fakes = torch.cat(fakes)
    fd = frechet_distance(judge_features(judge, fakes), judge_features(judge, real["image"][:n]))
    device = next(judge.parameters()).device
    hits, totals = {}, attribute_counts(real["caption"][:n])
    for i in range(0, n, 500):  # in chunks, so the judge's activations fit any device
        captions = real["caption"][i:min(i + 500, n)]
        part, counts = prompt_accuracy(judge, fakes[i:i + 500].to(device), captions), attribute_counts(captions)
        for k, v in part.items():
            if k != "n":  # an accuracy times the trials it counted: the hits of this chunk
                hits[k] = hits.get(k, 0) + v * counts.get(k, len(captions))
    result = {"n": n, "fd": round(fd, 4)}
    result.update({k: round(v / totals.get(k, n), 4) for k, v in hits.items() if totals.get(k, n)})
    if n < planned:
        result.update(n_planned=planned, cut_by_deadline=True)
    return result


def binomial_se(p: float, n: int) -> float:
    """Standard error of a share p measured on n independent trials: sqrt(p (1 - p) / n)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is invalid: expected the number of trials, an integer >= 1")
    if not 0 <= p <= 1:
        raise ValueError(f"p={p!r} is invalid: expected a share in [0, 1]")
    return math.sqrt(p * (1 - p) / n)


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator) of one number measured several times;
    the sd is 0 for a single value, which says nothing about the noise."""
    if len(values) == 0:
        raise ValueError("seed_spread needs at least one value")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate_seeds(rows: list[dict], counts: dict[str, int]) -> dict:
    """One result from the same evaluation repeated with other sampling seeds (rows from evaluate_generator).

    Every metric is the mean over seeds; FD also gets its sd over seeds (`fd_sd`), and each accuracy its
    binomial standard error (`<name>_se`) on the trials of ONE seed (`counts`, from attribute_counts): the
    seeds repeat the same prompts, so pooling them would not give seeds x n independent trials.
    """
    metrics = [k for k in rows[0] if k == "fd" or k.startswith("prompt_accuracy") or k.startswith("acc_")]
    out = {"n": rows[0]["n"]}
    for k in metrics:
        mean, sd = seed_spread([r[k] for r in rows])
        out[k] = round(mean, 4)
        if k == "fd":
            out["fd_sd"] = round(sd, 4)
        else:
            out[f"{k}_se"] = round(binomial_se(min(max(mean, 0.0), 1.0), counts.get(k, out["n"])), 4)
    return out


def evaluate_seeds(generate: Callable[[list[str], int], torch.Tensor], judge, data_config, n: int = 1000,
                   seeds: Sequence[int] = (0, 1000, 2000), reference: dict | None = None,
                   batch_size: int = 100, desc: str | None = None) -> dict:
    """evaluate_generator once per sampling seed s (batch i drawn with seed s + i, batch_size prompts) and
    aggregate_seeds of the results, with the seeds and every seed's own row (`per_seed`). desc: show a
    progress bar of the images drawn, under that name."""
    from tqdm.auto import tqdm

    if len(seeds) == 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)} is invalid: expected one or more distinct integers")
    real = reference or held_out(data_config, n)
    bar = tqdm(total=n * len(seeds), desc=desc, unit="image", disable=desc is None, leave=False)

    def drawn(prompts: list[str], i: int, s: int) -> torch.Tensor:
        images = generate(prompts, s + i)
        bar.update(len(prompts))
        return images

    rows = [evaluate_generator(lambda prompts, i, s=s: drawn(prompts, i, s), judge, data_config, n,
                               batch_size, reference=real) for s in seeds]
    bar.close()
    return {**aggregate_seeds(rows, attribute_counts(real["caption"][:n])), "seeds": list(seeds),
            "per_seed": [{"seed": s, **r} for s, r in zip(seeds, rows)]}


LOWER_IS_BETTER = ("fd",)


def noise(row: dict, metric: str) -> float:
    """The spread a difference in `metric` is judged against: the larger of the spread over training seeds
    (`<metric>_sd`, when the row aggregates several trained models) and the sampling noise (FD's sd over
    sampling seeds, an accuracy's binomial SE). Two training runs give a poor sd, so it never counts for
    less than the sampling noise alone."""
    if metric == "fd":
        return max(row.get("fd_sd", 0.0), row.get("fd_sd_sampling", 0.0))
    return max(row.get(f"{metric}_sd", 0.0), row.get(f"{metric}_se", 0.0))


def spread_of_difference(a: dict, b: dict, metric: str, paired: bool = False) -> float:
    """The noise of a[metric] - b[metric]: sqrt(noise_a^2 + noise_b^2). paired: a and b are the same trained
    models measured two ways (e.g. one HART with its head on and skipped), so what varies from one training
    seed to the next cancels: the sd over training seeds of the per-seed differences, never below the
    sampling noise of the difference."""
    if not paired:
        return math.hypot(noise(a, metric), noise(b, metric))
    pairs = list(zip(a["per_train_seed"], b["per_train_seed"]))
    if any(x["train_seed"] != y["train_seed"] for x, y in pairs):
        raise ValueError("a paired comparison needs the same training seeds on both sides")
    sampling = math.hypot(statistics.fmean(noise(x, metric) for x, _ in pairs),
                          statistics.fmean(noise(y, metric) for _, y in pairs))
    return max(seed_spread([x[metric] - y[metric] for x, y in pairs])[1], sampling)


def clearly_better(a: dict, b: dict, metric: str, paired: bool = False) -> bool:
    """Is a better than b on `metric` (lower FD, higher accuracy) by at least the noise of the difference
    (spread_of_difference)? A difference smaller than that is inside the noise."""
    difference = a[metric] - b[metric]
    if difference == 0 or abs(difference) < spread_of_difference(a, b, metric, paired):
        return False
    return (difference < 0) == (metric in LOWER_IS_BETTER)


def verdict(a: dict, b: dict, metric: str, paired: bool = False) -> dict:
    """Compare rows a and b (each with a 'label') on one metric: the difference a - b, its noise and the
    verdict: '<label> better' when clearly_better, else 'inside the noise'."""
    if clearly_better(a, b, metric, paired):
        said = f"{a['label']} better"
    elif clearly_better(b, a, metric, paired):
        said = f"{b['label']} better"
    else:
        said = "inside the noise"
    return {"metric": metric, "a": a["label"], "b": b["label"], "a_value": a[metric], "b_value": b[metric],
            "difference": round(a[metric] - b[metric], 4), "paired": paired,
            "noise": round(spread_of_difference(a, b, metric, paired), 4), "verdict": said}


def aggregate_training_seeds(rows: list[dict], label: str) -> dict:
    """One result from the same variant trained with several training seeds (rows from evaluate_seeds).

    Every metric is the mean over training seeds with its sd over them (`<metric>_sd`); the sampling noise
    of that mean stays beside it (`fd_sd_sampling`: the mean of the rows' sampling sds; `<acc>_se`: binomial
    on the trials of one run). `noise` takes the larger of the two.
    """
    metrics = [k for k in rows[0] if k == "fd" or k == "prompt_accuracy" or
               (k.startswith("acc_") and not k.endswith("_se"))]
    out = {"label": label, "n": rows[0].get("n"), "train_seeds": [r["train_seed"] for r in rows]}
    for k in metrics:
        mean, sd = seed_spread([r[k] for r in rows])
        out[k], out[f"{k}_sd"] = round(mean, 4), round(sd, 4)
        if k == "fd":
            out["fd_sd_sampling"] = round(statistics.fmean(r.get("fd_sd", 0.0) for r in rows), 4)
        else:
            out[f"{k}_se"] = round(statistics.fmean(r.get(f"{k}_se", 0.0) for r in rows), 4)
    if all("seconds_per_16_images" in r for r in rows):
        out["seconds_per_16_images"] = round(statistics.fmean(r["seconds_per_16_images"] for r in rows), 4)
    out["per_train_seed"] = rows
    return out
