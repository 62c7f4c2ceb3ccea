"""Training: one loop for every model of the course, resumable exactly, fast on a GPU, and on several.

`fit` runs AdamW (fused on CUDA) with a linear warm-up and cosine decay, gradient clipping, an optional EMA
of the weights, bf16 autocast on CUDA, a progress bar, throughput (images/s, tokens/s, MFU) and a
checkpoint every `checkpoint_every` steps. Exact resume rests on three things:
- the batch of step s is a pure function of (seed, step): `batch_indices` below;
- every micro-batch reseeds torch from (seed, step, its index in the global batch), so random choices inside
  the loss (caption dropout, diffusion noise, dead-code restarts) do not depend on what ran before;
- the checkpoint holds the model, the optimizer, the EMA, the step and the history.
So a run stopped after any checkpoint and resumed ends with the very same weights as one that never
stopped, and `torchrun --nproc_per_node 2` computes the same steps as one process with `--grad-accum 2`.
Checkpoints are written atomically by rank 0 (hart_mini.checkpoint); a crash never corrupts the last one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hart_mini import checkpoint
from hart_mini.config import TrainConfig, require

CHECKPOINT = "checkpoint.safetensors"


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run a training: where, how fast, for how long. (What to train is the preset.)"""

    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto (bf16 on CUDA, else fp32), fp32, bf16, fp16
    compile: bool = False  # torch.compile the loss (CUDA mostly; on CPU it compiles slowly and rarely helps)
    workers: int = 0  # DataLoader processes drawing ToyShapes batches ahead of the GPU (0 = in this process)
    grad_accum: int = 1  # micro-batches per step and process; the global batch is the preset's batch_size
    max_minutes: float | None = None  # stop cleanly at a checkpoint after this long (continue with resume)
    resume: bool = False  # continue the checkpoint in the output folder
    peak_tflops: float | None = None  # for MFU; default: the device's bf16 peak when known

    def __post_init__(self):
        require(isinstance(self.workers, int) and self.workers >= 0, "workers", self.workers, "an integer >= 0")
        require(isinstance(self.grad_accum, int) and self.grad_accum >= 1, "grad_accum", self.grad_accum,
                "an integer >= 1")
        require(self.max_minutes is None or self.max_minutes >= 0, "max_minutes", self.max_minutes,
                "a number >= 0 or None")


def batch_indices(seed: int, step: int, batch_size: int, train_size: int) -> np.ndarray:
    """Which training images make up the batch of `step` (with replacement, independent per step)."""
    return np.random.default_rng([seed, 7, step]).integers(0, train_size, size=batch_size)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % 2**63


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr_min at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(progress, 1.0)))


class EMA:
    """Exponential moving average of a model's floating-point state, for sampling.

    decay_t = min(decay, (1 + t) / (10 + t)): early on the average follows the weights closely, so even a
    short run's EMA is useful (a fixed 0.9999 EMA makes early checkpoints useless: MAR issue #25).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.state:
                self.state[k].lerp_(v.detach(), 1 - d)

    def copy_to(self, model: torch.nn.Module) -> None:
        own = model.state_dict()
        model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in self.state.items()}})


class StepStream(torch.utils.data.IterableDataset):
    """Yields, for each step from `start`, this process's micro-batches: batch_fn(step, micro, n_micro).

    With DataLoader workers, worker w draws steps start + w, start + w + n, ...; the loader hands them back
    in order, so the stream is the same whatever the number of workers.
    """

    def __init__(self, batch_fn: Callable, start: int, steps: int, micro: range, n_micro: int):
        self.batch_fn, self.start, self.steps, self.micro, self.n_micro = batch_fn, start, steps, micro, n_micro

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, stride = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + first, self.steps, stride):
            yield step, [self.batch_fn(step, m, self.n_micro) for m in self.micro]


class LossModule(torch.nn.Module):
    """loss_fn as a module's forward, so DistributedDataParallel (and torch.compile) can wrap it."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(batch)


def _save(out: Path, model, optimizer, ema: EMA | None, step: int, meta: dict, history: list, seconds: float):
    optim_tensors, optim_meta = checkpoint.optimizer_to_tensors(optimizer)
    tensors = {**checkpoint.prefixed("model", model.state_dict()), **optim_tensors}
    if ema is not None:
        tensors.update(checkpoint.prefixed("ema", ema.state))
    full = {**meta, "step": step, "history": history, "optim": optim_meta, "seconds": seconds}
    checkpoint.save(out / CHECKPOINT, tensors, full)
    checkpoint.write_json(out / "history.json", history)


def _flops_per_step(loss_module, batch: dict, n_micro: int) -> float:
    """FLOPs of one micro-batch's forward and backward, times the micro-batches of a step (all processes).
    Measured on a copy, so that losses which change their model (dead-code restarts) leave it alone."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(loss_module)
    with FlopCounterMode(display=False) as counter:
        loss, _ = probe(batch)
        loss.backward()
    return counter.get_total_flops() * n_micro


def fit(model: torch.nn.Module, params: list[torch.nn.Parameter], batch_fn: Callable[[int, int, int], dict],
        loss_fn: Callable[[dict], tuple[torch.Tensor, dict]], cfg: TrainConfig, out: str | Path, meta: dict,
        run: RunOptions | None = None, on_checkpoint: Callable[[int], None] | None = None, desc: str = "train",
        tokens_per_sample: int = 0, deadline: float | None = None,
        on_step_end: Callable[[int], None] | None = None) -> dict:
    """Train `params` of `model` (already on its device) for cfg.steps steps.

    batch_fn(step, micro, n_micro): micro-batch `micro` of `n_micro` of the step's global batch (CPU tensors).
    loss_fn(batch) -> (loss, logs), on the model's device. meta: JSON-able description of what is trained; a
    resumed run must match it. deadline: a time.perf_counter() value (from run.max_minutes by default).
    on_step_end(step): runs after each optimizer step, in every process (e.g. dead-code restarts).
    Returns {'step', 'seconds', 'history', 'finished'}; 'finished' is False when the deadline stopped it.
    """
    import torch.distributed as dist

    from hart_mini.runtime import autocast_dtype, peak_tflops, world

    run = run or RunOptions()
    out, device = Path(out), next(model.parameters()).device
    rank, _, size = world()
    n_micro = size * run.grad_accum
    require(cfg.batch_size % n_micro == 0, "batch_size", cfg.batch_size,
            f"a multiple of processes x grad_accum = {n_micro}")
    if deadline is None and run.max_minutes is not None:
        deadline = time.perf_counter() + 60 * run.max_minutes
    amp = autocast_dtype(device, run.precision)
    meta = json.loads(json.dumps({**meta, "train": dataclasses.asdict(cfg)}))  # as it reads back (tuples -> lists)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), fused=fused)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    step, history, seconds = 0, [], 0.0
    if (out / CHECKPOINT).exists():
        if not run.resume:
            raise ValueError(f"{str(out)!r} already holds a checkpoint: pass --resume to continue it, "
                             "or choose another output folder")
        tensors, saved = checkpoint.load(out / CHECKPOINT)
        checkpoint.check_config({k: meta[k] for k in meta}, {k: saved.get(k) for k in meta}, str(out / CHECKPOINT))
        checkpoint.load_module(model, checkpoint.sub_state(tensors, "model"), str(out / CHECKPOINT))
        checkpoint.optimizer_from_tensors(optimizer, {k: v.to(device) for k, v in tensors.items()}, saved["optim"])
        if ema is not None:
            ema.state = {k: v.to(device) for k, v in checkpoint.sub_state(tensors, "ema").items()}
        step, history, seconds = saved["step"], saved["history"], saved["seconds"]

    loss_module = LossModule(model, loss_fn)
    runner = loss_module
    if size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=[device.index] if fused else None)
    if run.compile:
        runner = torch.compile(runner)
    micro = range(rank * run.grad_accum, (rank + 1) * run.grad_accum)  # this process's share of the global batch
    stream = StepStream(batch_fn, step, cfg.steps, micro, n_micro)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=run.workers,
                                         pin_memory=device.type == "cuda", prefetch_factor=4 if run.workers else None)
    peak = run.peak_tflops or peak_tflops(device)
    flops = None  # per step, measured once on the first micro-batch

    model.train()
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True, leave=False, disable=rank != 0)
    finished, window, waited = True, time.perf_counter(), 0.0
    batches = iter(loader)
    while step < cfg.steps:
        wait = time.perf_counter()
        got, micro_batches = next(batches)
        waited += time.perf_counter() - wait
        assert got == step, f"the data stream is at step {got}, training at {step}"
        if flops is None and peak is not None and rank == 0 and device.type == "cuda":
            torch.manual_seed(0)
            flops = _flops_per_step(loss_module, micro_batches[0], n_micro)
            optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(micro_batches):
            torch.manual_seed(step_seed(cfg.seed, step) + micro[i])
            sync = i == len(micro_batches) - 1 or size == 1
            with (runner.no_sync() if not sync and size > 1 else torch.enable_grad()):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss, logs = runner(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: the loss is {loss.item()} at step {step}; "
                                             "lower the learning rate")
                (loss / len(micro_batches)).backward()
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        optimizer.step()
        if on_step_end is not None:
            on_step_end(step)
        if ema is not None:
            ema.update(model, step)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            steps_per_s = (step % cfg.log_every or cfg.log_every) / max(now - window, 1e-9)
            speed = {"images_per_s": round(steps_per_s * cfg.batch_size, 2),
                     "tokens_per_s": round(steps_per_s * cfg.batch_size * tokens_per_sample, 1),
                     "data_wait_share": round(waited / max(now - window, 1e-9), 3)}
            if flops is not None:
                speed["mfu"] = round(flops * steps_per_s / (peak * 1e12 * size), 4)
            history.append({"step": step, "loss": loss.item(), "lr": lr_at(step - 1, cfg),
                            "seconds": round(seconds + now - start, 2), **logs, **speed})
            bar.set_postfix({k: f"{v:.4g}" for k, v in history[-1].items()
                             if k in ("loss", "recon", "ce", "diff", "images_per_s", "mfu")})
            window, waited = now, 0.0
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if size > 1:  # every process stops at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            if rank == 0:
                _save(out, model, optimizer, ema, step, meta, history, seconds + time.perf_counter() - start)
                if on_checkpoint is not None:
                    on_checkpoint(step)
            if size > 1:
                dist.barrier()
        if out_of_time and step < cfg.steps:
            finished = False
            break
    bar.close()
    if ema is not None:
        ema.copy_to(model)  # the caller saves and samples with the averaged weights
    model.eval()
    return {"step": step, "seconds": seconds + time.perf_counter() - start, "history": history, "finished": finished}


# --- recipes: what each `python -m hart_mini train ...` command trains ----------------------------------


def _recon_figure(tokenizer, images: torch.Tensor, path: Path) -> None:
    from hart_mini import viz

    was_training = tokenizer.training
    tokenizer.eval()
    with torch.no_grad():
        rec = tokenizer.reconstruct(images)
    tokenizer.train(was_training)
    viz.save(viz.image_rows({"original": images, "discrete": rec["discrete"], "continuous": rec["continuous"]}),
             path)


def _loss_figure(history: list[dict], keys: tuple[str, ...], path: Path) -> None:
    from hart_mini import viz

    curves = {k: ([h["step"] for h in history if k in h], [h[k] for h in history if k in h]) for k in keys}
    viz.save(viz.plot_curves({k: v for k, v in curves.items() if v[0]}, xlabel="step", logy=True), path)


def toyshapes_batches(data, cfg: TrainConfig) -> Callable[[int, int, int], dict]:
    """batch_fn for fit: micro-batch `micro` of `n_micro` of step `step`'s global batch of ToyShapes images
    (image, caption, labels), tagged with its step and global micro-batch index."""
    def batch_fn(step: int, micro: int, n_micro: int) -> dict:
        indices = batch_indices(cfg.seed, step, cfg.batch_size, len(data))
        share = cfg.batch_size // n_micro
        return {**data.batch(indices[micro * share:(micro + 1) * share]), "step": step, "micro": micro}
    return batch_fn


def _start(run: RunOptions | None) -> tuple[RunOptions, torch.device, float | None]:
    """Resolve the run options: the device (joining torchrun's process group if any) and the deadline."""
    from hart_mini.runtime import enable_tf32, pick_device, setup_distributed

    run = run or RunOptions()
    deadline = None if run.max_minutes is None else time.perf_counter() + 60 * run.max_minutes
    device = setup_distributed(pick_device(run.device))
    enable_tf32(device)
    return run, device, deadline


def train_tokenizer(preset, out: str | Path, run: RunOptions | None = None, command: str = "") -> dict:
    """Both tokenizer stages for a preset; writes OUT/stage_a, OUT/stage_b and OUT/tokenizer.safetensors."""
    from dataclasses import asdict

    import torch.distributed as dist

    from hart_mini.data import ToyShapes
    from hart_mini.runtime import describe_device, world
    from hart_mini.tokenizer import HybridTokenizer

    run, device, deadline = _start(run)
    out = Path(out)
    data = ToyShapes(preset.data, "train")
    shown = ToyShapes(preset.data, "val").batch(range(8))["image"].to(device)
    torch.manual_seed(preset.tokenizer_train.seed)  # the initial weights, so that every run starts alike
    model = HybridTokenizer(preset.tokenizer).to(device)
    meta = {"kind": "tokenizer", "config": asdict(preset.tokenizer), "data": asdict(preset.data)}
    tokens = preset.tokenizer.num_tokens
    cfg_a, cfg_b = preset.tokenizer_train, preset.decoder_train
    restart_every, restart_until = max(cfg_a.steps // 50, 1), int(0.8 * cfg_a.steps)  # then let codes settle
    pool = {}  # the vectors of global micro-batch 0 of the current step: where dead codes restart

    def loss_a(batch: dict):
        loss, logs = model.stage_a_loss(batch["image"].to(device, non_blocking=True))
        if batch["micro"] == 0:
            pool["rests"] = model.quantizer.recent
        return loss, logs

    def restart(step: int) -> None:
        if step % restart_every == 0 and step < restart_until:
            if "rests" in pool:
                model.quantizer.restart_dead_codes(pool.pop("rests"))
            if world()[2] > 1:  # rank 0 restarted with its vectors: everyone takes its codebook
                for tensor in (model.quantizer.codebook.weight.data, model.quantizer.usage):
                    dist.broadcast(tensor, 0)

    def loss_b(batch: dict):
        return model.stage_b_loss(batch["image"].to(device, non_blocking=True))

    def figures(stage_dir: Path, keys: tuple[str, ...]):
        def write(step: int) -> None:
            _recon_figure(model, shown, stage_dir / "recon.png")
            _loss_figure(checkpoint.load(stage_dir / CHECKPOINT)[1]["history"], keys, stage_dir / "loss.png")
        return write

    a = fit(model, model.stage_a_parameters(), toyshapes_batches(data, cfg_a), loss_a, cfg_a, out / "stage_a",
            {**meta, "stage": "a"}, run, figures(out / "stage_a", ("recon", "vq")), "tokenizer (a) autoencoder + VQ",
            tokens, deadline, restart)
    result = {"stage_a": {k: a[k] for k in ("step", "seconds", "finished")}}
    if not a["finished"]:
        return result
    params = model.start_stage_b()
    b = fit(model, params, toyshapes_batches(data, cfg_b), loss_b, cfg_b, out / "stage_b", {**meta, "stage": "b"},
            run, figures(out / "stage_b", ("recon",)), "tokenizer (b) decoder fine-tune", tokens, deadline)
    result["stage_b"] = {k: b[k] for k in ("step", "seconds", "finished")}
    if b["finished"] and world()[0] == 0:
        final = {**meta, "preset": preset.name, "train_seconds": round(a["seconds"] + b["seconds"], 1),
                 "command": command, "device": describe_device(device), "torch": torch.__version__}
        checkpoint.save(out / "tokenizer.safetensors", model.state_dict(), final)
        result["tokenizer"] = str(out / "tokenizer.safetensors")
    return result


def sample_figure(model, prompts: list[str], path: Path, seed: int = 0) -> None:
    """A captioned grid of samples, written to `path`."""
    from hart_mini import viz

    was_training = model.training
    images = model.generate(prompts, seed=seed)
    model.train(was_training)
    viz.save(viz.image_grid(images * 2 - 1, prompts, ncols=min(8, len(prompts))), path)


def _frozen_tokenizer(preset, tokenizer: str | Path | None, device: torch.device):
    """The tokenizer a generator trains on: a file or training folder, else the preset's shipped one."""
    from hart_mini import pretrained
    from hart_mini.tokenizer import HybridTokenizer

    if tokenizer is None:
        path = pretrained.path("tokenizer", preset.shipped)
    else:
        path = Path(tokenizer) / "tokenizer.safetensors" if Path(tokenizer).is_dir() else Path(tokenizer)
    tok = HybridTokenizer.from_file(path, device)
    if tok.cfg.image_size != preset.data.image_size:
        raise ValueError(f"the tokenizer {str(path)!r} takes {tok.cfg.image_size} px images but preset "
                         f"{preset.name!r} draws {preset.data.image_size} px ones")
    return tok, path


def _train_generator(model, name: str, preset, cfg: TrainConfig, out: Path, tok_path: Path, meta: dict,
                     run: RunOptions, device: torch.device, deadline: float | None, command: str,
                     tokens_per_sample: int) -> dict:
    """Shared by HART and the diffusion baseline: fit on ToyShapes, sample grids, save beside the tokenizer."""
    import shutil

    from hart_mini.data import ToyShapes
    from hart_mini.runtime import describe_device, world

    data = ToyShapes(preset.data, "train")
    prompts = ToyShapes(preset.data, "val").batch(range(8))["caption"]

    def loss(batch: dict):
        return model.loss(batch["image"].to(device, non_blocking=True), batch["caption"])

    def figures(step: int) -> None:
        sample_figure(model, prompts, out / "samples.png")
        _loss_figure(checkpoint.load(out / CHECKPOINT)[1]["history"], ("ce", "diff"), out / "loss.png")

    meta = {**meta, "data": dataclasses.asdict(preset.data), "tokenizer_sha256": checkpoint.sha256(tok_path)}
    result = fit(model, model.trainable_parameters(), toyshapes_batches(data, cfg), loss, cfg, out, meta, run,
                 figures, name, tokens_per_sample, deadline)
    summary = {k: result[k] for k in ("step", "seconds", "finished")}
    if result["finished"] and world()[0] == 0:
        if (out / "tokenizer.safetensors").resolve() != tok_path.resolve():
            shutil.copyfile(tok_path, out / "tokenizer.safetensors")  # a model file names its tokenizer beside it
        target = out / f"{name.lower().split()[0]}.safetensors"
        model.save(target, out / "tokenizer.safetensors",
                   {"preset": preset.name, "train_seconds": round(result["seconds"], 1), "command": command,
                    "device": describe_device(device), "torch": torch.__version__})
        summary["model"] = str(target)
    return summary


def train_hart(preset, out: str | Path, tokenizer: str | Path | None = None, run: RunOptions | None = None,
               command: str = "", mode: str | None = None) -> dict:
    """Train HART (transformer + residual head) on a frozen tokenizer; writes OUT/hart.safetensors.

    mode overrides preset.head.mode: off (discrete only), last (HART), full, early.
    """
    from hart_mini.data import ToyShapes
    from hart_mini.hart import HART
    from hart_mini.text import CaptionTokenizer

    run, device, deadline = _start(run)
    out = Path(out)
    tok, tok_path = _frozen_tokenizer(preset, tokenizer, device)
    head = preset.head if mode is None else dataclasses.replace(preset.head, mode=mode)
    torch.manual_seed(preset.hart_train.seed)  # the initial weights, so that every run starts alike
    model = HART(preset.transformer, tok, CaptionTokenizer.toyshapes(preset.transformer.text_len), head).to(device)
    scale = model.measure_residual_scale(ToyShapes(preset.data, "val").batch(range(256))["image"].to(device))
    meta = {"kind": "hart-training", "transformer": dataclasses.asdict(preset.transformer),
            "head": dataclasses.asdict(head), "residual_scale": round(scale, 6)}
    tokens = preset.transformer.text_len + preset.tokenizer.num_tokens - 1
    return _train_generator(model, "HART", preset, preset.hart_train, Path(out), tok_path, meta, run, device,
                            deadline, command, tokens)


def train_diffusion(preset, out: str | Path, tokenizer: str | Path | None = None, run: RunOptions | None = None,
                    command: str = "") -> dict:
    """Train the latent diffusion baseline on a frozen tokenizer; writes OUT/diffusion.safetensors."""
    from hart_mini.baselines import LatentDiffusion
    from hart_mini.data import ToyShapes
    from hart_mini.text import CaptionTokenizer

    run, device, deadline = _start(run)
    tok, tok_path = _frozen_tokenizer(preset, tokenizer, device)
    torch.manual_seed(preset.baseline_train.seed)
    model = LatentDiffusion(preset.transformer, tok, CaptionTokenizer.toyshapes(preset.transformer.text_len),
                            preset.baseline).to(device)
    scale = model.measure_latent_scale(ToyShapes(preset.data, "val").batch(range(256))["image"].to(device))
    meta = {"kind": "diffusion-training", "transformer": dataclasses.asdict(preset.transformer),
            "diffusion": dataclasses.asdict(preset.baseline), "latent_scale": round(scale, 6)}
    tokens = preset.transformer.text_len + preset.tokenizer.latent_size ** 2
    return _train_generator(model, "Diffusion baseline", preset, preset.baseline_train, Path(out), tok_path, meta,
                            run, device, deadline, command, tokens)


def train_judge(preset, out: str | Path, run: RunOptions | None = None, command: str = "",
                n_eval: int = 5000) -> dict:
    """Train the judge on real ToyShapes images; writes OUT/judge.safetensors with its held-out accuracy."""
    from hart_mini.data import ToyShapes
    from hart_mini.judge import Judge, attribute_accuracy, prompt_accuracy
    from hart_mini.runtime import describe_device, world

    run, device, deadline = _start(run)
    out = Path(out)
    data, cfg = ToyShapes(preset.data, "train"), preset.judge_train
    torch.manual_seed(cfg.seed)
    config = {"image_size": preset.data.image_size, "width": 32}
    judge = Judge(**config).to(device)

    def loss(batch: dict):
        return judge.loss(batch["image"].to(device, non_blocking=True), batch["labels"])

    result = fit(judge, list(judge.parameters()), toyshapes_batches(data, cfg), loss, cfg, out,
                 {"kind": "judge-training", "config": config, "data": dataclasses.asdict(preset.data)}, run, None,
                 "judge", 0, deadline)
    summary = {k: result[k] for k in ("step", "seconds", "finished")}
    if result["finished"] and world()[0] == 0:
        held = ToyShapes(preset.data, "test", size=n_eval).batch(range(n_eval))
        images = held["image"].to(device)
        metrics = {"n": n_eval, **{f"acc_{k}": round(v, 4) for k, v in attribute_accuracy(judge, images,
                                                                                         held["labels"]).items()}}
        metrics["real_prompt_accuracy"] = round(prompt_accuracy(judge, images, held["caption"])["prompt_accuracy"], 4)
        checkpoint.save(out / "judge.safetensors", judge.state_dict(), {
            "kind": "judge", "config": config, "preset": preset.name, "metrics": metrics, "command": command,
            "train_seconds": round(result["seconds"], 1), "device": describe_device(device),
            "torch": torch.__version__})
        summary.update(judge=str(out / "judge.safetensors"), metrics=metrics)
    return summary
