"""Where results go: output paths and run folders, checked before any work starts.

A training command writes into a *run folder* and leaves a small manifest there, `run.json`:

    {"kind": "hart", "stage": "finished", "preset": "cpu", "command": "python -m hart_mini train hart ..."}

The stage is "training" (a tokenizer: "stage a", then "stage b") until the final model is saved.

`prepare` reads it (or, for folders written before run.json existed, the kind of the checkpoints there)
and refuses, before the first step, to
- write into a folder that holds another run, of any kind, unless told to resume it or to overwrite it;
- replace a file that another file there references by sha256 (a HART or diffusion model names the
  tokenizer beside it), even when told to overwrite: that model would no longer load.
A start that stopped before its first checkpoint (refused, killed) has nothing to continue and nothing
to lose: `undone_on_failure` removes what a failed start wrote, and `prepare` lets a plain re-run
start again in a folder whose run.json is all that a killed start left.

Output files (`--out x.png`, `--json r.json`) are checked the same way: the folder they go to can be
made, the name is a file name, not an existing folder, and its suffix is what the command writes. What a
command writes (`command_output`, `output_folder`) never lands in the repository's shipped set (data/,
notebooks/: only `ship` and `ship-run` put files there), never replaces a run's record, and replaces an
existing file only when told --overwrite.
Paths written into results (the command line, model sources) are relative to the repository, or bare
names outside it, so committed results never record one machine's folder layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from hart_mini import checkpoint

ROOT = Path(__file__).resolve().parents[1]  # the repository (an editable install runs from here)
RUN_FILE = "run.json"
KINDS = ("tokenizer", "hart", "diffusion", "judge")
CHECKPOINTS = {  # the training state each kind keeps, relative to its run folder
    "tokenizer": ("stage_a/checkpoint.safetensors", "stage_b/checkpoint.safetensors"),
    "hart": ("checkpoint.safetensors", "layout_stage/checkpoint.safetensors", "head_stage/checkpoint.safetensors"),
    "diffusion": ("checkpoint.safetensors",),
    "judge": ("checkpoint.safetensors",),
}
# What a checkpoint's metadata 'kind' says about the run it belongs to.
RUN_OF = {"tokenizer": "tokenizer", "hart-training": "hart", "hart": "hart", "diffusion-training": "diffusion",
          "diffusion": "diffusion", "judge-training": "judge", "judge": "judge"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
JSON_SUFFIXES = (".json",)
SHIPPED = {"data": "the shipped weights, manifest and committed results", "notebooks": "the course"}


# --- output paths ---------------------------------------------------------------------------------------


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` must be a writable folder (so the rest can be made)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {str(ancestor)!r} is a file, so no folder can be made inside it")
    if not os.access(ancestor, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r}: the folder {str(ancestor)!r} is not writable")


def output_file(path: str | Path, flag: str = "--out", suffixes: tuple[str, ...] | None = None) -> Path:
    """Check a file the command will write: not an existing folder, a writable place, an allowed suffix."""
    path = Path(path)
    if path.is_dir():
        example = path / ("result" + (suffixes[0] if suffixes else ".json"))
        raise ValueError(f"{flag} {str(path)!r} is a folder: give a file name, e.g. {str(example)!r}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        kind = "image" if suffixes == IMAGE_SUFFIXES else suffixes[0].lstrip(".").upper()
        raise ValueError(f"{flag} {str(path)!r} has no {kind} extension: expected a name ending in "
                         f"{', '.join(suffixes)}")
    _check_parent(path, flag)
    return path


def check_not_shipped(path: str | Path, flag: str = "--out") -> None:
    """Refuse a path inside the repository's shipped set (data/, notebooks/): no command writes there."""
    resolved = Path(path).resolve()
    for name, holds_what in SHIPPED.items():
        folder = (ROOT / name).resolve()
        if resolved == folder or resolved.is_relative_to(folder):
            raise ValueError(f"{flag} {str(path)!r} is inside the repository's {name}/ ({holds_what}), which no "
                             "command writes into: choose a path outside it, e.g. under runs/ (`python -m hart_mini "
                             "ship` is how a trained model enters data/)")


def command_output(path: str | Path, flag: str, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    """Check a file a command will write, before any work: output_file's checks, and it is not in the shipped
    set, not a run's record, and not an existing file unless `overwrite` (--overwrite)."""
    path = Path(path)
    check_not_shipped(path, flag)
    if path.name == RUN_FILE:
        raise ValueError(f"{flag} {str(path)!r}: {RUN_FILE} is the name of a run folder's record (what it holds, "
                         "how far its training got); choose another name")
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
        raise ValueError(f"{flag} {str(path)!r} is the readable copy of {str(path.with_suffix('.safetensors'))!r}'s "
                         "metadata; choose another name")
    output_file(path, flag, suffixes)
    if path.is_file() and not overwrite:
        raise ValueError(f"{flag} {str(path)!r} exists: pass --overwrite to replace it, or choose another name")
    return path


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Check a folder the command will write into: not an existing file, makeable, not in the shipped set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a file: give a folder (it is created if missing)")
    check_not_shipped(path, flag)
    _check_parent(path, flag)
    return path


def portable(path: str | Path) -> str:
    """A path for results and manifests: relative to the repository if inside it, else its name alone."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(ROOT):
        return resolved.relative_to(ROOT).as_posix() or "."
    return resolved.name


def portable_command(argv: list[str]) -> str:
    """`python -m hart_mini ARGS` with every absolute path made portable (also in --flag=/abs/path)."""
    def one(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        return flag + eq + portable(value) if os.path.isabs(value) else arg
    return " ".join(["python -m hart_mini", *map(one, argv)])


# --- run folders ----------------------------------------------------------------------------------------


def _kind_of(file: Path) -> str:
    try:
        return RUN_OF.get(checkpoint.read_meta(file).get("kind"), "unknown")
    except (ValueError, OSError):
        return "unreadable"


def holds(folder: str | Path) -> dict | None:
    """What a run folder holds: {'kind', 'stage', 'source'}; None for a missing folder or one with no run.

    From run.json, or for a folder written before run.json existed, from the first checkpoint found.
    """
    folder = Path(folder)
    manifest = folder / RUN_FILE
    if manifest.is_file():
        try:
            held = json.loads(manifest.read_text())
        except ValueError as e:
            raise ValueError(f"{str(manifest)!r} is not valid JSON ({e}); delete it to let the folder be "
                             "read from its files") from e
        return {"kind": held.get("kind", "unknown"), "stage": held.get("stage", "unknown"), "source": RUN_FILE}
    for name in ("checkpoint.safetensors", "stage_a/checkpoint.safetensors", "hart.safetensors",
                 "diffusion.safetensors", "judge.safetensors", "tokenizer.safetensors"):
        if (folder / name).is_file():
            kind = _kind_of(folder / name)
            final = folder / f"{kind}.safetensors"
            return {"kind": kind, "stage": "finished" if final.is_file() else "training", "source": name}
    return None


def _references(folder: Path) -> dict[str, tuple[str, str]]:
    """file name -> (the model file that references it, the sha256 it expects), for models in `folder`."""
    refs = {}
    for model in sorted(folder.glob("*.safetensors")):
        try:
            meta = checkpoint.read_meta(model)
        except ValueError:
            continue
        if "tokenizer_file" in meta and "tokenizer_sha256" in meta:
            refs[meta["tokenizer_file"]] = (model.name, meta["tokenizer_sha256"])
    return refs


def prepare(out: str | Path, kind: str, run, writes: dict[str, str | None], preset: str = "",
            command: str = "") -> Path:
    """Check run folder `out` before training a `kind` run there, then record the run in OUT/run.json.

    run: RunOptions (resume, overwrite). writes: the files the run will leave in `out`, name -> the sha256
    it will have if known in advance (the tokenizer copied beside a generator), else None.
    With overwrite, the checkpoints of a previous run are deleted so that training starts from step 0.
    """
    from hart_mini.runtime import world

    out = output_folder(out)
    held = holds(out)
    if held is not None and held["source"] == RUN_FILE and nothing_saved(out, held["kind"]):
        held = None  # a start that stopped before its first checkpoint: nothing to continue, nothing to lose
    if held is not None and held["kind"] != kind:
        where = f"{str(out)!r} holds a {held['kind']} run ({held['source']})"
        if run.resume:
            raise ValueError(f"cannot resume a {kind} run: {where}")
        if not run.overwrite:
            raise ValueError(f"{where}; a {kind} run there would replace its files: choose another output "
                             "folder, or pass --overwrite")
    elif held is not None and not run.resume and not run.overwrite:
        raise ValueError(f"{str(out)!r} already holds a {kind} run ({held['stage']}): pass --resume to continue "
                         "it, --overwrite to start again, or choose another output folder")
    for name, (model, expected) in _references(out).items():
        if name in writes and writes[name] != expected and model not in writes:
            raise ValueError(f"{str(out / name)!r} is the tokenizer that {str(out / model)!r} was trained with "
                             f"(by sha256); a {kind} run would replace it and that model would no longer load: "
                             "choose another output folder")
    _barrier()  # every process has looked at the folder before rank 0 changes it
    if world()[0] == 0:
        if run.overwrite and not run.resume:
            for name in CHECKPOINTS[kind]:
                for stale in (out / name, (out / name).with_suffix(".json")):
                    stale.unlink(missing_ok=True)
        stage = held["stage"] if run.resume and held else ("stage a" if kind == "tokenizer" else "training")
        record(out, kind, stage, preset, command)
    _barrier()
    return out


def record(out: str | Path, kind: str, stage: str, preset: str = "", command: str = "") -> None:
    """Write OUT/run.json: what the folder holds and how far its training got."""
    checkpoint.write_json(Path(out) / RUN_FILE, {"kind": kind, "stage": stage, "preset": preset,
                                                 "command": command})


def mark(out: str | Path, stage: str) -> None:
    """Update the stage in OUT/run.json (rank 0 only)."""
    from hart_mini.runtime import world

    manifest = Path(out) / RUN_FILE
    if world()[0] == 0 and manifest.is_file():
        checkpoint.write_json(manifest, {**json.loads(manifest.read_text()), "stage": stage})


def nothing_saved(out: str | Path, kind: str) -> bool:
    """True when a `kind` run in `out` has saved nothing yet: no checkpoint, no model."""
    out = Path(out)
    names = (*CHECKPOINTS.get(kind, ()), f"{kind}.safetensors")
    return kind in CHECKPOINTS and not any((out / name).is_file() for name in names)


@contextlib.contextmanager
def undone_on_failure(out: str | Path, kind: str):
    """Run a training start in `out`; if it fails before saving anything (a refusal, Ctrl-C), leave the folder
    as it was found: run.json as before (or gone), and the folder gone if this start made it and it holds no
    file. A start killed outright (kill -9) cannot clean up: `prepare` then lets a plain re-run start again."""
    from hart_mini.runtime import world

    out = Path(out)
    made = not out.exists()
    before = (out / RUN_FILE).read_bytes() if (out / RUN_FILE).is_file() else None
    try:
        yield
    except BaseException:
        if world()[0] == 0 and out.is_dir() and nothing_saved(out, kind):
            if before is not None:
                (out / RUN_FILE).write_bytes(before)
            else:
                (out / RUN_FILE).unlink(missing_ok=True)
            if made and not any(p.is_file() for p in out.rglob("*")):
                shutil.rmtree(out)
        raise


def check_resumable(out: str | Path, kind: str) -> None:
    """Refuse --resume where there is nothing to continue, rather than silently starting a new run."""
    out = Path(out)
    if not any((out / name).is_file() for name in CHECKPOINTS[kind]):
        raise ValueError(f"--resume: {str(out)!r} holds no {kind} checkpoint to continue "
                         f"({CHECKPOINTS[kind][0]} is missing); leave out --resume to start a new run")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
