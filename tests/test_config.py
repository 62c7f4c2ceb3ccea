"""Configs validate themselves; presets and the HART_MINI_PRESET variable."""

import pytest

from hart_mini.config import DataConfig, TrainConfig, get_preset


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_presets_build(name):
    preset = get_preset(name)
    assert preset.name == name and preset.data.image_size == (64 if name == "gpu" else 32)


def test_env_variable_selects_default_preset(monkeypatch):
    monkeypatch.setenv("HART_MINI_PRESET", "gpu")
    assert get_preset().name == "gpu"
    monkeypatch.delenv("HART_MINI_PRESET")
    assert get_preset().name == "cpu"
    monkeypatch.setenv("HART_MINI_PRESET", "laptop")
    with pytest.raises(ValueError, match="HART_MINI_PRESET='laptop' is invalid: expected one of"):
        get_preset()


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 48}, "image_size=48 is invalid: expected 32 or 64"),
    ({"seed": -1}, "seed=-1 is invalid"),
    ({"train_size": 0}, "train_size=0 is invalid"),
    ({"p_two_objects": 1.5}, r"p_two_objects=1.5 is invalid: expected a number in \[0, 1\]"),
])
def test_bad_values_name_field_value_and_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_a_training_mix_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"two_objects=1.2 is invalid: expected None or a number in \[0, 1\]"):
        TrainConfig(two_objects=1.2)


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="preset='huge' is invalid"):
        get_preset("huge")


def test_a_heads_variant_for_another_mode_drops_what_that_mode_cannot_use():
    import dataclasses

    head = dataclasses.replace(get_preset("cpu").head, condition="none")  # a head stage and a head that reads nothing
    with pytest.raises(ValueError, match="stage_steps"):
        dataclasses.replace(head, mode="off")
    off = head.for_mode("off")
    assert off.mode == "off" and off.stage_steps == 0 and off.condition == "hidden+token"
    assert head.for_mode("full").condition == "hidden+token" and head.for_mode("last") == head
    assert get_preset("gpu").head.for_mode("early").last_drop == 0.0
