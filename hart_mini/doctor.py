"""`python -m hart_mini doctor`: check a machine for the course in under two minutes.

It reports the device, bf16 and TF32 support, which scaled_dot_product_attention kernels accept our
block-causal (boolean) mask and which one torch picks for it, a short training burst of HART at the size of
the preset (images/s, tokens/s and, on CUDA, MFU; batches drawn by data workers, as in training), and it
writes a few samples. Everything is printed as JSON.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def sdpa_kernels(device: torch.device) -> dict:
    """Which SDPA backends run attention with a boolean block-causal mask on this device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hart_mini.model.transformer import block_causal_mask

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = k = v = torch.randn(2, 4, 145, 32, device=device, dtype=dtype)
    level = torch.cat([torch.zeros(16), torch.arange(1, 6).repeat_interleave(torch.tensor([4, 9, 16, 36, 64]))])
    mask = block_causal_mask(level.to(device), torch.ones(2, 145, dtype=torch.bool, device=device))[:, None]
    usable = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            usable[backend.name] = True
        except RuntimeError:
            usable[backend.name] = False
    # What runs by default is torch's own choice, in its own priority order (not the order above):
    # _fused_sdp_choice answers it for these very inputs.
    in_use = SDPBackend(torch._fused_sdp_choice(q, k, v, mask)).name
    return {"usable_with_block_causal_mask": usable, "chosen_by_torch": in_use}


def doctor(preset, device_name: str = "auto", steps: int = 30, out: str | Path = "doctor_samples.png",
           workers: int | None = None) -> dict:
    """workers: data processes for the burst (default: on CUDA, one per core but one, at most 8; else 0)."""

    from hart_mini import pretrained
    from hart_mini.config import require
    from hart_mini.course import viz
    from hart_mini.model.data import ToyShapes
    from hart_mini.model.hart import HART
    from hart_mini.model.text import CaptionTokenizer
    from hart_mini.model.tokenizer import HybridTokenizer
    from hart_mini.runtime import autocast_dtype, cuda_settings, data_workers, describe_device, peak_tflops, pick_device
    from hart_mini.train import RunOptions, captions_of, fit, toyshapes_batches

    require(isinstance(steps, int) and steps >= 1, "steps", steps, "an integer >= 1")
    device = pick_device(device_name)
    cuda_settings(device)
    if workers is None:
        workers = data_workers(device)
    report = {"device": describe_device(device), "torch": torch.__version__,
              "bf16": device.type == "cuda" and torch.cuda.is_bf16_supported(),
              "autocast": str(autocast_dtype(device)), "tf32": device.type == "cuda",
              "peak_tflops": peak_tflops(device), "sdpa": sdpa_kernels(device)}
    # A short training burst at the preset's size, from an untrained tokenizer: speed, not quality.
    torch.manual_seed(0)
    model = HART(preset.transformer, HybridTokenizer(preset.tokenizer), CaptionTokenizer.toyshapes(),
                 preset.head).to(device)
    data = ToyShapes(preset.data)
    model.measure_residual_scale(data.batch(range(64))["image"].to(device))
    cfg = preset.hart_train.__class__(**{**preset.hart_train.__dict__, "steps": steps,
                                         "log_every": max(1, steps // 3), "checkpoint_every": steps, "ema": 0.0,
                                         "warmup_steps": 1})
    loss = lambda batch: model.loss(batch["image"].to(device, non_blocking=True), captions_of(batch, device))
    start = time.perf_counter()
    result = fit(model, model.trainable_parameters(), toyshapes_batches(data, cfg, model.text_tokenizer), loss, cfg,
                 tempfile.mkdtemp(), {}, RunOptions(device=str(device), workers=workers), desc="doctor",
                 tokens_per_sample=preset.transformer.text_len + preset.tokenizer.num_tokens - 1)
    last = result["history"][-1]
    report["training_burst"] = {"preset": preset.name, "steps": steps, "batch": cfg.batch_size, "workers": workers,
                                "seconds": round(time.perf_counter() - start, 1),
                                **{k: last[k] for k in ("images_per_s", "tokens_per_s", "mfu", "data_wait_share")
                                   if k in last}}
    shipped = pretrained.available("hart", preset.shipped)
    sampler = pretrained.load("hart", preset.shipped, device) if shipped else model
    prompts = ToyShapes(preset.data, "test").batch(range(8))["caption"]
    report["samples"] = str(viz.save(viz.image_grid(sampler.generate(prompts) * 2 - 1, prompts), out))
    report["samples_from"] = f"shipped HART ({preset.shipped})" if shipped else "the untrained burst model"
    return report
