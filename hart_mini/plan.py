"""The pipeline's plan: pure arithmetic from measured or estimated seconds to steps per stage and deadlines.

    seconds per training step (timing bursts, or hart_mini.budget's cost model) + each stage's overhead
    (build, warm-up, checkpoint, figures, export) + the steps after training (evaluation, samples, figures
    archive, benchmark) + what was spent before training (data, timing)  ->  one factor f on every stage's
    preset steps, the largest that fits the budget less its margin  ->  a plan (JSON), its table, and the
    deadline of every step: its planned seconds x SLACK + 10 s, never into what the steps after it need

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


@dataclass(frozen=True)
class After:
    """One step after training: its name, what it makes, and whether a late run may drop it."""

    name: str
    what: str
    cuttable: bool = False  # planned, but no earlier step keeps time for it: the first thing a late run drops


AFTER = (
    After("tokenizer_eval", "tokenizer: PSNR, codebook use, spectra, FD of the reconstructions"),
    After("samples", "samples.png (HART) and comparison.png (every generator)"),
    After("pack", "extras.tar.gz: every stage's figures and history"),
    After("evaluation_hart", "HART, and HART with its head skipped: FD and prompt accuracy"),
    After("evaluation_diffusion", "the baseline at its default steps: FD and prompt accuracy"),
    After("evaluation_discrete", "the discrete-only model: FD and prompt accuracy"),
    After("bench", "benchmark core: HART, its discrete path, the baseline at its default steps"),
    After("bench_extra", "benchmark extra points: the baseline at its other step counts", cuttable=True),
    After("repack", "extras.tar.gz again, now with the benchmark's figure", cuttable=True),
    After("cost_model", "the cost model's ms per step beside the measured ones (calibration)", cuttable=True),
)
# The run's order. What must come back comes first: each model is exported as soon as it is trained (its
# stage's overhead), then the samples and the figures archive; then the evaluations (N shrinks if they run
# late), the benchmark's core points, and last what may be cut. The tokenizer is evaluated before HART
# trains on it.
ORDER = ("tokenizer_a", "tokenizer_b", "judge", "tokenizer_eval", "hart", "diffusion", "discrete", "samples",
         "pack", "evaluation_hart", "evaluation_diffusion", "evaluation_discrete", "bench", "bench_extra", "repack",
         "cost_model")

# Evaluation sizes per preset: N prompts per generator, held-out images for the judge's accuracy, the batch
# for sampling, the benchmark's throughput batch, repeats and the baseline's DDIM steps, the prompts in
# samples.png. A rehearsal (--rehearse) samples a handful at the preset's shapes.
BENCH_BASELINE_STEPS = (5, 10, 20, 30, 50)  # the baseline's frontier in the pipeline's benchmark
EVAL = {"smoke": {"n": 64, "judge_n": 200, "batch": 64, "throughput_batch": 16, "repeats": 2},
        "cpu": {"n": 1000, "judge_n": 2000, "batch": 100, "throughput_batch": 64, "repeats": 5},
        "gpu": {"n": 2000, "judge_n": 5000, "batch": 500, "throughput_batch": 256, "repeats": 3}}
EVAL = {k: {**v, "bench_steps": BENCH_BASELINE_STEPS, "samples": 16} for k, v in EVAL.items()}
REHEARSAL_EVAL = {"n": 4, "judge_n": 32, "batch": 4, "throughput_batch": 2, "repeats": 1, "bench_steps": (2, 5),
                  "samples": 4}
REHEARSAL_STEPS = 1  # training steps of every stage in a rehearsal
REHEARSAL_BASELINE_STEPS = 5  # the baseline's DDIM steps in a rehearsal (30 calls of the same shapes take 6x as long)
# A rehearsal's default budget: its plan comes from this CPU's timings (bursts at a small batch, scaled up),
# which are no guide; with a budget no CPU needs, no plan drops the optional model or cuts a step.
REHEARSAL_BUDGET_MINUTES = 60.0
TOKENIZER_BATCH = 250  # evaluate_tokenizer's batch

OPTIONAL_MIN_FACTOR = 0.75  # the discrete-only model is planned if every stage keeps >= 75 % of its steps
BURST_WINDOW = 3  # a timing burst runs this many warm-up steps, then times as many (a rehearsal: 0 and 1)
KEPT_QUANTILES = 8  # ... or, where HART drops last-scale tokens, times this many: one per kept-count bin
SLACK = 1.25  # a step's deadline: its planned seconds x SLACK + 10 s (a training stage then stops and saves)
STARTUP_S = 10.0  # python and torch imports, CUDA start-up: spent before the pipeline's clock starts

# What a dry run assumes where no GPU can be asked (a real run measures all of these): CPU-seconds per image,
# measured on the 2-core CI machine with one thread (time.process_time, so the same on an idle or a busy
# machine), and the assumed seconds of work the cost model cannot count.
DRAW_CPU_S = {32: 0.30e-3, 64: 1.06e-3}  # draw one ToyShapes image (the pipeline draws with 15 processes)
DRAW_WORKERS = 15
SPECTRUM_CPU_S = {32: 0.59e-3, 64: 2.61e-3}  # the tokenizer evaluation's spectra, both paths, per image
FIGURE_S = 1.0  # draw and save one figure (matplotlib: 0.3-0.5 CPU-s measured)
OVERHEAD_S = {"smoke": 1.0, "cpu": 2.0, "gpu": 3.0}  # per stage: build, warm-up, checkpoint, figures, export
COST_COUNT_S = 20.0  # the cost model's count of every stage (15 s for the gpu preset on the CI machine)


@dataclass(frozen=True)
class PipelineOptions:
    """What `python -m hart_mini pipeline` takes (see --help)."""

    preset: str = "gpu"
    budget_minutes: float | None = None  # None: 8, or 60 for a rehearsal (every step runs, however slow the CPU)
    out: Path = Path("runs/pipeline")
    device: str = "auto"
    n_eval: int | None = None  # samples per generator (None: EVAL[preset]["n"])
    margin: float = 0.1  # share of the budget kept free for what the plan cannot see
    max_scale: float = 2.0  # at most this many times the preset's steps when the device is faster than planned
    compile: bool = False  # torch.compile the repeated blocks (the plan's estimates assume eager)
    workers: int | None = None  # processes that draw the data (None: one per core but one on CUDA, else 0)
    target: str = "h100"  # the device a dry run (or a rehearsal's cost model) estimates for (budget.DEVICES)
    rehearse: bool = False  # every stage at the preset's shapes for REHEARSAL_STEPS steps, a handful of samples
    rehearse_batch: int | None = None  # a rehearsal's training batch (None: the preset's)
    command: str = ""

    def __post_init__(self):
        from hart_mini.budget import DEVICES

        if self.budget_minutes is None:
            object.__setattr__(self, "budget_minutes", REHEARSAL_BUDGET_MINUTES if self.rehearse else 8.0)
        require(self.preset in PRESET_NAMES, "preset", self.preset, f"one of {PRESET_NAMES}")
        require(self.budget_minutes > 0, "budget_minutes", self.budget_minutes, "a number > 0")
        require(self.n_eval is None or (isinstance(self.n_eval, int) and self.n_eval >= 2), "n_eval", self.n_eval,
                "an integer >= 2 (FD needs two samples)")
        require(0 <= self.margin < 0.5, "margin", self.margin, "a share in [0, 0.5)")
        require(self.max_scale > 0, "max_scale", self.max_scale, "a number > 0")
        require(self.workers is None or self.workers >= 0, "workers", self.workers, "an integer >= 0")
        require(self.target in DEVICES, "target", self.target, f"one of {tuple(DEVICES)}")
        require(self.rehearse_batch is None or (self.rehearse and isinstance(self.rehearse_batch, int)
                                                and self.rehearse_batch >= 2), "rehearse_batch",
                self.rehearse_batch, "an integer >= 2, with rehearse")
        if self.rehearse:  # a rehearsal's steps are fixed: REHEARSAL_STEPS, never more
            object.__setattr__(self, "max_scale", 1.0)

    @property
    def eval_sizes(self) -> dict:
        sizes = dict(REHEARSAL_EVAL if self.rehearse else EVAL[self.preset])
        if self.n_eval is not None:
            sizes["n"] = self.n_eval
        return sizes

    @property
    def burst_window(self) -> int:
        return 0 if self.rehearse else BURST_WINDOW


def bench_n(sizes: dict) -> int:
    """Samples per frontier point in the pipeline's benchmark: the evaluation's N, at most 1000."""
    return min(sizes["n"], 1000)


def rehearsal_preset(preset, batch: int | None = None):
    """The preset at its own shapes (image size, widths, tokens, batch or `batch`) for a rehearsal: every
    stage REHEARSAL_STEPS steps with one checkpoint at the end, a training split of two batches, and the
    baseline sampling in REHEARSAL_BASELINE_STEPS DDIM steps."""
    def cut(cfg: TrainConfig) -> TrainConfig:
        return dataclasses.replace(cfg, steps=REHEARSAL_STEPS, batch_size=batch or cfg.batch_size, warmup_steps=0,
                                   checkpoint_every=REHEARSAL_STEPS, log_every=1)

    trains = {s.train: cut(getattr(preset, s.train)) for s in STAGES}
    train_size = 2 * max(c.batch_size for c in trains.values())
    return dataclasses.replace(preset, data=dataclasses.replace(preset.data, train_size=train_size),
                               baseline=dataclasses.replace(preset.baseline, sampling_steps=REHEARSAL_BASELINE_STEPS),
                               **trains)


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
    return round(sum(timed_kept_counts(cfg, n, 1000)) / 1000)


def timed_kept_counts(cfg, n: int, steps: int) -> list[int]:
    """The kept last-scale token counts of a timing burst's `steps` timed steps: one from the middle of each
    of `steps` equally likely bins of HART's draw (last_kept_count at u = (i + 0.5) / steps). HART's step
    takes longer the more tokens it keeps; so timed this way, the burst's mean step is the mean over the
    draws training will meet, not the luck of a few draws."""
    from hart_mini.model.hart import last_kept_count

    return [last_kept_count(cfg, n, torch.tensor((i + 0.5) / steps)) for i in range(steps)]


def mean_step_s(history: list[dict], batch: int) -> float | None:
    """The mean seconds per step of a training history (fit's: one entry per logged window, with its step
    and images/s), weighting each window by its steps; the first window (warm-up) is left out when there
    are others. None for an empty history."""
    if not history:
        return None
    windows = [(h["step"] - before, h) for before, h in zip([0] + [h["step"] for h in history], history)]
    windows = windows[1:] or windows
    return sum(k * batch / h["images_per_s"] for k, h in windows) / sum(k for k, _ in windows)


def estimated_seconds(costs: dict, spec) -> tuple[dict, dict]:
    """(seconds per training step of every stage, seconds per sampling call) on `spec`."""
    steps = {s.name: costs[s.name].seconds(spec) for s in STAGES}
    return steps, {k[len("sample_"):]: c.seconds(spec) for k, c in costs.items() if k.startswith("sample_")}


def after_seconds(call: dict, sizes: dict, ref_steps: int) -> dict:
    """Seconds of every step after training (AFTER), from the seconds of one call of each thing they repeat
    (`call`, measured by the timing step or estimated by the cost model):

        tokenizer_eval        evaluate_tokenizer on TOKENIZER_BATCH images (its batch; the cost is per image)
        eval_G                evaluate_generator on one batch of prompts, G in hart, hart_head_skipped, diffusion
        one_G, throughput_G   one sampling call at batch 1, at the throughput batch
        samples, pack         the steps themselves

    The discrete-only model samples like HART with its head skipped; the baseline's calls scale with its DDIM
    steps (timed at ref_steps). A benchmark point is its quality on bench_n prompts and its speed: latency
    (2 warm-up calls, `repeats` timed, one counting MACs) and throughput (2 warm-up, repeats // 2 timed)."""
    calls, bench_calls = math.ceil(sizes["n"] / sizes["batch"]), math.ceil(bench_n(sizes) / sizes["batch"])
    speed = lambda g: (call[f"one_{g}"] * (3 + sizes["repeats"]) + call[f"throughput_{g}"]
                       * (2 + max(sizes["repeats"] // 2, 1)))
    point = lambda g: speed(g) + call[f"eval_{g}"] * bench_calls
    extra = sum(s for s in sizes["bench_steps"] if s != ref_steps) / ref_steps
    return {"tokenizer_eval": call["tokenizer_eval"] * sizes["n"] / TOKENIZER_BATCH,
            "samples": call["samples"], "pack": call["pack"],
            "evaluation_hart": (call["eval_hart"] + call["eval_hart_head_skipped"]) * calls,
            "evaluation_diffusion": call["eval_diffusion"] * calls,
            "evaluation_discrete": call["eval_hart_head_skipped"] * calls,
            "bench": point("hart") + point("hart_head_skipped") + point("diffusion"),
            "bench_extra": extra * point("diffusion"), "repack": call["pack"], "cost_model": COST_COUNT_S}


# --- the plan -------------------------------------------------------------------------------------------


SPENT = ("startup", "data", "timing")  # fixed costs, paid before training starts


def plan_steps(preset, step_s: dict, available: float, max_scale: float, extra: dict) -> dict:
    """Steps per stage: the preset's steps times one factor f, the largest that fits `available` seconds
    (at most max_scale). The optional discrete-only model (with its `extra` seconds of overhead and
    evaluation) is in the plan only if everything then fits at f >= OPTIONAL_MIN_FACTOR (or max_scale, if
    smaller); it trains HART's steps."""
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


def make_plan(preset, opts: PipelineOptions, step_s: dict, overhead: dict, fixed: dict, after: dict,
              source: str) -> dict:
    """The whole plan: what was spent before training (`fixed`), every stage's overhead, every step after
    training (`after`) and the margin are reserved first; training gets the rest. The discrete-only model's
    overhead and evaluation count only if it is planned. The cuttable steps are planned but not reserved:
    they run last, on what is left of the margin (`cuttable_fits_in_the_margin` says whether they should
    all fit). A JSON-able dict; `table` prints it."""
    budget = 60 * opts.budget_minutes
    margin = opts.margin * budget
    if_discrete = overhead.get("discrete", 0.0) + after.get("evaluation_discrete", 0.0)
    required = [s.name for s in STAGES if not s.optional]
    cuttable = [a.name for a in AFTER if a.cuttable]
    available = (budget - margin - sum(fixed.values()) - sum(overhead[n] for n in required)
                 - sum(v for k, v in after.items() if k != "evaluation_discrete" and k not in cuttable))
    scaled = plan_steps(preset, step_s, max(available, 0.0), opts.max_scale, {"discrete": if_discrete})
    stages = {}
    for s in STAGES:
        if s.name in scaled["steps"]:
            cfg, steps = getattr(preset, s.train), scaled["steps"][s.name]
            stages[s.name] = {"steps": steps, "preset_steps": cfg.steps, "batch": cfg.batch_size,
                              "step_ms": round(1e3 * step_s[s.name], 2), "seconds": round(steps * step_s[s.name], 1),
                              "overhead_s": round(overhead[s.name], 2), "what": s.what}
    planned_after = {n: after[n] for n in ORDER if n in after and (n != "evaluation_discrete" or "discrete" in stages)}
    total = (sum(fixed.values()) + sum(scaled["steps"][n] * step_s[n] + overhead[n] for n in stages)
             + sum(v for k, v in planned_after.items() if k not in cuttable))  # unrounded: steps were floored to fit
    extra = sum(v for k, v in planned_after.items() if k in cuttable)
    return {"preset": preset.name, "source": source, "budget_s": budget, "margin_s": round(margin, 1),
            "factor": scaled["factor"], "stages": stages, "skipped": scaled["skipped"],
            "fixed_s": {k: round(v, 1) for k, v in fixed.items()},
            "after_s": {k: round(v, 2) for k, v in planned_after.items()},
            "cuttable": cuttable, "if_discrete_s": round(if_discrete, 1), "expected_total_s": round(total, 1),
            "fits": total + margin <= budget + 1e-6, "cuttable_s": round(extra, 1),
            "cuttable_fits_in_the_margin": total + extra <= budget + 1e-6}


def reserve(plan: dict, name: str) -> float:
    """Seconds the plan keeps for what comes after `name` (a stage or a step after training) in ORDER: the
    later stages (steps and overhead) and the later steps after training but the cuttable ones; a training
    stage also keeps its own overhead (export, figures) and the margin. Steps after training may use the
    margin: by then it has nothing left to protect."""
    later = ORDER[ORDER.index(name) + 1:]
    stages, after = plan["stages"], plan["after_s"]
    keep = sum(stages[n]["seconds"] + stages[n]["overhead_s"] for n in later if n in stages)
    keep += sum(after[n] for n in later if n in after and n not in plan["cuttable"])
    if name in stages:
        keep += stages[name]["overhead_s"] + plan["margin_s"]
    return keep


def deadline(plan: dict, names: tuple[str, ...], now: float, end: float) -> float:
    """When the step that runs `names` (stages trained in one step, or one step after training) must stop:
    their planned seconds x SLACK + 10 s from `now`, and never into what reserve keeps for the steps after
    them (a stage's overhead comes after its training). `end` is the budget's end, on the same clock."""
    planned = sum(plan["stages"][n]["seconds"] if n in plan["stages"] else plan["after_s"].get(n, 0.0)
                  for n in names)
    own = sum(plan["stages"][n]["overhead_s"] for n in names[:-1] if n in plan["stages"])
    return min(now + planned * SLACK + 10, end - reserve(plan, names[-1]) - own)


def table(plan: dict) -> str:
    """The plan as a table for people."""
    lines = [f"plan for preset {plan['preset']!r} ({plan['source']})",
             f"budget {plan['budget_s']:.0f} s, margin {plan['margin_s']:.0f} s, steps x {plan['factor']:.2f} "
             "of the preset's",
             f"{'stage':<22}{'steps':>7}{'batch':>7}{'ms/step':>9}{'seconds':>9}{'+ other':>9}  what"]
    for name, s in plan["stages"].items():
        lines.append(f"{name:<22}{s['steps']:>7}{s['batch']:>7}{s['step_ms']:>9.1f}{s['seconds']:>9.1f}"
                     f"{s['overhead_s']:>9.1f}  {s['what']}")
    for name, reason in plan["skipped"].items():
        lines.append(f"{name:<22}{'-':>7}{'':>7}{'':>9}{'-':>9}{'':>9}  {reason}")
    for name, seconds in plan["fixed_s"].items():
        lines.append(f"{name:<22}{'':>23}{seconds:>9.1f}{'':>9}  before training")
    whats = {a.name: a.what for a in AFTER}
    for name, seconds in plan["after_s"].items():
        cut = " (cut first when late)" if name in plan["cuttable"] else ""
        lines.append(f"{name:<22}{'':>23}{seconds:>9.1f}{'':>9}  {whats[name]}{cut}")
    lines.append(f"{'total':<22}{'':>23}{plan['expected_total_s']:>9.1f}{'':>9}  of {plan['budget_s']:.0f} s "
                 f"({'fits' if plan['fits'] else 'does NOT fit'} with the margin; the steps cut first "
                 f"{'fit' if plan['cuttable_fits_in_the_margin'] else 'do NOT fit'} in it)")
    return "\n".join(lines)
