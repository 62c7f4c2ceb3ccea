"""Robustness rows about what commands write: outputs that refuse to overwrite, the shipped set (data/,
notebooks/) that only `ship` enters, student notebooks, and training starts that leave no trace.

Rows that write into the shipped set run in a copy of it (robustness_harness.shipped_repo), so even code
without the guards harms only the copy; each checks that every file there is unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

from robustness_harness import (
    SMOKE,
    case,
    checkpoint,
    cli,
    copy_run,
    fingerprint,
    relative,
    resave,
    sha,
    shipped_repo,
)

SHIPPED = r"is inside the repository's data/ \(the shipped weights, manifest and committed results\)"


def _untouched(repo: Path, folder: str, command: tuple[str, ...]) -> str:
    before = fingerprint(repo / folder)
    out = cli(*command)
    assert fingerprint(repo / folder) == before, f"{folder}/ was changed"
    return out


def _data_untouched(mp, *command: str) -> str:
    """The outcome of a command run in a copy of the shipped set, which it must leave as it was."""
    return _untouched(shipped_repo(mp), "data", command)


# --- outputs into the shipped set ------------------------------------------------------------------------------


@case("data loss", "--json onto the shipped HART", "eval judge --json data/hart_cpu.safetensors",
      r"^exit 2: error: --json 'data/hart_cpu.safetensors' " + SHIPPED)
def case_json_onto_the_shipped_model(trained, mp):
    return _data_untouched(mp, "eval", "judge", *SMOKE, "--n", "4", "--json", "data/hart_cpu.safetensors")


@case("data loss", "--json onto the manifest (every later command then failed with KeyError: 'models')",
      "eval judge --json data/manifest.json", r"^exit 2: error: --json 'data/manifest.json' " + SHIPPED)
def case_json_onto_the_manifest(trained, mp):
    return _data_untouched(mp, "eval", "judge", *SMOKE, "--n", "4", "--json", "data/manifest.json")


@case("data loss", "a figure into the committed results", "data preview --out data/results/cpu/samples.png",
      r"^exit 2: error: --out 'data/results/cpu/samples.png' " + SHIPPED)
def case_figure_into_committed_results(trained, mp):
    return _data_untouched(mp, "data", "preview", *SMOKE[:2], "--n", "2", "--out", "data/results/cpu/samples.png")


@case("data loss", "a training run into the committed results (not a run folder yet, so it had no check)",
      "train judge --out data/results/cpu", r"^exit 2: error: --out 'data/results/cpu' " + SHIPPED)
def case_training_into_committed_results(trained, mp):
    return _data_untouched(mp, "train", "judge", *SMOKE, "--out", "data/results/cpu", "--n-eval", "10")


@case("data loss", "the pipeline into the committed results", "pipeline --out data/results/cpu",
      r"^exit 2: error: --out 'data/results/cpu' " + SHIPPED)
def case_pipeline_into_committed_results(trained, mp):
    import hart_mini.pipeline

    def pipeline(opts):  # stands in for the real run (minutes): what it writes first
        (Path(opts.out) / "results.json").write_text("{}")
        return {"status": "done"}

    mp.setattr(hart_mini.pipeline, "run", pipeline)
    return _data_untouched(mp, "pipeline", *SMOKE, "--out", "data/results/cpu")


# --- outputs onto a run's files, and onto files that exist -------------------------------------------------------


for _name, _what, _expect in (
        ("hart.safetensors", "only trained model", r" has no JSON extension: expected a name ending in \.json$"),
        ("run.json", "record", r": run\.json is the name of a run folder's record")):
    def _run(trained, mp, name=_name):
        run = copy_run(trained, "har")
        return _untouched(run, ".", ("eval", "hart", *SMOKE, "--ckpt", "run", "--n", "2", "--seed", "0",
                                     "--json", f"run/{name}"))

    _run.__name__ = f"case_json_onto_a_runs_{_what.split()[-1]}"
    case("data loss", f"--json onto a run's {_what}", f"eval hart --ckpt run --json run/{_name}",
         rf"^exit 2: error: --json 'run/{re.escape(_name)}'{_expect}")(_run)


@case("data loss", "--json onto last week's results", "eval judge --json r.json  (r.json exists)",
      r"^exit 2: error: --json 'r.json' exists: pass --overwrite to replace it, or choose another name$")
def case_json_onto_an_existing_file(trained, mp):
    Path("r.json").write_text('{"fd": 0.8}\n')
    out = cli("eval", "judge", *SMOKE, "--n", "4", "--json", "r.json")
    assert Path("r.json").read_text() == '{"fd": 0.8}\n'
    return out


@case("data loss", "the same, told to overwrite", "eval judge --json r.json --overwrite  (r.json exists)",
      r"^exit 0: r.json replaced: n 4$")
def case_json_onto_an_existing_file_with_overwrite(trained, mp):
    Path("r.json").write_text('{"fd": 0.8}\n')
    out = cli("eval", "judge", *SMOKE, "--n", "4", "--json", "r.json", "--overwrite")
    return f"{out.split(':')[0]}: r.json replaced: n {json.loads(Path('r.json').read_text())['n']}"


# --- ship: the one way into data/ ------------------------------------------------------------------------------


@case("data loss", "ship a smoke model with --preset left at its default (cpu)",
      "ship hart --ckpt run/hart.safetensors --command ...  (a 30-step smoke HART)",
      r"^exit 2: error: 'run/hart.safetensors' was trained with preset 'smoke', not 'cpu'")
def case_ship_a_model_of_another_preset(trained, mp):
    copy_run(trained, "har")
    return _data_untouched(mp, "ship", "hart", "--ckpt", "run/hart.safetensors", "--command", "train hart")


@case("data loss", "ship an unfinished model over the finished shipped one",
      "ship hart --preset cpu --ckpt run/hart.safetensors ...  (stopped after 1 of 30 steps)",
      r"^exit 2: error: 'run/hart.safetensors' stopped after 1 of 30 training steps \(finished: false\); the shipped "
      r"data/hart_cpu.safetensors it would replace is finished")
def case_ship_an_unfinished_model(trained, mp):
    run = copy_run(trained, "har")
    resave(run / "hart.safetensors", preset="cpu", finished=False, steps_done=1)
    return _data_untouched(mp, "ship", "hart", "--preset", "cpu", "--ckpt", "run/hart.safetensors", "--command", "x")


@case("data loss", "ship over a shipped model without saying so",
      "ship hart --preset cpu --ckpt run/hart.safetensors --command ...",
      r"^exit 2: error: data/hart_cpu.safetensors is shipped already \(sha256 \.\.\., made by: \.\.\.\): "
      r"pass --replace to replace it$")
def case_ship_without_replace(trained, mp):
    run = copy_run(trained, "har")
    resave(run / "hart.safetensors", preset="cpu")
    return _shipped_file_left_out(_data_untouched(mp, "ship", "hart", "--preset", "cpu", "--ckpt",
                                                  "run/hart.safetensors", "--command", "x"))


def _shipped_file_left_out(outcome: str) -> str:
    """The outcome without the shipped file's sha256 and command, so the table stays current when it is reshipped."""
    return re.sub(r"\(sha256 [0-9a-f]+\.\.\., made by: [^)]*\)", "(sha256 ..., made by: ...)", outcome)


@case("silent wrong result", "ship without --metrics (the manifest's metrics became {})",
      "ship hart --preset cpu --ckpt run/hart.safetensors --command ... --replace",
      r"^exit 0: note: replaced data/hart_cpu.safetensors \(sha256 \.\.\., made by: \.\.\.\); its metrics were kept: "
      r"measure the new model and ship again with --metrics$")
def case_ship_keeps_metrics_and_says_what_it_replaced(trained, mp):
    run = copy_run(trained, "har")
    resave(run / "hart.safetensors", preset="cpu")
    repo = shipped_repo(mp)
    old = json.loads((repo / "data" / "manifest.json").read_text())["models"]["hart_cpu"]
    out = cli("ship", "hart", "--preset", "cpu", "--ckpt", "run/hart.safetensors", "--command", "train hart",
              "--replace")
    new = json.loads((repo / "data" / "manifest.json").read_text())["models"]["hart_cpu"]
    assert new["metrics"] == old["metrics"] != {} and new["sha256"] != old["sha256"]
    assert new["sha256"] == sha(repo / "data" / "hart_cpu.safetensors")
    return _shipped_file_left_out(out)


@case("data loss", "ship-run of a second run over the models shipped from the first",
      "ship-run back  (back/: a run whose judge_cpu differs from the shipped one)",
      r"^exit 2: error: 'data/judge_cpu.safetensors' is shipped already with other contents \(1 shipped files differ "
      r"from this run's\): pass --replace to replace them$")
def case_ship_run_over_shipped_models(trained, mp):
    repo = shipped_repo(mp)
    Path("back").mkdir()
    judge = Path("back/judge_cpu.safetensors")
    judge.write_bytes((repo / "data" / "judge_cpu.safetensors").read_bytes())
    resave(judge, command="another run")
    entry = {"file": judge.name, "kind": "judge", "preset": "cpu", "sha256": sha(judge)}
    checkpoint.write_json("back/results.json", {"preset": "cpu", "export": {"models": {"judge_cpu": entry}}})
    return relative(_untouched(repo, "data", ("ship-run", "back")))


# --- student notebooks -----------------------------------------------------------------------------------------


@case("data loss", "student notebooks written again over an instructor's edits", "course student s  (run twice)",
      r"^exit 2: error: the student folder 's' is not empty \(13 files, e.g. '00_welcome.ipynb'\)")
def case_student_notebooks_written_twice(trained, mp):
    shipped_repo(mp, notebooks=True)
    assert cli("course", "student", "s").startswith("exit 0")
    edited = Path("s/00_welcome.ipynb")
    edited.write_text(edited.read_text().replace("NotImplementedError", "NotImplementedError  # hint: see 02"))
    before = edited.read_text()
    out = cli("course", "student", "s")
    assert edited.read_text() == before, "the instructor's edit was lost"
    return out


@case("data loss", "OUTDIR and --notebooks swapped (all 13 course notebooks became student versions)",
      "course student notebooks --notebooks s", r"^exit 2: error: the student folder 'notebooks' is the course itself")
def case_student_notebooks_over_the_course(trained, mp):
    repo = shipped_repo(mp, notebooks=True)
    assert cli("course", "student", "s").startswith("exit 0")
    return _untouched(repo, "notebooks", ("course", "student", "notebooks", "--notebooks", "s"))


# --- training starts -------------------------------------------------------------------------------------------


@case("unclear message", "a refused start (it left run.json, and then neither --resume nor a plain start worked)",
      "train hart --out run --grad-accum 3  (the smoke batch is 16)",
      r"^exit 2: error: argument --grad-accum: 3 is invalid: preset 'smoke' trains with batches of 16, .*; then: "
      r"no 'run' folder$")
def case_refused_start_leaves_no_trace(trained, mp):
    out = cli("train", "hart", *SMOKE, "--out", "run", "--grad-accum", "3")
    return f"{out}; then: " + ("no 'run' folder" if not Path("run").exists() else
                               f"run/ holds {sorted(p.name for p in Path('run').iterdir())}")


@case("unclear message", "a start killed before its first checkpoint, then run again",
      "train hart --out run [--resume]  (run/: the run.json of a killed start)",
      r"^--resume: exit 2: error: --resume: 'run' holds no hart checkpoint to continue .*leave out --resume to start "
      r"a new run; without: exit 0, run\.json: hart, finished$")
def case_killed_start_runs_again_plainly(trained, mp):
    Path("run").mkdir()
    checkpoint.write_json("run/run.json", {"kind": "hart", "stage": "training", "preset": "smoke",
                                           "command": "python -m hart_mini train hart --preset smoke --out run"})
    resumed = cli("train", "hart", *SMOKE, "--out", "run", "--resume")
    plain = cli("train", "hart", *SMOKE, "--out", "run")
    held = json.loads(Path("run/run.json").read_text())
    return f"--resume: {resumed}; without: {plain.split(':')[0]}, run.json: {held['kind']}, {held['stage']}"


@case("unclear message", "a --metrics file that is not JSON", "ship hart --ckpt run/hart.safetensors --metrics m.json",
      r"^exit 2: error: --metrics 'm.json' is not valid JSON \(Expecting")
def case_ship_metrics_not_json(trained, mp):
    copy_run(trained, "har")
    shipped_repo(mp)
    Path("m.json").write_text('{"fd": 0.8,}')
    return relative(cli("ship", "hart", "--ckpt", "run/hart.safetensors", "--metrics", "m.json", "--command", "x"))
