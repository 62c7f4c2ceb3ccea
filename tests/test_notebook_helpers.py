"""Helpers the notebooks rely on: shipped models with a fallback note, committed histories, object crops, the judge."""

import json

import pytest

from hart_mini import pretrained
from hart_mini.config import get_preset


def test_the_cpu_preset_gets_its_own_shipped_model_and_says_which_file():
    shipped = pretrained.load_for("tokenizer", get_preset("cpu"))
    assert shipped.preset.name == "cpu" and not shipped.note.startswith("note:")
    assert "data/tokenizer_cpu.safetensors" in shipped.note and "python -m hart_mini train tokenizer" in shipped.note
    assert shipped.model.cfg.image_size == shipped.preset.data.image_size


def test_smoke_uses_the_cpu_models_with_its_own_data():
    shipped = pretrained.load_for("hart", get_preset("smoke"))
    assert shipped.preset.name == "smoke" and "shipped cpu hart" in shipped.note


def test_gpu_without_gpu_weights_falls_back_to_cpu_models_and_cpu_data_with_a_note(monkeypatch):
    monkeypatch.setattr(pretrained, "available", lambda kind, preset: preset == "cpu")
    shipped = pretrained.load_for("hart", get_preset("gpu"))
    assert shipped.preset.name == "cpu" and shipped.preset.data.image_size == 32
    assert shipped.note.startswith("note: no gpu hart is shipped") and "uses the cpu one" in shipped.note
    assert shipped.model.tokenizer.cfg.image_size == shipped.preset.data.image_size  # data and model agree


def test_nothing_shipped_is_a_clear_error_naming_the_training_command(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "DATA", tmp_path)
    monkeypatch.setattr(pretrained, "MANIFEST", tmp_path / "manifest.json")
    with pytest.raises(FileNotFoundError, match="python -m hart_mini train hart --preset cpu"):
        pretrained.load_for("hart", get_preset("gpu"))


def test_history_reads_the_committed_file_or_says_it_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "DATA", tmp_path / "data")
    entries, note = pretrained.history("hart", "cpu")
    assert entries is None and "not in the repository" in note and "data/results/cpu/hart_history.json" in note
    (tmp_path / "data" / "results" / "cpu").mkdir(parents=True)
    rows = [{"step": 1, "ce": 5.0, "diff": 1.0}, {"step": 2, "ce": 4.0, "diff": 0.9}]
    (tmp_path / "data" / "results" / "cpu" / "hart_history.json").write_text(json.dumps(rows))
    entries, note = pretrained.history("hart", "cpu")
    assert entries == rows and "shipped cpu hart" in note


def test_object_crops_centre_on_the_named_cell_and_keep_two_object_images_whole():
    import torch

    from hart_mini.course.viz import object_crops

    images = torch.zeros(3, 3, 32, 32)
    images[0, :, 0:4, 0:4] = 1.0  # a dot in the top-left corner
    images[1, :, 28:32, 28:32] = 1.0  # a dot in the bottom-right corner
    crops = object_crops(images, ["a small red circle at the top left", "a small red circle at the bottom right",
                                  "a small red circle left of a large blue square"])
    assert crops.shape == (3, 3, 16, 16)
    assert crops[0, :, :4, :4].min() == 1.0 and crops[1, :, -4:, -4:].min() == 1.0  # the dots are in view
    moved = object_crops(images[:1], cells=[8])  # a cell given by hand wins over the prompt
    assert moved.max() == 0.0


def test_the_judge_names_what_an_image_gets_wrong_and_where_its_object_is():
    from hart_mini.measure.judge import misses, object_cells
    from hart_mini.model.data import ToyShapes

    judge = pretrained.load("judge", "cpu")
    batch = ToyShapes(get_preset("cpu").data, "test").batch(range(8))
    assert misses(judge, batch["image"], batch["caption"]) == [[]] * 8  # real images match their captions
    wrong = misses(judge, batch["image"][:1], ["a large purple dotted diamond at the bottom right"])
    assert wrong[0] and set(wrong[0]) <= {"count", "shape", "colour", "size", "texture", "position", "relation"}
    one = [i for i, c in enumerate(batch["caption"]) if " at the " in c]
    cells = object_cells(judge, batch["image"][one])
    from hart_mini.model.data import parse_caption
    assert cells == [parse_caption(batch["caption"][i])["position"] for i in one]
