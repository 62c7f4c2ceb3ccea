"""What the robustness rows share: running a command as a user would, editing files as a careless or unlucky
user would, and the registry of rows (`case`) that tests/test_robustness.py runs and renders into
notebooks/robustness.md. The rows live in test_robustness.py, robustness_outputs.py and robustness_inputs.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hart_mini import checkpoint, pretrained, runs
from hart_mini.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("--preset", "smoke", "--device", "cpu")
GROUPS = ("data loss", "traceback", "silent wrong result", "unclear message", "drift")  # the table's order


# --- running a command as a user would, in a folder of its own ----------------------------------------------


def cli(*args: str) -> str:
    """`exit CODE: the last line on stderr` of `python -m hart_mini ARGS` (run in this process); an exception
    that escapes reads `exit traceback: Type: message`."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(list(args))
    except SystemExit as e:  # argparse, before main caught it
        code = e.code
    except Exception as e:
        return f"exit traceback: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    lines = [line.strip() for line in re.split(r"[\r\n]", err.getvalue()) if line.strip()]
    return f"exit {code}: {lines[-1] if lines else ''}"


def sha(path: Path) -> str:
    return checkpoint.sha256(path)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under a folder, by relative path, with its sha256: equal before and after = untouched."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(trained: Path, name: str) -> Path:
    shutil.copytree(trained / name, "run")
    return Path("run")


def edit_header(path: Path, edit: Callable[[dict], None]) -> None:
    """Change a checkpoint's header (its metadata strings) as a hand edit would: same tensors; a key set to
    None is deleted."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(header)
    save_file(tensors, str(path), metadata={k: v for k, v in header.items() if v is not None})


def edit_metadata(path: Path, edit: Callable[[dict], None]) -> None:
    """Change a checkpoint's metadata as a hand edit of its header would: same tensors, same other keys."""
    def change(header: dict) -> None:
        meta = json.loads(header["hart_mini"])
        edit(meta)
        header["hart_mini"] = json.dumps(meta, sort_keys=True)
    edit_header(path, change)


def resave(path: Path, **changes) -> None:
    """Save a checkpoint again with some metadata changed, checksums and all (as hart_mini would have)."""
    tensors, meta = checkpoint.load(path)
    checkpoint.save(path, tensors, {**meta, **changes})


def sample(*extra: str) -> str:
    return cli("sample", *SMOKE, "--ckpt", "run/hart.safetensors", "--n", "1", "--out", "x.png", *extra)


def shipped_repo(mp, notebooks: bool = False) -> Path:
    """The current folder as the repository for one test: a copy of data/ (the shipped weights, manifest, and
    one committed result) and with notebooks=True of the course notebooks, which every command then takes for
    the real ones. So a row that writes into the shipped set harms a copy, even on code without the guards."""
    repo = Path.cwd()
    (repo / "data" / "results" / "cpu").mkdir(parents=True)
    for file in [*ROOT.glob("data/*.safetensors"), ROOT / "data" / "manifest.json"]:
        shutil.copyfile(file, repo / "data" / file.name)
    committed = Path("data") / "results" / "cpu" / "samples.png"
    shutil.copyfile(ROOT / committed, repo / committed)
    if notebooks:
        (repo / "notebooks").mkdir()
        for file in ROOT.glob("notebooks/*.ipynb"):
            shutil.copyfile(file, repo / "notebooks" / file.name)
    from hart_mini import cli as cli_module

    mp.setattr(runs, "ROOT", repo)
    mp.setattr(pretrained, "DATA", repo / "data")
    mp.setattr(pretrained, "MANIFEST", repo / "data" / "manifest.json")
    mp.setattr(cli_module, "NOTEBOOKS", repo / "notebooks")
    return repo


def relative(text: str) -> str:
    """An outcome with this test's folder left out of its paths."""
    return text.replace(str(Path.cwd()) + "/", "")


# --- the rows -------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    group: str
    bad_input: str
    command: str  # as a user would type it (shown in the table)
    expect: str  # regular expression the outcome must match
    run: Callable  # (trained runs, monkeypatch) -> outcome string; asserts its own post-conditions


CASES: list[Case] = []


def case(group: str, bad_input: str, command: str, expect: str):
    assert group in GROUPS, group

    def register(run):
        CASES.append(Case(run.__name__.removeprefix("case_").replace("_", "-"), group, bad_input, command, expect,
                          run))
        return run
    return register
