"""`python -m hart_mini pipeline`: the whole course trained, measured and exported by one process, in a budget.

    python -m hart_mini pipeline --preset gpu --budget-minutes 8 --out runs/gpu      # one H100, ~8 minutes
    python -m hart_mini pipeline --preset smoke --budget-minutes 2 --out runs/smoke  # any CPU: the same code
    python -m hart_mini pipeline --preset gpu --dry-run                              # the plan, nothing trained

What it does, in order:
  1. draw the data once into memory (on the GPU): the training split and the held-out test images;
  2. time every training stage for a few steps, and sampling for evaluation (a short burst each);
  3. plan: multiply every stage's preset steps by one factor so that training, evaluation, benchmark,
     samples and export end inside the budget, less a safety margin; the discrete-only model runs only
     if every stage fits at its preset steps (or more);
  4. train tokenizer (stage a, then b), judge, HART, the latent diffusion baseline, the discrete-only model;
     each writes its model even if its deadline cuts it short (then flagged finished: false);
  5. after each model: export it in fp16 (DIR/export/, each file under 15 MiB) and evaluate the exported
     file on N held-out prompts (FD, prompt accuracy; PSNR for the tokenizer, accuracy for the judge);
  6. benchmark HART against the baseline (latency, throughput, MACs) and draw samples.
DIR/results.json is rewritten after every step, so a run killed at any point leaves all it finished.
The log goes to DIR/pipeline.log and stderr; each training shows a progress bar.

The plan itself is pure arithmetic, in hart_mini.plan. The planned times of a dry run come from
hart_mini.budget (FLOPs and bytes of every op, on a model of the device); a real run plans from the
bursts it measured, and records both, so a later run can check the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from hart_mini import checkpoint
from hart_mini.config import TrainConfig, get_preset
from hart_mini.plan import (
    BENCH_BASELINE_STEPS,
    BURST_WINDOW,
    EVALUATION,
    JUDGE_WIDTH,
    OVERHEAD_S,
    SLACK,
    STAGES,
    STARTUP_S,
    PipelineOptions,
    bench_n,
    estimated_seconds,
    evaluation_seconds,
    expected_kept,
    make_plan,
    repeat_steps,
    scaled_config,
    table,
)

# --- the models of each stage, for the cost model and the timing bursts --------------------------------


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
        head = preset.head if name == "hart" else dataclasses.replace(preset.head, mode="off")
        model = HART(preset.transformer, tokenizer, text, head).to(device)
    return model, model.trainable_parameters(), lambda b: model.loss(b["image"], (b["ids"], b["mask"]))


def _sample_batch(preset, n: int, device: torch.device) -> dict:
    """n validation images, tokenized, on the device: for counting costs."""
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.text import CaptionTokenizer

    batch = ToyShapes(preset.data, "val").batch(range(n))
    batch["ids"], batch["mask"] = CaptionTokenizer.toyshapes(preset.transformer.text_len)(batch["caption"])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def count_costs(preset, device: torch.device, sizes: dict) -> dict:
    """hart_mini.budget costs of every training step (at its batch) and of every sampling call the
    evaluation makes (at the evaluation batch, at batch 1 and at the throughput batch), counted on `device`
    under bf16 autocast at batches of 1 and 2."""
    from hart_mini.budget import StepCost, count_at_two_sizes, step_cost

    batch = _sample_batch(preset, 2, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    costs, models = {}, {}
    for stage in STAGES:
        cfg = getattr(preset, stage.train)
        model, params, loss = stage_model(stage.name, preset, device)
        models[stage.name] = model
        if getattr(model, "head_cfg", None) is not None and model.head_cfg.last_drop > 0:
            kept = expected_kept(model.head_cfg, model.scales[-1] ** 2)  # count a step of average length
            model.kept_last_tokens = lambda device, kept=kept: torch.arange(kept, device=device)

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


def dry_run(opts: PipelineOptions) -> dict:
    """The plan from the cost model for opts.target, without training: every op counted on this CPU."""
    from hart_mini.budget import DEVICES
    from hart_mini.model.data import ToyShapes

    preset, spec, sizes = get_preset(opts.preset), DEVICES[opts.target], opts.eval_sizes
    start = time.perf_counter()
    costs = count_costs(preset, torch.device("cpu"), sizes)
    step_s, sample = estimated_seconds(costs, spec)
    tic = time.perf_counter()  # this CPU's drawing speed, with the 15 processes a 16-core machine runs
    ToyShapes(preset.data).batch(range(64))
    per_image = (time.perf_counter() - tic) / 64 / 15
    images = preset.data.train_size + max(sizes["n"], sizes["judge_n"])
    fixed = {"startup": STARTUP_S, "data": images * per_image,
             "timing_bursts": sum(2 * BURST_WINDOW * s + 2.0 for s in step_s.values()),
             **evaluation_seconds(sample, sizes), "stage_overheads": OVERHEAD_S[preset.name] * len(STAGES)}
    plan = make_plan(preset, opts, step_s, fixed, f"estimated for an {spec.name} by hart_mini.budget")
    plan["costs"] = {k: c.summary(spec) for k, c in costs.items()}
    plan["counted_in_s"] = round(time.perf_counter() - start, 1)
    return plan


# --- the run --------------------------------------------------------------------------------------------


class Results:
    """DIR/results.json, rewritten (atomically) after every step, and the log."""

    def __init__(self, out: Path, opts: PipelineOptions, start: float):
        self.out, self.start, self.path = out, start, out / "results.json"
        self.data = {"preset": opts.preset, "command": opts.command, "budget_s": 60 * opts.budget_minutes,
                     "status": "running", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                     "steps": {}, "metrics": {}, "export": {"models": {}}, "failed": {}}
        self.log = logging.getLogger(f"hart_mini.pipeline.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for handler in (logging.FileHandler(out / "pipeline.log"), logging.StreamHandler()):
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.log.addHandler(handler)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        self.log.info(f"[{self.elapsed():7.1f} s] {message}")

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        checkpoint.write_json(self.path, self.data)

    def close(self) -> None:
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


class Pipeline:
    """One run of the pipeline; see the module docstring for the steps."""

    def __init__(self, opts: PipelineOptions):
        from hart_mini.runtime import describe_device, enable_tf32, pick_device

        self.opts, self.preset, self.sizes = opts, get_preset(opts.preset), opts.eval_sizes
        self.start = time.perf_counter()
        self.end = self.start + 60 * opts.budget_minutes
        self.device = pick_device(opts.device)
        enable_tf32(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
        self.out = Path(opts.out)
        if (self.out / "results.json").exists():
            raise ValueError(f"{str(self.out)!r} already holds a pipeline run (results.json); choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "export").mkdir(exist_ok=True)
        self.results = Results(self.out, opts, self.start)
        self.results.data.update(device=describe_device(self.device), eval_sizes=self.sizes)
        self.plan: dict = {}
        self.step_s: dict = {}

    # --- bookkeeping ---

    def step(self, name: str, needs: tuple[str, ...], work) -> object:
        """Run one step unless a step it needs failed; record its seconds, or its error, in results.json."""
        failed = [n for n in needs if n in self.results.data["failed"] or n in self.results.data.get("skipped", {})]
        if failed:
            self.results.data.setdefault("skipped", {})[name] = f"needs {', '.join(failed)}"
            self.results.say(f"{name}: skipped (needs {', '.join(failed)})")
            self.results.save()
            return None
        tic = time.perf_counter()
        self.results.say(f"{name}: start")
        try:
            value = work()
        except Exception as e:  # one failed step must not lose the others: record it and go on
            self.results.data["failed"][name] = f"{type(e).__name__}: {e}"
            self.results.say(f"{name}: FAILED {type(e).__name__}: {e}")
            self.results.save()
            return None
        self.results.data["steps"][name] = {"seconds": round(time.perf_counter() - tic, 2)}
        self.results.say(f"{name}: done in {time.perf_counter() - tic:.1f} s")
        self.results.save()
        return value

    def reserve(self, after: str) -> float:
        """Seconds the plan keeps for all that follows training stage `after`: later stages at their planned
        seconds, the evaluations still to come (this stage's included), benchmark, samples, the margin."""
        names = [s.name for s in STAGES]
        later = [n for n in names[names.index(after) + 1:] if n in self.plan["stages"]]
        fixed = self.plan["fixed_s"]
        evals = [EVALUATION[n] for n in names[names.index(after):] if n in EVALUATION and EVALUATION[n] in fixed]
        overhead = fixed.get("stage_overheads", 0.0) / len(STAGES)
        return (sum(self.plan["stages"][n]["seconds"] for n in later) + sum(fixed[k] for k in evals)
                + fixed.get("bench", 0.0) + fixed.get("samples", 0.0) + overhead * len(later) + self.plan["margin_s"])

    def deadline(self, names: tuple[str, ...]) -> float:
        """A stage's deadline: its planned seconds x SLACK + 10 s, and never into what later steps need."""
        planned = sum(self.plan["stages"][n]["seconds"] for n in names)
        return min(time.perf_counter() + planned * SLACK + 10, self.end - self.reserve(names[-1]))

    def config(self, stage: str) -> TrainConfig:
        cfg = getattr(self.preset, next(s.train for s in STAGES if s.name == stage))
        return scaled_config(cfg, self.plan["stages"][stage]["steps"])

    def run_options(self, deadline: float):
        from hart_mini.train import RunOptions

        minutes = max(deadline - time.perf_counter(), 0.0) / 60
        return RunOptions(device=str(self.device), compile=self.opts.compile, max_minutes=minutes)

    # --- the steps ---

    def draw_data(self) -> None:
        from hart_mini.model.data import Prerendered, ToyShapes
        from hart_mini.model.text import CaptionTokenizer

        workers = self.opts.workers
        if workers is None:
            workers = max((os.cpu_count() or 1) - 1, 1) if self.device.type == "cuda" else 0
        text = CaptionTokenizer.toyshapes(self.preset.transformer.text_len)
        self.train = Prerendered(ToyShapes(self.preset.data, "train"), workers=workers, device=self.device, text=text)
        n_test = max(self.sizes["n"], self.sizes["judge_n"])
        self.test = Prerendered(ToyShapes(self.preset.data, "test", size=n_test), workers=workers,
                                device=self.device, text=text)
        self.results.data["data"] = {"train_images": len(self.train), "test_images": len(self.test),
                                     "workers": workers, "on": str(self.device)}

    def time_stages(self) -> None:
        """Bursts: each stage's real training step for 2 x BURST_WINDOW steps, the second half timed; then
        sampling at the evaluation batch, at batch 1 and at the throughput batch."""
        from hart_mini.bench import timed
        from hart_mini.runtime import inference_autocast
        from hart_mini.train import RunOptions, fit, toyshapes_batches

        folder = self.out / "timing"
        models, measured = {}, {}
        for stage in STAGES:
            cfg = getattr(self.preset, stage.train)
            burst = dataclasses.replace(cfg, steps=2 * BURST_WINDOW, log_every=BURST_WINDOW,
                                        checkpoint_every=2 * BURST_WINDOW, warmup_steps=1)
            torch.manual_seed(0)
            model, params, loss = stage_model(stage.name, self.preset, self.device, models.get("tokenizer_a"))
            result = fit(model, params, toyshapes_batches(self.train, burst), loss, burst, folder / stage.name, {},
                         RunOptions(device=str(self.device), compile=self.opts.compile), desc=f"timing {stage.name}")
            measured[stage.name] = burst.batch_size / result["history"][-1]["images_per_s"]
            models[stage.name] = model
        prompts = self.test.batch(range(self.sizes["batch"]))["caption"]
        samplers = {"hart": lambda p: models["hart"].generate(p),
                    "hart_head_skipped": lambda p: models["hart"].generate(p, use_head=False),
                    "diffusion": lambda p: models["diffusion"].generate(p)}
        sample = {}
        with inference_autocast(self.device):
            for name, fn in samplers.items():
                for label, size in (("eval", self.sizes["batch"]), ("one", 1),
                                    ("throughput", self.sizes["throughput_batch"])):
                    sample[f"{name}_{label}"] = timed(lambda fn=fn, size=size: fn(prompts[:size]), self.device, 1, 1)
        shutil.rmtree(folder, ignore_errors=True)
        self.step_s = measured
        self.results.data["timing"] = {"step_ms": {k: round(1e3 * v, 2) for k, v in measured.items()},
                                       "sample_s": {k: round(v, 4) for k, v in sample.items()}}
        self.sampling = evaluation_seconds(sample, self.sizes)

    def predict(self) -> None:
        """On a GPU the cost model names: its predicted ms per step beside the measured ones."""
        from hart_mini.budget import DEVICES

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        spec = next((DEVICES[k] for k in DEVICES if k.upper() in name), None)
        if spec is None:
            return
        costs = count_costs(self.preset, self.device, self.sizes)
        self.results.data["predicted"] = {"device": spec.name, **{
            k: c.summary(spec) for k, c in costs.items() if not k.startswith("sample_")}}

    def make_plan(self) -> None:
        spent = self.results.data["steps"]
        fixed = {"data": spent["data"]["seconds"], "timing_bursts": spent["timing"]["seconds"],
                 "cost_count": spent.get("predict", {}).get("seconds", 0.0), **self.sampling,
                 "stage_overheads": OVERHEAD_S[self.preset.name] * len(STAGES)}
        self.plan = make_plan(self.preset, self.opts, self.step_s, fixed, f"measured on {self.results.data['device']}")
        self.results.data["plan"] = self.plan
        self.results.say("\n" + table(self.plan))

    def export(self, kind: str, source: Path, metrics: dict | None = None) -> Path:
        from hart_mini.export import check_sizes, export_model

        folder = self.out / "export"
        tokenizer = folder / f"tokenizer_{self.preset.name}.safetensors" if kind in ("hart", "diffusion") else None
        entry = export_model(kind, source, folder, self.preset.name, self.opts.command, metrics, tokenizer)
        models = self.results.data["export"]["models"]
        models[f"{kind}_{self.preset.name}"] = entry
        self.results.data["export"]["sizes"] = check_sizes(models)
        return folder / entry["file"]

    def train_tokenizer(self) -> None:
        from hart_mini.model.tokenizer import HybridTokenizer
        from hart_mini.train import train_tokenizer

        preset = dataclasses.replace(self.preset, tokenizer_train=self.config("tokenizer_a"),
                                     decoder_train=self.config("tokenizer_b"))
        result = train_tokenizer(preset, self.out / "tokenizer", self.run_options(self.deadline(
            ("tokenizer_a", "tokenizer_b"))), self.opts.command, data=self.train)
        self.results.data.setdefault("training", {})["tokenizer"] = result
        self.tokenizer_file = self.export("tokenizer", self.out / "tokenizer" / "tokenizer.safetensors")
        self.tokenizer = HybridTokenizer.from_file(self.tokenizer_file, self.device)

    def train_judge(self) -> None:
        from hart_mini.measure.judge import Judge
        from hart_mini.train import train_judge

        preset = dataclasses.replace(self.preset, judge_train=self.config("judge"))
        held = self.test.batch(range(self.sizes["judge_n"]))
        result = train_judge(preset, self.out / "judge", self.run_options(self.deadline(("judge",))),
                             self.opts.command, data=self.train, held=held)
        self.results.data.setdefault("training", {})["judge"] = result
        self.results.data["metrics"]["judge"] = result["metrics"]
        path = self.export("judge", self.out / "judge" / "judge.safetensors", result["metrics"])
        self.judge = Judge.from_file(path, self.device)

    def evaluate_tokenizer(self) -> None:
        from hart_mini.measure.evaluate import evaluate_tokenizer

        metrics = evaluate_tokenizer(self.tokenizer, self.test, min(self.sizes["n"], len(self.test)), judge=self.judge)
        self.results.data["metrics"]["tokenizer"] = metrics
        self.results.data["export"]["models"][f"tokenizer_{self.preset.name}"]["metrics"] = metrics

    def train_generator(self, stage: str) -> None:
        """HART, the diffusion baseline or the discrete-only model: train on the exported tokenizer, export
        (HART and the baseline), evaluate the exported file."""
        from hart_mini.train import train_diffusion, train_hart

        folder = self.out / stage
        if stage == "discrete":  # as many steps as HART made, for a fair comparison: only if they fit
            hart_steps = self.results.data["training"]["hart"]["step"]
            needed = hart_steps * self.step_s["discrete"]
            left = self.end - time.perf_counter() - self.reserve("discrete")
            if needed > left:
                self.results.data.setdefault("skipped", {})["discrete"] = (
                    f"needs {needed:.0f} s for HART's {hart_steps} steps, {max(left, 0):.0f} s are left")
                self.results.say(f"discrete: skipped, {self.results.data['skipped']['discrete']}")
                return
            self.plan["stages"]["discrete"] = {**self.plan["stages"].get("discrete", {}), "steps": hart_steps,
                                               "seconds": round(needed, 1)}
        cfg = self.config(stage)
        if stage == "diffusion":
            preset = dataclasses.replace(self.preset, baseline_train=cfg)
            result = train_diffusion(preset, folder, self.tokenizer_file, self.run_options(self.deadline((stage,))),
                                     self.opts.command, data=self.train)
        else:
            preset = dataclasses.replace(self.preset, hart_train=cfg)
            result = train_hart(preset, folder, self.tokenizer_file, self.run_options(self.deadline((stage,))),
                                self.opts.command, mode="off" if stage == "discrete" else None, data=self.train)
        self.results.data.setdefault("training", {})[stage] = result
        self.results.save()
        kind = "diffusion" if stage == "diffusion" else "hart"
        path = Path(result["model"])
        if stage != "discrete":
            try:
                path = self.export(kind, path)
            except ValueError as e:  # too large to ship: say so, and evaluate the fp32 file all the same
                self.results.data["export"].setdefault("errors", {})[kind] = str(e)
                self.results.say(f"{stage}: not exported: {e}")
        self.evaluate(stage, path)

    def evaluate(self, stage: str, path: Path) -> None:
        from hart_mini import pretrained
        from hart_mini.measure.evaluate import evaluate_generator
        from hart_mini.runtime import inference_autocast

        kind = "diffusion" if stage == "diffusion" else "hart"
        model = pretrained.loader(kind)(path, device=self.device)
        n = self.sizes["n"]
        reference = self.test.batch(range(n))
        variants = {stage: {}} if stage != "hart" else {"hart": {}, "hart_head_skipped": {"use_head": False}}
        for name, extra in variants.items():
            def generate(prompts, seed, extra=extra):
                with inference_autocast(self.device):
                    return model.generate(prompts, seed=seed, **extra)
            metrics = evaluate_generator(generate, self.judge, self.preset.data, n, self.sizes["batch"], reference)
            self.results.data["metrics"][name] = {**metrics, "cfg": 3.0, "model": str(path)}
            self.results.say(f"{name}: FD {metrics['fd']}, prompt accuracy {metrics['prompt_accuracy']}")
        key = f"{kind}_{self.preset.name}"
        if stage != "discrete" and key in self.results.data["export"]["models"]:
            entry = self.results.data["export"]["models"][key]
            entry["metrics"] = {**self.results.data["metrics"][stage], "eval_n": n}
            if stage == "hart":
                skipped = self.results.data["metrics"]["hart_head_skipped"]
                entry["metrics"].update(fd_head_skipped=skipped["fd"],
                                        prompt_accuracy_head_skipped=skipped["prompt_accuracy"])
        setattr(self, f"model_{stage}", model)

    def bench(self) -> None:
        """The quality-speed frontier at N = bench_n, one seed, cfg 3: HART at its head steps against
        the baseline at BENCH_BASELINE_STEPS DDIM steps, and HART's speed-up at matched quality."""
        from hart_mini.bench import frontier, frontier_figure
        from hart_mini.course import viz
        from hart_mini.runtime import inference_autocast

        hart = self.model_hart
        with inference_autocast(self.device):
            result = frontier(hart, self.model_diffusion, self.judge, self.preset.data, self.device,
                              bench_n(self.sizes), seeds=(0,), baseline_steps=BENCH_BASELINE_STEPS,
                              head_steps=(hart.head_cfg.sampling_steps,), cfgs=(3.0,),
                              throughput_batch=self.sizes["throughput_batch"], repeats=self.sizes["repeats"])
        self.results.data["bench"] = result
        viz.save(frontier_figure(result), self.out / "bench.png")

    def samples(self) -> None:
        from hart_mini.course import viz
        from hart_mini.runtime import inference_autocast

        prompts = self.test.batch(range(16))["caption"]
        with inference_autocast(self.device):
            images = self.model_hart.generate(prompts, seed=0).float()
        title = f"HART, {self.preset.name} pipeline ({self.results.data['device']})"
        viz.save(viz.image_grid(images * 2 - 1, prompts, ncols=8, title=title), self.out / "samples.png")
        rows = {"HART": images[:8]}
        with inference_autocast(self.device):
            rows["head skipped"] = self.model_hart.generate(prompts[:8], seed=0, use_head=False).float()
            if hasattr(self, "model_discrete"):
                rows["discrete-only model"] = self.model_discrete.generate(prompts[:8], seed=0).float()
            if hasattr(self, "model_diffusion"):
                rows["diffusion baseline"] = self.model_diffusion.generate(prompts[:8], seed=0).float()
        viz.save(viz.image_rows({k: v * 2 - 1 for k, v in rows.items()}), self.out / "comparison.png")

    def pack(self) -> None:
        """extras.tar.gz: the figures and histories of every stage, the comparison figure (one file to carry)."""
        from hart_mini.export import pack

        names = ["comparison.png", "bench.png"]
        for folder in ("tokenizer/stage_a", "tokenizer/stage_b", "judge", "hart", "diffusion", "discrete"):
            names += [f"{folder}/{f}" for f in ("history.json", "loss.png", "recon.png", "samples.png")]
        pack(self.out, names, self.out / "extras.tar.gz")

    def run(self) -> dict:
        data = self.results.data
        self.results.say(f"pipeline: preset {self.preset.name}, budget {data['budget_s']:.0f} s, on {data['device']}")
        self.step("data", (), self.draw_data)
        self.step("timing", ("data",), self.time_stages)
        if self.device.type == "cuda":
            self.step("predict", ("timing",), self.predict)
        self.step("plan", ("timing",), self.make_plan)
        self.step("tokenizer", ("plan",), self.train_tokenizer)
        self.step("judge", ("plan",), self.train_judge)
        self.step("tokenizer_eval", ("tokenizer", "judge"), self.evaluate_tokenizer)
        for stage in ("hart", "diffusion", "discrete"):
            if stage in self.plan.get("stages", {}) or stage == "discrete" and "hart" in data.get("training", {}):
                self.step(stage, ("tokenizer", "judge"), lambda stage=stage: self.train_generator(stage))
            else:
                data.setdefault("skipped", {})[stage] = self.plan.get("skipped", {}).get(stage, "not planned")
        self.step("bench", ("hart", "diffusion"), self.bench)
        self.step("samples", ("hart",), self.samples)
        self.step("pack", (), self.pack)
        data["status"] = "done" if not data["failed"] else f"done, {len(data['failed'])} step(s) failed"
        data["files"] = sorted(str(p.relative_to(self.out)) for p in self.out.glob("export/*.safetensors"))
        self.results.say(f"pipeline: {data['status']} in {self.results.elapsed():.1f} s")
        self.results.save()
        self.results.close()
        return data


def run(opts: PipelineOptions) -> dict:
    """Run the pipeline (or, with dry_run, only plan it); returns results.json's content."""
    return Pipeline(opts).run()
