"""Benchmark: HART against the latent diffusion baseline at matched quality, in one process on one device.

The quality-speed frontier. Every sampling setting is a point: FD (mean +- sd over sampling seeds),
prompt accuracy and per-attribute accuracies (each with its binomial standard error), throughput (images/s
at a large batch), latency (batch 1) and MACs per image. The points: the baseline at several DDIM step
counts, HART at several head step counts, and HART's discrete-only path.

Both models' guidance is tuned by one rule (`choose_cfg`): over a cfg sweep, the lowest FD among the
settings whose prompt accuracy is inside the noise of the best one. The headline (`matched_quality`):
HART's throughput and MACs ratios against the baseline at the fewest DDIM steps at which the baseline
reaches HART's quality, i.e. neither its FD nor its prompt accuracy is worse than HART's by more than
their combined noise (evaluate.clearly_better); null steps when no swept step count does. Beside it, the
ratios at every swept step count (30 and 50 are the regime the HART paper compares with).

Timing: latency and throughput are each the median of several timed runs after warm-up (CUDA timed with
events); MACs are counted by torch's FlopCounterMode (MACs = FLOPs / 2: matmuls, convs, attention).
Ratios are HART over the baseline: "throughput 10x" means HART draws 10 images per baseline image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from hart_mini.config import require
from hart_mini.course import viz
from hart_mini.measure.evaluate import clearly_better, evaluate_seeds, held_out

BASELINE_STEPS = (5, 10, 20, 30, 50)
HEAD_STEPS = (1, 2, 4, 8, 16)
CFGS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0)
SEEDS = (0, 1000, 2000)
CFG_RULE = ("the lowest FD among the cfg settings whose prompt accuracy is not clearly below the best one "
            "(inside their combined binomial SE); the same rule for HART and the baseline")
MATCH_RULE = ("the fewest DDIM steps at which the baseline's FD and prompt accuracy are each better than HART's "
              "or inside the noise of HART's (difference < sqrt(noise_HART^2 + noise_baseline^2); noise: FD's sd "
              "over sampling seeds, the accuracy's binomial SE); null when no swept step count does")


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


def speed(generate: Callable, prompts: list[str], device: torch.device, batch: int, repeats: int) -> dict:
    """Latency (batch 1), throughput (`batch` images per call) and MACs per image of generate(prompts, seed)."""
    one, many = prompts[:1], prompts[:batch]
    return {"latency_s": timed(lambda: generate(one, 0), device, repeats),
            "throughput_img_s": batch / timed(lambda: generate(many, 0), device, max(repeats // 2, 1)),
            "macs_per_image": macs_per_image(lambda: generate(one, 0), 1)}


def ratios(model: dict, baseline: dict) -> dict:
    """How many times faster (throughput, latency) and cheaper (MACs) `model` is than `baseline`."""
    return {"throughput": round(model["throughput_img_s"] / baseline["throughput_img_s"], 2),
            "latency": round(baseline["latency_s"] / model["latency_s"], 2),
            "macs": round(baseline["macs_per_image"] / model["macs_per_image"], 2)}


def choose_cfg(sweep: list[dict]) -> dict:
    """The guidance tuning rule (CFG_RULE): of rows with 'fd', 'prompt_accuracy' and their noise, the one
    with the lowest FD among those whose prompt accuracy is not clearly below the best prompt accuracy."""
    best = max(sweep, key=lambda r: r["prompt_accuracy"])
    close = [r for r in sweep if not clearly_better(best, r, "prompt_accuracy")]
    return min(close, key=lambda r: r["fd"])


def matched_point(hart: dict, baseline: list[dict]) -> dict | None:
    """MATCH_RULE: the baseline point with the fewest steps whose FD and prompt accuracy are not clearly
    worse than HART's; None when every point is clearly worse on at least one of them."""
    for point in sorted(baseline, key=lambda p: p["steps"]):
        if not any(clearly_better(hart, point, metric) for metric in ("fd", "prompt_accuracy")):
            return point
    return None


def _check_sweeps(n_eval: int, seeds: Sequence[int], baseline_steps: Sequence[int], head_steps: Sequence[int],
                  cfgs: Sequence[float], tune_at: str) -> None:
    require(n_eval == 0 or n_eval >= 2, "n_eval", n_eval, "0 (speed only) or >= 2 samples (FD needs 2)")
    require(len(seeds) >= 1 and len(set(seeds)) == len(seeds), "seeds", list(seeds), "distinct integers")
    for name, steps in (("baseline_steps", baseline_steps), ("head_steps", head_steps)):
        require(len(steps) >= 1 and all(isinstance(s, int) and s >= 1 for s in steps), name, list(steps),
                "one or more integers >= 1")
    require(len(cfgs) >= 1 and all(c >= 0 for c in cfgs), "cfgs", list(cfgs), "one or more numbers >= 0")
    require(n_eval > 0 or len(cfgs) == 1, "cfgs", list(cfgs), "one value when n_eval = 0 (no quality to tune on)")
    require(tune_at in ("default", "each"), "tune_at", tune_at, "'default' or 'each'")


def frontier(hart, baseline, judge, data_config, device: torch.device, n_eval: int = 1000,
             seeds: Sequence[int] = SEEDS, baseline_steps: Sequence[int] = BASELINE_STEPS,
             head_steps: Sequence[int] = HEAD_STEPS, cfgs: Sequence[float] = CFGS, tune_at: str = "default",
             throughput_batch: int = 64, repeats: int = 5, eval_batch: int = 100,
             deadline: float | None = None) -> dict:
    """The quality-speed frontier of HART (head steps) and the baseline (DDIM steps), and the headline.

    cfgs: the guidance sweep each model is tuned over by choose_cfg (one value: no tuning). tune_at:
    'default' tunes each model at its reference steps (HART's default head steps; the baseline's default
    DDIM steps, or the most swept when those are not swept) and uses that cfg at every step count; 'each'
    tunes at every swept step count (len(steps) times the cost).
    n_eval = 0 measures speed only, at the one guidance scale in cfgs. eval_batch: prompts per sampling call.
    deadline (a time.perf_counter() value): the core points (HART at its default head steps, its discrete
    path, the baseline at its reference steps) are always measured, first; each other point only if it
    should end before the deadline, judged from its model's core point (the baseline's time in proportion
    to its steps). Points left out are listed in 'cut'.
    """
    _check_sweeps(n_eval, seeds, baseline_steps, head_steps, cfgs, tune_at)
    hart_default = hart.head_cfg.sampling_steps
    head_steps = sorted(set(head_steps) | {hart_default})  # HART's headline point is always measured
    baseline_steps = sorted(set(baseline_steps))
    # the baseline's reference point (ratios_vs_diffusion): its default steps, or the most swept if not swept
    base_default = baseline.diffusion.sampling_steps
    base_default = base_default if base_default in baseline_steps else baseline_steps[-1]
    quality, tuned = n_eval >= 2, n_eval >= 2 and len(cfgs) > 1
    reference = held_out(data_config, max(n_eval, throughput_batch))
    prompts, real = reference["caption"], {k: v[:max(n_eval, 2)] for k, v in reference.items()}
    make = {"hart": lambda c, s: (lambda p, seed: hart.generate(p, cfg_scale=c, sampling_steps=s, seed=seed)),
            "discrete": lambda c, s: (lambda p, seed: hart.generate(p, cfg_scale=c, seed=seed, use_head=False)),
            "diffusion": lambda c, s: (lambda p, seed: baseline.generate(p, cfg_scale=c, sampling_steps=s,
                                                                         seed=seed))}
    params = {"hart": sum(p.numel() for p in hart.trainable_parameters()), "diffusion": baseline.parameter_count()}
    params["discrete"] = params["hart"] - hart.parameter_counts()["head"]

    tune_points = len(cfgs) * (len(head_steps) + len(baseline_steps) if tune_at == "each" else 2) if tuned else 0
    frontier_points = len(head_steps) + len(baseline_steps) + 1
    bar = tqdm(total=tune_points + frontier_points * (2 if quality else 1), desc="bench", dynamic_ncols=True)
    measured: dict[tuple, dict] = {}
    seconds = {"quality": 0.0, "speed": 0.0}  # where the time went, to plan larger runs

    def evaluate(name: str, cfg: float, steps: int | None) -> dict:
        bar.set_postfix_str(f"{name} cfg {cfg} steps {steps} (quality)")
        if (name, cfg, steps) not in measured:
            begin = time.perf_counter()
            measured[name, cfg, steps] = evaluate_seeds(make[name](cfg, steps), judge, data_config, n_eval, seeds,
                                                        real, eval_batch)
            seconds["quality"] += time.perf_counter() - begin
        bar.update(1)
        return measured[name, cfg, steps]

    tuning: dict[str, list[dict]] = {"hart": [], "diffusion": []}

    def cfg_for(name: str, steps: int) -> float:
        if not tuned:
            return float(cfgs[0])
        at = steps if tune_at == "each" else {"hart": hart_default, "diffusion": base_default}[name]
        for done in tuning[name]:
            if done["steps"] == at:
                return done["chosen"]
        sweep = [{"label": f"cfg {c}", "cfg": float(c), "steps": at, **evaluate(name, float(c), at)} for c in cfgs]
        tuning[name].append({"steps": at, "chosen": choose_cfg(sweep)["cfg"], "sweep": sweep})
        return tuning[name][-1]["chosen"]

    def point(name: str, steps: int | None, cfg: float) -> dict:
        row = {"model": name, "steps": steps, "cfg": cfg, "parameters": params[name]}
        if quality:
            row.update(evaluate(name, cfg, steps))
        bar.set_postfix_str(f"{name} cfg {cfg} steps {steps} (speed)")
        begin = time.perf_counter()
        row.update(speed(make[name](cfg, steps), prompts, device, throughput_batch, repeats))
        seconds["speed"] += time.perf_counter() - begin
        bar.update(1)
        return row

    core = [("diffusion", base_default), ("hart", hart_default), ("discrete", None)]
    extra = [("diffusion", s) for s in baseline_steps if s != base_default] + [
        ("hart", s) for s in head_steps if s != hart_default]
    points, took, cut = {"diffusion": [], "hart": [], "discrete": []}, {}, []
    for name, steps in core + extra:
        if (name, steps) in extra and deadline is not None:
            # the baseline's time is its steps' (its text and decoder are cheap); HART's head steps are a small
            # part of its time: fewer never counted as cheaper
            need = took[name] * (steps / base_default if name == "diffusion" else max(steps / hart_default, 1.0))
            if time.perf_counter() + need > deadline:
                cut.append({"model": name, "steps": steps, "needed_s": round(need, 1)})
                bar.update(2 if quality else 1)
                continue
        begin = time.perf_counter()
        cfg = cfg_for("hart" if name == "discrete" else name, hart_default if name == "discrete" else steps)
        points[name].append(point(name, steps, cfg))
        took.setdefault(name, time.perf_counter() - begin)
    for rows in points.values():
        rows.sort(key=lambda r: r["steps"] or 0)
    bar.close()

    hart_row = next(p for p in points["hart"] if p["steps"] == hart_default)
    base_row = next(p for p in points["diffusion"] if p["steps"] == base_default)
    out = {"device": str(device), "n_eval": n_eval, "seeds": list(seeds), "throughput_batch": throughput_batch,
           "repeats": repeats, "cfg": {"hart": hart_row["cfg"], "diffusion": base_row["cfg"]},
           "head_steps": hart_default, "baseline_steps": base_row["steps"],
           "models": {"hart": hart_row, "discrete": points["discrete"][0], "diffusion": base_row},
           "ratios_vs_diffusion": {name: ratios(points[name][0] if name == "discrete" else hart_row, base_row)
                                   for name in ("hart", "discrete")},
           "ratios_by_baseline_steps": {str(p["steps"]): ratios(hart_row, p) for p in points["diffusion"]},
           "frontier": points,
           "cfg_tuning": {"rule": CFG_RULE, "tune_at": tune_at, "sweep": [float(c) for c in cfgs], **tuning}
           if tuned else None,
           "matched_quality": matched_quality(hart_row, points["diffusion"]) if quality else
           {"baseline_steps": None, "throughput_ratio": None, "macs_ratio": None, "latency_ratio": None,
            "rule": MATCH_RULE, "note": "speed only (n_eval = 0): quality was not measured"},
           "seconds": {k: round(v, 1) for k, v in seconds.items()}, "cut": cut}
    return out


def matched_quality(hart_row: dict, baseline_rows: list[dict]) -> dict:
    """The headline: HART's ratios against the baseline at matched_point (null ratios when there is none)."""
    match = matched_point(hart_row, baseline_rows)
    keys = ("fd", "fd_sd", "prompt_accuracy", "prompt_accuracy_se")
    out = {"baseline_steps": match["steps"] if match else None, "rule": MATCH_RULE,
           "hart": {k: hart_row[k] for k in keys}, "baseline": {k: match[k] for k in keys} if match else None,
           "swept_steps": [p["steps"] for p in baseline_rows]}
    if match is None:
        out.update(throughput_ratio=None, macs_ratio=None, latency_ratio=None,
                   note="the baseline does not reach HART's quality at any swept step count")
        return out
    r = ratios(hart_row, match)
    out.update(throughput_ratio=r["throughput"], macs_ratio=r["macs"], latency_ratio=r["latency"])
    if match["steps"] == min(p["steps"] for p in baseline_rows):
        out["note"] = ("the baseline reaches HART's quality already at the fewest swept steps: fewer steps may "
                       "too, so these ratios are an upper bound")
    return out


def frontier_figure(result: dict) -> plt.Figure:
    """FD and prompt accuracy against images/s for every frontier point, error bars: FD's sd over sampling
    seeds, the accuracy's binomial SE. Each point is annotated with its step count; the matched point is
    circled."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=viz.DPI)
    styles = {"diffusion": ("tab:red", "baseline (label: DDIM steps)"),
              "hart": ("tab:blue", "HART (label: head steps)"), "discrete": ("tab:gray", "HART, discrete-only path")}
    match = result["matched_quality"]["baseline_steps"]
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    panels = ((axes[0], "fd", "fd_sd", "FD to real images (lower is better)"),
              (axes[1], "prompt_accuracy", "prompt_accuracy_se", "prompt accuracy (higher is better)"))
    for ax, key, err, title in panels:
        for name, rows in result["frontier"].items():
            x, y = [r["throughput_img_s"] for r in rows], [r[key] for r in rows]
            color, label = styles[name]
            ax.errorbar(x, y, yerr=[r[err] for r in rows], marker="o", ms=4, capsize=3, color=color, label=label)
            for r, xi, yi in zip(rows, x, y):
                if r["steps"] is not None:
                    ax.annotate(str(r["steps"]), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
                if name == "diffusion" and r["steps"] == match:
                    ax.scatter([xi], [yi], s=160, facecolors="none", edgecolors="black", zorder=3,
                               label=f"baseline at matched quality ({match} steps)")
        ax.set(xscale="log", xlabel=f"images / s (batch {result['throughput_batch']})", title=title)
        ax.xaxis.set_major_formatter(plain)  # 1, 2, 5, 10, 20, 50 rather than 2x10^0
        ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    mq = result["matched_quality"]
    headline = (f"at matched quality ({match} steps): HART {mq['throughput_ratio']}x the throughput, "
                f"{mq['macs_ratio']}x fewer MACs" if match else "the baseline never reaches HART's quality")
    paper = [f"{s} steps {r['throughput']}x" for s, r in result["ratios_by_baseline_steps"].items()
             if s in ("30", "50")]
    headline += f" (throughput at {', '.join(paper)})" if paper else ""
    fig.suptitle(f"{headline}; N = {result['n_eval']}, seeds {result['seeds']}, {result['device']}", fontsize=9)
    fig.tight_layout()
    return fig


def kv_cache_speedup(presets: list, device: torch.device, batch: int = 8, repeats: int = 5) -> dict:
    """Sampling time with and without the KV cache, for untrained models of each preset's size (the cache's
    effect on time does not depend on the weights). Discrete tokens only, with guidance (doubled batch)."""
    from hart_mini.model import sampling_variants
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.hart import HART
    from hart_mini.model.text import CaptionTokenizer
    from hart_mini.model.tokenizer import HybridTokenizer

    out = {}
    for preset in presets:
        torch.manual_seed(0)
        model = HART(preset.transformer, HybridTokenizer(preset.tokenizer), CaptionTokenizer.toyshapes(),
                     None).to(device).eval()
        prompts = ToyShapes(preset.data, "test").batch(range(batch))["caption"]
        def run(cache: bool, model=model, prompts=prompts) -> None:
            sampling_variants.sample_latent(model, prompts, cfg_scale=3.0, seed=0, use_cache=cache, use_head=False)

        cached, uncached = timed(lambda: run(True), device, repeats), timed(lambda: run(False), device, repeats)
        out[preset.name] = {"image_size": preset.data.image_size, "tokens": preset.tokenizer.num_tokens,
                            "scales": len(preset.tokenizer.scales), "width": preset.transformer.width,
                            "depth": preset.transformer.depth, "batch": batch,
                            "seconds_with_cache": round(cached, 4), "seconds_without_cache": round(uncached, 4),
                            "speedup": round(uncached / cached, 2)}
    return out
