"""Where a training step's time goes, stage by stage: the probe behind the gpu preset's speed fixes.

For each training stage of a preset (the models the pipeline trains), on one device:

    trainer_ms   a step as the pipeline's timing burst runs it (costs.time_stage: fit, with EMA, clipping,
                 logging; where HART drops last-scale tokens, a new kept count at every timed step)
    bare_ms      forward + backward + AdamW under the training autocast, nothing else, one fixed batch
    device_ms    the kernels' own time per bare step (torch.profiler; CUDA only): bare_ms far above it means
                 the host cannot launch kernels fast enough; far below it, a slow kernel (see top_device)
    ops          aten calls per bare step
    top_host     the calls with the most host time per step; top_device, the kernels with the most device time

`python -m hart_mini bench --step-profile --preset gpu` runs it. On the first H200 run it showed the
tokenizer's bicubic upsampling taking 120 of 136 ms a step and cuDNN attention plans 44 ms of HART's
(data/results/gpu/profile/): both fixed since (tokenizer.bicubic_up, runtime.cuda_settings).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from hart_mini.costs import stage_model, time_stage
from hart_mini.plan import STAGES

PROFILED_STEPS = 3  # bare steps under the profiler, after 3 warm-up and 5 timed ones


def _rows(events, attr: str, top: int) -> list[dict]:
    rows = sorted(events, key=lambda e: -getattr(e, attr))[:top]
    return [{"name": e.key[:100], "calls": e.count // PROFILED_STEPS,
             "ms": round(getattr(e, attr) / PROFILED_STEPS / 1e3, 3)} for e in rows]


def profile_stage(stage, preset, device: torch.device, data, window: int = 5, top: int = 10) -> dict:
    """The numbers of the module docstring for one stage (a plan.Stage) on `device`, with `data` a
    model.data.Prerendered split on that device."""
    from torch.profiler import ProfilerActivity, profile

    from hart_mini.runtime import autocast_dtype

    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    with tempfile.TemporaryDirectory() as folder:
        burst = time_stage(stage, preset, device, data, Path(folder), window, None)
    model, params, loss = stage_model(stage.name, preset, device)
    batch = data.batch(range(min(getattr(preset, stage.train).batch_size, len(data))))
    optimizer, amp = torch.optim.AdamW(params, lr=1e-4, fused=cuda), autocast_dtype(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            value, _ = loss(batch)
        value.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync()
    tic = time.perf_counter()
    for _ in range(5):
        step()
    sync()
    bare_ms = (time.perf_counter() - tic) / 5 * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        sync()
    events = prof.key_averages()
    device_attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    return {"trainer_ms": round(1e3 * burst["step_s"], 2), "bare_ms": round(bare_ms, 2),
            "device_ms": round(sum(getattr(e, device_attr) for e in events) / PROFILED_STEPS / 1e3, 2) if cuda
            else None,
            "ops": sum(e.count for e in events if e.key.startswith("aten::")) // PROFILED_STEPS,
            "batch": len(batch["image"]),
            "top_host": _rows(events, "self_cpu_time_total", top),
            "top_device": _rows(events, device_attr, top) if cuda else []}


def profile_stages(preset, device: torch.device, names: list[str] | None = None, n_data: int = 4096,
                   workers: int = 0) -> dict:
    """profile_stage for every stage named (default: all but tokenizer_b and discrete, which repeat the
    tokenizer's and HART's steps), on n_data training images drawn once onto `device`."""
    from hart_mini.model.data import Prerendered, ToyShapes
    from hart_mini.model.text import CaptionTokenizer
    from hart_mini.runtime import cuda_settings

    cuda_settings(device)  # as the trainers and the pipeline run: TF32, no cuDNN attention
    train = ToyShapes(preset.data, "train")
    text = CaptionTokenizer.toyshapes(preset.transformer.text_len)
    data = Prerendered(train, n=min(n_data, len(train)), workers=workers, device=device, text=text)
    names = names or [s.name for s in STAGES if s.name not in ("tokenizer_b", "discrete")]
    return {s.name: profile_stage(s, preset, device, data) for s in STAGES if s.name in names}
