"""Checkpoints: safetensors weights with their config and metadata, written atomically, loaded safely.

A checkpoint is one file `NAME.safetensors`. Its header carries the JSON metadata (config, step, metrics)
so weights and config can never drift apart; a pretty copy `NAME.json` sits beside it for people to read.
Every write goes to a temporary file in the same folder and is then renamed over the target, so a crash
or `kill -9` mid-write leaves the previous file intact. Nothing is ever unpickled: optimizer and RNG
states are stored as plain tensors plus JSON.

Every file also carries two sha256 checksums, verified on load: one of its tensors (names, dtypes,
shapes, bytes) and one of its metadata. A damaged file (zeroed or flipped bytes) is refused, and so is
hand-edited metadata: a changed `num_heads`, head mode or prediction target would build a model that
is not the one trained, and sample other images without any error.

Checksums are required. Every file records the format it was written in (`checkpoint_format` inside its
metadata, so the metadata checksum covers it): a file of format 2 or later that lacks its checksums had
them deleted, and is refused. Only a file that records no format (written before checksums existed) loads
without them, with a warning. Malformed checksum or metadata entries are refused in one line that names
the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

META_KEY = "hart_mini"
CHECKSUM_KEY = "hart_mini_sha256"  # {"tensors": sha256, "metadata": sha256}, beside META_KEY in the header
FORMAT_KEY = "checkpoint_format"  # inside META_KEY's JSON; absent in files written before checksums existed
FORMAT = 2  # 1: checksums, no recorded format (files written before this key); 2: checksums required


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


def read_json(path: str | Path, what: str = "") -> object:
    """A JSON file's content; a missing or broken file is a ValueError / FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what or 'the JSON file'} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{what or 'the JSON file'} {str(path)!r} is not valid JSON ({e})") from e


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of tensors: each one's name, dtype, shape and bytes, in name order (independent of the file)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save tensors + JSON-able metadata to `path` (.safetensors) and a readable `.json` beside it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path {str(path)!r} must end in .safetensors")
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {k: v for k, v in meta.items() if k != FORMAT_KEY}
    text = json.dumps({**meta, FORMAT_KEY: FORMAT}, sort_keys=True)
    sums = {"tensors": tensors_sha256(plain), "metadata": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write(path, safetensors_bytes(plain, metadata={META_KEY: text, CHECKSUM_KEY: json.dumps(sums)}))
    write_json(path.with_suffix(".json"), meta)
    return path


def _header(path: Path) -> dict:
    """The metadata of a safetensors header, without reading any tensor."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint: {e}") from e


def _checksums(path: Path, header: dict) -> dict | None:
    """The header's checksums {'tensors', 'metadata'}, None if it has none; malformed ones are refused."""
    if CHECKSUM_KEY not in header:
        return None
    try:
        sums = json.loads(header[CHECKSUM_KEY])
    except ValueError:
        sums = None
    if not (isinstance(sums, dict) and all(isinstance(sums.get(k), str) for k in ("tensors", "metadata"))):
        shown = header[CHECKSUM_KEY] if len(header[CHECKSUM_KEY]) < 40 else header[CHECKSUM_KEY][:40] + "..."
        raise ValueError(f"{str(path)!r}: its checksum entry {CHECKSUM_KEY!r} is malformed ({shown!r}; expected "
                         '{"tensors": sha256, "metadata": sha256}): the header was edited; restore the original file')
    return sums


def _metadata(path: Path, header: dict) -> dict:
    """The hart_mini metadata of a header (without its format key), refused if it was edited after saving or
    if its checksums were removed from a file whose format always carries them."""
    if META_KEY not in header:
        raise ValueError(f"{str(path)!r} has no hart_mini metadata; was it written by hart_mini.checkpoint.save?")
    text, sums = header[META_KEY], _checksums(path, header)
    if sums is not None and sums["metadata"] != hashlib.sha256(text.encode()).hexdigest():
        raise ValueError(f"{str(path)!r}: its metadata was edited after saving (checksum differs); a changed "
                         "config (num_heads, head mode, prediction, ...) builds another model than the one "
                         "trained: restore the original file")
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{str(path)!r}: its hart_mini metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r}: its hart_mini metadata is a {type(meta).__name__}, not a JSON object")
    if sums is None and meta.get(FORMAT_KEY) is not None:
        raise ValueError(f"{str(path)!r} carries no checksums, but it records {FORMAT_KEY} {meta[FORMAT_KEY]!r}, "
                         "whose files always carry them: they were removed from its header, so an edit cannot be "
                         "detected; restore the original file")
    meta.pop(FORMAT_KEY, None)
    return meta


def read_meta(path: str | Path) -> dict:
    """A checkpoint's metadata alone (checked against its checksum), without reading the tensors."""
    path = Path(path)
    return _metadata(path, _header(path))


def verify(path: str | Path, header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors that differ from the checksum saved with them, or that hold NaN. (A file without
    checksums reaches this only when it records no format: _metadata refused the others.)"""
    saved = _checksums(Path(path), header)
    if saved is None:
        warnings.warn(f"{str(path)!r} carries no checksum (it was saved before hart_mini wrote them), so its "
                      "tensors cannot be verified", stacklevel=3)
    elif saved["tensors"] != tensors_sha256(tensors):
        raise ValueError(f"{str(path)!r}: its tensors do not match the checksum saved with them: the file is "
                         "damaged or was edited; restore it from a copy, or retrain")
    nan = [k for k, v in tensors.items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    if nan:
        more = f" and {len(nan) - 1} other tensors" if len(nan) > 1 else ""
        raise ValueError(f"{str(path)!r} holds NaN in {nan[0]}{more}: it was saved from a diverged model; use an "
                         "earlier checkpoint, or retrain with a lower learning rate")


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Load (tensors, metadata) from a checkpoint written by `save`, verified against its checksums."""
    path = Path(path)
    header = _header(path)
    meta = _metadata(path, header)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint: {e}") from e
    verify(path, header, tensors)
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def config_from(build, meta: dict, key: str, path: str | Path):
    """build(**meta[key]) (a config dataclass, or a model's constructor), refusing metadata that this code
    cannot build (an unknown field, an invalid value) with a message that names the file."""
    fields = meta.get(key)
    if not isinstance(fields, dict):
        raise ValueError(f"{str(path)!r} has no {key!r} config in its metadata")
    try:
        return build(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(path)!r}: its {key!r} metadata cannot build a {build.__name__}: {e}") from e


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
