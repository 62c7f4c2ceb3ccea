"""Seeding, and picking the device and dtype: the few lines every notebook and trainer starts with.

Nothing here calls `.cuda()` on its own: the caller names a device ("cpu", "cuda", "cuda:1", "mps") or
asks for "auto", which takes CUDA, then Apple's MPS, then the CPU.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from hart_mini.config import require


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (every device); return a CPU generator seeded the same way."""
    require(isinstance(seed, int) and seed >= 0, "seed", seed, "an integer >= 0")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu. An explicit name is checked, with a clear error if missing."""
    require(isinstance(name, str) and name != "", "device", name, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device={name!r} is invalid: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is invalid: CUDA is not available on this machine (try 'auto')")
    if device.type == "mps" and not mps_available():
        raise ValueError(f"device={name!r} is invalid: MPS is not available on this machine (try 'auto')")
    return device


def autocast_dtype(device: torch.device, name: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype for training on `device`: bf16 on CUDA that supports it, else None (fp32).

    CPU autocast exists but its speed-up depends on the processor, so 'auto' keeps fp32 there.
    """
    require(name in ("auto", "fp32", "bf16", "fp16"), "precision", name, "'auto', 'fp32', 'bf16' or 'fp16'")
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def cuda_settings(device: torch.device) -> None:
    """On CUDA: fp32 matmuls and convolutions on TF32 tensor cores (what bf16 autocast leaves in fp32), and
    SDPA's cuDNN attention kernel off. cuDNN builds a plan for every new sequence length, and HART's training
    draws a new length at every step (it keeps a random share of last-scale tokens): on an H200 that cost
    3.5 ms of host time per attention call, 44 ms a step (data/results/gpu/profile/). The memory-efficient
    kernel takes any length with no plan."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(False)


def data_workers(device: torch.device, most: int = 8) -> int:
    """Data processes that draw batches ahead: on CUDA one per core but one (the main process), at most
    `most`; none elsewhere, where the same cores would do the model's work."""
    return min(most, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0


def one_thread(_worker: int = 0) -> None:
    """For data worker processes (a DataLoader's worker_init_fn, a Pool's initializer): one torch thread and,
    where threadpoolctl is installed, one BLAS thread each. N workers that each start a thread per core
    would fight over the cores."""
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def inference_autocast(device: torch.device):
    """The precision to sample in: bf16 autocast on CUDA (with TF32 for what stays fp32), fp32 elsewhere.
    Training already runs this way; evaluation and benchmarks should too, or they time the slow path."""
    import contextlib

    cuda_settings(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device) -> str:
    """One human line: which device, and its name where torch knows it."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


# --- several processes: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE ---------------------------------


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) of this process; (0, 0, 1) outside torchrun."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(device: torch.device) -> torch.device:
    """Under torchrun: join the process group (NCCL on CUDA, gloo on CPU) and return this rank's device."""
    import torch.distributed as dist

    rank, local_rank, size = world()
    if size == 1:
        return device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


# Dense tensor-core peak, TFLOP/s, for model FLOP utilisation (MFU): the bf16 peak, except on V100 and T4,
# which have no bf16 tensor cores: their fp16 peak (train there with --precision fp16, or the MFU is against
# a peak the run cannot reach). Pass --peak-tflops for other devices.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}  # V100, T4: fp16


def peak_tflops(device: torch.device) -> float | None:
    """The dense tensor-core peak of a known CUDA device (bf16; fp16 on V100 and T4), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
