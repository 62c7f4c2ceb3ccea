"""Training: one loop for every model of the course, resumable exactly.

`fit` runs AdamW with a linear warm-up and cosine decay, gradient clipping, an optional EMA of the weights,
a progress bar, and a checkpoint every `checkpoint_every` steps. Exact resume rests on three things:
- the batch of step s is a pure function of (seed, step): `batch_indices` below;
- every step reseeds torch from (seed, step), so random choices inside the loss (caption dropout,
  diffusion noise, dead-code restarts) do not depend on what ran before;
- the checkpoint holds the model, the optimizer, the EMA, the step and the history.
So a run stopped after any checkpoint and resumed ends with the very same weights as one that never
stopped. Checkpoints are written atomically (hart_mini.checkpoint); a crash never corrupts the last one.
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
from hart_mini.config import TrainConfig

CHECKPOINT = "checkpoint.safetensors"


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
    short run's EMA is useful (HART_NOTES pitfall: a 0.9999 EMA makes early checkpoints useless).
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


def _save(out: Path, model, optimizer, ema: EMA | None, step: int, meta: dict, history: list, seconds: float):
    optim_tensors, optim_meta = checkpoint.optimizer_to_tensors(optimizer)
    tensors = {**checkpoint.prefixed("model", model.state_dict()), **optim_tensors}
    if ema is not None:
        tensors.update(checkpoint.prefixed("ema", ema.state))
    full = {**meta, "step": step, "history": history, "optim": optim_meta, "seconds": seconds}
    checkpoint.save(out / CHECKPOINT, tensors, full)
    checkpoint.write_json(out / "history.json", history)


def fit(model: torch.nn.Module, params: list[torch.nn.Parameter], loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
        cfg: TrainConfig, out: str | Path, meta: dict, resume: bool = False,
        on_checkpoint: Callable[[int], None] | None = None, desc: str = "train",
        autocast: torch.dtype | None = None, deadline: float | None = None) -> dict:
    """Train `params` of `model` for cfg.steps steps of loss_fn(step) -> (loss, logs).

    meta: JSON-able description of what is trained (configs); a resumed run must match it.
    deadline: a time.perf_counter() value; when passed, fit saves a checkpoint and returns (for chunked runs).
    Returns {'step', 'seconds', 'history', 'finished'}; 'finished' is False when the deadline stopped it.
    """
    out = Path(out)
    meta = json.loads(json.dumps({**meta, "train": dataclasses.asdict(cfg)}))  # as it reads back (tuples -> lists)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    step, history, seconds = 0, [], 0.0
    if (out / CHECKPOINT).exists():
        if not resume:
            raise ValueError(f"{str(out)!r} already holds a checkpoint: pass --resume to continue it, "
                             "or choose another output folder")
        tensors, saved = checkpoint.load(out / CHECKPOINT)
        checkpoint.check_config({k: meta[k] for k in meta}, {k: saved.get(k) for k in meta}, str(out / CHECKPOINT))
        checkpoint.load_module(model, checkpoint.sub_state(tensors, "model"), str(out / CHECKPOINT))
        device = next(model.parameters()).device
        checkpoint.optimizer_from_tensors(optimizer, {k: v.to(device) for k, v in tensors.items()}, saved["optim"])
        if ema is not None:
            ema.state = {k: v.to(device) for k, v in checkpoint.sub_state(tensors, "ema").items()}
        step, history, seconds = saved["step"], saved["history"], saved["seconds"]

    model.train()
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True, leave=False)
    finished = True
    while step < cfg.steps:
        torch.manual_seed(step_seed(cfg.seed, step))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        device_type = next(model.parameters()).device.type
        with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            loss, logs = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss is {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": loss.item(), "lr": lr_at(step - 1, cfg),
                            "seconds": round(seconds + time.perf_counter() - start, 2), **logs})
            bar.set_postfix({k: f"{v:.4g}" for k, v in history[-1].items() if k in ("loss", "recon", "ce", "diff")})
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            _save(out, model, optimizer, ema, step, meta, history, seconds + time.perf_counter() - start)
            if on_checkpoint is not None:
                on_checkpoint(step)
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


def train_tokenizer(preset, out: str | Path, resume: bool = False, device: str = "auto",
                    max_minutes: float | None = None, command: str = "") -> dict:
    """Both tokenizer stages for a preset; writes OUT/stage_a, OUT/stage_b and OUT/tokenizer.safetensors."""
    from dataclasses import asdict

    from hart_mini.data import ToyShapes
    from hart_mini.runtime import autocast_dtype, describe_device, pick_device
    from hart_mini.tokenizer import HybridTokenizer

    deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
    out, device = Path(out), pick_device(device)
    data = ToyShapes(preset.data, "train")
    shown = ToyShapes(preset.data, "val").batch(range(8))["image"].to(device)
    torch.manual_seed(preset.tokenizer_train.seed)  # the initial weights, so that every run starts alike
    model = HybridTokenizer(preset.tokenizer).to(device)
    meta = {"kind": "tokenizer", "config": asdict(preset.tokenizer), "data": asdict(preset.data)}
    amp = autocast_dtype(device)

    def images(step: int, cfg: TrainConfig) -> torch.Tensor:
        return data.batch(batch_indices(cfg.seed, step, cfg.batch_size, len(data)))["image"].to(device)

    cfg_a, cfg_b = preset.tokenizer_train, preset.decoder_train
    restart_every, restart_until = max(cfg_a.steps // 50, 1), int(0.8 * cfg_a.steps)  # then let codes settle

    def loss_a(step: int):
        return model.stage_a_loss(images(step, cfg_a), restart=step % restart_every == 0 and step < restart_until)

    def loss_b(step: int):
        return model.stage_b_loss(images(step, cfg_b))

    def figures(stage_dir: Path, keys: tuple[str, ...]):
        def write(step: int) -> None:
            _recon_figure(model, shown, stage_dir / "recon.png")
            _loss_figure(checkpoint.load(stage_dir / CHECKPOINT)[1]["history"], keys, stage_dir / "loss.png")
        return write

    a = fit(model, model.stage_a_parameters(), loss_a, cfg_a, out / "stage_a", {**meta, "stage": "a"}, resume,
            figures(out / "stage_a", ("recon", "vq")), "tokenizer (a) autoencoder + VQ", amp, deadline)
    result = {"stage_a": {k: a[k] for k in ("step", "seconds", "finished")}}
    if not a["finished"]:
        return result
    params = model.start_stage_b()
    b = fit(model, params, loss_b, cfg_b, out / "stage_b", {**meta, "stage": "b"}, resume,
            figures(out / "stage_b", ("recon",)), "tokenizer (b) decoder fine-tune", amp, deadline)
    result["stage_b"] = {k: b[k] for k in ("step", "seconds", "finished")}
    if b["finished"]:
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
                     resume: bool, device: torch.device, deadline: float | None, command: str) -> dict:
    """Shared by HART and the diffusion baseline: fit on ToyShapes, sample grids, save beside the tokenizer."""
    import shutil

    from hart_mini.data import ToyShapes
    from hart_mini.runtime import autocast_dtype, describe_device

    data = ToyShapes(preset.data, "train")
    prompts = ToyShapes(preset.data, "val").batch(range(8))["caption"]

    def loss(step: int):
        batch = data.batch(batch_indices(cfg.seed, step, cfg.batch_size, len(data)))
        return model.loss(batch["image"].to(device), batch["caption"])

    def figures(step: int) -> None:
        sample_figure(model, prompts, out / "samples.png")
        _loss_figure(checkpoint.load(out / CHECKPOINT)[1]["history"], ("ce", "diff"), out / "loss.png")

    meta = {**meta, "data": dataclasses.asdict(preset.data), "tokenizer_sha256": checkpoint.sha256(tok_path)}
    result = fit(model, model.trainable_parameters(), loss, cfg, out, meta, resume, figures, name,
                 autocast_dtype(device), deadline)
    summary = {k: result[k] for k in ("step", "seconds", "finished")}
    if result["finished"]:
        if (out / "tokenizer.safetensors").resolve() != tok_path.resolve():
            shutil.copyfile(tok_path, out / "tokenizer.safetensors")  # a model file names its tokenizer beside it
        target = out / f"{name.lower().split()[0]}.safetensors"
        model.save(target, out / "tokenizer.safetensors",
                   {"preset": preset.name, "train_seconds": round(result["seconds"], 1), "command": command,
                    "device": describe_device(device), "torch": torch.__version__})
        summary["model"] = str(target)
    return summary


def train_hart(preset, out: str | Path, tokenizer: str | Path | None = None, resume: bool = False,
               device: str = "auto", max_minutes: float | None = None, command: str = "", mode: str | None = None
               ) -> dict:
    """Train HART (transformer + residual head) on a frozen tokenizer; writes OUT/hart.safetensors.

    mode overrides preset.head.mode: off (discrete only), last (HART), full, early.
    """
    from hart_mini.data import ToyShapes
    from hart_mini.hart import HART
    from hart_mini.runtime import pick_device
    from hart_mini.text import CaptionTokenizer

    deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
    out, device = Path(out), pick_device(device)
    tok, tok_path = _frozen_tokenizer(preset, tokenizer, device)
    head = preset.head if mode is None else dataclasses.replace(preset.head, mode=mode)
    torch.manual_seed(preset.hart_train.seed)  # the initial weights, so that every run starts alike
    model = HART(preset.transformer, tok, CaptionTokenizer.toyshapes(preset.transformer.text_len), head).to(device)
    scale = model.measure_residual_scale(ToyShapes(preset.data, "val").batch(range(256))["image"].to(device))
    meta = {"kind": "hart-training", "transformer": dataclasses.asdict(preset.transformer),
            "head": dataclasses.asdict(head), "residual_scale": round(scale, 6)}
    return _train_generator(model, "HART", preset, preset.hart_train, out, tok_path, meta, resume, device,
                            deadline, command)


def train_diffusion(preset, out: str | Path, tokenizer: str | Path | None = None, resume: bool = False,
                    device: str = "auto", max_minutes: float | None = None, command: str = "") -> dict:
    """Train the latent diffusion baseline on a frozen tokenizer; writes OUT/diffusion.safetensors."""
    from hart_mini.baselines import LatentDiffusion
    from hart_mini.data import ToyShapes
    from hart_mini.runtime import pick_device
    from hart_mini.text import CaptionTokenizer

    deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
    out, device = Path(out), pick_device(device)
    tok, tok_path = _frozen_tokenizer(preset, tokenizer, device)
    torch.manual_seed(preset.baseline_train.seed)
    model = LatentDiffusion(preset.transformer, tok, CaptionTokenizer.toyshapes(preset.transformer.text_len),
                            preset.baseline).to(device)
    scale = model.measure_latent_scale(ToyShapes(preset.data, "val").batch(range(256))["image"].to(device))
    meta = {"kind": "diffusion-training", "transformer": dataclasses.asdict(preset.transformer),
            "diffusion": dataclasses.asdict(preset.baseline), "latent_scale": round(scale, 6)}
    return _train_generator(model, "Diffusion baseline", preset, preset.baseline_train, out, tok_path, meta, resume,
                            device, deadline, command)


def train_judge(preset, out: str | Path, resume: bool = False, device: str = "auto",
                max_minutes: float | None = None, command: str = "", n_eval: int = 5000) -> dict:
    """Train the judge on real ToyShapes images; writes OUT/judge.safetensors with its held-out accuracy."""
    from hart_mini.data import ToyShapes
    from hart_mini.judge import Judge, attribute_accuracy, prompt_accuracy
    from hart_mini.runtime import autocast_dtype, describe_device, pick_device

    deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
    out, device = Path(out), pick_device(device)
    data, cfg = ToyShapes(preset.data, "train"), preset.judge_train
    torch.manual_seed(cfg.seed)
    config = {"image_size": preset.data.image_size, "width": 32}
    judge = Judge(**config).to(device)

    def loss(step: int):
        batch = data.batch(batch_indices(cfg.seed, step, cfg.batch_size, len(data)))
        return judge.loss(batch["image"].to(device), batch["labels"])

    result = fit(judge, list(judge.parameters()), loss, cfg, out, {"kind": "judge-training", "config": config,
                 "data": dataclasses.asdict(preset.data)}, resume, None, "judge", autocast_dtype(device), deadline)
    summary = {k: result[k] for k in ("step", "seconds", "finished")}
    if result["finished"]:
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
