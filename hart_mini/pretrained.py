"""Shipped models in `data/`: one call to load them, a manifest that says where each came from.

    tokenizer = hart_mini.pretrained.load("tokenizer", preset="cpu")

`data/manifest.json` lists every shipped file with its sha256, size, config, the exact command that
produced it, the device and time it took, and its metrics. `load` checks the sha256 before reading a
byte of the weights, and the weights are safetensors (never pickle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hart_mini import checkpoint
from hart_mini.checkpoint import sha256

DATA = Path(__file__).resolve().parents[1] / "data"
MANIFEST = DATA / "manifest.json"


def _loaders() -> dict:
    from hart_mini.baselines import LatentDiffusion
    from hart_mini.hart import HART
    from hart_mini.judge import Judge
    from hart_mini.tokenizer import HybridTokenizer

    return {"tokenizer": HybridTokenizer.from_file, "hart": HART.from_file, "judge": Judge.from_file,
            "diffusion": LatentDiffusion.from_file}


def manifest() -> dict:
    import json

    if not MANIFEST.exists():
        return {"models": {}}
    try:
        return json.loads(MANIFEST.read_text())
    except ValueError as e:
        raise ValueError(f"{MANIFEST} is not valid JSON ({e}); restore it with `git checkout -- data/manifest.json`"
                         ) from e


def name(kind: str, preset: str) -> str:
    return f"{kind}_{preset}"


def available(kind: str, preset: str) -> bool:
    entry = manifest()["models"].get(name(kind, preset))
    return entry is not None and (DATA / entry["file"]).is_file()


def path(kind: str, preset: str) -> Path:
    """The shipped file for (kind, preset), after checking it against the manifest."""
    models = manifest()["models"]
    key = name(kind, preset)
    if key not in models:
        shipped = ", ".join(sorted(models)) or "none"
        raise FileNotFoundError(f"no shipped {kind} for preset {preset!r} in {MANIFEST} (shipped: {shipped}); "
                                f"train one with `python -m hart_mini train {kind} --preset {preset} --out DIR`")
    entry = models[key]
    file = DATA / entry["file"]
    if not file.is_file():
        raise FileNotFoundError(f"{file} is listed in the manifest but missing; restore it with git")
    if sha256(file) != entry["sha256"]:
        raise ValueError(f"{file} does not match the sha256 in {MANIFEST}; it was changed after shipping")
    return file


def loader(kind: str):
    """The `from_file` of model `kind` ('tokenizer', 'hart', 'judge', 'diffusion')."""
    loaders = _loaders()
    if kind not in loaders:
        raise ValueError(f"kind={kind!r} is invalid: expected one of {tuple(loaders)}")
    return loaders[kind]


def load(kind: str, preset: str = "cpu", device: str | torch.device = "cpu"):
    """Load the shipped model `kind` ('tokenizer', ...) trained for `preset`."""
    return loader(kind)(path(kind, preset), device=device)


def ship(kind: str, preset: str, source: str | Path, command: str, metrics: dict, extra: dict | None = None) -> dict:
    """Copy a trained file into data/ and record it in the manifest (sha256, size, config, command, metrics)."""
    source = Path(source)
    _, meta = checkpoint.load(source)
    if meta.get("kind") != kind:
        raise ValueError(f"{str(source)!r} holds a {meta.get('kind')!r}, not a {kind!r}")
    target = DATA / f"{name(kind, preset)}.safetensors"
    DATA.mkdir(exist_ok=True)
    if kind in ("hart", "diffusion"):  # it names its tokenizer: point it at the shipped one (the same file)
        tensors, meta = checkpoint.load(source)
        shipped_tokenizer = path("tokenizer", preset)
        if sha256(shipped_tokenizer) != meta["tokenizer_sha256"]:
            raise ValueError(f"{str(source)!r} was trained on another tokenizer than the shipped "
                             f"{shipped_tokenizer.name}")
        checkpoint.save(target, tensors, {**meta, "tokenizer_file": shipped_tokenizer.name})
        (DATA / f"{name(kind, preset)}.json").unlink(missing_ok=True)  # the manifest documents shipped files
    else:
        shutil.copyfile(source, target)
    entry = {
        "file": target.name, "kind": kind, "preset": preset, "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "config": meta.get("config") or {k: meta.get(k) for k in ("transformer", "head")},
        "train_seconds": meta.get("train_seconds"), "device": meta.get("device"), "torch": meta.get("torch"),
        "command": command, "metrics": metrics, **(extra or {}),
    }
    data = manifest()
    data["models"][name(kind, preset)] = entry
    checkpoint.write_json(MANIFEST, data)
    return entry
