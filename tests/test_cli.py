"""The command line: --help everywhere, JSON on stdout, clear errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hart_mini.cli import build_parser, main

COMMANDS = [[], ["data", "preview"], ["demo"], ["course", "student"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(command + ["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_data_preview_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--preset", "smoke", "--n", "3", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.stat().st_size > 0 and result["n"] == 3 and len(result["captions"]) == 3


def test_demo_runs_as_a_module_with_the_shipped_model(tmp_path):
    out = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "hart_mini", "demo", "--preset", "smoke", "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["out"] == str(out) and out.is_file()
    shipped = json.loads((Path(__file__).parents[1] / "data" / "manifest.json").read_text())["models"]["hart_cpu"]
    assert len(result["prompts"]) == 8 and result["cfg"] == 3.0
    assert result["head_steps"] == shipped["config"]["head"]["sampling_steps"]  # the shipped head's own default


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["data", "preview", "--n", "0", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --n: 0 is invalid") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["data", "preview", "--device", "cpu"]) == 2  # an unknown flag: also one line
    assert capsys.readouterr().err.count("\n") == 1


def test_eval_hart_seed_draws_other_samples_for_the_same_prompts(capsys):
    def fd(seed: int) -> float:
        assert main(["eval", "hart", "--preset", "cpu", "--n", "8", "--device", "cpu", "--seed", str(seed)]) == 0
        return json.loads(capsys.readouterr().out)["fd"]

    first = fd(0)
    assert fd(0) == first  # the same seed: the same samples
    assert fd(1000) != first  # another seed: other samples, so another estimate


def test_eval_diffusion_reports_the_baseline_with_one_and_two_object_accuracy(capsys):
    """The baseline gets the same evaluation as HART: FD, prompt accuracy and its one-/two-object split, each
    with its noise; the same seed draws the same samples."""
    def run(*args: str) -> dict:
        assert main(["eval", "diffusion", "--preset", "cpu", "--n", "8", "--steps", "2", "--device", "cpu",
                     *args]) == 0
        return json.loads(capsys.readouterr().out)

    first = run("--seed", "0")
    assert first["steps"] == 2 and first["model"].startswith("shipped diffusion")
    assert {"fd", "prompt_accuracy_one", "prompt_accuracy_two", "prompt_accuracy_two_se"} <= set(first)
    assert run("--seed", "0")["fd"] == first["fd"]


def test_eval_hart_seeds_report_mean_sd_and_standard_errors_of_the_single_seed_runs(capsys, tmp_path):
    def run(*args: str) -> dict:
        assert main(["eval", "hart", "--preset", "cpu", "--n", "8", "--device", "cpu", *args]) == 0
        return json.loads(capsys.readouterr().out)

    singles = [run("--seed", str(s)) for s in (0, 1000)]
    both = run("--seeds", "0,1000", "--json", str(tmp_path / "eval.json"))
    assert both["seeds"] == [0, 1000] and [r["fd"] for r in both["per_seed"]] == [r["fd"] for r in singles]
    fds = [r["fd"] for r in singles]
    assert both["fd"] == pytest.approx(sum(fds) / 2, abs=1e-4)
    assert both["fd_sd"] == pytest.approx(abs(fds[0] - fds[1]) / 2 ** 0.5, abs=1e-4)
    p = both["prompt_accuracy"]
    assert both["prompt_accuracy_se"] == pytest.approx((p * (1 - p) / 8) ** 0.5, abs=1e-4)
    assert {"acc_position", "acc_relation", "acc_position_se", "acc_relation_se"} <= set(both)
    assert json.loads((tmp_path / "eval.json").read_text())["fd"] == both["fd"]


@pytest.mark.parametrize("kind", ["tokenizer", "hart", "judge", "diffusion"])
def test_every_kind_resolves_to_the_cpu_model_shipped_for_smoke(kind):
    from hart_mini.cli import resolve

    model, source = resolve(kind, None, "smoke", "cpu")
    assert source == f"shipped {kind} (cpu)" and model is not None


def test_eval_judge_scores_real_images_and_says_when_a_judge_misreads_them(capsys, tmp_path):
    """The shipped judge reads every attribute of real images, so their prompt accuracy is 1; an untrained judge
    of the same shape does not (the command really scores the images, it does not report a stored number)."""
    from hart_mini import pretrained

    assert main(["eval", "judge", "--preset", "cpu", "--n", "64", "--device", "cpu",
                 "--json", str(tmp_path / "judge.json")]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert shipped["n"] == 64 and shipped["real_prompt_accuracy"] == 1.0 and shipped["acc_shape"] == 1.0
    assert json.loads((tmp_path / "judge.json").read_text()) == shipped
    import torch

    from hart_mini import checkpoint

    tensors, meta = checkpoint.load(pretrained.path("judge", "cpu"))
    untrained = tmp_path / "untrained.safetensors"
    checkpoint.save(untrained, {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in tensors.items()},
                    meta)  # every weight zero: it reads every image the same way
    assert main(["eval", "judge", "--preset", "cpu", "--n", "64", "--device", "cpu", "--ckpt", str(untrained)]) == 0
    assert json.loads(capsys.readouterr().out)["real_prompt_accuracy"] < 0.5


def test_train_hart_options_reach_the_head_and_the_full_training(tmp_path, monkeypatch, capsys):
    import hart_mini.train
    from hart_mini.config import get_preset

    seen = {}
    monkeypatch.setattr(hart_mini.train, "train_hart", lambda preset, *a, **k: seen.setdefault("preset", preset) and {})
    assert main(["train", "hart", "--preset", "cpu", "--out", str(tmp_path / "x"), "--joint-head-weight", "0.5",
                 "--steps", "123"]) == 0
    cpu = get_preset("cpu")
    assert seen["preset"].head.loss_weight == 0.5 != cpu.head.loss_weight  # the cpu preset's is 0
    assert seen["preset"].hart_train.steps == 123 != cpu.hart_train.steps
    assert seen["preset"].transformer.layout_steps == cpu.transformer.layout_steps  # its stage keeps its steps
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "hart", "--out", "runs/x", "--joint-head-weight", "-1"])
    assert main(["train", "hart", "--preset", "cpu", "--out", str(tmp_path / "y"), "--joint-head-weight", "0",
                 "--head-stage-steps", "0"]) == 2
    assert "never learn" in capsys.readouterr().err


def test_train_tokenizer_decoder_field_reaches_the_tokenizer_config(tmp_path, monkeypatch):
    import hart_mini.train
    from hart_mini.config import get_preset

    seen = []
    monkeypatch.setattr(hart_mini.train, "train_tokenizer", lambda preset, *a, **k: seen.append(preset) or {})
    for flags in (["--decoder-field", "local"], []):
        assert main(["train", "tokenizer", "--preset", "smoke", "--out", str(tmp_path / "t"), *flags]) == 0
    assert seen[0].tokenizer == dataclasses.replace(get_preset("smoke").tokenizer, decoder_field="local")
    assert seen[1].tokenizer == get_preset("smoke").tokenizer and seen[1].tokenizer.decoder_field == "wide"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "tokenizer", "--out", "runs/x", "--decoder-field", "narrow"])


def test_head_network_options_reach_the_head_stage_and_the_training(monkeypatch, tmp_path, capsys):
    import hart_mini.train

    seen = {}
    monkeypatch.setattr(hart_mini.train, "train_head", lambda preset, *a, **k: seen.setdefault("head", preset) and {})
    monkeypatch.setattr(hart_mini.train, "train_hart", lambda preset, *a, **k: seen.setdefault("hart", preset) and {})
    options = ["--head-network", "map", "--head-width", "24", "--head-depth", "2", "--head-guidance", "off",
               "--head-sampling-steps", "5", "--true-token-share", "0.25", "--head-conv", "depthwise",
               "--head-temperature", "0.75", "--head-draw-scale", "0.8", "--head-cfg", "0.5"]
    assert main(["train", "head", "--preset", "smoke", "--out", str(tmp_path / "h"), "--source", str(tmp_path),
                 "--steps", "7", *options]) == 0
    assert main(["train", "hart", "--preset", "smoke", "--out", str(tmp_path / "j"), "--head-stage-steps", "7",
                 *options]) == 0
    for preset in seen.values():
        head = preset.head
        assert (head.network, head.width, head.depth, head.guided, head.sampling_steps, head.true_token_share,
                head.stage_steps, head.map_conv, head.temperature, head.draw_scale, head.cfg_scale) == (
            "map", 24, 2, False, 5, 0.25, 7, "depthwise", 0.75, 0.8, 0.5)
    from hart_mini.config import get_preset

    smoke = get_preset("smoke").head  # the flags differ from the preset's, so the check above can fail
    assert (smoke.network, smoke.width, smoke.guided, smoke.sampling_steps, smoke.map_conv, smoke.temperature,
            smoke.draw_scale, smoke.cfg_scale) != ("map", 24, False, 5, "depthwise", 0.75, 0.8, 0.5)
    seen.clear()
    assert main(["train", "head", "--preset", "smoke", "--out", str(tmp_path / "k"), "--source", str(tmp_path),
                 "--steps", "7"]) == 0
    assert seen["head"].head == dataclasses.replace(smoke, stage_steps=7)  # no flags: the preset's head
    assert main(["train", "head", "--preset", "smoke", "--out", str(tmp_path / "m"), "--source", str(tmp_path),
                 "--steps", "7", "--head-network", "map", "--head-depth", "1", "--head-width", "8"]) == 0
    assert main(["train", "hart", "--preset", "gpu", "--out", str(tmp_path / "n"), "--head-network", "map"]) == 2
    assert "every token" in capsys.readouterr().err  # the gpu head drops tokens (last_drop); a map needs them all


def test_caption_options_reach_the_training_preset_and_leave_evaluation_alone():
    from hart_mini.cli import caption_options
    from hart_mini.config import get_preset

    args = build_parser().parse_args(["train", "hart", "--out", "runs/x", "--text-position", "counted",
                                      "--two-objects", "0.7", "--text-depth", "0", "--layout-steps", "50",
                                      "--layout-scales", "2", "--adaln-gate", "1", "--raster-scales", "3"])
    preset = caption_options(get_preset("cpu"), args)
    assert preset.hart_train.two_objects == preset.baseline_train.two_objects == 0.7  # the generators' training mix
    assert preset.data.p_two_objects == 0.35 and preset.transformer.text_position == "counted"  # eval's stays
    assert preset.transformer.text_depth == 0 and preset.transformer.layout_steps == 50
    assert preset.transformer.layout_scales == 2  # not the cpu preset's 4
    assert preset.transformer.adaln_gate == 1.0 and preset.transformer.raster_scales == 3
    baseline = caption_options(get_preset("cpu"), build_parser().parse_args(
        ["train", "diffusion", "--out", "runs/x", "--text-depth", "0"]))  # no --layout-steps: it has no scales
    assert baseline.transformer.text_depth == 0
    assert baseline.transformer.layout_steps == get_preset("cpu").transformer.layout_steps  # the preset's
    assert baseline.transformer.adaln_gate == get_preset("cpu").transformer.adaln_gate
    assert get_preset("cpu").data.p_two_objects == 0.35  # the preset itself, which eval reads, is unchanged
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "diffusion", "--out", "runs/x", "--two-objects", "1.5"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "diffusion", "--out", "runs/x", "--layout-steps", "50"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "hart", "--out", "runs/x", "--layout-scales", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "hart", "--out", "runs/x", "--raster-scales", "-1"])
