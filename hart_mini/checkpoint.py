"""Checkpoints: safetensors weights with their config and metadata, written atomically, loaded safely.

A checkpoint is one file `NAME.safetensors`. Its header carries the JSON metadata (config, step, metrics)
so weights and config can never drift apart; a pretty copy `NAME.json` sits beside it for people to read.
Every write goes to a temporary file in the same folder and is then renamed over the target, so a crash
or `kill -9` mid-write leaves the previous file intact. Nothing is ever unpickled: optimizer and RNG
states are stored as plain tensors plus JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

META_KEY = "hart_mini"


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file + rename (atomic on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, obj: object) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save tensors + JSON-able metadata to `path` (.safetensors) and a readable `.json` beside it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path {str(path)!r} must end in .safetensors")
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, safetensors_bytes(plain, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))
    write_json(path.with_suffix(".json"), meta)
    return path


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Load (tensors, metadata) from a checkpoint written by `save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint: {e}") from e
    if META_KEY not in header:
        raise ValueError(f"{str(path)!r} has no hart_mini metadata; was it written by hart_mini.checkpoint.save?")
    return tensors, json.loads(header[META_KEY])


def config_differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """Lines 'field: expected X, checkpoint has Y' for every field where two nested dicts differ."""
    lines = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key, "<missing>"), found.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: expected {a!r}, checkpoint has {b!r}")
    return lines


def check_config(expected: dict, found: dict, what: str = "checkpoint") -> None:
    """Refuse a checkpoint whose config differs from the one asked for, naming every difference."""
    diff = config_differences(expected, found)
    if diff:
        raise ValueError(f"{what} was trained with a different config:\n  " + "\n  ".join(diff))


def sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.`, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def load_module(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """load_state_dict with a readable error for missing, unexpected and wrongly shaped tensors."""
    own = module.state_dict()
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in own.items() if k not in state]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in state.items() if k not in own]
    problems += [
        f"{k}: checkpoint has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}"
        for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if problems:
        shown = "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
        raise ValueError(f"{what} does not fit this {type(module).__name__} "
                         f"(was it made with another config?):\n  {shown}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# --- training state as tensors + JSON (never pickle) -------------------------------------------------


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's state_dict: tensors under 'optim.<param>.<key>', the rest as JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in sub_state(tensors, "optim").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_to_tensors() -> dict[str, torch.Tensor]:
    """The torch CPU (and CUDA) generator states, as uint8 tensors."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda{i}"] = state
    return out


def rng_from_tensors(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"].to("cpu"))
    cuda = [tensors[f"rng.cuda{i}"].to("cpu") for i in range(torch.cuda.device_count()) if f"rng.cuda{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
