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

A model only makes sense at the image size and latent grid it was trained for: `check_fits` refuses one
used under a preset of another geometry, naming the preset the file was trained for. `ship` is the one
way a trained model enters data/: it refuses a file trained for another preset, an unfinished file over a
finished one, and replacing a shipped file without `replace=True` (`ship --replace`); it keeps the replaced
entry's metrics unless new ones are given, and says what it replaced.
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
    if not MANIFEST.exists():
        return {"models": {}}
    try:
        data = json.loads(MANIFEST.read_text())
    except ValueError as e:
        raise ValueError(f"{MANIFEST} is not valid JSON ({e}); restore it with `git checkout -- data/manifest.json`"
                         ) from e
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ValueError(f"{MANIFEST} holds no 'models' table (was it overwritten by another file?); restore it "
                         "with `git checkout -- data/manifest.json`")
    return data


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
    """Load the shipped model `kind` ('tokenizer', ...) trained for `preset` (checked: check_fits)."""
    from hart_mini.config import get_preset

    file = path(kind, preset)
    model = loader(kind)(file, device=device)
    check_fits(model, get_preset(preset), file)
    return model


def geometry(model) -> tuple[int, int | None]:
    """(image size, latent grid side) a model works at: a tokenizer's, a generator's tokenizer's; a judge has
    an image size only."""
    tokenizer = getattr(model, "tokenizer", model)
    cfg = getattr(tokenizer, "cfg", None)
    if cfg is not None and hasattr(cfg, "scales"):
        return cfg.image_size, cfg.scales[-1]
    return model.image_size, None


def check_fits(model, preset, where: str | Path) -> None:
    """Refuse a model whose image size or latent grid is not the preset's, naming the preset it was trained
    for: a 32 px model fed 64 px images (or the other way round) runs, and gives numbers that mean nothing."""
    size, grid = geometry(model)
    want_size, want_grid = preset.data.image_size, preset.tokenizer.latent_size
    if size == want_size and grid in (None, want_grid):
        return
    trained = getattr(model, "meta", {}).get("preset")
    made = f"{size} px images" + (f", latent grid {grid}x{grid}" if grid else "")
    wanted = f"{want_size} px images" + (f", latent grid {want_grid}x{want_grid}" if grid else "")
    fix = f"pass --preset {trained}" if trained in ("smoke", "cpu", "gpu") else "pass the preset it was made for"
    raise ValueError(f"{str(where)!r} was trained for preset {trained or 'unknown'!r} ({made}), but preset "
                     f"{preset.name!r} works with {wanted}: {fix}")


def unfinished(meta: dict) -> str | None:
    """'stopped after 1 of 30 training steps' for a model file whose training did not finish, else None."""
    if meta.get("finished", True) is not False:
        return None
    stages = meta.get("stages") or {"": meta}  # a tokenizer counts its stages (a), (b)
    done = sum(s.get("steps_done", 0) for s in stages.values())
    planned = sum(s.get("steps_planned", 0) for s in stages.values())
    return f"stopped after {done} of {planned} training steps (finished: false)" if planned else \
        "is unfinished (finished: false)"


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


def _check_shippable(kind: str, preset: str, source: Path, meta: dict, replaced: dict | None, replace: bool):
    """What `ship` refuses: another kind or preset than asked, an unfinished file over a finished one, and
    replacing a shipped file without `replace`."""
    if meta.get("kind") != kind:
        raise ValueError(f"{str(source)!r} holds a {meta.get('kind')!r}, not a {kind!r}")
    if meta.get("preset") != preset:
        raise ValueError(f"{str(source)!r} was trained with preset {meta.get('preset')!r}, not {preset!r} (the "
                         f"preset it would ship as, data/{name(kind, preset)}.safetensors): pass the --preset it was "
                         f"trained with, or train one with `python -m hart_mini train {kind} --preset {preset}`")
    stopped = unfinished(meta)
    if stopped and (replaced is None or replaced.get("finished", True)):
        raise ValueError(f"{str(source)!r} {stopped}; " + (f"the shipped data/{replaced['file']} it would replace "
                         "is finished" if replaced else "a shipped model must be") + ": finish its run with "
                         f"`python -m hart_mini train {kind} --out FOLDER --resume` first")
    if replaced is not None and not replace:
        raise ValueError(f"data/{replaced['file']} is shipped already (sha256 {replaced['sha256'][:12]}..., made by: "
                         f"{replaced.get('command')}): pass --replace to replace it")


def ship(kind: str, preset: str, source: str | Path, command: str, metrics: dict | None = None,
         extra: dict | None = None, replace: bool = False) -> dict:
    """Copy a trained file into data/ and record it in the manifest (sha256, size, config, command, metrics).

    metrics None keeps those of the entry it replaces (say so when shipping). The returned entry says what
    it replaced ('replaced': the old entry's file, sha256, command; None when nothing was shipped)."""
    source = Path(source)
    meta = checkpoint.read_meta(source)
    data = manifest()
    replaced = data["models"].get(name(kind, preset))
    _check_shippable(kind, preset, source, meta, replaced, replace)
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
        checkpoint.load(source)  # verified (checksums, NaN) before it is copied
        shutil.copyfile(source, target)
    entry = {
        "file": target.name, "kind": kind, "preset": preset, "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "config": meta.get("config") or {k: meta.get(k) for k in ("transformer", "head")},
        "train_seconds": meta.get("train_seconds"), "device": meta.get("device"), "torch": meta.get("torch"),
        "command": command, "metrics": metrics if metrics is not None else (replaced or {}).get("metrics", {}),
        **(extra or {}),
    }
    if metrics is None and replaced and replaced.get("metrics"):
        entry["metrics_of"] = f"the replaced file (sha256 {replaced['sha256']}): measure this one and ship --metrics"
    data["models"][name(kind, preset)] = entry
    checkpoint.write_json(MANIFEST, data)
    return {**entry, "replaced": {k: replaced.get(k) for k in ("file", "sha256", "command", "metrics")}
            if replaced else None}
