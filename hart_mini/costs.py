"""What each stage of the pipeline costs: counted by the cost model, or measured on the device.

    stage_model(name, preset, device)    a fresh model of a training stage, its parameters and its loss
    count_costs(preset, device, sizes)   hart_mini.budget's FLOPs and bytes of every training step and every
                                         sampling call the evaluation makes
    dry_run(opts)                        the plan from those counts, for a GPU named by opts.target, without
                                         training; it reads no clock, so it is the same on any machine, busy
                                         or idle
    time_stage(...)                      a timing burst: real training steps of one stage, timed, on the device
    attention_kernels(run)               which SDPA kernel a call really ran

hart_mini.plan turns these numbers into a plan; hart_mini.pipeline measures, plans and runs.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from hart_mini.config import get_preset
from hart_mini.plan import (
    DRAW_CPU_S,
    DRAW_WORKERS,
    FIGURE_S,
    JUDGE_WIDTH,
    KEPT_QUANTILES,
    OVERHEAD_S,
    SPECTRUM_CPU_S,
    STAGES,
    STARTUP_S,
    TOKENIZER_BATCH,
    PipelineOptions,
    Stage,
    after_seconds,
    estimated_seconds,
    expected_kept,
    make_plan,
    mean_step_s,
    rehearsal_preset,
    repeat_steps,
    timed_kept_counts,
)

PACK_S = 0.5  # a dry run's guess for packing the figures archive


def preset_of(opts: PipelineOptions):
    """The preset a pipeline runs: opts.preset, cut to a rehearsal's steps and batch with opts.rehearse."""
    preset = get_preset(opts.preset)
    return rehearsal_preset(preset, opts.rehearse_batch) if opts.rehearse else preset


def stage_model(name: str, preset, device: torch.device, tokenizer=None):
    """A fresh model of a training stage, its trained parameters, and its loss on a batch that holds image,
    labels, ids and mask on the device: what the cost model counts and a timing burst runs. (train.py's
    recipes build the same models; these are untrained, which costs the same.)"""
    from hart_mini.measure.judge import Judge
    from hart_mini.model.baselines import LatentDiffusion
    from hart_mini.model.hart import HART
    from hart_mini.model.text import CaptionTokenizer
    from hart_mini.model.tokenizer import HybridTokenizer

    text = CaptionTokenizer.toyshapes(preset.transformer.text_len)
    if name in ("tokenizer_a", "tokenizer_b"):
        model = HybridTokenizer(preset.tokenizer).to(device)
        if name == "tokenizer_a":
            return model, model.stage_a_parameters(), lambda b: model.stage_a_loss(b["image"])
        return model, model.start_stage_b(), lambda b: model.stage_b_loss(b["image"])
    if name == "judge":
        model = Judge(preset.data.image_size, JUDGE_WIDTH).to(device)
        return model, list(model.parameters()), lambda b: model.loss(b["image"], b["labels"])
    tokenizer = tokenizer if tokenizer is not None else HybridTokenizer(preset.tokenizer).to(device)
    if name == "diffusion":
        model = LatentDiffusion(preset.transformer, tokenizer, text, preset.baseline).to(device)
    else:
        head = preset.head if name == "hart" else preset.head.for_mode("off")
        model = HART(preset.transformer, tokenizer, text, head).to(device)
    return model, model.trainable_parameters(), lambda b: model.loss(b["image"], (b["ids"], b["mask"]))


def sample_batch(preset, n: int, device: torch.device) -> dict:
    """n validation images, tokenized, on the device: for counting costs."""
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.text import CaptionTokenizer

    batch = ToyShapes(preset.data, "val").batch(range(n))
    batch["ids"], batch["mask"] = CaptionTokenizer.toyshapes(preset.transformer.text_len)(batch["caption"])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def keep_last(model, count: int) -> None:
    """Make HART's token subsampling keep `count` last-scale tokens at every step (random which ones)."""
    n = model.scales[-1] ** 2
    model.kept_last_tokens = lambda device: torch.randperm(n, device=device)[:count].sort().values


# --- counted: the cost model ----------------------------------------------------------------------------


def count_costs(preset, device: torch.device, sizes: dict) -> dict:
    """hart_mini.budget costs of every training step (at its batch) and of every sampling call the
    evaluation makes (at the evaluation batch, at batch 1 and at the throughput batch), counted on `device`
    under bf16 autocast at batches of 1 and 2."""
    from hart_mini.budget import StepCost, count_at_two_sizes, step_cost

    batch = sample_batch(preset, 2, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    costs, models = {}, {}
    for stage in STAGES:
        cfg = getattr(preset, stage.train)
        model, params, loss = stage_model(stage.name, preset, device)
        models[stage.name] = model
        if getattr(model, "head_cfg", None) is not None and model.head_cfg.last_drop > 0:
            keep_last(model, expected_kept(model.head_cfg, model.scales[-1] ** 2))  # a step of average length

        def run(n: int, model=model, loss=loss) -> None:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            with amp:
                value, _ = loss({k: v[:n] for k, v in batch.items()})
            value.backward()

        costs[stage.name] = step_cost(run, cfg.batch_size, sum(p.numel() for p in params), cfg.ema > 0)
    prompts, diffusion = batch["caption"], models["diffusion"]
    samplers = {"hart": lambda n: models["hart"].generate(prompts[:n]),
                "hart_head_skipped": lambda n: models["hart"].generate(prompts[:n], use_head=False),
                # the baseline's 30 steps: counted with 1 and with 2 steps, the step's cost repeated (below)
                "diffusion_1": lambda n: diffusion.generate(prompts[:n], sampling_steps=1),
                "diffusion_2": lambda n: diffusion.generate(prompts[:n], sampling_steps=2)}
    counted = {}
    for name, sample in samplers.items():
        with amp:
            counted[name] = count_at_two_sizes(sample)
    for label, size in (("eval", sizes["batch"]), ("one", 1), ("throughput", sizes["throughput_batch"])):
        for name in ("hart", "hart_head_skipped"):
            costs[f"sample_{name}_{label}"] = StepCost(size, counted[name].at(size))
        one, two = counted["diffusion_1"].at(size), counted["diffusion_2"].at(size)
        costs[f"sample_diffusion_{label}"] = repeat_steps(one, two, size, preset.baseline.sampling_steps)
    return costs


def estimated_calls(sample: dict, sizes: dict, image_size: int) -> dict:
    """A dry run's `call` seconds for plan.after_seconds: sampling from the cost model, the CPU work it cannot
    count (spectra, figures, packing) from fixed per-image and per-figure costs."""
    calls = {f"{x}_{g}": sample[f"{g}_{x}"] for g in ("hart", "hart_head_skipped", "diffusion")
             for x in ("one", "throughput")}
    calls.update({f"eval_{g}": sample[f"{g}_eval"] for g in ("hart", "hart_head_skipped", "diffusion")})
    calls["tokenizer_eval"] = (sample["hart_head_skipped_eval"] * TOKENIZER_BATCH / sizes["batch"]
                               + SPECTRUM_CPU_S[image_size] * TOKENIZER_BATCH)
    calls["samples"] = (2 * sample["hart_one"] + 2 * sample["hart_head_skipped_one"] + sample["diffusion_one"]
                        + 2 * FIGURE_S)
    calls["pack"] = PACK_S
    return calls


def dry_run(opts: PipelineOptions) -> dict:
    """The plan from the cost model for opts.target, without training: every op counted on this CPU. No
    clock is read for the plan (only for `counted_in_s`), so a busy machine plans what an idle one does."""
    from hart_mini.budget import DEVICES

    preset, spec, sizes = preset_of(opts), DEVICES[opts.target], opts.eval_sizes
    start = time.perf_counter()
    costs = count_costs(preset, torch.device("cpu"), sizes)

    def plan_on(device) -> dict:
        step_s, sample = estimated_seconds(costs, device)
        calls = estimated_calls(sample, sizes, preset.data.image_size)
        burst = lambda s: sum(burst_steps(s, preset, opts.burst_window)) * step_s[s.name] + OVERHEAD_S[preset.name]
        images = preset.data.train_size + max(sizes["n"], sizes["judge_n"])
        fixed = {"startup": STARTUP_S, "data": images * DRAW_CPU_S[preset.data.image_size] / DRAW_WORKERS,
                 "timing": sum(burst(s) for s in STAGES) + sum(v for k, v in calls.items() if k != "pack")}
        overhead = {s.name: OVERHEAD_S[preset.name] for s in STAGES}
        after = after_seconds(calls, sizes, preset.baseline.sampling_steps)
        return make_plan(preset, opts, step_s, overhead, fixed, after, f"estimated for an {device.name} by "
                         "hart_mini.budget")

    plan = plan_on(spec)
    plan["costs"] = {k: c.summary(spec) for k, c in costs.items()}
    half = dataclasses.replace(spec, attention_tflops=spec.attention_tflops / 2)
    slow = plan_on(half)
    plan["at_half_the_attention_rate"] = {
        "attention_tflops": half.attention_tflops, "factor": slow["factor"], "fits": slow["fits"],
        "expected_total_s": slow["expected_total_s"], "skipped": sorted(slow["skipped"]),
        "step_ms": {k: v["step_ms"] for k, v in slow["stages"].items()}}
    plan["counted_in_s"] = round(time.perf_counter() - start, 1)
    return plan


def burst_steps(stage: Stage, preset, window: int) -> tuple[int, int]:
    """(warm-up steps, timed steps) of a stage's timing burst: `window` of each, or KEPT_QUANTILES timed ones
    where HART drops last-scale tokens (one per kept-count bin, plan.timed_kept_counts). A rehearsal's
    window is 0: one step, timed, whatever it costs."""
    drops = stage.name in ("hart", "discrete") and preset.head.last_drop > 0
    return window, (KEPT_QUANTILES if drops and window > 0 else max(window, 1))


# --- measured: timing bursts on the device --------------------------------------------------------------


def time_stage(stage: Stage, preset, device: torch.device, data, folder, window: int, shown,
               tokenizer=None, compile: bool = False, batch: int | None = None) -> dict:
    """One timing burst: the stage's model built, its warm-up and timed steps (burst_steps; where HART drops
    last-scale tokens, the timed steps keep one count from each bin of the draw, the warm-up the largest),
    at the stage's batch (or `batch`), ending with a checkpoint and the stage's figures of `shown`
    (checkpoint_figures; none if `shown` is None) in `folder`, as the real stage ends. Returns the model,
    the seconds per step (the mean over the timed steps) and the overhead: the burst's wall time less its
    steps at that speed (build, warm-up, checkpoint, figures)."""
    from hart_mini.train import RunOptions, checkpoint_figures, fit, toyshapes_batches

    tic = time.perf_counter()
    cfg = getattr(preset, stage.train)
    warm, timed = burst_steps(stage, preset, window)
    steps = warm + timed
    cfg = dataclasses.replace(cfg, steps=steps, log_every=max(warm, 1), checkpoint_every=steps, warmup_steps=1,
                              batch_size=batch or cfg.batch_size)
    torch.manual_seed(0)
    model, params, loss = stage_model(stage.name, preset, device, tokenizer)
    if getattr(model, "head_cfg", None) is not None and model.head_cfg.last_drop > 0:  # the kept count, by step
        counts = timed_kept_counts(model.head_cfg, model.scales[-1] ** 2, timed)
        schedule = [max(counts)] * warm + counts

        def loss(b, plain=loss):
            keep_last(model, schedule[b["step"]])
            return plain(b)

    keys = {"tokenizer_a": ("recon", "vq"), "tokenizer_b": ("recon",), "judge": ()}.get(stage.name, ("ce", "diff"))
    figures = None if stage.name == "judge" or shown is None else checkpoint_figures(model, shown, folder, keys)
    result = fit(model, params, toyshapes_batches(data, cfg), loss, cfg, folder, {}, RunOptions(
        device=str(device), compile=compile), on_checkpoint=figures, desc=f"timing {stage.name}")
    step_s = mean_step_s(result["history"], cfg.batch_size)  # the warm-up window left out, if there is one
    return {"model": model, "step_s": step_s, "overhead_s": max(time.perf_counter() - tic - steps * step_s, 0.0),
            "batch": cfg.batch_size}


def attention_kernels(run) -> list[str]:
    """The attention kernels run() ran, by their aten names: on CUDA the block-causal mask leaves the
    memory-efficient kernel (flash takes no mask; runtime.cuda_settings turns cuDNN's off); ['math'] when
    attention ran unfused."""
    from hart_mini.budget import count_ops

    names = sorted({op.name.removeprefix("aten.") for op in count_ops(run) if op.kind == "attention"})
    return names or ["math"]
