"""What a pipeline run must leave behind, checked file by file: the end of `pipeline --rehearse`.

    python -m hart_mini pipeline --preset gpu --rehearse --out runs/rehearsal   # < 10 min on 2 CPU cores

A rehearsal runs every step of the pipeline at the preset's real shapes (image size, widths, tokens,
batch) for one training step each and a handful of samples, so that what can only fail at those shapes,
or after training, fails on a CPU and not in the one GPU session. Then `check_run` reads what it wrote as
the GPU session's owner will: the files the README's device command brings back (at most 8, each under
16 MiB), their sha256 against results.json, the exported weights loaded back through `ship-run`, the
metrics, the benchmark's core, the figures archive, and the records (attention kernels, peak memory,
planned against measured seconds).
"""

from __future__ import annotations

import json
import math
import tarfile
import tempfile
from pathlib import Path

from hart_mini.export import KINDS

RETURNED = ("results.json", "pipeline.log", "samples.png", "extras.tar.gz")  # and the exported weights
MAX_RETURNED_FILES = 8  # a device machine's session returns this many files at most
MAX_RETURNED_BYTES = 16 * 2**20  # ... of this size at most
PNG = b"\x89PNG\r\n\x1a\n"


def returned_files(out: Path, preset: str) -> list[Path]:
    """The files the README's device command copies back from a run folder, those that exist."""
    names = [f"export/{kind}_{preset}.safetensors" for kind in KINDS] + list(RETURNED)
    return [out / n for n in names if (out / n).is_file()]


def check_run(out: Path) -> dict:
    """Every check of a finished run in `out`: {'ok': all passed, 'checks': {name: {'ok', 'detail'}}}."""
    from hart_mini import checkpoint, pretrained
    from hart_mini.export import ship_run

    results = json.loads((out / "results.json").read_text())
    preset, checks = results["preset"], {}

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}

    check("finished", results["status"] == "done" and not results["failed"],
          f"status {results['status']!r}, failed {sorted(results['failed'])}")
    planned = set(results.get("plan", {}).get("stages", {}))
    trained = results.get("training", {})
    steps = {"tokenizer_a": trained.get("tokenizer", {}).get("stage_a", {}).get("step", 0),
             "tokenizer_b": trained.get("tokenizer", {}).get("stage_b", {}).get("step", 0),
             **{k: trained.get(k, {}).get("step", 0) for k in ("judge", "hart", "diffusion", "discrete")}}
    check("every planned stage trained", planned and all(steps[s] >= 1 for s in planned),
          ", ".join(f"{s} {steps[s]} steps" for s in sorted(planned)))
    entries = results["export"]["models"]
    files = {k: out / "export" / f"{k}_{preset}.safetensors" for k in KINDS}
    check("every model exported", set(entries) == {f"{k}_{preset}" for k in KINDS} and all(
        p.is_file() and checkpoint.sha256(p) == entries[f"{k}_{preset}"]["sha256"] for k, p in files.items()),
        f"entries {sorted(entries)}")
    check("within the size limits", results["export"].get("sizes", {}).get("within_limits", False),
          json.dumps(results["export"].get("sizes", {})))
    with tempfile.TemporaryDirectory() as data:
        try:
            shipped = ship_run(out, data)
            loaded = [type(pretrained.loader(k)(Path(data) / f"{k}_{preset}.safetensors")).__name__ for k in KINDS]
            check("ship-run and the loaders read it back", len(shipped["models"]) == len(KINDS), ", ".join(loaded))
        except (OSError, ValueError) as e:
            check("ship-run and the loaders read it back", False, f"{type(e).__name__}: {e}")
    generators = ["hart", "hart_head_skipped", "diffusion"] + (["discrete"] if "discrete" in trained else [])
    metrics = results["metrics"]
    fds = {g: metrics.get(g, {}).get("fd") for g in generators}
    check("metrics of every model", all(isinstance(v, float) and math.isfinite(v) for v in fds.values())
          and "psnr_discrete" in metrics.get("tokenizer", {}) and "acc_shape" in metrics.get("judge", {}),
          f"FD {fds}")
    bench = results.get("bench", {})
    check("benchmark core", set(bench.get("models", {})) == {"hart", "discrete", "diffusion"},
          f"cut {bench.get('cut')}")
    pngs = {n: (out / n).is_file() and (out / n).read_bytes()[:8] == PNG
            for n in ("samples.png", "comparison.png", "bench.png")}
    check("figures", all(pngs.values()), json.dumps(pngs))
    with tarfile.open(out / "extras.tar.gz") as tar:
        packed = set(tar.getnames())
    wanted = {"comparison.png", "tokenizer/stage_a/recon.png", "judge/history.json", "hart/samples.png",
              "diffusion/samples.png"}
    check("figures archive", wanted <= packed, f"{len(packed)} files, missing {sorted(wanted - packed)}")
    attention, memory = results.get("attention", {}), results.get("memory", {})
    check("records: attention kernels, memory, calibration",
          bool(attention.get("training")) and bool(attention.get("sampling")) and "host_peak_gb" in memory
          and set(results.get("calibration", {}).get("steps", {})) >= {"tokenizer", "hart", "samples", "bench"}
          and not results.get("timing", {}).get("errors"),
          f"attention {attention}, memory {memory}, timing errors {results.get('timing', {}).get('errors')}")
    back = returned_files(out, preset)
    check("what the device command brings back", len(back) <= MAX_RETURNED_FILES
          and all(p.stat().st_size <= MAX_RETURNED_BYTES for p in back),
          ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in back))
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}
