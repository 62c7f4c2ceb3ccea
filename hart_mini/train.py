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
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hart_mini import checkpoint, runs
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
    overwrite: bool = False  # start again in an output folder that holds another run (see hart_mini.runs)
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
    """Exponential moving average of the trained parameters, for sampling (frozen parts are left out).

    decay_t = min(decay, (1 + t) / (10 + t)): early on the average follows the weights closely, so even a
    short run's EMA is useful (a fixed 0.9999 EMA makes early checkpoints useless: MAR issue #25).
    """

    def __init__(self, model: torch.nn.Module, decay: float, params: list[torch.nn.Parameter] | None = None):
        trained = {id(p) for p in (params if params is not None else model.parameters())}
        self.decay = decay
        self.params = {k: p for k, p in model.named_parameters() if id(p) in trained}  # name -> the live tensor
        self.state = {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        names = list(self.params)
        # one fused kernel over all tensors: state += (1 - d) (param - state)
        torch._foreach_lerp_([self.state[k] for k in names], [self.params[k].detach() for k in names], 1 - d)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Take a saved average (from a checkpoint); entries for tensors this EMA does not track are ignored."""
        self.state.update({k: v.to(self.state[k].device, self.state[k].dtype) for k, v in state.items()
                           if k in self.state})

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for k, p in self.params.items():
            p.copy_(self.state[k])


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


def micro_slice(batch: dict, n: int) -> dict:
    """The first n samples of a batch: tensors and lists are cut, other entries (step, micro) kept."""
    return {k: v[:n] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}


def flops_per_step(loss_module: torch.nn.Module, batch: dict, batch_size: int, amp: torch.dtype | None,
                   probe: int = 2) -> float:
    """FLOPs of one step (forward + backward of batch_size samples), counted on `probe` samples and scaled:
    every FLOP of these models is per sample. It runs on clones of the weights and buffers
    (torch.func.functional_call) and restores the random state, so the model, its buffers (the codebook's
    usage) and the runs that follow are exactly as if it never ran (exact resume holds)."""
    from hart_mini.budget import count_ops

    device = next(loss_module.parameters()).device
    small = micro_slice(batch, probe)
    n = next(len(v) for v in small.values() if isinstance(v, (torch.Tensor, list)))
    state = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in loss_module.named_parameters()}
    state.update({k: v.clone() for k, v in loss_module.named_buffers()})

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, _ = torch.func.functional_call(loss_module, state, (small,))
        loss.backward()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        flops = sum(op.flops for op in count_ops(step))
    return flops * batch_size / n


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> list[torch.nn.Module]:
    """torch.compile every repeated block of the model in place (regional compilation): one compiled graph
    serves every block of a class, so it compiles in seconds, and a block sees tensors only (captions were
    tokenized before, strings never reach it), so it does not recompile from step to step. Returns the
    compiled modules, for uncompile."""
    from hart_mini.model import blocks, diffusion, tokenizer

    repeated = (blocks.Block, tokenizer.ResBlock, diffusion.ResBlock)
    compiled = [m for m in model.modules() if isinstance(m, repeated)]
    for m in compiled:
        m.forward = torch.compile(m.forward, backend=backend)  # an instance attribute over the class's forward
    return compiled


def uncompile(modules: list[torch.nn.Module]) -> None:
    """Back to eager for sampling, whose shapes change every scale."""
    for m in modules:
        del m.forward


def _read_logs(loss: torch.Tensor, logs: dict) -> dict:
    """One read-back of the step's loss and logs (device tensors or numbers) as floats."""
    names = [k for k, v in logs.items() if torch.is_tensor(v)]
    values = torch.stack([loss.detach().float()] + [logs[k].detach().float().reshape(()) for k in names]).tolist()
    plain = {k: v for k, v in logs.items() if not torch.is_tensor(v)}
    return {"loss": values[0], **plain, **dict(zip(names, values[1:]))}


class FiniteCheck:
    """Watches every loss for NaN or inf on the device, without reading it back each step: the first bad
    step and its loss are kept in device tensors and looked at only when `check` is called."""

    def __init__(self, device: torch.device):
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def watch(self, loss: torch.Tensor, step: int) -> None:
        first = ~torch.isfinite(loss.detach()) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss.detach().float(), self.value)

    def check(self, desc: str, bar=None) -> None:
        """Raise if a loss so far was not finite (closing the progress bar first, so the error gets its line)."""
        step, value = self.step.item(), self.value.item()
        if step >= 0:
            if bar is not None:
                bar.close()
            raise FloatingPointError(f"{desc}: the loss is {value} at step {step}; lower the learning rate")


def fit(model: torch.nn.Module, params: list[torch.nn.Parameter], batch_fn: Callable[[int, int, int], dict],
        loss_fn: Callable[[dict], tuple[torch.Tensor, dict]], cfg: TrainConfig, out: str | Path, meta: dict,
        run: RunOptions | None = None, on_checkpoint: Callable[[int, list], None] | None = None, desc: str = "train",
        tokens_per_sample: int = 0, deadline: float | None = None,
        on_step_end: Callable[[int], None] | None = None) -> dict:
    """Train `params` of `model` (already on its device) for cfg.steps steps.

    batch_fn(step, micro, n_micro): micro-batch `micro` of `n_micro` of the step's global batch (CPU tensors,
    or tensors already on the device). loss_fn(batch) -> (loss, logs), on the model's device; logs may be
    device tensors. meta: JSON-able description of what is trained; a resumed run must match it. deadline: a
    time.perf_counter() value (from run.max_minutes by default). on_checkpoint(step, history) runs after each
    checkpoint (figures); on_step_end(step) after each optimizer step, in every process (dead-code restarts).
    Returns {'step', 'seconds', 'history', 'finished'}; 'finished' is False when the deadline stopped it.

    Nothing in a step reads a number back from the GPU: the loss, the logs and the NaN check stay on the
    device and are read once every log_every steps, so the host queues the next step while the GPU works.
    """
    import torch.distributed as dist

    from hart_mini.runtime import autocast_dtype, one_thread, peak_tflops, world

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
    ema = EMA(model, cfg.ema, params) if cfg.ema > 0 else None
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
            ema.load(checkpoint.sub_state(tensors, "ema"))
        step, history, seconds = saved["step"], saved["history"], saved["seconds"]

    loss_module = LossModule(model, loss_fn)
    runner = loss_module
    if size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=[device.index] if fused else None)
    compiled = compile_blocks(model) if run.compile else []
    micro = range(rank * run.grad_accum, (rank + 1) * run.grad_accum)  # this process's share of the global batch
    stream = StepStream(batch_fn, step, cfg.steps, micro, n_micro)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=run.workers,
                                         pin_memory=fused and run.workers > 0, worker_init_fn=one_thread,
                                         prefetch_factor=4 if run.workers else None)
    peak = run.peak_tflops or peak_tflops(device)
    flops = None  # per step, counted once on a small slice of the first micro-batch
    finite = FiniteCheck(device)

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
        if flops is None and peak is not None and rank == 0:
            flops = flops_per_step(loss_module, micro_batches[0], cfg.batch_size, amp)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(micro_batches):
            torch.manual_seed(step_seed(cfg.seed, step) + micro[i])
            sync = i == len(micro_batches) - 1 or size == 1
            with (runner.no_sync() if not sync and size > 1 else torch.enable_grad()):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss, logs = runner(batch)
                finite.watch(loss, step)
                (loss / len(micro_batches)).backward()
        if cfg.grad_clip > 0:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if on_step_end is not None:
            on_step_end(step)
        if ema is not None:
            ema.update(step)
        step += 1
        bar.update(1)
        logged = step % cfg.log_every == 0 or step == cfg.steps
        if logged:
            finite.check(desc, bar)
            now = time.perf_counter()
            steps_per_s = (step % cfg.log_every or cfg.log_every) / max(now - window, 1e-9)
            speed = {"images_per_s": round(steps_per_s * cfg.batch_size, 2),
                     "tokens_per_s": round(steps_per_s * cfg.batch_size * tokens_per_sample, 1),
                     "data_wait_share": round(waited / max(now - window, 1e-9), 3)}
            if flops is not None:
                speed["mfu"] = round(flops * steps_per_s / (peak * 1e12 * size), 4)
            history.append({"step": step, **_read_logs(loss, logs), "lr": lr_at(step - 1, cfg),
                            "seconds": round(seconds + now - start, 2), **speed})
            bar.set_postfix({k: f"{v:.4g}" for k, v in history[-1].items()
                             if k in ("loss", "recon", "ce", "diff", "images_per_s", "mfu")})
            window, waited = now, 0.0
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if size > 1 and logged:  # every process stops at the same (logged) step; a collective only then
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        elif size > 1:
            out_of_time = False
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            finite.check(desc, bar)
            if rank == 0:
                _save(out, model, optimizer, ema, step, meta, history, seconds + time.perf_counter() - start)
                if on_checkpoint is not None:  # figures sample with other shapes: in eager mode
                    uncompile(compiled)
                    on_checkpoint(step, history)
                    compiled = compile_blocks(model) if run.compile else []
            if size > 1:
                dist.barrier()
        if out_of_time and step < cfg.steps:
            finished = False
            break
    bar.close()
    uncompile(compiled)
    if ema is not None:
        ema.copy_to(model)  # the caller saves and samples with the averaged weights
    model.eval()
    return {"step": step, "seconds": seconds + time.perf_counter() - start, "history": history, "finished": finished}


# --- recipes: what each `python -m hart_mini train ...` command trains ----------------------------------


def _recon_figure(tokenizer, images: torch.Tensor, path: Path) -> None:
    from hart_mini.course import viz

    was_training = tokenizer.training
    tokenizer.eval()
    with torch.no_grad():
        rec = tokenizer.reconstruct(images)
    tokenizer.train(was_training)
    viz.save(viz.image_rows({"original": images, "discrete": rec["discrete"], "continuous": rec["continuous"]}),
             path)


def _loss_figure(history: list[dict], keys: tuple[str, ...], path: Path) -> None:
    from hart_mini.course import viz

    curves = {k: ([h["step"] for h in history if k in h], [h[k] for h in history if k in h]) for k in keys}
    viz.save(viz.plot_curves({k: v for k, v in curves.items() if v[0]}, xlabel="step", logy=True), path)


def checkpoint_figures(model, shown: torch.Tensor | list[str], out: Path, keys: tuple[str, ...]
                       ) -> Callable[[int, list], None]:
    """What a training run draws into `out` at each checkpoint (fit's on_checkpoint): its loss curves (the
    history's `keys`), and the reconstructions of the images `shown` (a tokenizer) or samples for the
    prompts `shown` (a generator)."""
    def write(step: int, history: list) -> None:
        if isinstance(shown, torch.Tensor):
            _recon_figure(model, shown, out / "recon.png")
        else:
            sample_figure(model, shown, out / "samples.png")
        _loss_figure(history, keys, out / "loss.png")
    return write


def toyshapes_batches(data, cfg: TrainConfig, text=None) -> Callable[[int, int, int], dict]:
    """batch_fn for fit: micro-batch `micro` of `n_micro` of step `step`'s global batch of ToyShapes images
    (image, caption, labels), tagged with its step and global micro-batch index. With a caption tokenizer
    `text`, the captions also come tokenized (ids, mask), in the data workers rather than in the loss:
    the loss (and anything torch.compile'd) then sees tensors only. `data` is anything with len() and
    .batch(indices): a ToyShapes split, or one drawn into memory (data.Prerendered)."""
    def batch_fn(step: int, micro: int, n_micro: int) -> dict:
        indices = batch_indices(cfg.seed, step, cfg.batch_size, len(data))
        share = cfg.batch_size // n_micro
        batch = data.batch(indices[micro * share:(micro + 1) * share])
        if text is not None and "ids" not in batch:
            batch["ids"], batch["mask"] = text(batch["caption"])
        return {**batch, "step": step, "micro": micro}
    return batch_fn


def captions_of(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | list[str]:
    """The batch's captions as the models take them: tokenized (ids, mask) on the device when the batch has
    them, else the strings."""
    if "ids" not in batch:
        return batch["caption"]
    return batch["ids"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)


def _final_meta(result: dict, cfg: TrainConfig) -> dict:
    """What a model file says about how far its training got: a deadline may have stopped it early."""
    return {"finished": result["finished"], "steps_done": result["step"], "steps_planned": cfg.steps}


def _start(run: RunOptions | None) -> tuple[RunOptions, torch.device, float | None]:
    """Resolve the run options: the device (joining torchrun's process group if any) and the deadline."""
    from hart_mini.runtime import cuda_settings, pick_device, setup_distributed

    run = run or RunOptions()
    deadline = None if run.max_minutes is None else time.perf_counter() + 60 * run.max_minutes
    device = setup_distributed(pick_device(run.device))
    cuda_settings(device)
    return run, device, deadline


def _prepare(out: str | Path, kind: str, run: RunOptions, preset, command: str,
             tokenizer_file: Path | None = None) -> Path:
    """Check the run folder before any work (hart_mini.runs.prepare) and record the run in OUT/run.json."""
    writes = {f"{kind}.safetensors": None}
    if tokenizer_file is not None:  # a generator leaves a copy of its tokenizer beside it
        writes["tokenizer.safetensors"] = checkpoint.sha256(tokenizer_file)
    return runs.prepare(out, kind, run, writes, preset.name, command)


def _clean_start(kind: str):
    """A training function whose failed start (a refusal, Ctrl-C before its first checkpoint) leaves its
    output folder as it found it (hart_mini.runs.undone_on_failure)."""
    def wrap(train: Callable) -> Callable:
        @functools.wraps(train)
        def run(preset, out, *args, **kwargs):
            with runs.undone_on_failure(out, kind):
                return train(preset, out, *args, **kwargs)
        return run
    return wrap


@_clean_start("tokenizer")
def train_tokenizer(preset, out: str | Path, run: RunOptions | None = None, command: str = "",
                    data=None) -> dict:
    """Both tokenizer stages for a preset; writes OUT/stage_a, OUT/stage_b and OUT/tokenizer.safetensors.
    data: the training images (default: the preset's ToyShapes train split).

    The file is written even when the deadline stops a stage: then it says finished: false (and a stage
    (a) cut short skips stage (b)); --resume continues the run and rewrites it."""
    from dataclasses import asdict

    import torch.distributed as dist

    from hart_mini.model.data import ToyShapes
    from hart_mini.model.tokenizer import HybridTokenizer
    from hart_mini.runtime import describe_device, world

    run, device, deadline = _start(run)
    out = _prepare(out, "tokenizer", run, preset, command)
    data = ToyShapes(preset.data, "train") if data is None else data
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

    def save(stages: dict) -> None:
        final = {**meta, "preset": preset.name, "train_seconds": round(sum(r["seconds"] for r in stages.values()), 1),
                 "command": command, "device": describe_device(device), "torch": torch.__version__,
                 "finished": all(r["finished"] for r in stages.values()) and "b" in stages,
                 "stages": {k: _final_meta(r, c) for (k, r), c in zip(stages.items(), (cfg_a, cfg_b))}}
        checkpoint.save(out / "tokenizer.safetensors", model.state_dict(), final)
        result["tokenizer"] = str(out / "tokenizer.safetensors")

    a = fit(model, model.stage_a_parameters(), toyshapes_batches(data, cfg_a), loss_a, cfg_a, out / "stage_a",
            {**meta, "stage": "a"}, run, checkpoint_figures(model, shown, out / "stage_a", ("recon", "vq")),
            "tokenizer (a) autoencoder + VQ",
            tokens, deadline, restart)
    result = {"stage_a": {k: a[k] for k in ("step", "seconds", "finished")}}
    if not a["finished"]:
        if world()[0] == 0:
            save({"a": a})
        return result
    runs.mark(out, "stage b")
    params = model.start_stage_b()
    b = fit(model, params, toyshapes_batches(data, cfg_b), loss_b, cfg_b, out / "stage_b", {**meta, "stage": "b"},
            run, checkpoint_figures(model, shown, out / "stage_b", ("recon",)), "tokenizer (b) decoder fine-tune",
            tokens, deadline)
    result["stage_b"] = {k: b[k] for k in ("step", "seconds", "finished")}
    if world()[0] == 0:
        save({"a": a, "b": b})
        if b["finished"]:
            runs.mark(out, "finished")
    return result


def sample_figure(model, prompts: list[str], path: Path, seed: int = 0) -> None:
    """A captioned grid of samples, written to `path`."""
    from hart_mini.course import viz
    from hart_mini.model import sampling_variants
    from hart_mini.model.hart import HART

    was_training = model.training
    if isinstance(model, HART):  # any head mode, the ablations' 'full' and 'early' included
        images = sampling_variants.generate(model, prompts, seed=seed)
    else:
        images = model.generate(prompts, seed=seed)
    model.train(was_training)
    viz.save(viz.image_grid(images * 2 - 1, prompts, ncols=min(8, len(prompts))), path)


def _frozen_tokenizer(preset, tokenizer: str | Path | None, device: torch.device):
    """The tokenizer a generator trains on: a file or training folder, else the preset's shipped one."""
    from hart_mini import pretrained
    from hart_mini.model.tokenizer import HybridTokenizer

    if tokenizer is None:
        path = pretrained.path("tokenizer", preset.shipped)
    else:
        path = Path(tokenizer) / "tokenizer.safetensors" if Path(tokenizer).is_dir() else Path(tokenizer)
    tok = HybridTokenizer.from_file(path, device)
    pretrained.check_fits(tok, preset, path)  # its image size and latent grid are the preset's
    return tok, path


def training_mix(preset, cfg: TrainConfig):
    """The preset with its data at the generator's two-object share (TrainConfig.two_objects), where `cfg` sets
    one: HART and the baseline train, and measure their latent's scale, on that mix. Evaluations keep the data's."""
    if cfg.two_objects is None:
        return preset
    return dataclasses.replace(preset, data=dataclasses.replace(preset.data, p_two_objects=cfg.two_objects))


def _train_generator(model, name: str, preset, cfg: TrainConfig, out: Path, tok_path: Path, meta: dict,
                     run: RunOptions, device: torch.device, deadline: float | None, command: str,
                     tokens_per_sample: int, data=None, layout_steps: int = 0) -> dict:
    """Shared by HART and the diffusion baseline: fit on ToyShapes, sample grids, save beside the tokenizer.
    The model file is written even when the deadline stops the run early; then it says finished: false.
    layout_steps (HART only): a layout stage of that many steps first (_layout_stage)."""
    from hart_mini.model.data import ToyShapes
    from hart_mini.runtime import describe_device, world

    data = ToyShapes(preset.data, "train") if data is None else data
    prompts = ToyShapes(preset.data, "val").batch(range(8))["caption"]

    def loss(batch: dict):
        return model.loss(batch["image"].to(device, non_blocking=True), captions_of(batch, device))

    meta = {**meta, "data": dataclasses.asdict(preset.data), "tokenizer_sha256": checkpoint.sha256(tok_path)}
    figures = checkpoint_figures(model, prompts, out, ("ce", "diff"))
    layout = None
    if layout_steps:  # the layout stage first: the coarse scales alone
        layout = _layout_stage(model, cfg, layout_steps, data, out, meta, run, device, deadline)
    if layout is None or layout["finished"]:
        result = fit(model, model.trainable_parameters(), toyshapes_batches(data, cfg, model.text_tokenizer), loss,
                     cfg, out, meta, run, figures, name, tokens_per_sample, deadline)
        if layout is not None:  # train_seconds: both stages
            result = {**result, "seconds": result["seconds"] + layout["seconds"]}
    else:  # the deadline stopped the layout stage: no full training at all
        result = {**layout, "step": 0}
    summary = {k: result[k] for k in ("step", "seconds", "finished")}
    if layout is not None:
        summary["layout_stage"] = {k: layout[k] for k in ("step", "seconds", "finished")}
    stage_steps = getattr(getattr(model, "head_cfg", None), "stage_steps", 0)
    if stage_steps and result["finished"]:  # the head stage: the head alone, on the final transformer
        stage = _head_stage(model, cfg, stage_steps, data, out, meta, run, device, deadline, tokens_per_sample)
        summary["head_stage"] = {k: stage[k] for k in ("step", "seconds", "finished")}
        result = {**result, "seconds": result["seconds"] + stage["seconds"], "finished": stage["finished"]}
        figures(stage["step"], result["history"])
    if world()[0] == 0:
        summary["model"] = str(_write_model(
            model, out, f"{name.lower().split()[0]}.safetensors", tok_path, result["finished"],
            {"preset": preset.name, "train_seconds": round(result["seconds"], 1), "command": command,
             "device": describe_device(device), "torch": torch.__version__, **_final_meta(result, cfg),
             **({"data": dataclasses.asdict(preset.data)} if isinstance(data, ToyShapes) else {})}))
    return summary


def _write_model(model, out: Path, file: str, tok_path: Path, finished: bool, meta: dict) -> Path:
    """Save a trained generator as OUT/FILE beside a copy of its tokenizer (a model file names its tokenizer
    beside it), and mark the run finished if it is."""
    import shutil

    if (out / "tokenizer.safetensors").resolve() != tok_path.resolve():
        shutil.copyfile(tok_path, out / "tokenizer.safetensors")
    target = out / file
    model.save(target, out / "tokenizer.safetensors", meta)
    if finished:
        runs.mark(out, "finished")
    return target


def _layout_stage(model, cfg: TrainConfig, steps: int, data, out: Path, meta: dict, run: RunOptions,
                  device: torch.device, deadline: float | None) -> dict:
    """Train HART's transformer `steps` steps on its first layout_scales scales alone (HART.loss(layout=True)),
    in OUT/layout_stage, before the full training starts from the weights it leaves: the same batches and
    learning rate as the full training, its own warm-up, then a constant rate (no decay), no weight average.
    Returns fit's result.

    Why: where the objects go is decided at 1x1..4x4, and a relation ("left of") is learned only after
    thousands of steps there, suddenly (notebook 09, section 7): a decaying rate would slow it just before.
    A step that stops at 4x4 costs a fraction of a full one."""
    stage_cfg = dataclasses.replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, steps // 4), ema=0.0,
                                    lr_min=cfg.lr,  # cosine from lr to lr: constant
                                    checkpoint_every=min(cfg.checkpoint_every, steps),
                                    log_every=min(cfg.log_every, steps))
    tokens = model.cfg.text_len + model.transformer.starts[model.cfg.layout_scales] - 1

    def loss(batch: dict):
        return model.loss(batch["image"].to(device, non_blocking=True), captions_of(batch, device), layout=True)

    return fit(model, list(model.transformer.parameters()), toyshapes_batches(data, stage_cfg, model.text_tokenizer),
               loss, stage_cfg, out / "layout_stage", {**meta, "stage": "layout"}, run, None, "HART layout stage",
               tokens, deadline)


def _head_stage(model, cfg: TrainConfig, steps: int, data, out: Path, meta: dict, run: RunOptions,
                device: torch.device, deadline: float | None, tokens_per_sample: int) -> dict:
    """Train a fresh head alone for `steps` steps on the transformer as it is now (the joint training's
    final, averaged weights), in OUT/head_stage: the diffusion loss only (HART.loss(head_only=True)), the
    same batches and learning rate as the joint training, no weight average. Returns fit's result.

    Why a fresh head: the jointly trained head denoises well but draws poor samples, and the longer a head
    trains the worse its samples get (notebook 07, section 5); the joint training still needs a head, whose
    gradient shapes h (a discrete-only model is clearly worse)."""
    stage_cfg = dataclasses.replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, steps // 4), ema=0.0,
                                    weight_decay=0.0, checkpoint_every=min(cfg.checkpoint_every, steps),
                                    log_every=min(cfg.log_every, steps))
    torch.manual_seed(cfg.seed)  # the fresh head's weights: the same in a resumed run (then overwritten)
    model.reset_head()
    params = [*model.head.parameters(), *model.cond_norm.parameters()]

    def loss(batch: dict):
        return model.loss(batch["image"].to(device, non_blocking=True), captions_of(batch, device), head_only=True)

    return fit(model, params, toyshapes_batches(data, stage_cfg, model.text_tokenizer), loss, stage_cfg,
               out / "head_stage", {**meta, "stage": "head"}, run, None, "HART head stage", tokens_per_sample,
               deadline)


@_clean_start("hart")
def train_hart(preset, out: str | Path, tokenizer: str | Path | None = None, run: RunOptions | None = None,
               command: str = "", mode: str | None = None, data=None) -> dict:
    """Train HART (transformer + residual head) on a frozen tokenizer; writes OUT/hart.safetensors.

    mode overrides preset.head.mode: off (discrete only), last (HART), full, early. data: the training
    images (default: the preset's ToyShapes train split).
    """
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.hart import HART
    from hart_mini.model.text import CaptionTokenizer

    run, device, deadline = _start(run)
    preset = training_mix(preset, preset.hart_train)
    tok, tok_path = _frozen_tokenizer(preset, tokenizer, device)
    out = _prepare(out, "hart", run, preset, command, tok_path)
    head = preset.head if mode is None else preset.head.for_mode(mode)
    torch.manual_seed(preset.hart_train.seed)  # the initial weights, so that every run starts alike
    model = HART(preset.transformer, tok, CaptionTokenizer.toyshapes(preset.transformer.text_len), head).to(device)
    scale = model.measure_residual_scale(ToyShapes(preset.data, "val").batch(range(256))["image"].to(device))
    meta = {"kind": "hart-training", "transformer": dataclasses.asdict(preset.transformer),
            "head": dataclasses.asdict(head), "residual_scale": round(scale, 6)}
    tokens = preset.transformer.text_len + preset.tokenizer.num_tokens - 1
    return _train_generator(model, "HART", preset, preset.hart_train, Path(out), tok_path, meta, run, device,
                            deadline, command, tokens, data, preset.transformer.layout_steps)


@_clean_start("hart")
def train_head(preset, out: str | Path, source: str | Path, run: RunOptions | None = None, command: str = "") -> dict:
    """The head stage alone, on a trained HART (a file or training folder): a fresh head, as preset.head
    says (condition, tokens, stage_steps), trained on SOURCE's frozen transformer; writes OUT/hart.safetensors.
    `train hart` with a head stage ends the same way: this reruns only its last part, e.g. to give a trained
    transformer a new head (notebook 07, section 5)."""
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.diffusion import CosineSchedule
    from hart_mini.model.hart import HART
    from hart_mini.runtime import describe_device, world

    run, device, deadline = _start(run)
    preset = training_mix(preset, preset.hart_train)
    source = Path(source) / "hart.safetensors" if Path(source).is_dir() else Path(source)
    model = HART.from_file(source, device)
    require(model.mode == "last", "source", str(source), f"a HART with the 'last' head (it has {model.mode!r})")
    steps = preset.head.stage_steps
    require(steps >= 1, "stage_steps", steps, f"at least 1 (preset {preset.name!r}'s head has no stage: pass --steps)")
    tok_path = source.parent / model.meta["tokenizer_file"]
    out = _prepare(out, "hart", run, preset, command, tok_path)
    model.head_cfg = preset.head.for_mode("last")
    model.schedule = CosineSchedule(model.head_cfg.train_steps)
    meta = {"kind": "hart-head-stage", "source_sha256": checkpoint.sha256(source),
            "head": dataclasses.asdict(model.head_cfg), "data": dataclasses.asdict(preset.data)}
    tokens = model.cfg.text_len + preset.tokenizer.num_tokens - 1
    stage = _head_stage(model, preset.hart_train, steps, ToyShapes(preset.data, "train"), out, meta, run, device,
                        deadline, tokens)
    summary = {k: stage[k] for k in ("step", "seconds", "finished")}
    if world()[0] == 0:
        joint = model.meta.get("train_seconds")
        summary["model"] = str(_write_model(
            model, out, "hart.safetensors", tok_path, stage["finished"],
            {"preset": preset.name, "command": command, "device": describe_device(device), "torch": torch.__version__,
             "source": str(source), "source_command": model.meta.get("command"),
             "head_stage_seconds": round(stage["seconds"], 1),
             "train_seconds": None if joint is None else round(joint + stage["seconds"], 1),
             "finished": stage["finished"], "steps_done": stage["step"], "steps_planned": steps}))
    return summary


@_clean_start("diffusion")
def train_diffusion(preset, out: str | Path, tokenizer: str | Path | None = None, run: RunOptions | None = None,
                    command: str = "", data=None) -> dict:
    """Train the latent diffusion baseline on a frozen tokenizer; writes OUT/diffusion.safetensors."""
    from hart_mini.model.baselines import LatentDiffusion
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.text import CaptionTokenizer

    run, device, deadline = _start(run)
    preset = training_mix(preset, preset.baseline_train)
    tok, tok_path = _frozen_tokenizer(preset, tokenizer, device)
    out = _prepare(out, "diffusion", run, preset, command, tok_path)
    # the baseline has no scales: the fields of HART's scale schedule do not apply (its file says so)
    preset = dataclasses.replace(preset, transformer=dataclasses.replace(preset.transformer, layout_steps=0,
                                                                         raster_scales=0))
    torch.manual_seed(preset.baseline_train.seed)
    model = LatentDiffusion(preset.transformer, tok, CaptionTokenizer.toyshapes(preset.transformer.text_len),
                            preset.baseline).to(device)
    scale = model.measure_latent_scale(ToyShapes(preset.data, "val").batch(range(256))["image"].to(device))
    meta = {"kind": "diffusion-training", "transformer": dataclasses.asdict(preset.transformer),
            "diffusion": dataclasses.asdict(preset.baseline), "latent_scale": round(scale, 6)}
    tokens = preset.transformer.text_len + preset.tokenizer.latent_size ** 2
    return _train_generator(model, "Diffusion baseline", preset, preset.baseline_train, Path(out), tok_path, meta,
                            run, device, deadline, command, tokens, data)


@_clean_start("judge")
def train_judge(preset, out: str | Path, run: RunOptions | None = None, command: str = "",
                n_eval: int = 5000, data=None, held: dict | None = None) -> dict:
    """Train the judge on real ToyShapes images; writes OUT/judge.safetensors with its held-out accuracy
    (on the first n_eval test images, or on `held`, a batch of them already drawn). The file is written even
    when the deadline stops the run early; then it says finished: false."""
    from hart_mini.measure.judge import Judge, real_image_metrics
    from hart_mini.model.data import ToyShapes
    from hart_mini.runtime import describe_device, world

    run, device, deadline = _start(run)
    out = _prepare(out, "judge", run, preset, command)
    data, cfg = ToyShapes(preset.data, "train") if data is None else data, preset.judge_train
    torch.manual_seed(cfg.seed)
    config = {"image_size": preset.data.image_size, "width": 32}
    judge = Judge(**config).to(device)

    def loss(batch: dict):
        return judge.loss(batch["image"].to(device, non_blocking=True), batch["labels"])

    result = fit(judge, list(judge.parameters()), toyshapes_batches(data, cfg), loss, cfg, out,
                 {"kind": "judge-training", "config": config, "data": dataclasses.asdict(preset.data)}, run, None,
                 "judge", 0, deadline)
    summary = {k: result[k] for k in ("step", "seconds", "finished")}
    if world()[0] == 0:
        held = ToyShapes(preset.data, "test", size=n_eval).batch(range(n_eval)) if held is None else held
        metrics = real_image_metrics(judge, held)
        checkpoint.save(out / "judge.safetensors", judge.state_dict(), {
            "kind": "judge", "config": config, "preset": preset.name, "metrics": metrics, "command": command,
            "train_seconds": round(result["seconds"], 1), "device": describe_device(device),
            "torch": torch.__version__, **_final_meta(result, cfg)})
        if result["finished"]:
            runs.mark(out, "finished")
        summary.update(judge=str(out / "judge.safetensors"), metrics=metrics)
    return summary
