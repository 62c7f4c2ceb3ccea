"""What a training step costs, and how long it takes on a GPU: the numbers behind the `gpu` preset.

Two numbers per step, counted before any GPU is asked for (the method: count the work first, then measure):

    FLOPs  every matmul, convolution and attention op, by torch's own formulas (torch.utils.flop_counter)
    bytes  every op reads its inputs and writes its output once: eager PyTorch fuses nothing, so this is
           the memory traffic of a step (views move no data and count zero; broadcast inputs count once)

A device turns them into time, op by op, with the roofline: an op takes
    max(FLOPs / rate, bytes / bandwidth) + a launch floor,
and a step takes the sum over its ops, or the host's time to dispatch them if that is longer (small
batches leave a GPU waiting for Python). The rates are those measured on the lent machines (a large bf16
matmul, a device-to-device copy), scaled down to what eager PyTorch reaches at hart_mini's small widths;
`DEVICES` says which number is which.

Counting runs the real forward and backward on the CPU under bf16 autocast, at two tiny batches, and
extrapolates every op linearly to the real batch: weights cost the same at any batch, activations grow
with it. A step at batch 256 of the 64 px model costs seconds to count on a laptop, nothing to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
# The CPU's fused attention is missing from torch's FLOP formulas; it does the GPU kernels' work.
_CPU_ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu.default: "forward",
                  aten._scaled_dot_product_flash_attention_for_cpu_backward.default: "backward"}


@dataclass(frozen=True)
class DeviceSpec:
    """What one GPU does per second with hart_mini's ops, in eager PyTorch with bf16 autocast."""

    name: str
    matmul_tflops: float  # bf16 matmuls at widths 128-256 (inner dimension small: far from the big-GEMM rate)
    conv_tflops: float  # cuDNN convolutions with 64-192 channels
    attention_tflops: float  # SDPA with a boolean mask: the memory-efficient kernel, head dim 32
    bandwidth_tbs: float  # what elementwise kernels reach: read + written bytes per second
    kernel_us: float  # the floor of one kernel: launch and tail
    dispatch_us: float  # host time per op (Python + dispatcher); the GPU idles if kernels are shorter
    peak_tflops: float = 989.0  # the dense bf16 peak, for the model FLOP utilisation (MFU) a plan assumes


# Measured on this workplace's machines (the device notes, 2026-11): an 8192^3 bf16 matmul ran 798 TFLOP/s
# on an H100 and 769-798 on an H200; a device-to-device copy moved 3.0 TB/s (H100) and 4.3 TB/s (H200).
# Eager PyTorch at hart_mini's shapes gets much less: half the big-GEMM rate for matmuls whose inner
# dimension is 128-256, a third for cuDNN convolutions at 64-192 channels, a eighth for masked attention
# with 32-wide heads, 80 % of the copy bandwidth for elementwise kernels. Those fractions are our
# assumptions; the pipeline measures every stage before it trusts them (see pipeline.py).
DEVICES = {
    "h100": DeviceSpec("NVIDIA H100 80GB (SXM)", matmul_tflops=400.0, conv_tflops=260.0, attention_tflops=100.0,
                       bandwidth_tbs=2.4, kernel_us=4.0, dispatch_us=10.0),
    "h200": DeviceSpec("NVIDIA H200 (SXM)", matmul_tflops=400.0, conv_tflops=260.0, attention_tflops=100.0,
                       bandwidth_tbs=3.4, kernel_us=4.0, dispatch_us=10.0),
}


def _touched_bytes(x: object) -> int:
    """Bytes a kernel reads or writes for tensor x: broadcast (stride 0) dimensions are read once."""
    if not isinstance(x, torch.Tensor):
        return 0
    n = 1
    for size, stride in zip(x.shape, x.stride()):
        n *= size if stride != 0 else 1
    return n * x.element_size()


@dataclass
class Op:
    name: str
    kind: str  # matmul | conv | attention | memory
    flops: float
    bytes: float
    fp32: bool = False  # a matmul or conv on fp32 inputs runs as TF32: half the bf16 rate


class OpCounter(TorchDispatchMode):
    """Records every aten op that runs inside it: its FLOPs, its bytes moved, and what kind of op it is."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns):
            return out  # a view: metadata only
        packet = func._overloadpacket
        flops = 0
        if packet in flop_counter.flop_registry:
            flops = flop_counter.flop_registry[packet](*args, **kwargs, out_val=out)
        elif func in _CPU_ATTENTION:
            if _CPU_ATTENTION[func] == "forward":
                flops = flop_counter.sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)
            else:
                flops = flop_counter.sdpa_backward_flop_count(*(a.shape for a in args[:4]))
        moved = sum(_touched_bytes(x) for x in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0])
        name = str(packet)
        kind = ("attention" if "attention" in name else "conv" if "conv" in name else
                "matmul" if flops else "memory")
        first = next((x for x in tree_flatten(args)[0] if isinstance(x, torch.Tensor)), None)
        fp32 = first is not None and first.dtype == torch.float32
        self.ops.append(Op(name, kind, float(flops), float(moved), fp32))
        return out


def count_ops(run: Callable[[], None]) -> list[Op]:
    """The ops of run() (a forward and backward, say), in order."""
    with OpCounter() as counter:
        run()
    return counter.ops


@dataclass
class StepCost:
    """The ops of one training step at `batch` samples, and their totals."""

    batch: int
    ops: list[Op] = field(default_factory=list)
    extra_ops: int = 0  # kernels not counted op by op (the optimizer's fused step, EMA, clipping)
    extra_bytes: float = 0.0

    @property
    def flops(self) -> float:
        return sum(op.flops for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes for op in self.ops) + self.extra_bytes

    def seconds(self, device: DeviceSpec) -> float:
        """Roofline time of the step on `device`: sum over ops of max(compute, memory) + a launch floor,
        or the host's dispatch time if that is longer."""
        rate = {"matmul": device.matmul_tflops, "conv": device.conv_tflops, "attention": device.attention_tflops}
        bandwidth = device.bandwidth_tbs * 1e12
        compute = lambda op: op.flops / (rate[op.kind] * 1e12 * (0.5 if op.fp32 else 1.0)) if op.kind in rate else 0.0
        gpu = sum(max(compute(op), op.bytes / bandwidth) for op in self.ops)
        gpu += self.extra_bytes / bandwidth + (len(self.ops) + self.extra_ops) * device.kernel_us * 1e-6
        host = (len(self.ops) + self.extra_ops) * device.dispatch_us * 1e-6
        return max(gpu, host)

    def summary(self, device: DeviceSpec) -> dict:
        by_kind = {}
        for op in self.ops:
            entry = by_kind.setdefault(op.kind, {"gflop": 0.0, "gb": 0.0, "ops": 0})
            entry["gflop"] += op.flops / 1e9
            entry["gb"] += op.bytes / 1e9
            entry["ops"] += 1
        seconds = self.seconds(device)
        return {"batch": self.batch, "tflop": round(self.flops / 1e12, 4), "gb_moved": round(self.bytes / 1e9, 3),
                "kernels": len(self.ops) + self.extra_ops, "ms": round(1e3 * seconds, 2),
                "mfu": round(self.flops / seconds / (device.peak_tflops * 1e12), 4),
                "by_kind": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in by_kind.items()}}


def extrapolate(small: list[Op], large: list[Op], n_small: int, n_large: int, batch: int) -> list[Op]:
    """Ops at `batch` from the same call counted at n_small and n_large samples: each op's FLOPs and bytes
    are a + b * samples (weights: a; activations: b). Ops are matched by name in order; the few that only
    one count has (if any) are dropped."""
    at = lambda x, y: max(x + (y - x) / (n_large - n_small) * (batch - n_small), 0.0)
    return [Op(a.name, a.kind, at(a.flops, b.flops), at(a.bytes, b.bytes), a.fp32) for a, b in align(small, large)]


def align(a: list[Op], b: list[Op], window: int = 16) -> list[tuple[Op, Op]]:
    """Pairs of ops with the same name, in order. The two lists differ at most by a few ops (a copy that
    one batch size needs and the other does not), so a walk that resynchronises within `window` ops does."""
    pairs, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i].name != b[j].name:  # the nearest (i + di, j + dj) whose names match again
            step = next(((di, d - di) for d in range(1, window + 1) for di in range(d + 1)
                         if i + di < len(a) and j + d - di < len(b) and a[i + di].name == b[j + d - di].name), (1, 1))
            i, j = i + step[0], j + step[1]
            continue
        pairs.append((a[i], b[j]))
        i, j = i + 1, j + 1
    return pairs


@dataclass
class Counted:
    """The ops of one call counted at two sizes; `at(batch)` extrapolates them (see extrapolate)."""

    small: list[Op]
    large: list[Op]
    n_small: int
    n_large: int

    def at(self, batch: int) -> list[Op]:
        return extrapolate(self.small, self.large, self.n_small, self.n_large, batch)


def count_at_two_sizes(run: Callable[[int], None], samples: tuple[int, int] = (1, 2)) -> Counted:
    """run(n) counted at the two small n of `samples`."""
    return Counted(count_ops(lambda: run(samples[0])), count_ops(lambda: run(samples[1])), *samples)


def step_cost(run: Callable[[int], None], batch: int, parameters: int = 0, ema: bool = False,
              samples: tuple[int, int] = (1, 2)) -> StepCost:
    """The cost of run(batch), from run(n) counted at the two small n of `samples`: a training step (run does
    the forward and backward, under the autocast the step uses) or a sampling call (parameters=0).

    A training step's optimizer adds its own traffic: fused AdamW reads the fp32 weight, gradient and two
    moments and writes three of them back (28 bytes a parameter); clipping reads the gradients twice and
    writes them once (12); the EMA reads two copies and writes one (12)."""
    ops = count_at_two_sizes(run, samples).at(batch)
    if parameters == 0:
        return StepCost(batch, ops)
    per_parameter = 28 + 12 + (12 if ema else 0)
    return StepCost(batch, ops, extra_ops=12, extra_bytes=float(per_parameter * parameters))
