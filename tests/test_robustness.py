"""Every bad input gets a clear error before work starts; no input loses data or gives a wrong result silently.

Each row of CASES is one bad input: what it is, the command a user would type, and the outcome it must
get (a regular expression over `exit CODE: LAST LINE OF STDERR`, or over what a Python call returns).
Rows that guard against data loss also check the files are untouched. The rows are here and in
robustness_outputs.py (what commands write) and robustness_inputs.py (what they read), their shared tools in
robustness_harness.py. The table in notebooks/robustness.md is rendered from these rows, grouped, and the
outcomes the tests saw;
`test_the_robustness_table_is_current` fails while it is stale. Regenerate it with

    HART_MINI_WRITE_TABLE=1 pytest tests/test_robustness.py
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from robustness_harness import (
    CASES,
    GROUPS,
    ROOT,
    SMOKE,
    Case,
    case,
    checkpoint,
    cli,
    copy_run,
    edit_metadata,
    pretrained,
    sample,
    sha,
)

TABLE = ROOT / "notebooks" / "robustness.md"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished smoke tokenizer run (tok/) and a finished smoke HART run (hart/), made by the CLI."""
    root = tmp_path_factory.mktemp("runs")
    for kind in ("tokenizer", "hart"):
        out = cli("train", kind, *SMOKE, "--out", str(root / kind[:3]))
        assert out.startswith("exit 0"), out
    return root


# --- the rows (more in robustness_outputs.py and robustness_inputs.py) -----------------------------------------


@case("data loss", "train HART into a folder that holds a trained tokenizer",
      "train hart --out run  (run/: a finished tokenizer run)", r"^exit 2: error: 'run' holds a tokenizer run")
def case_hart_into_tokenizer_run(trained, mp):
    run = copy_run(trained, "tok")
    before = sha(run / "tokenizer.safetensors")
    out = cli("train", "hart", *SMOKE, "--out", "run")
    assert sha(run / "tokenizer.safetensors") == before, "the trained tokenizer was replaced"
    return out


@case("data loss", "train a tokenizer into a finished HART run (whose model names its tokenizer by sha256)",
      "train tokenizer --out run  (run/: a finished HART run)", r"^exit 2: error: 'run' holds a hart run")
def case_tokenizer_into_hart_run(trained, mp):
    from hart_mini.model.hart import HART

    run = copy_run(trained, "har")
    out = cli("train", "tokenizer", *SMOKE, "--out", "run")
    HART.from_file(run / "hart.safetensors")  # still loads: its tokenizer is the one it was trained with
    return out


@case("data loss", "the same, told to overwrite", "train tokenizer --out run --overwrite  (run/: a finished HART run)",
      r"^exit 2: error: 'run/tokenizer.safetensors' is the tokenizer that 'run/hart.safetensors' was trained with")
def case_tokenizer_overwrite_into_hart_run(trained, mp):
    from hart_mini.model.hart import HART

    run = copy_run(trained, "har")
    out = cli("train", "tokenizer", *SMOKE, "--out", "run", "--overwrite")
    HART.from_file(run / "hart.safetensors")
    return out


@case("data loss", "train HART again into a finished HART run", "train hart --out run  (run/: a finished HART run)",
      r"^exit 2: error: 'run' already holds a hart run \(finished\): pass --resume")
def case_hart_into_finished_hart_run(trained, mp):
    run = copy_run(trained, "har")
    before = sha(run / "hart.safetensors")
    out = cli("train", "hart", *SMOKE, "--out", "run")
    assert sha(run / "hart.safetensors") == before
    return out


@case("data loss", "the same, told to overwrite: starts again from step 0",
      "train hart --out run --overwrite  (run/: a finished HART run)", r"^exit 0: run.json: hart, finished, step 30$")
def case_hart_overwrite_starts_again(trained, mp):
    run = copy_run(trained, "har")
    out = cli("train", "hart", *SMOKE, "--out", "run", "--overwrite")
    held = json.loads((run / "run.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert history[0]["step"] == 10, "the new run did not start from step 0"
    return f"{out.split(':')[0]}: run.json: {held['kind']}, {held['stage']}, step {history[-1]['step']}"


@case("data loss", "NaN during training", "train hart --out run  (the weights turn NaN at step 20)",
      r"^exit 2: error: HART: the loss is nan at step 20; lower the learning rate$")
def case_nan_during_training(trained, mp):
    from hart_mini.model.hart import HART

    original, calls = HART.loss, []

    def poisoned(self, images, captions):
        calls.append(1)
        if len(calls) == 21:  # step 20, after the checkpoint of step 15
            with torch.no_grad():
                next(self.transformer.parameters()).fill_(float("nan"))
        return original(self, images, captions)

    mp.setattr(HART, "loss", poisoned)
    out = cli("train", "hart", *SMOKE, "--out", "run")
    tensors, meta = checkpoint.load("run/checkpoint.safetensors")  # the last good checkpoint, intact
    assert meta["step"] == 15 and all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    return out


@case("traceback", "an unknown preset in the environment", "sample  (HART_MINI_PRESET=bogus)",
      r"^exit 2: error: HART_MINI_PRESET='bogus' is invalid: expected one of \('smoke', 'cpu', 'gpu'\)$")
def case_preset_env_bogus(trained, mp):
    mp.setenv("HART_MINI_PRESET", "bogus")
    return cli("sample", "--n", "1", "--out", "x.png")


@case("traceback", "a preset in the wrong case", "sample  (HART_MINI_PRESET=SMOKE)",
      r"^exit 2: error: HART_MINI_PRESET='SMOKE' is invalid: expected one of")
def case_preset_env_upper_case(trained, mp):
    mp.setenv("HART_MINI_PRESET", "SMOKE")
    return cli("sample", "--n", "1", "--out", "x.png")


@case("traceback", "infinite guidance", "sample --cfg inf", r"^exit 2: error: argument --cfg: inf is invalid")
def case_cfg_inf(trained, mp):
    return cli("sample", *SMOKE, "--cfg", "inf", "--n", "1", "--out", "x.png")


@case("traceback", "a model file holding NaN weights", "sample --ckpt run/hart.safetensors  (NaN in its weights)",
      r"^exit 2: error: 'run/hart.safetensors' holds NaN in ")
def case_nan_weights_in_a_file(trained, mp):
    from hart_mini.model.hart import HART

    run = copy_run(trained, "har")
    model = HART.from_file(run / "hart.safetensors")
    with torch.no_grad():
        next(model.transformer.parameters()).fill_(float("nan"))
    model.save(run / "hart.safetensors", run / "tokenizer.safetensors")
    return sample()


@case("traceback", "a model whose weights turned NaN in memory", "model.generate(prompts)  (NaN weights)",
      r"^FloatingPointError: the token logits are not finite")
def case_nan_weights_in_memory(trained, mp):
    from hart_mini.model.hart import HART

    model = HART.from_file(trained / "har" / "hart.safetensors")
    with torch.no_grad():
        model.transformer.head.weight.fill_(float("nan"))
    try:
        model.generate(["a large red circle at the top"])
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


@case("traceback", "--out onto an existing file", "train judge --out x  (x: a file)",
      r"^exit 2: error: --out 'x' is a file: give a folder")
def case_train_out_is_a_file(trained, mp):
    Path("x").write_text("my notes")
    out = cli("train", "judge", *SMOKE, "--out", "x", "--n-eval", "10")
    assert Path("x").read_text() == "my notes"
    return out


@case("traceback", "--json onto a folder", "eval hart --json r  (r: a folder)",
      r"^exit 2: error: --json 'r' is a folder: give a file name")
def case_eval_json_is_a_folder(trained, mp):
    Path("r").mkdir()
    return cli("eval", "hart", *SMOKE, "--n", "2", "--json", "r")


@case("traceback", "a student folder that is a file", "course student s  (s: a file)",
      r"^exit 2: error: the student folder 's' is a file")
def case_student_folder_is_a_file(trained, mp):
    Path("s").write_text("")
    return cli("course", "student", "s")


@case("silent wrong result", "an empty prompt", 'sample --prompt ""',
      r"^exit 2: error: argument --prompt: the prompt is empty")
def case_empty_prompt(trained, mp):
    return cli("sample", *SMOKE, "--prompt", "", "--n", "1", "--out", "x.png")


@case("silent wrong result", "an image name without an extension", "sample --out grid",
      r"^exit 2: error: --out 'grid' has no image extension")
def case_out_without_extension(trained, mp):
    out = cli("sample", *SMOKE, "--n", "1", "--out", "grid")
    assert not Path("grid").exists() and not Path("grid.png").exists()
    return out


@case("silent wrong result", "demo without a shipped HART", "demo  (data/manifest.json lists no hart_cpu)",
      r"^exit 2: error: no shipped hart for preset 'cpu'")
def case_demo_without_shipped_hart(trained, mp):
    data = pretrained.manifest()
    del data["models"]["hart_cpu"]
    Path("manifest.json").write_text(json.dumps(data))
    mp.setattr(pretrained, "MANIFEST", Path("manifest.json").resolve())
    out = cli("demo", "--preset", "cpu", "--device", "cpu", "--out", "demo.png")
    assert not Path("demo.png").exists()
    return out.replace(str(Path.cwd()) + "/", "")


@case("silent wrong result", "guidance far too large", "sample --cfg 1e6",
      r"^exit 2: error: argument --cfg: 1e6 is invalid: expected a number in \[0, 20\]")
def case_cfg_huge(trained, mp):
    return cli("sample", *SMOKE, "--cfg", "1e6", "--n", "1", "--out", "x.png")


@case("silent wrong result", "--resume with no checkpoint", "train judge --out empty --resume",
      r"^exit 2: error: --resume: 'empty' holds no judge checkpoint")
def case_resume_without_checkpoint(trained, mp):
    return cli("train", "judge", *SMOKE, "--out", "empty", "--resume", "--n-eval", "10")


@case("silent wrong result", "a checkpoint with zeroed bytes", "sample --ckpt run/hart.safetensors  (64 bytes zeroed)",
      r"^exit 2: error: 'run/hart.safetensors': its tensors do not match the checksum")
def case_zeroed_bytes(trained, mp):
    run = copy_run(trained, "har")
    data = bytearray((run / "hart.safetensors").read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # the tensors follow the 8-byte length and the JSON header
    middle = (start + len(data)) // 2
    assert any(data[middle:middle + 64])
    data[middle:middle + 64] = bytes(64)
    (run / "hart.safetensors").write_bytes(bytes(data))
    return sample()


def _edited(field: str, value):
    def edit(meta: dict) -> None:
        section, key = field.split(".")
        meta[section][key] = value
    return edit


for _field, _value in (("transformer.num_heads", 1), ("head.mode", "early"), ("head.prediction", "eps")):
    def _run(trained, mp, field=_field, value=_value):
        run = copy_run(trained, "har")
        edit_metadata(run / "hart.safetensors", _edited(field, value))
        return sample()

    _run.__name__ = f"case_edited_{_field.split('.')[1]}"
    case("silent wrong result", f"hand-edited metadata: {_field} = {_value!r}",
         f"sample --ckpt run/hart.safetensors  (its header's {_field} edited)",
         r"^exit 2: error: 'run/hart.safetensors': its metadata was edited after saving")(_run)


@case("silent wrong result", "metadata this code cannot build", "sample --ckpt run/hart.safetensors  "
      "(saved with an unknown head field)", r"^exit 2: error: 'run/hart.safetensors': its 'head' metadata cannot "
      r"build a HeadConfig: .*unexpected keyword argument 'gain'")
def case_metadata_code_cannot_build(trained, mp):
    run = copy_run(trained, "har")
    tensors, meta = checkpoint.load(run / "hart.safetensors")
    meta["head"]["gain"] = 2.0
    checkpoint.save(run / "hart.safetensors", tensors, meta)
    return sample()


def _image(name: str, array: np.ndarray, palette: bool = False):
    def run(trained, mp):
        from PIL import Image

        from hart_mini.model.data import ImageFolder

        Path("images/a_red_circle").mkdir(parents=True)
        im = Image.fromarray(array)  # the mode follows the array: I;16, F, RGB, L, LA, RGBA
        (im.convert("P", palette=Image.Palette.ADAPTIVE) if palette else im).save(f"images/a_red_circle/{name}")
        pixel = ImageFolder("images", image_size=32).batch([0])["image"][0, :, 16, 16]
        return f"pixel {tuple(int(v) for v in ((pixel + 1) * 127.5).round())}"
    return run


_IMAGES = [  # file, what it holds, its pixels, the RGB they must read as
    ("grey16.png", "a 16-bit grey PNG at mid-grey (32 896 of 65 535)", np.full((32, 32), 32896, np.uint16),
     (128, 128, 128)),
    ("float.tif", "a float TIFF at 0.5", np.full((32, 32), 0.5, np.float32), (128, 128, 128)),
    ("palette.png", "a palette PNG", np.full((32, 32, 3), (200, 30, 60), np.uint8), (200, 30, 60)),
    ("grey.png", "an 8-bit grey PNG", np.full((32, 32), 77, np.uint8), (77, 77, 77)),
    ("grey_alpha.png", "grey + alpha: black at half opacity (composited on white)",
     np.stack([np.zeros((32, 32), np.uint8), np.full((32, 32), 128, np.uint8)], -1), (127, 127, 127)),
    ("rgba.png", "RGBA: blue at half opacity (composited on white)", np.full((32, 32, 4), (0, 0, 255, 128), np.uint8),
     (127, 127, 255)),
]
for _name, _what, _array, _rgb in _IMAGES:
    _run = _image(_name, _array, palette=_name.startswith("palette"))
    _run.__name__ = f"case_image_{_name.replace('.', '_')}"
    case("silent wrong result", _what, f"ImageFolder(root)  (root/a_red_circle/{_name})",
         re.escape(f"pixel {_rgb}") + "$")(_run)


@case("unclear message", "no images to evaluate", "eval tokenizer --n 0",
      r"^exit 2: error: argument --n: 0 is invalid: expected an integer >= 1")
def case_eval_tokenizer_n_0(trained, mp):
    return cli("eval", "tokenizer", *SMOKE, "--n", "0")


@case("unclear message", "a training burst too short to time", "doctor --steps 1",
      r"^exit 2: error: argument --steps: 1 is invalid: expected an integer >= 3")
def case_doctor_steps_1(trained, mp):
    return cli("doctor", *SMOKE, "--steps", "1", "--out", "d.png")


@case("unclear message", "no timed runs", "bench --repeats 0",
      r"^exit 2: error: argument --repeats: 0 is invalid: expected an integer >= 1")
def case_bench_repeats_0(trained, mp):
    return cli("bench", *SMOKE, "--n", "0", "--batch", "2", "--repeats", "0")


@case("unclear message", "an empty batch", "bench --batch 0",
      r"^exit 2: error: argument --batch: 0 is invalid: expected an integer >= 1")
def case_bench_batch_0(trained, mp):
    return cli("bench", *SMOKE, "--n", "0", "--batch", "0", "--repeats", "1")


@case("unclear message", "no images to sample", "sample --n 0",
      r"^exit 2: error: argument --n: 0 is invalid: expected an integer >= 1")
def case_sample_n_0(trained, mp):
    return cli("sample", *SMOKE, "--n", "0", "--out", "x.png")


@case("unclear message", "a broken data/manifest.json", "sample  (data/manifest.json cut short)",
      r"^exit 2: error: manifest.json is not valid JSON .*git checkout")
def case_broken_manifest(trained, mp):
    Path("manifest.json").write_text('{"models": {"hart_cpu": ')
    mp.setattr(pretrained, "MANIFEST", Path("manifest.json").resolve())
    return cli("sample", *SMOKE, "--n", "1", "--out", "x.png").replace(str(Path.cwd()) + "/", "")


@case("drift", "widget and tqdm state in a notebook", "course student s  (a notebook with widget state)",
      r"^notebook metadata: kernelspec, language_info; cell metadata: tags$")
def case_student_notebook_keeps_no_state(trained, mp):
    from hart_mini.course.student import write_student_notebooks

    nb = {"cells": [{"cell_type": "code", "execution_count": 3, "outputs": [], "source": "x = 1",
                     "metadata": {"tags": ["solution"], "execution": {"iopub.execute_input": "2024-01-01"}}}],
          "metadata": {"kernelspec": {"name": "python3"}, "language_info": {"name": "python"},
                       "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {"a": {}}}}},
          "nbformat": 4, "nbformat_minor": 5}
    Path("course").mkdir()
    Path("course/00_x.ipynb").write_text(json.dumps(nb))
    written = json.loads(write_student_notebooks("course", "s")[0].read_text())
    cell_keys = sorted({k for c in written["cells"] for k in c["metadata"]})
    return f"notebook metadata: {', '.join(sorted(written['metadata']))}; cell metadata: {', '.join(cell_keys)}"


@case("drift", "absolute run-folder paths in committed results", "data/results/**/*.json, data/manifest.json",
      r"^no absolute path in any of them$")
def case_committed_results_hold_no_absolute_paths(trained, mp):
    files = sorted((ROOT / "data" / "results").rglob("*.json")) + [ROOT / "data" / "manifest.json"]
    absolute = re.compile(r'(^|[\s="])/[\w.-]+/')
    for file in files:
        found = absolute.search(file.read_text())
        if found:
            return f"{file.relative_to(ROOT)}: {file.read_text()[found.start():found.start() + 60]!r}"
    assert len(files) > 1, "no committed results found"
    return "no absolute path in any of them"  # not their count: the table must not go stale with every new result


@case("drift", "absolute paths on the command line", "bench --json /elsewhere/runs/b.json  (the recorded command)",
      r"^python -m hart_mini bench --json b\.json --out=data/x\.png$")
def case_command_line_records_portable_paths(trained, mp):
    from hart_mini.cli import command_line

    mp.setattr(sys, "argv", ["hart_mini", "bench", "--json", "/elsewhere/runs/b.json", f"--out={ROOT}/data/x.png"])
    return command_line()


@case("drift", "README commands writing JSON into the repository root", "README.md: every --json",
      r"^every --json goes into runs/: \d+ commands$")
def case_readme_json_goes_into_runs(trained, mp):
    targets = re.findall(r"--json\s+(\S+)", (ROOT / "README.md").read_text())
    outside = [t for t in targets if not t.startswith("runs/")]
    return f"--json {outside[0]} writes into the repository root" if outside else \
        f"every --json goes into runs/: {len(targets)} commands"


import robustness_inputs  # noqa: E402,F401  (their rows register themselves, after this file's)
import robustness_outputs  # noqa: E402,F401

# --- the tests ------------------------------------------------------------------------------------------------

SEEN: dict[str, str] = {}  # case id -> outcome, for the table


def _outcome(c: Case, trained: Path, folder: Path, mp) -> str:
    mp.chdir(folder)
    mp.delenv("HART_MINI_PRESET", raising=False)
    SEEN[c.id] = c.run(trained, mp)
    return SEEN[c.id]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_bad_input_gets_a_clear_outcome(c, trained, tmp_path, monkeypatch):
    outcome = _outcome(c, trained, tmp_path, monkeypatch)
    assert re.search(c.expect, outcome), f"{c.bad_input}: got {outcome!r}, expected /{c.expect}/"
    if outcome.startswith("exit 2"):
        assert "Traceback" not in outcome


def render(outcomes: dict[str, str]) -> str:
    cell = lambda text: text.replace("|", "\\|")
    lines = [
        "# What each bad input gets",
        "",
        "Generated from `tests/test_robustness.py`: each row is one test there (its rows are in that file,",
        "`robustness_outputs.py` and `robustness_inputs.py`), the first column says what the input got before it",
        "was guarded, and the last column is what the command printed (its exit status and last line on stderr)",
        "or what the call returned in that test. Exit 2 is a one-line error before any work. `pytest` fails while",
        "this page is stale; regenerate it with `HART_MINI_WRITE_TABLE=1 pytest tests/test_robustness.py`.",
        "Commands are `python -m hart_mini ...`.",
        "",
        "| before the fix | bad input | command | what it gets |",
        "| --- | --- | --- | --- |",
    ]
    rows = sorted(CASES, key=lambda c: GROUPS.index(c.group))  # data loss first; stable within a group
    lines += [f"| {c.group} | {cell(c.bad_input)} | `{c.command}` | {cell(outcomes[c.id])} |" for c in rows]
    return "\n".join(lines) + "\n"


def test_the_robustness_table_is_current(trained, tmp_path, monkeypatch):
    for c in CASES:
        if c.id not in SEEN:  # this test ran alone: run the rows it needs
            folder = tmp_path / c.id
            folder.mkdir()
            with monkeypatch.context() as mp:
                _outcome(c, trained, folder, mp)
    table = render(SEEN)
    if os.environ.get("HART_MINI_WRITE_TABLE"):
        TABLE.write_text(table)
    assert TABLE.is_file() and TABLE.read_text() == table, \
        "notebooks/robustness.md is stale: run HART_MINI_WRITE_TABLE=1 pytest tests/test_robustness.py"
