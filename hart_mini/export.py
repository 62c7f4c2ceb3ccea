"""Shipping a run's models: half-precision files small enough to travel, and the step that puts them in data/.

    export_model(kind, source, folder, preset)   a trained model -> folder/KIND_PRESET.safetensors in fp16,
                                                  and its manifest entry (the format of data/manifest.json)
    ship_run(run_folder, data)                    the files a pipeline run brought back -> data/ and
                                                  data/results/PRESET/, entries merged into data/manifest.json

Weights are stored in fp16: half the bytes of fp32, and 3 more bits of mantissa than bf16 (a relative step
of 1e-3 instead of 8e-3), which is what matters for weights that never leave [-65504, 65504]; a tensor that
does, or a 0-d scale, stays fp32. Every loader casts back to fp32 on load (checkpoint.load_module), so a
half-precision file loads like any other. A model file must stay under MAX_FILE_BYTES: the GPU machines
return files of at most 16 MiB, and the repository ships at most MAX_TOTAL_BYTES of them in all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import torch

from hart_mini import checkpoint

MAX_FILE_BYTES = 15 * 2**20  # 15 MiB: under the 16 MiB a device machine returns per file
MAX_TOTAL_BYTES = 25_000_000  # all shipped weights of one preset
KINDS = ("tokenizer", "judge", "hart", "diffusion")  # what data/ ships, in the order a run trains them
FP16_MAX = 65504.0


def code_commit() -> str | None:
    """The short git commit of the code, where it is a git checkout (a device machine's copy may not be)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def to_half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 copies of the floating-point tensors, except 0-d scales and any tensor beyond fp16's range."""
    out = {}
    for name, t in tensors.items():
        fits = t.is_floating_point() and t.ndim > 0 and bool(t.abs().max() < FP16_MAX) if t.numel() else False
        out[name] = t.half() if fits else t
    return out


def export_model(kind: str, source: str | Path, folder: str | Path, preset: str, command: str = "",
                 metrics: dict | None = None, tokenizer: str | Path | None = None) -> dict:
    """Write the trained `kind` model in `source` as folder/KIND_PRESET.safetensors (fp16) and return its
    manifest entry. A HART or diffusion file names its tokenizer: pass the exported tokenizer file (in the
    same folder), whose name and sha256 the new file then records."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is invalid: expected one of {KINDS}")
    tensors, meta = checkpoint.load(source)
    if meta.get("kind") != kind:
        raise ValueError(f"{str(source)!r} holds a {meta.get('kind')!r}, not a {kind!r}")
    folder = Path(folder)
    target = folder / f"{kind}_{preset}.safetensors"
    if kind in ("hart", "diffusion"):
        if tokenizer is None:
            raise ValueError(f"exporting a {kind} needs the exported tokenizer file it will name")
        meta = {**meta, **_tokenizer_reference(target, Path(tokenizer))}
    meta = {**meta, "dtype": "float16", "exported_from": str(source)}
    checkpoint.save(target, to_half(tensors), meta)
    target.with_suffix(".json").unlink(missing_ok=True)  # the manifest entry documents the file
    size = target.stat().st_size
    if size > MAX_FILE_BYTES:
        target.unlink()
        raise ValueError(f"{target.name} would be {size / 2**20:.1f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB "
                         "a file may have; use a smaller model (the gpu preset is sized to fit)")
    return {"file": target.name, "kind": kind, "preset": preset, "sha256": checkpoint.sha256(target), "bytes": size,
            "dtype": "float16", "config": meta.get("config") or {k: meta.get(k) for k in ("transformer", "head")},
            "train_seconds": meta.get("train_seconds"), "device": meta.get("device"), "torch": meta.get("torch"),
            "finished": meta.get("finished", True), "command": command or meta.get("command", ""),
            "code_commit": code_commit(), "metrics": metrics or meta.get("metrics", {})}


def _tokenizer_reference(target: Path, tokenizer: Path) -> dict:
    if tokenizer.parent.resolve() != target.parent.resolve():
        raise ValueError(f"the exported tokenizer {str(tokenizer)!r} must sit beside {target.name}")
    return {"tokenizer_file": tokenizer.name, "tokenizer_sha256": checkpoint.sha256(tokenizer)}


def check_sizes(entries: dict) -> dict:
    """The sizes of a set of exported files against the limits (export_model already refuses one file over
    MAX_FILE_BYTES; the total is reported, within_limits says whether it may ship)."""
    total = sum(e["bytes"] for e in entries.values())
    largest = max((e["bytes"] for e in entries.values()), default=0)
    return {"files": len(entries), "total_bytes": total, "largest_bytes": largest,
            "limit_file_bytes": MAX_FILE_BYTES, "limit_total_bytes": MAX_TOTAL_BYTES,
            "within_limits": total <= MAX_TOTAL_BYTES and largest <= MAX_FILE_BYTES}


def pack(folder: Path, names: list[str], archive: Path) -> Path:
    """A .tar.gz of the given files and folders under `folder` (figures, histories): one file to carry back.
    Written beside and renamed into place, so a run stopped while packing keeps the archive it had."""
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name in names:
            if (folder / name).exists():
                tar.add(folder / name, arcname=name)
    os.replace(partial, archive)
    return archive


def _unpack(archive: Path, target: Path) -> list[str]:
    """Extract regular files only, and only inside target (no absolute paths, no '..', no links)."""
    names = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            path = (target / member.name).resolve()
            if not member.isfile() or not path.is_relative_to(target.resolve()):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar.extractfile(member).read())
            names.append(member.name)
    return names


def ship_run(run: str | Path, data: str | Path, replace: bool = False) -> dict:
    """Put what a pipeline run brought back into a data folder: the weights listed in run/results.json's
    export section (sha256 checked) into data/, their entries into data/manifest.json, and results.json,
    the log, the samples and the unpacked extras into data/results/PRESET/. `run` is the folder of files a
    GPU machine returned (all side by side) or the pipeline's own output folder (weights in export/).
    Entries without a code commit (a device machine's copy of the code has no git) get this checkout's.
    Every file is checked before the first is copied; shipped weights or results that differ from the run's
    are replaced only with replace=True (`ship-run --replace`)."""
    run, data = Path(run), Path(data)
    results = checkpoint.read_json(run / "results.json", "the run's results")
    entries = results.get("export", {}).get("models", {})
    if not entries:
        raise ValueError(f"{str(run / 'results.json')!r} lists no exported models (did the run get that far?)")
    preset = results["preset"]
    commit, sources = code_commit(), {}
    for key, entry in entries.items():
        source = run / entry["file"] if (run / entry["file"]).is_file() else run / "export" / entry["file"]
        entry["code_commit"] = entry.get("code_commit") or commit
        if not source.is_file():
            raise FileNotFoundError(f"{str(source)!r} is listed in results.json but was not brought back")
        if checkpoint.sha256(source) != entry["sha256"]:
            raise ValueError(f"{str(source)!r} does not match the sha256 that results.json records")
        sources[key] = source
    results_dir = data / "results" / preset
    targets = [(sources[k], data / e["file"]) for k, e in entries.items()] + [
        (run / name, results_dir / name) for name in ("results.json", "pipeline.log", "samples.png")]
    differ = [str(target) for source, target in targets
              if source.is_file() and target.is_file() and checkpoint.sha256(source) != checkpoint.sha256(target)]
    if differ and not replace:
        raise ValueError(f"{differ[0]!r} is shipped already with other contents ({len(differ)} shipped files differ "
                         "from this run's): pass --replace to replace them")
    data.mkdir(parents=True, exist_ok=True)
    for key, entry in entries.items():
        shutil.copyfile(sources[key], data / entry["file"])
    manifest_path = data / "manifest.json"
    manifest = checkpoint.read_json(manifest_path, "the manifest") if manifest_path.exists() else {"models": {}}
    manifest["models"].update(entries)
    checkpoint.write_json(manifest_path, manifest)
    results_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in ("results.json", "pipeline.log", "samples.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, results_dir / name)
            copied.append(name)
    extras = _unpack(run / "extras.tar.gz", results_dir) if (run / "extras.tar.gz").is_file() else []
    return {"models": sorted(entries), "data": str(data), "results": str(results_dir), "copied": copied,
            "extras": extras, "replaced": differ}
