"""Notebooks load shipped models through pretrained.load_for: never an untrained model in silence."""

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
