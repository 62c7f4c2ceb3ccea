"""Shipped models in `data/`: one call to load them, a manifest that says where each came from.

    tokenizer = hart_mini.pretrained.load("tokenizer", preset="cpu")
    shipped = hart_mini.pretrained.load_for("hart", get_preset())   # what a notebook calls
    print(shipped.note); model, data = shipped.model, shipped.preset.data

`load_for` never hands a notebook an untrained model in silence: it loads the models shipped for the
preset, or, when there are none (say, `gpu` before the GPU run is committed), the `cpu` ones, and its
`note` says which. Its `preset` is the one the model was trained for, so the notebook feeds it data of
the right size.

`data/manifest.json` lists every shipped file with its sha256, size, config, the exact command that
produced it, the device and time it took, and its metrics. `load` checks the sha256 before reading a
byte of the weights, and the weights are safetensors (never pickle).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hart_mini import checkpoint
from hart_mini.checkpoint import sha256

DATA = Path(__file__).resolve().parents[1] / "data"
MANIFEST = DATA / "manifest.json"


def _loaders() -> dict:
    from hart_mini.measure.judge import Judge
    from hart_mini.model.baselines import LatentDiffusion
    from hart_mini.model.hart import HART
    from hart_mini.model.tokenizer import HybridTokenizer

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


@dataclass
class Shipped:
    model: torch.nn.Module
    preset: object  # the hart_mini.config.Preset the model was trained for: use its data and sizes
    note: str  # one line for the notebook to print: which file, how it was made, or why it fell back


FALLBACK = "cpu"  # the preset whose models ship with the repository


def load_for(kind: str, preset, device: str | torch.device = "cpu") -> Shipped:
    """The shipped `kind` for `preset` (a Preset), else the `cpu` one with a note saying so.

    Raises FileNotFoundError, naming the command that trains one, when neither is shipped.
    """
    from hart_mini.config import get_preset

    wanted = preset.shipped
    use = wanted if available(kind, wanted) else FALLBACK
    if not available(kind, use):
        path(kind, use)  # raises, naming the command that trains one
    model = load(kind, use, device)
    entry = manifest()["models"][name(kind, use)]
    made = f"{entry['command']}" + (f", {entry['train_seconds'] / 60:.0f} min" if entry.get("train_seconds") else "")
    note = f"using the shipped {use} {kind} (data/{entry['file']}; made by: {made})"
    if use != wanted:
        note = (f"note: no {wanted} {kind} is shipped in data/, so this notebook uses the {use} one instead, "
                f"with {use}-preset data; {note}")
        return Shipped(model, get_preset(use), note)
    return Shipped(model, preset, note)


def history(kind: str, preset_name: str = FALLBACK) -> tuple[list[dict] | None, str]:
    """The training history of the shipped `kind` (data/results/<preset>/<kind>_history.json), with a note.

    Returns (None, why) when it is not committed, so a notebook can say so instead of plotting another run.
    """
    file = DATA / "results" / preset_name / f"{kind}_history.json"
    if not file.is_file():
        return None, (f"note: the shipped {preset_name} {kind}'s training history is not in the repository "
                      f"({file.relative_to(DATA.parent)}); only this notebook's short run is shown")
    entries = json.loads(file.read_text())
    entries = entries["history"] if isinstance(entries, dict) else entries
    return entries, f"the shipped {preset_name} {kind}'s training history ({file.relative_to(DATA.parent)})"


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
