"""`python -m hart_mini pipeline`: the whole course trained, measured and exported by one process, in a budget.

    python -m hart_mini pipeline --preset gpu --budget-minutes 7 --out runs/gpu      # one H100, ~7 minutes
    python -m hart_mini pipeline --preset smoke --budget-minutes 2 --out runs/smoke  # any CPU: the same code
    python -m hart_mini pipeline --preset gpu --dry-run                              # the plan, nothing trained
    python -m hart_mini pipeline --preset gpu --rehearse                             # every step at the gpu
                                                                                     # shapes, on a CPU

What it does, in order:
  1. draw the data once into memory (on the GPU): the training split and the held-out test images;
  2. time: a burst of real training steps for every stage (HART's over its kept-token counts), then
     everything after training once, at one batch, on the burst's models: save, export and reload each,
     evaluate, sample, draw the samples, pack the figures. That measures what the plan needs, and meets a
     failure there before training rather than after (it is recorded; the run goes on);
  3. plan (hart_mini.plan): multiply every stage's preset steps by one factor so that training, each
     stage's overhead and every step after training end inside the budget less a margin; the discrete-only
     model runs only if every stage keeps at least 75 % of its steps;
  4. train tokenizer (stage a, then b) and judge, export them (fp16, DIR/export/), evaluate the tokenizer;
     train HART, the latent diffusion baseline, the discrete-only model, exporting each as it finishes;
     a stage stopped by its deadline still writes its model (flagged finished: false);
  5. what must come back, first: samples.png, comparison.png, extras.tar.gz (every stage's figures);
  6. evaluate each generator's exported file on N held-out prompts (N shrinks if its deadline comes);
  7. benchmark: its core points, then its extra points while time is left; pack again; the cost model's
     prediction (calibration).
Every step after training has a deadline: its planned seconds x SLACK + 10 s, never into the time the
steps after it need. DIR/results.json is rewritten after every step, so a run killed at any point leaves
all it finished; it records every step's planned and measured seconds (`calibration`), the attention
kernels that ran and the peak memory. The log goes to DIR/pipeline.log and stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from hart_mini import checkpoint
from hart_mini.config import TrainConfig
from hart_mini.costs import attention_kernels, count_costs, preset_of, time_stage
from hart_mini.plan import (
    JUDGE_WIDTH,
    ORDER,
    STAGES,
    TOKENIZER_BATCH,
    PipelineOptions,
    after_seconds,
    bench_n,
    deadline,
    make_plan,
    mean_step_s,
    reserve,
    scaled_config,
    table,
)

# A rehearsal times its bursts at this batch (scaled to the stage's, for the record: no guide on a CPU) and
# draws no figures in them (its training stages draw them): the bursts' code runs, cheaply.
REHEARSAL_BURST_BATCH = 2
STEP_STAGES = {"tokenizer": ("tokenizer_a", "tokenizer_b"), "bench": ("bench", "bench_extra")}
HISTORIES = {"tokenizer_a": "tokenizer/stage_a", "tokenizer_b": "tokenizer/stage_b"}  # else the stage's folder


class Results:
    """DIR/results.json, rewritten (atomically) after every step, and the log."""

    def __init__(self, out: Path, opts: PipelineOptions, start: float):
        self.out, self.start, self.path = out, start, out / "results.json"
        self.data = {"preset": opts.preset, "command": opts.command, "budget_s": 60 * opts.budget_minutes,
                     "status": "running", "run_id": uuid.uuid4().hex[:12], "rehearsal": opts.rehearse,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
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


def host_peak_gb() -> float | None:
    """This process's peak resident memory in GB, where the OS says (Linux and macOS)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e9 if os.uname().sysname == "Darwin" else 1e6), 2)


def save_model(kind: str, model, path: Path, preset, tokenizer_file: Path | None = None) -> Path:
    """Write a model the way its training recipe does (the metadata export and the loaders read)."""
    if kind in ("hart", "diffusion"):
        model.save(path, tokenizer_file)
    else:
        config = (dataclasses.asdict(preset.tokenizer) if kind == "tokenizer" else
                  {"image_size": preset.data.image_size, "width": JUDGE_WIDTH})
        checkpoint.save(path, model.state_dict(), {"kind": kind, "config": config, "preset": preset.name})
    return path


def export_and_load(kind: str, source: Path, folder: Path, preset: str, device, command: str = "",
                    metrics: dict | None = None):
    """Export `source` in fp16 to folder/KIND_PRESET.safetensors (a generator names the exported tokenizer
    beside it) and load the exported file: its manifest entry and the model, as evaluation will see it."""
    from hart_mini import pretrained
    from hart_mini.export import export_model

    tokenizer = folder / f"tokenizer_{preset}.safetensors" if kind in ("hart", "diffusion") else None
    entry = export_model(kind, source, folder, preset, command, metrics, tokenizer)
    return entry, pretrained.loader(kind)(folder / entry["file"], device=device)


class Pipeline:
    """One run of the pipeline; see the module docstring for the steps."""

    def __init__(self, opts: PipelineOptions):
        from hart_mini.runtime import cuda_settings, describe_device, pick_device

        self.opts, self.preset, self.sizes = opts, preset_of(opts), opts.eval_sizes
        self.start = time.perf_counter()
        self.end = self.start + 60 * opts.budget_minutes
        self.device = pick_device(opts.device)
        cuda_settings(self.device)
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
        self.models: dict = {}  # the trained models, as exported and loaded back: what is evaluated
        self.model_files: dict = {}  # ... and their files

    # --- bookkeeping ---

    def step(self, name: str, needs: tuple[str, ...], work) -> object:
        """Run one step unless a step it needs failed; record its seconds and peak memory, or its error."""
        data = self.results.data
        failed = [n for n in needs if n in data["failed"] or n in data.get("skipped", {})]
        if failed:
            data.setdefault("skipped", {})[name] = f"needs {', '.join(failed)}"
            self.results.say(f"{name}: skipped (needs {', '.join(failed)})")
            self.results.save()
            return None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        tic = time.perf_counter()
        self.results.say(f"{name}: start")
        try:
            value = work()
        except Exception as e:  # one failed step must not lose the others: record it and go on
            data["failed"][name] = f"{type(e).__name__}: {e}"
            self.results.say(f"{name}: FAILED {type(e).__name__}: {e}")
            self.results.save()
            return None
        peak = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2) if self.device.type == "cuda" else None
        data["steps"][name] = {"seconds": round(time.perf_counter() - tic, 2), "peak_gpu_gb": peak,
                               "host_peak_gb": host_peak_gb()}
        self.results.say(f"{name}: done in {time.perf_counter() - tic:.1f} s")
        self.results.save()
        return value

    def deadline(self, names: tuple[str, ...]) -> float:
        return deadline(self.plan, names, time.perf_counter(), self.end)

    def config(self, stage: str) -> TrainConfig:
        cfg = getattr(self.preset, next(s.train for s in STAGES if s.name == stage))
        return scaled_config(cfg, self.plan["stages"][stage]["steps"])

    def run_options(self, deadline: float):
        from hart_mini.train import RunOptions

        minutes = max(deadline - time.perf_counter(), 0.0) / 60
        return RunOptions(device=str(self.device), compile=self.opts.compile, max_minutes=minutes)

    def cut(self, name: str) -> str | None:
        """Why a cuttable step does not run (fewer seconds left than it is planned to take), or None."""
        left, planned = self.end - time.perf_counter(), self.plan.get("after_s", {}).get(name, 0.0)
        return f"cut: {max(left, 0):.0f} s left, {planned:.0f} s planned" if left < planned else None

    # --- before training: data, timing, plan ---

    def draw_data(self) -> None:
        from hart_mini.model.data import Prerendered, ToyShapes
        from hart_mini.model.text import CaptionTokenizer

        workers = self.opts.workers
        if workers is None:
            workers = max((os.cpu_count() or 1) - 1, 1) if self.device.type == "cuda" else 0
        text = CaptionTokenizer.toyshapes(self.preset.transformer.text_len)
        self.train = Prerendered(ToyShapes(self.preset.data, "train"), workers=workers, device=self.device, text=text)
        n_test = max(self.sizes["n"], self.sizes["judge_n"], self.sizes["samples"], 8)
        self.test = Prerendered(ToyShapes(self.preset.data, "test", size=n_test), workers=workers,
                                device=self.device, text=text)
        self.results.data["data"] = {"train_images": len(self.train), "test_images": len(self.test),
                                     "workers": workers, "on": str(self.device)}

    def time_stages(self) -> None:
        """Bursts of every training stage (costs.time_stage), then everything after training once
        (time_after); the seconds the plan needs, and the attention kernels that ran."""
        folder = self.out / "timing"
        shown = self.test.batch(range(8))
        models, measured, timing = {}, {}, {}
        for stage in STAGES:
            batch = getattr(self.preset, stage.train).batch_size
            burst_batch = min(batch, REHEARSAL_BURST_BATCH) if self.opts.rehearse else batch
            show = shown["image"] if stage.name.startswith("tokenizer") else shown["caption"]
            show = None if self.opts.rehearse else show
            burst = time_stage(stage, self.preset, self.device, self.train, folder / stage.name,
                               self.opts.burst_window, show, models.get("tokenizer_a"), self.opts.compile, burst_batch)
            models[stage.name] = burst["model"]
            measured[stage.name] = burst["step_s"] * batch / burst_batch  # a rehearsal's bursts: scaled up
            timing[stage.name] = {"step_ms": round(1e3 * measured[stage.name], 2), "burst_batch": burst_batch,
                                  "overhead_s": round(burst["overhead_s"], 2)}
        self.step_s, self.overhead = measured, {k: v["overhead_s"] for k, v in timing.items()}
        self.results.data["timing"] = {"stages": timing}
        try:
            self.results.data["attention"] = self.attention(models)
        except Exception as e:  # a record, not a reason to stop
            self.results.data["attention"] = {"error": f"{type(e).__name__}: {e}"}
        calls, errors = self.time_after(models, folder)
        self.results.data["timing"].update(call_s={k: round(v, 4) for k, v in calls.items()}, errors=errors)
        self.after = after_seconds(calls, self.sizes, self.preset.baseline.sampling_steps)
        shutil.rmtree(folder, ignore_errors=True)

    def attention(self, models: dict) -> dict:
        """The SDPA kernels HART's training step (batch 2, the training autocast) and sampling really ran."""
        from hart_mini.runtime import autocast_dtype, inference_autocast

        hart, batch, amp = models["hart"], self.train.batch(range(2)), autocast_dtype(self.device)

        def train_step():
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                loss, _ = hart.loss(batch["image"], (batch["ids"], batch["mask"]))
            loss.backward()

        def sample():
            with inference_autocast(self.device):
                hart.generate(batch["caption"][:1])

        hart.train()
        return {"training": attention_kernels(train_step), "sampling": attention_kernels(sample)}

    def time_after(self, models: dict, folder: Path) -> tuple[dict, dict]:
        """Everything after training once, on the burst's models (untrained: the same cost): each saved,
        exported and reloaded; the tokenizer evaluated on a batch; each generator evaluated on a batch and
        sampled at batch 1 and at the throughput batch; the samples drawn; the figures packed. Returns the
        seconds of each (plan.after_seconds' `call`) and the errors met. A failure here is recorded, its
        seconds counted as 0, and the run goes on: the real step will meet it again, and its deadline holds."""
        from hart_mini.bench import timed
        from hart_mini.measure.evaluate import evaluate_generator, evaluate_tokenizer

        errors, calls = {}, {}

        def measure(name: str, work, wall: bool = True) -> None:
            tic = time.perf_counter()
            try:
                value = work()
                calls[name] = time.perf_counter() - tic if wall else value
            except Exception as e:
                errors[name], calls[name] = f"{type(e).__name__}: {e}", 0.0

        export, loaded = folder / "export", dict(models)
        export.mkdir(parents=True, exist_ok=True)
        for kind, stage in (("tokenizer", "tokenizer_a"), ("judge", "judge"), ("hart", "hart"),
                            ("diffusion", "diffusion")):
            def round_trip(kind=kind, stage=stage):
                source = save_model(kind, models[stage], folder / f"{kind}.safetensors", self.preset,
                                    folder / "tokenizer.safetensors")
                loaded[stage] = export_and_load(kind, source, export, self.preset.name, self.device)[1]
            measure(f"export_{kind}", round_trip)
            self.overhead["tokenizer_b" if kind == "tokenizer" else kind] += calls.pop(f"export_{kind}")
        tokenizer, judge, hart, diffusion = (loaded[k] for k in ("tokenizer_a", "judge", "hart", "diffusion"))
        n_tok = min(TOKENIZER_BATCH, len(self.test))
        measure("tokenizer_eval", lambda: evaluate_tokenizer(tokenizer, self.test, n_tok, judge=judge))
        calls["tokenizer_eval"] *= TOKENIZER_BATCH / n_tok
        samplers = {"hart": self.sampler(hart), "hart_head_skipped": self.sampler(hart, use_head=False),
                    "diffusion": self.sampler(diffusion)}
        batch, prompts = self.sizes["batch"], self.test.batch(range(self.sizes["batch"]))
        for g, fn in samplers.items():
            measure(f"eval_{g}", lambda fn=fn: evaluate_generator(fn, judge, self.preset.data, batch, batch, prompts))
            for label, size in (("one", 1), ("throughput", self.sizes["throughput_batch"])):
                measure(f"{label}_{g}", lambda fn=fn, size=size: timed(
                    lambda: fn(prompts["caption"][:size], 0), self.device, 1, 1), wall=False)
        measure("samples", lambda: self.draw_samples(folder, {"hart": hart, "discrete": hart, "diffusion": diffusion}))
        measure("pack", lambda: self.pack(folder))
        return calls, errors

    def make_plan(self) -> None:
        spent = self.results.data["steps"]
        fixed = {"data": spent["data"]["seconds"], "timing": spent["timing"]["seconds"]}
        fixed["other"] = max(self.results.elapsed() - sum(fixed.values()), 0.0)
        source = f"measured on {self.results.data['device']}" + (", a rehearsal" if self.opts.rehearse else "")
        self.plan = make_plan(self.preset, self.opts, self.step_s, self.overhead, fixed, self.after, source)
        self.results.data["plan"] = self.plan
        self.results.say("\n" + table(self.plan))

    # --- training, each model exported as soon as it is trained ---

    def export(self, kind: str, source: Path, metrics: dict | None = None):
        """Export a trained model (export_and_load), list it in results.json; its path and loaded model."""
        from hart_mini.export import check_sizes

        entry, model = export_and_load(kind, source, self.out / "export", self.preset.name, self.device,
                                       self.opts.command, metrics)
        models = self.results.data["export"]["models"]
        models[f"{kind}_{self.preset.name}"] = entry
        self.results.data["export"]["sizes"] = check_sizes(models)
        return self.out / "export" / entry["file"], model

    def train_tokenizer(self) -> None:
        from hart_mini.train import train_tokenizer

        preset = dataclasses.replace(self.preset, tokenizer_train=self.config("tokenizer_a"),
                                     decoder_train=self.config("tokenizer_b"))
        result = train_tokenizer(preset, self.out / "tokenizer", self.run_options(self.deadline(
            ("tokenizer_a", "tokenizer_b"))), self.opts.command, data=self.train)
        self.results.data.setdefault("training", {})["tokenizer"] = result
        self.tokenizer_file, self.tokenizer = self.export("tokenizer", self.out / "tokenizer" / "tokenizer.safetensors")

    def train_judge(self) -> None:
        from hart_mini.train import train_judge

        preset = dataclasses.replace(self.preset, judge_train=self.config("judge"))
        held = self.test.batch(range(self.sizes["judge_n"]))
        result = train_judge(preset, self.out / "judge", self.run_options(self.deadline(("judge",))),
                             self.opts.command, data=self.train, held=held)
        self.results.data.setdefault("training", {})["judge"] = result
        self.results.data["metrics"]["judge"] = result["metrics"]
        self.judge = self.export("judge", self.out / "judge" / "judge.safetensors", result["metrics"])[1]

    def evaluate_tokenizer(self) -> None:
        from hart_mini.measure.evaluate import evaluate_tokenizer

        metrics = evaluate_tokenizer(self.tokenizer, self.test, min(self.sizes["n"], len(self.test)), judge=self.judge,
                                     deadline=self.deadline(("tokenizer_eval",)))
        self.results.data["metrics"]["tokenizer"] = metrics
        self.results.data["export"]["models"][f"tokenizer_{self.preset.name}"]["metrics"] = metrics

    def train_generator(self, stage: str) -> None:
        """HART, the diffusion baseline or the discrete-only model: train on the exported tokenizer, export
        (HART and the baseline) and load the exported file back for the evaluation."""
        from hart_mini import pretrained
        from hart_mini.train import train_diffusion, train_hart

        folder = self.out / stage
        if stage == "discrete":  # as many steps as HART made, for a fair comparison: only if they fit
            hart_steps = self.results.data["training"]["hart"]["step"]
            planned = self.plan["stages"].get("discrete")
            needed = hart_steps * self.step_s["discrete"] + (planned["overhead_s"] if planned else
                                                              self.plan["if_discrete_s"])
            left = self.end - time.perf_counter() - reserve(self.plan, "discrete")
            if needed > left:
                self.results.data.setdefault("skipped", {})["discrete"] = (
                    f"needs {needed:.0f} s for HART's {hart_steps} steps, {max(left, 0):.0f} s are left")
                self.results.say(f"discrete: skipped, {self.results.data['skipped']['discrete']}")
                return
            cfg = self.preset.hart_train
            self.plan["stages"]["discrete"] = {
                "preset_steps": cfg.steps, "batch": cfg.batch_size, "step_ms": round(1e3 * self.step_s["discrete"], 2),
                "overhead_s": round(self.overhead["discrete"], 1), "what": "discrete-only model, HART's steps",
                **(planned or {}), "steps": hart_steps, "seconds": round(hart_steps * self.step_s["discrete"], 1)}
        cfg = self.config(stage)
        run = self.run_options(self.deadline((stage,)))
        if stage == "diffusion":
            preset = dataclasses.replace(self.preset, baseline_train=cfg)
            result = train_diffusion(preset, folder, self.tokenizer_file, run, self.opts.command, data=self.train)
        else:
            preset = dataclasses.replace(self.preset, hart_train=cfg)
            result = train_hart(preset, folder, self.tokenizer_file, run, self.opts.command,
                                mode="off" if stage == "discrete" else None, data=self.train)
        self.results.data.setdefault("training", {})[stage] = result
        self.results.save()
        kind, path = "diffusion" if stage == "diffusion" else "hart", Path(result["model"])
        if stage != "discrete":
            try:
                self.model_files[stage], self.models[stage] = self.export(kind, path)
                return
            except ValueError as e:  # too large to ship: say so, and evaluate the fp32 file all the same
                self.results.data["export"].setdefault("errors", {})[kind] = str(e)
                self.results.say(f"{stage}: not exported: {e}")
        self.model_files[stage], self.models[stage] = path, pretrained.loader(kind)(path, device=self.device)

    # --- after training: what must come back first, then evaluation and benchmark ---

    def draw_samples(self, folder: Path, models: dict, deadline: float | None = None) -> None:
        """samples.png: HART on the first test prompts; comparison.png: the same prompts from every model,
        a row each, as long as the deadline allows (HART's row always)."""
        from hart_mini.course import viz
        from hart_mini.runtime import inference_autocast

        prompts = self.test.batch(range(self.sizes["samples"]))["caption"]
        with inference_autocast(self.device):
            images = models["hart"].generate(prompts, seed=0).float()
        title = f"HART, {self.preset.name} pipeline ({self.results.data['device']})"
        viz.save(viz.image_grid(images * 2 - 1, prompts, ncols=8, title=title), folder / "samples.png")
        rows, few = {"HART": images[:8]}, prompts[:8]
        others = {"head skipped": lambda: models["hart"].generate(few, seed=0, use_head=False),
                  "discrete-only model": lambda: models["discrete"].generate(few, seed=0),
                  "diffusion baseline": lambda: models["diffusion"].generate(few, seed=0)}
        keys = {"discrete-only model": "discrete", "diffusion baseline": "diffusion"}
        last = 0.0
        for label, draw in others.items():
            if keys.get(label, "hart") not in models:
                continue
            if deadline is not None and time.perf_counter() + last > deadline:
                self.results.data.setdefault("cut", {}).setdefault("comparison_rows", []).append(label)
                continue
            tic = time.perf_counter()
            with inference_autocast(self.device):
                rows[label] = draw().float()
            last = time.perf_counter() - tic
        viz.save(viz.image_rows({k: v * 2 - 1 for k, v in rows.items()}), folder / "comparison.png")

    def pack(self, folder: Path | None = None) -> None:
        """extras.tar.gz: the figures and histories of every stage, the comparison and benchmark figures."""
        from hart_mini.export import pack

        folder = folder or self.out
        names = ["comparison.png", "bench.png"]
        for stage in ("tokenizer/stage_a", "tokenizer/stage_b", "judge", "hart", "diffusion", "discrete"):
            names += [f"{stage}/{f}" for f in ("history.json", "loss.png", "recon.png", "samples.png")]
        pack(folder, names, folder / "extras.tar.gz")

    def sampler(self, model, **extra):
        """generate(prompts, seed) as the evaluation samples: in the inference precision (bf16 autocast on
        CUDA), the judge outside it."""
        from hart_mini.runtime import inference_autocast

        def generate(prompts, seed):
            with inference_autocast(self.device):
                return model.generate(prompts, seed=seed, **extra)
        return generate

    def evaluate(self, stage: str) -> None:
        """FD and prompt accuracy of the exported model of `stage` (HART: with its head and skipped)."""
        from hart_mini.measure.evaluate import evaluate_generator

        model, n = self.models[stage], self.sizes["n"]
        reference = self.test.batch(range(n))
        variants = {stage: {}} if stage != "hart" else {"hart": {}, "hart_head_skipped": {"use_head": False}}
        end = self.deadline((f"evaluation_{stage}",))
        for i, (name, extra) in enumerate(variants.items()):
            now = time.perf_counter()
            share = now + (end - now) / (len(variants) - i)  # the variants left share the time left
            metrics = evaluate_generator(self.sampler(model, **extra), self.judge, self.preset.data, n,
                                         self.sizes["batch"], reference, deadline=share)
            self.results.data["metrics"][name] = {**metrics, "cfg": 3.0, "model": str(self.model_files[stage])}
            self.results.say(f"{name}: FD {metrics['fd']}, prompt accuracy {metrics['prompt_accuracy']} "
                             f"(N = {metrics['n']})")
        key = f"{'diffusion' if stage == 'diffusion' else 'hart'}_{self.preset.name}"
        if stage != "discrete" and key in self.results.data["export"]["models"]:
            entry = self.results.data["export"]["models"][key]
            measured = self.results.data["metrics"][stage]
            entry["metrics"] = {**measured, "eval_n": measured["n"]}
            if stage == "hart":
                skipped = self.results.data["metrics"]["hart_head_skipped"]
                entry["metrics"].update(fd_head_skipped=skipped["fd"],
                                        prompt_accuracy_head_skipped=skipped["prompt_accuracy"])

    def bench(self) -> None:
        """The quality-speed frontier at N = bench_n, one seed, cfg 3: its core points (HART at its head
        steps, its discrete path, the baseline at its default steps), then the baseline at the other step
        counts while the deadline allows. If even the core's quality will not fit, speed only."""
        from hart_mini.bench import frontier, frontier_figure
        from hart_mini.course import viz
        from hart_mini.runtime import inference_autocast

        end = self.deadline(STEP_STAGES["bench"])
        n = bench_n(self.sizes) if end - time.perf_counter() >= self.plan["after_s"].get("bench", 0.0) else 0
        hart = self.models["hart"]
        with inference_autocast(self.device):
            result = frontier(hart, self.models["diffusion"], self.judge, self.preset.data, self.device, n,
                              seeds=(0,), baseline_steps=self.sizes["bench_steps"],
                              head_steps=(hart.head_cfg.sampling_steps,), cfgs=(3.0,),
                              throughput_batch=self.sizes["throughput_batch"], repeats=self.sizes["repeats"],
                              eval_batch=self.sizes["batch"], deadline=end)
        self.results.data["bench"] = result
        viz.save(frontier_figure(result), self.out / "bench.png")

    def predict(self) -> None:
        """The cost model's ms per step for the stages on this GPU (or, in a rehearsal, on --target),
        beside the measured ones: what calibrates hart_mini.budget.DEVICES."""
        spec = self.spec()
        costs = count_costs(self.preset, self.device, self.sizes)
        self.results.data["predicted"] = {"device": spec.name, **{
            k: c.summary(spec) for k, c in costs.items() if not k.startswith("sample_")}}

    def spec(self):
        from hart_mini.budget import DEVICES

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        known = next((DEVICES[k] for k in DEVICES if k.upper() in name), None)
        return DEVICES[self.opts.target] if known is None and self.opts.rehearse else known

    # --- the record: planned against measured ---

    def calibration(self) -> dict:
        """Every step's planned and measured seconds, and every stage's ms per step as the cost model
        predicted it, as the burst measured it and as training measured it: what the next plan learns from."""
        data, stages, after = self.results.data, self.plan.get("stages", {}), self.plan.get("after_s", {})
        rows = {}
        for name, record in data["steps"].items():
            names = STEP_STAGES.get(name, (name,) if name in ORDER else ())
            planned = [stages[n]["seconds"] + stages[n]["overhead_s"] if n in stages else after.get(n)
                       for n in names]
            if planned and None not in planned:
                ratio = round(record["seconds"] / sum(planned), 2) if sum(planned) >= 0.05 else None
                rows[name] = {"planned_s": round(sum(planned), 2), "measured_s": record["seconds"], "ratio": ratio}
        per_stage = {}
        for stage in stages:
            history = self.out / HISTORIES.get(stage, stage) / "history.json"
            batch = stages[stage]["batch"]
            trained = mean_step_s(json.loads(history.read_text()), batch) if history.is_file() else None
            per_stage[stage] = {"burst_ms": stages[stage]["step_ms"],
                                "trained_ms": round(1e3 * trained, 2) if trained else None,
                                "cost_model_ms": data.get("predicted", {}).get(stage, {}).get("ms")}
        return {"steps": rows, "ms_per_step": per_stage}

    def finish(self) -> dict:
        data = self.results.data
        try:
            data["calibration"] = self.calibration()
        except Exception as e:  # a record: never the reason a finished run loses its results
            data["calibration"] = {"error": f"{type(e).__name__}: {e}"}
        peaks = [s["peak_gpu_gb"] for s in data["steps"].values() if s.get("peak_gpu_gb") is not None]
        data["memory"] = {"peak_gpu_gb": max(peaks) if peaks else None, "host_peak_gb": host_peak_gb()}
        data["status"] = "done" if not data["failed"] else f"done, {len(data['failed'])} step(s) failed"
        data["files"] = sorted(str(p.relative_to(self.out)) for p in self.out.glob("export/*.safetensors"))
        self.results.say(f"pipeline: {data['status']} in {self.results.elapsed():.1f} s")
        self.results.save()
        return data

    def run(self) -> dict:
        data = self.results.data
        self.results.say(f"pipeline: preset {self.preset.name}, budget {data['budget_s']:.0f} s, on {data['device']}"
                         f"{' (a rehearsal)' if self.opts.rehearse else ''}, run {data['run_id']}")
        self.step("data", (), self.draw_data)
        self.step("timing", ("data",), self.time_stages)
        self.step("plan", ("timing",), self.make_plan)
        self.step("tokenizer", ("plan",), self.train_tokenizer)
        self.step("judge", ("plan",), self.train_judge)
        self.step("tokenizer_eval", ("tokenizer", "judge"), self.evaluate_tokenizer)
        for stage in ("hart", "diffusion", "discrete"):
            if stage in self.plan.get("stages", {}) or stage == "discrete" and "hart" in data.get("training", {}):
                self.step(stage, ("tokenizer",), lambda stage=stage: self.train_generator(stage))
            else:
                data.setdefault("skipped", {})[stage] = self.plan.get("skipped", {}).get(stage, "not planned")
        self.step("samples", ("hart",), lambda: self.draw_samples(self.out, self.models, self.deadline(("samples",))))
        self.step("pack", ("plan",), self.pack)
        for stage in ("hart", "diffusion", "discrete"):
            if stage in self.models:
                self.step(f"evaluation_{stage}", (stage, "judge"), lambda stage=stage: self.evaluate(stage))
        self.step("bench", ("hart", "diffusion", "judge"), self.bench)
        late = {"repack": self.pack, "cost_model": self.predict}
        for name, work in late.items():
            why = "no cost model for this device" if name == "cost_model" and self.spec() is None else self.cut(name)
            if why:
                data.setdefault("skipped", {})[name] = why
            else:
                self.step(name, ("plan",), work)
        self.finish()
        self.results.close()
        return data


def run(opts: PipelineOptions) -> dict:
    """Run the pipeline; returns results.json's content. A rehearsal also checks what it wrote
    (hart_mini.rehearse.check_run) and records the checks under 'rehearsal_checks'."""
    data = Pipeline(opts).run()
    if opts.rehearse:
        from hart_mini.rehearse import check_run

        data["rehearsal_checks"] = check_run(Path(opts.out))
        checkpoint.write_json(Path(opts.out) / "results.json", data)
    return data
