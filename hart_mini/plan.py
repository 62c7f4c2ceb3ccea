"""The pipeline's plan: pure arithmetic from measured or estimated seconds to steps per stage.

    step seconds (timing bursts, or hart_mini.budget's cost model) + fixed costs (data, evaluation,
    benchmark, samples, overheads)  ->  one factor f on every stage's preset steps, the largest that fits
    the budget less its margin  ->  a plan (JSON) and its table

Nothing here trains, times or writes: hart_mini.pipeline measures and runs; this module only decides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hart_mini.config import PRESET_NAMES, TrainConfig, require

JUDGE_WIDTH = 32  # as train_judge builds it


@dataclass(frozen=True)
class Stage:
    """One training stage: its name, the preset field that holds its TrainConfig, what it is."""

    name: str
    train: str
    what: str
    optional: bool = False  # trained only if every stage fits at its preset steps


STAGES = (
    Stage("tokenizer_a", "tokenizer_train", "tokenizer (a): autoencoder + multi-scale VQ"),
    Stage("tokenizer_b", "decoder_train", "tokenizer (b): decoder on discrete and continuous latents"),
    Stage("judge", "judge_train", "judge: the attribute classifier behind FD and prompt accuracy"),
    Stage("hart", "hart_train", "HART: next-scale transformer + residual diffusion head"),
    Stage("diffusion", "baseline_train", "latent diffusion baseline (DiT-style, 30 DDIM steps)"),
    Stage("discrete", "hart_train", "discrete-only model: HART without its head, HART's steps", optional=True),
)

# Evaluation sizes per preset: N prompts per generator, held-out images for the judge's accuracy, the batch
# for sampling, the benchmark's throughput batch and repeats.
BENCH_BASELINE_STEPS = (5, 10, 20, 30, 50)  # the baseline's frontier in the pipeline's benchmark


def bench_n(sizes: dict) -> int:
    """Samples per frontier point in the pipeline's benchmark: the evaluation's N, at most 1000."""
    return min(sizes["n"], 1000)

EVAL = {"smoke": {"n": 64, "judge_n": 200, "batch": 64, "throughput_batch": 16, "repeats": 2},
        "cpu": {"n": 1000, "judge_n": 2000, "batch": 100, "throughput_batch": 64, "repeats": 5},
        "gpu": {"n": 2000, "judge_n": 5000, "batch": 500, "throughput_batch": 256, "repeats": 3}}
OPTIONAL_MIN_FACTOR = 0.75  # the discrete-only model is planned if every stage keeps >= 75 % of its steps
BURST_WINDOW = 3  # a timing burst runs 2 x this many steps and times the second half (the first warms up)
SLACK = 1.25  # a stage's deadline: its planned seconds x SLACK + 10 s (then it stops and saves, unfinished)
OVERHEAD_S = {"smoke": 1.0, "cpu": 2.0, "gpu": 3.0}  # per stage: build, checkpoint, figures, export
STARTUP_S = 10.0  # python and torch imports, CUDA start-up: spent before the pipeline's clock starts


@dataclass(frozen=True)
class PipelineOptions:
    """What `python -m hart_mini pipeline` takes (see --help)."""

    preset: str = "gpu"
    budget_minutes: float = 8.0
    out: Path = Path("runs/pipeline")
    device: str = "auto"
    n_eval: int | None = None  # samples per generator (None: EVAL[preset]["n"])
    margin: float = 0.1  # share of the budget kept free for what the plan cannot see
    max_scale: float = 2.0  # at most this many times the preset's steps when the device is faster than planned
    compile: bool = False  # torch.compile the repeated blocks (the plan's estimates assume eager)
    workers: int | None = None  # processes that draw the data (None: one per core but one on CUDA, else 0)
    target: str = "h100"  # the device a dry run estimates for (hart_mini.budget.DEVICES)
    command: str = ""

    def __post_init__(self):
        from hart_mini.budget import DEVICES

        require(self.preset in PRESET_NAMES, "preset", self.preset, f"one of {PRESET_NAMES}")
        require(self.budget_minutes > 0, "budget_minutes", self.budget_minutes, "a number > 0")
        require(self.n_eval is None or (isinstance(self.n_eval, int) and self.n_eval >= 2), "n_eval", self.n_eval,
                "an integer >= 2 (FD needs two samples)")
        require(0 <= self.margin < 0.5, "margin", self.margin, "a share in [0, 0.5)")
        require(self.max_scale > 0, "max_scale", self.max_scale, "a number > 0")
        require(self.workers is None or self.workers >= 0, "workers", self.workers, "an integer >= 0")
        require(self.target in DEVICES, "target", self.target, f"one of {tuple(DEVICES)}")

    @property
    def eval_sizes(self) -> dict:
        sizes = dict(EVAL[self.preset])
        if self.n_eval is not None:
            sizes["n"] = self.n_eval
        return sizes



# --- the seconds of a plan ------------------------------------------------------------------------------


def repeat_steps(one: list, two: list, batch: int, steps: int):
    """The ops of an n-step sampler from those of its 1-step and 2-step runs: the 2-step run is the 1-step
    run with one more step inserted (after the common beginning, before the common end, the decoder);
    that step comes `steps - 1` times."""
    from hart_mini.budget import StepCost

    head = next((i for i, (a, b) in enumerate(zip(one, two)) if a.name != b.name), len(one))
    tail = next((i for i, (a, b) in enumerate(zip(reversed(one[head:]), reversed(two))) if a.name != b.name),
                len(one) - head)
    return StepCost(batch, one + two[head:len(two) - tail] * (steps - 1))


def expected_kept(cfg, n: int) -> int:
    """The average number of last-scale tokens HART's token subsampling keeps (hart.last_kept_count)."""
    from hart_mini.model.hart import last_kept_count

    draws = (torch.arange(1000) + 0.5) / 1000  # a uniform grid of u: the average over draws
    return round(sum(last_kept_count(cfg, n, u) for u in draws) / len(draws))


def estimated_seconds(costs: dict, spec) -> tuple[dict, dict]:
    """(seconds per training step of every stage, seconds per sampling call) on `spec`."""
    steps = {s.name: costs[s.name].seconds(spec) for s in STAGES}
    return steps, {k[len("sample_"):]: c.seconds(spec) for k, c in costs.items() if k.startswith("sample_")}


def evaluation_seconds(sample: dict, sizes: dict) -> dict:
    """What evaluation, benchmark and samples take, from the seconds of one sampling call, sample[f"{g}_{x}"]
    for generator g in hart, hart_head_skipped, diffusion and x in eval (the evaluation batch), one (batch 1),
    throughput (the benchmark's batch). The discrete-only model samples like HART with its head skipped;
    the tokenizer's reconstructions and the judge's passes cost about two such evaluation batches."""
    calls = math.ceil(sizes["n"] / sizes["batch"])
    per = lambda g: sample[f"{g}_eval"] * calls
    per_30 = sum(BENCH_BASELINE_STEPS) / 30  # the baseline's calls scale with its steps (timed at 30)
    speed = lambda g, k=1.0: k * (sample[f"{g}_one"] * (2 + sizes["repeats"] + 3) + sample[f"{g}_throughput"] *
                                  (2 + max(sizes["repeats"] // 2, 1)))
    bench = (speed("hart") + speed("hart_head_skipped") + speed("diffusion", per_30)  # speed of every point
             + (per("hart") + per("hart_head_skipped") + per_30 * per("diffusion"))  # and its quality
             * bench_n(sizes) / sizes["n"])
    return {"evaluation_tokenizer_judge": 2 * sample["hart_head_skipped_eval"],
            "evaluation_hart": per("hart") + per("hart_head_skipped"), "evaluation_diffusion": per("diffusion"),
            "evaluation_discrete": per("hart_head_skipped"), "bench": bench,
            "samples": 2 * sample["hart_one"] + sample["hart_head_skipped_one"] + sample["diffusion_one"]}


# --- the plan -------------------------------------------------------------------------------------------


SPENT = ("startup", "data", "timing_bursts", "cost_count")  # fixed costs paid before training starts
EVALUATION = {"judge": "evaluation_tokenizer_judge", "hart": "evaluation_hart", "diffusion": "evaluation_diffusion",
              "discrete": "evaluation_discrete"}  # what each stage's evaluation is called in a plan


def plan_steps(preset, step_s: dict, available: float, max_scale: float, extra: dict) -> dict:
    """Steps per stage: the preset's steps times one factor f, the largest that fits `available` seconds
    (at most max_scale). The optional discrete-only model (with its `extra` seconds of evaluation) is in
    the plan only if everything then fits at f >= OPTIONAL_MIN_FACTOR (or max_scale, if smaller); it trains
    HART's steps."""
    planned = {s.name: getattr(preset, s.train).steps for s in STAGES}
    need = lambda names: sum(planned[n] * step_s[n] for n in names)
    everything = [s.name for s in STAGES]
    required = [s.name for s in STAGES if not s.optional]
    optional = [s.name for s in STAGES if s.optional]
    factor = (available - sum(extra.get(n, 0.0) for n in optional)) / max(need(everything), 1e-9)
    skipped = {}
    if factor < min(OPTIONAL_MIN_FACTOR, max_scale):
        factor = available / max(need(required), 1e-9)
        skipped = {n: f"not planned: it needs {need([n]) + extra.get(n, 0.0):.0f} s more than the budget leaves "
                      "(checked again when its turn comes)" for n in optional}
    factor = max(min(factor, max_scale), 0.0)
    steps = {n: max(1, int(planned[n] * factor)) for n in everything if n not in skipped}
    if "discrete" in steps:
        steps["discrete"] = steps["hart"]
    return {"factor": round(factor, 4), "steps": steps, "skipped": skipped}


def scaled_config(cfg: TrainConfig, steps: int) -> TrainConfig:
    """A stage's TrainConfig at `steps` steps: warm-up scaled along (never more than half the steps), one
    checkpoint at the end (the pipeline never resumes), a log at least 20 times per run."""
    warmup = min(round(cfg.warmup_steps * min(steps / cfg.steps, 1.0)), steps // 2)
    return dataclasses.replace(cfg, steps=steps, warmup_steps=warmup, checkpoint_every=steps,
                               log_every=max(1, min(cfg.log_every, steps // 20)))


def make_plan(preset, opts: PipelineOptions, step_s: dict, fixed: dict, source: str) -> dict:
    """The whole plan: the fixed costs (data, bursts, evaluations, benchmark, samples, per-stage overheads)
    and the margin are reserved first; training gets the rest. A JSON-able dict; `table` prints it."""
    budget = 60 * opts.budget_minutes
    margin = opts.margin * budget
    optional_eval = {"discrete": fixed.get("evaluation_discrete", 0.0)}
    available = budget - margin - sum(v for k, v in fixed.items() if k != "evaluation_discrete")
    scaled = plan_steps(preset, step_s, max(available, 0.0), opts.max_scale, optional_eval)
    if "discrete" not in scaled["steps"]:
        fixed = {k: v for k, v in fixed.items() if k != "evaluation_discrete"}
    stages, train = {}, 0.0
    for s in STAGES:
        if s.name in scaled["steps"]:
            cfg = getattr(preset, s.train)
            steps = scaled["steps"][s.name]
            train += steps * step_s[s.name]
            stages[s.name] = {"steps": steps, "preset_steps": cfg.steps, "batch": cfg.batch_size,
                              "step_ms": round(1e3 * step_s[s.name], 2),
                              "seconds": round(steps * step_s[s.name], 1), "what": s.what}
    total = sum(fixed.values()) + train  # unrounded: the steps were floored to fit
    return {"preset": preset.name, "source": source, "budget_s": budget, "margin_s": round(margin, 1),
            "factor": scaled["factor"], "stages": stages, "skipped": scaled["skipped"],
            "fixed_s": {k: round(v, 1) for k, v in fixed.items()}, "expected_total_s": round(total, 1),
            "fits": total + margin <= budget + 1e-6}


def table(plan: dict) -> str:
    """The plan as a table for people."""
    lines = [f"plan for preset {plan['preset']!r} ({plan['source']})",
             f"budget {plan['budget_s']:.0f} s, margin {plan['margin_s']:.0f} s, steps x {plan['factor']:.2f} "
             "of the preset's",
             f"{'stage':<28}{'steps':>7}{'batch':>7}{'ms/step':>9}{'seconds':>9}  what"]
    for name, s in plan["stages"].items():
        lines.append(f"{name:<28}{s['steps']:>7}{s['batch']:>7}{s['step_ms']:>9.1f}{s['seconds']:>9.1f}  {s['what']}")
    for name, reason in plan["skipped"].items():
        lines.append(f"{name:<28}{'-':>7}{'':>7}{'':>9}{'-':>9}  {reason}")
    for name, seconds in plan["fixed_s"].items():
        lines.append(f"{name:<28}{'':>7}{'':>7}{'':>9}{seconds:>9.1f}")
    lines.append(f"{'total':<28}{'':>23}{plan['expected_total_s']:>9.1f}  of {plan['budget_s']:.0f} s "
                 f"({'fits' if plan['fits'] else 'does NOT fit'} with the margin)")
    return "\n".join(lines)


