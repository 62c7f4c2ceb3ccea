"""Run folders and output paths: what a folder holds, where results may go, how paths are recorded."""

import json

import pytest

from hart_mini import runs
from hart_mini.config import get_preset
from hart_mini.train import RunOptions, train_judge


def _judge_run(out, **options):
    preset = get_preset("smoke")
    return train_judge(preset, out, RunOptions(device="cpu", **options), "test", n_eval=10)


def test_a_finished_run_records_kind_and_stage_and_a_folder_without_run_json_is_read_from_its_files(tmp_path):
    _judge_run(tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["stage"] == "finished"
    assert runs.holds(tmp_path) == {"kind": "judge", "stage": "finished", "source": "run.json"}
    (tmp_path / "run.json").unlink()  # a run written before run.json existed
    assert runs.holds(tmp_path) == {"kind": "judge", "stage": "finished", "source": "checkpoint.safetensors"}
    with pytest.raises(ValueError, match="already holds a judge run"):
        _judge_run(tmp_path)
    assert runs.holds(tmp_path / "missing") is None


def test_resume_continues_in_an_empty_folder_and_in_its_own_run(tmp_path):
    # what the ablations do: resume=True means "continue if there is something to continue"
    assert _judge_run(tmp_path, resume=True)["finished"]
    assert _judge_run(tmp_path, resume=True)["finished"]
    with pytest.raises(ValueError, match="holds no judge checkpoint"):
        runs.check_resumable(tmp_path / "other", "judge")


def test_a_broken_run_json_is_named(tmp_path):
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(ValueError, match="run.json' is not valid JSON"):
        runs.holds(tmp_path)


def test_output_files_are_checked_before_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, so no folder can be made inside it"):
        runs.output_file(tmp_path / "file" / "x.png", "--out", runs.IMAGE_SUFFIXES)
    with pytest.raises(ValueError, match="has no image extension"):
        runs.output_file(tmp_path / "x.txt", "--out", runs.IMAGE_SUFFIXES)
    assert runs.output_file(tmp_path / "new" / "x.PNG", "--out", runs.IMAGE_SUFFIXES) == tmp_path / "new" / "x.PNG"


def test_recorded_paths_are_relative_to_the_repository_or_bare_names(tmp_path):
    assert runs.portable(runs.ROOT / "runs" / "hart" / "hart.safetensors") == "runs/hart/hart.safetensors"
    assert runs.portable(tmp_path / "b.json") == "b.json"
    assert runs.portable_command(["eval", "hart", "--json", str(tmp_path / "r.json"), "--n", "2"]) == \
        "python -m hart_mini eval hart --json r.json --n 2"


def test_a_start_interrupted_before_its_first_checkpoint_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    from hart_mini.measure.judge import Judge

    def interrupted(self, images, labels):
        raise KeyboardInterrupt  # Ctrl-C during the first step

    monkeypatch.setattr(Judge, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _judge_run(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        _judge_run(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_killed_start_is_started_again_by_a_plain_run(tmp_path):
    from hart_mini import checkpoint

    checkpoint.write_json(tmp_path / "run.json", {"kind": "judge", "stage": "training"})  # all a kill -9 left
    assert runs.nothing_saved(tmp_path, "judge")
    assert _judge_run(tmp_path)["finished"]


def test_command_outputs_stay_out_of_the_shipped_set_and_off_existing_files(tmp_path):
    with pytest.raises(ValueError, match="is inside the repository's data/"):
        runs.command_output(runs.ROOT / "data" / "new.json", "--json", runs.JSON_SUFFIXES, overwrite=True)
    with pytest.raises(ValueError, match="is inside the repository's notebooks/"):
        runs.output_folder(runs.ROOT / "notebooks" / "student")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        runs.command_output(tmp_path / "r.json", "--json", runs.JSON_SUFFIXES, overwrite=False)
    assert runs.command_output(tmp_path / "r.json", "--json", runs.JSON_SUFFIXES, overwrite=True)
    with pytest.raises(ValueError, match="run.json is the name of a run folder's record"):
        runs.command_output(tmp_path / "run.json", "--json", runs.JSON_SUFFIXES, overwrite=True)
