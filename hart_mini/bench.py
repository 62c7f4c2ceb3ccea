"""Benchmark: HART vs its discrete-only path vs the latent diffusion baseline, in one process.

For each generator: latency (batch 1) and throughput (a large batch), each the median of several timed
runs after warm-up (CUDA is timed with events); MACs per image counted by torch's FlopCounterMode (MACs =
FLOPs / 2, matmuls, convs and attention); parameter counts; FD and prompt accuracy on the same N
prompts. Ratios are HART over the baseline, so "throughput 10x" means HART draws 10 images per baseline
image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from hart_mini.evaluate import evaluate_generator, held_out


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall-clock seconds of fn() over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def macs_per_image(fn: Callable[[], object], batch: int) -> float:
    """Multiply-accumulates per image of fn(), which draws `batch` images."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2 / batch


def benchmark(generators: dict[str, tuple[Callable, int]], judge, data_config, device: torch.device,
              n_eval: int = 1000, throughput_batch: int = 64, repeats: int = 5, baseline: str = "diffusion") -> dict:
    """generators: name -> (generate(prompts, seed) -> images in [0, 1], parameter count)."""
    reference = held_out(data_config, max(n_eval, throughput_batch))
    prompts = reference["caption"]
    out = {"device": str(device), "n_eval": n_eval, "throughput_batch": throughput_batch, "repeats": repeats,
           "models": {}}
    for name, (generate, params) in generators.items():
        one, many = prompts[:1], prompts[:throughput_batch]
        single = lambda g=generate, p=one: g(p, 0)
        batch = lambda g=generate, p=many: g(p, 0)
        row = {"parameters": params, "latency_s": timed(single, device, repeats),
               "macs_per_image": macs_per_image(single, 1)}
        row["throughput_img_s"] = throughput_batch / timed(batch, device, max(repeats // 2, 1))
        if n_eval >= 2:
            subset = {k: v[:n_eval] for k, v in reference.items()}
            row.update(evaluate_generator(generate, judge, data_config, n_eval, reference=subset))
        out["models"][name] = row
    if baseline in out["models"]:
        base = out["models"][baseline]
        for name, row in out["models"].items():
            if name == baseline:
                continue
            out.setdefault("ratios_vs_" + baseline, {})[name] = {
                "throughput": round(row["throughput_img_s"] / base["throughput_img_s"], 2),
                "latency": round(base["latency_s"] / row["latency_s"], 2),
                "macs": round(base["macs_per_image"] / row["macs_per_image"], 2),
            }
    return out


def kv_cache_speedup(presets: list, device: torch.device, batch: int = 8, repeats: int = 5) -> dict:
    """Sampling time with and without the KV cache, for untrained models of each preset's size (the cache's
    effect on time does not depend on the weights). Discrete tokens only, with guidance (doubled batch)."""
    from hart_mini.data import ToyShapes
    from hart_mini.hart import HART
    from hart_mini.text import CaptionTokenizer
    from hart_mini.tokenizer import HybridTokenizer

    out = {}
    for preset in presets:
        torch.manual_seed(0)
        model = HART(preset.transformer, HybridTokenizer(preset.tokenizer), CaptionTokenizer.toyshapes(),
                     None).to(device).eval()
        prompts = ToyShapes(preset.data, "test").batch(range(batch))["caption"]
        def run(cache: bool, model=model, prompts=prompts) -> None:
            model.sample_latent(prompts, cfg_scale=3.0, seed=0, use_cache=cache, use_head=False)

        cached, uncached = timed(lambda: run(True), device, repeats), timed(lambda: run(False), device, repeats)
        out[preset.name] = {"image_size": preset.data.image_size, "tokens": preset.tokenizer.num_tokens,
                            "scales": len(preset.tokenizer.scales), "width": preset.transformer.width,
                            "depth": preset.transformer.depth, "batch": batch,
                            "seconds_with_cache": round(cached, 4), "seconds_without_cache": round(uncached, 4),
                            "speedup": round(uncached / cached, 2)}
    return out
