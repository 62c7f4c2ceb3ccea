"""bench and ablate run at smoke size and write valid JSON (with an untrained judge: numbers, not quality)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hart_mini import checkpoint
from hart_mini.ablate import ABLATIONS
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.measure.judge import Judge
from hart_mini.model.tokenizer import HybridTokenizer
from hart_mini.train import train_diffusion, train_hart

PRESET = get_preset("smoke")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tok = HybridTokenizer(PRESET.tokenizer)
    checkpoint.save(root / "tokenizer.safetensors", tok.state_dict(),
                    {"kind": "tokenizer", "config": dataclasses.asdict(PRESET.tokenizer)})
    judge = Judge(32)
    checkpoint.save(root / "judge.safetensors", judge.state_dict(), {"kind": "judge", "config": {"image_size": 32}})
    short = dataclasses.replace(PRESET, hart_train=dataclasses.replace(PRESET.hart_train, steps=3, batch_size=4),
                                baseline_train=dataclasses.replace(PRESET.baseline_train, steps=3, batch_size=4))
    train_hart(short, root / "hart", root / "tokenizer.safetensors")
    train_diffusion(short, root / "diffusion", root / "tokenizer.safetensors")
    return root


def _bench(models, tmp_path, *extra) -> list[str]:
    return ["bench", "--preset", "smoke", "--hart", str(models / "hart"), "--baseline", str(models / "diffusion"),
            "--judge", str(models / "judge.safetensors"), "--batch", "4", "--repeats", "1", "--device", "cpu",
            "--json", str(tmp_path / "bench.json"), *extra]


def test_bench_writes_the_frontier_the_matched_quality_headline_and_a_figure(models, tmp_path):
    from hart_mini.bench import choose_cfg, matched_point

    assert main(_bench(models, tmp_path, "--n", "4", "--seeds", "0,7", "--baseline-steps", "3,2",
                       "--head-steps", "1,2", "--cfg-sweep", "0,3")) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0 and result["figure"] == str(tmp_path / "bench.png")
    frontier = result["frontier"]
    assert [p["steps"] for p in frontier["diffusion"]] == [2, 3]
    assert [p["steps"] for p in frontier["hart"]] == [1, 2, 8]  # the model's default head steps is added
    for point in [*frontier["diffusion"], *frontier["hart"], *frontier["discrete"]]:
        assert point["latency_s"] > 0 and point["throughput_img_s"] > 0 and point["macs_per_image"] > 0
        assert point["n"] == 4 and point["seeds"] == [0, 7] and len(point["per_seed"]) == 2
        assert point["fd_sd"] >= 0 and 0 <= point["prompt_accuracy_se"] <= 0.5 and "acc_colour_se" in point
        assert point["fd"] == pytest.approx(sum(r["fd"] for r in point["per_seed"]) / 2, abs=1e-4)
    baseline_macs = [p["macs_per_image"] for p in frontier["diffusion"]]
    assert baseline_macs[0] < baseline_macs[1]  # 2 vs 3 denoiser passes
    tuning = result["cfg_tuning"]
    for name, steps in (("hart", 8), ("diffusion", 3)):  # each tuned once, at its reference steps
        (tuned,) = tuning[name]
        assert tuned["steps"] == steps and [r["cfg"] for r in tuned["sweep"]] == [0.0, 3.0]
        assert tuned["chosen"] == choose_cfg(tuned["sweep"])["cfg"] == result["cfg"][name]
    assert {p["cfg"] for p in frontier["diffusion"]} == {result["cfg"]["diffusion"]}
    matched = result["matched_quality"]
    assert {"baseline_steps", "throughput_ratio", "macs_ratio"} <= set(matched)
    match = matched_point(result["models"]["hart"], frontier["diffusion"])
    assert matched["baseline_steps"] == (match["steps"] if match else None)
    if match:
        assert matched["throughput_ratio"] == round(result["models"]["hart"]["throughput_img_s"]
                                                    / match["throughput_img_s"], 2)
    assert set(result["ratios_vs_diffusion"]) == {"hart", "discrete"} and set(result["ratios_by_baseline_steps"]) == {
        "2", "3"}
    assert result["models"]["diffusion"]["steps"] == 3  # the default 30 was not swept: the most steps stand in


def test_bench_speed_only_measures_no_quality_and_names_no_match(models, tmp_path):
    assert main(_bench(models, tmp_path, "--n", "0", "--baseline-steps", "2", "--head-steps", "8")) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["cfg"] == {"hart": 3.0, "diffusion": 3.0} and result["cfg_tuning"] is None
    assert result["matched_quality"]["baseline_steps"] is None and result["figure"] is None
    assert "fd" not in result["models"]["hart"] and result["models"]["hart"]["throughput_img_s"] > 0
    assert result["ratios_vs_diffusion"]["hart"]["macs"] > 0


def test_bench_refuses_bad_sweeps_in_one_line(models, tmp_path, capsys):
    assert main(_bench(models, tmp_path, "--n", "4", "--baseline-steps", "0,5")) == 2
    assert "argument --baseline-steps: 0 is invalid: expected an integer >= 1 (in 0,5)" in capsys.readouterr().err
    assert main(_bench(models, tmp_path, "--seeds", "zero")) == 2
    assert "argument --seeds: 'zero' is not an integer (in zero)" in capsys.readouterr().err
    from hart_mini.bench import frontier

    with pytest.raises(ValueError, match="one value when n_eval = 0"):  # speed only: nothing to tune on
        frontier(None, None, None, PRESET.data, torch.device("cpu"), 0, cfgs=(0.0, 3.0))


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_runs_at_smoke_size_and_writes_json_and_a_figure(name, models, tmp_path):
    args = ["ablate", name, "--preset", "smoke", "--out", str(tmp_path), "--n", "4", "--device", "cpu",
            "--judge", str(models / "judge.safetensors"), "--tokenizer", str(models / "tokenizer.safetensors"),
            "--seeds", "0,1", "--train-seeds", "0"]
    if name != "decoder":
        args += ["--reference", str(models / "hart" / "hart.safetensors")]
    assert main(args) == 0
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["ablation"] == name and result["n_eval"] == 4 and (tmp_path / f"{name}.png").stat().st_size > 0
    assert result["seeds"] == [0, 1]
    rows = result["generation"] if name == "decoder" else result.get("rows") or result["series"]["residual head (HART)"]
    assert all("fd_sd" in r and "prompt_accuracy_se" in r for r in rows)
    if name == "steps":  # every step count against the model's own 8
        assert len(result["verdicts"]) == 2 * (len(result["steps"]) - 1)
        assert all(v["b"] == "8 steps" for v in result["verdicts"])
    if name == "cfg":
        assert result["chosen"] in result["cfg"]


@pytest.fixture
def counted_training(monkeypatch):
    """train_hart at 2 steps, recording (variant and seed of its folder, the training seed it got): a folder is
    '<variant>_seed<s>_<preset>_<recipe>'."""
    import hart_mini.train as train

    calls, real = [], train.train_hart

    def quick(preset, out, *args, **kwargs):
        variant, preset_name, _ = Path(out).name.rsplit("_", 2)
        assert preset_name == preset.name
        calls.append((variant, preset.hart_train.seed))
        short = dataclasses.replace(preset, hart_train=dataclasses.replace(preset.hart_train, steps=2, batch_size=4))
        return real(short, out, *args, **kwargs)

    monkeypatch.setattr(train, "train_hart", quick)
    return calls


def _variant(out: Path, name: str) -> Path:
    """The one folder of a trained variant (its name goes on with the preset and a digest of the recipe)."""
    found = list(out.glob(f"{name}_smoke_*"))
    assert len(found) == 1, found
    return found[0]


def test_ablate_trains_each_variant_per_training_seed_in_its_own_folder_and_reuses_it(models, tmp_path,
                                                                                      counted_training):
    args = ["ablate", "early", "--preset", "smoke", "--out", str(tmp_path), "--n", "4", "--device", "cpu",
            "--judge", str(models / "judge.safetensors"), "--tokenizer", str(models / "tokenizer.safetensors"),
            "--seeds", "0,1", "--train-seeds", "0,3"]
    assert main(args) == 0
    assert sorted(counted_training) == [("early_seed0", 0), ("early_seed3", 3), ("last_seed0", 0), ("last_seed3", 3)]
    first, second = (checkpoint.load(_variant(tmp_path, f"last_seed{s}") / "hart.safetensors")[0] for s in (0, 3))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the seed changed the trained weights
    result = json.loads((tmp_path / "early.json").read_text())
    assert result["train_seeds"] == [0, 3]
    for row in result["rows"]:
        assert row["train_seeds"] == [0, 3] and [r["train_seed"] for r in row["per_train_seed"]] == [0, 3]
        assert row["fd"] == pytest.approx(sum(r["fd"] for r in row["per_train_seed"]) / 2, abs=1e-4)
    assert {v["metric"] for v in result["verdicts"]} == {"fd", "prompt_accuracy"}
    assert all(v["verdict"] in ("inside the noise", "diffusion-last (HART) better", "diffusion-early better")
               for v in result["verdicts"])
    assert main(args) == 0 and len(counted_training) == 4  # every folder reused: nothing trained again


def test_ablate_reference_stands_in_for_the_first_training_seed_only(models, tmp_path, counted_training):
    assert main(["ablate", "head", "--preset", "smoke", "--out", str(tmp_path), "--n", "4", "--device", "cpu",
                 "--judge", str(models / "judge.safetensors"), "--tokenizer", str(models / "tokenizer.safetensors"),
                 "--reference", str(models / "hart" / "hart.safetensors"), "--seeds", "0,1",
                 "--train-seeds", "0,1"]) == 0
    assert sorted(counted_training) == [("last_seed1", 1), ("off_seed0", 0), ("off_seed1", 1)]
    result = json.loads((tmp_path / "head.json").read_text())
    assert "stands in for training seed 0" in result["reference"] and len(result["verdicts"]) == 4
    assert [v["paired"] for v in result["verdicts"]] == [False, False, True, True]  # head skipped: same models


def test_variant_folders_are_keyed_by_preset_and_recipe(models):
    from hart_mini.ablate import variant_folder

    tok = models / "tokenizer.safetensors"
    smoke = get_preset("smoke")
    name = variant_folder(smoke, "off", "off", tok)
    assert name.startswith("off_seed0_smoke_") and variant_folder(smoke, "off", "off", tok) == name
    longer = dataclasses.replace(smoke, hart_train=dataclasses.replace(smoke.hart_train, steps=31))
    assert variant_folder(longer, "off", "off", tok) != name  # another budget: another variant
    assert variant_folder(get_preset("cpu"), "off", "off", tok).startswith("off_seed0_cpu_")


def test_kv_cache_benchmark_reports_both_sizes():
    from hart_mini.bench import kv_cache_speedup

    small = dataclasses.replace(PRESET, transformer=dataclasses.replace(PRESET.transformer, width=16, num_heads=2))
    result = kv_cache_speedup([small], torch.device("cpu"), batch=2, repeats=1)
    row = result["smoke"]
    assert row["tokens"] == 130 and row["seconds_with_cache"] > 0 and row["speedup"] > 0


def test_position_ablation_trains_the_absolute_variant_and_reports_each_ones_sensitivity(models, tmp_path):
    args = ["ablate", "position", "--preset", "smoke", "--out", str(tmp_path), "--n", "4", "--device", "cpu",
            "--judge", str(models / "judge.safetensors"), "--tokenizer", str(models / "tokenizer.safetensors"),
            "--seeds", "0", "--train-seeds", "0", "--reference", str(models / "hart" / "hart.safetensors")]
    assert main(args) == 0
    result = json.loads((tmp_path / "position.json").read_text())
    folder = _variant(tmp_path, "last_absolute_seed0")
    assert json.loads((folder / "run.json").read_text())["kind"] == "hart"
    from hart_mini.model.hart import HART

    assert HART.from_file(folder / "hart.safetensors").cfg.position == "absolute"
    assert [r["label"] for r in result["rows"]] == list(result["sensitivity"])
    assert {v["metric"] for v in result["verdicts"]} == {"fd", "prompt_accuracy", "acc_position"}
    for part in result["sensitivity"].values():
        assert len(part["position"]["sensitivity"]) == len(PRESET.tokenizer.scales)


def test_a_late_benchmark_measures_its_core_points_first_and_cuts_the_others(models):
    """Past its deadline, the benchmark still measures HART at its head steps, the discrete path and the
    baseline at its reference steps (here the most swept, 30 is not), and lists every other point as cut."""
    import time

    from hart_mini.bench import frontier
    from hart_mini.model.baselines import LatentDiffusion
    from hart_mini.model.hart import HART

    hart = HART.from_file(models / "hart" / "hart.safetensors")
    baseline = LatentDiffusion.from_file(models / "diffusion" / "diffusion.safetensors")
    result = frontier(hart, baseline, Judge(32), PRESET.data, torch.device("cpu"), 4, seeds=(0,),
                      baseline_steps=(2, 3, 5), head_steps=(1, 8), cfgs=(3.0,), throughput_batch=2, repeats=1,
                      eval_batch=2, deadline=time.perf_counter())
    assert [p["steps"] for p in result["frontier"]["diffusion"]] == [5]
    assert [p["steps"] for p in result["frontier"]["hart"]] == [8] and len(result["frontier"]["discrete"]) == 1
    assert [(c["model"], c["steps"]) for c in result["cut"]] == [("diffusion", 2), ("diffusion", 3), ("hart", 1)]
    assert all(c["needed_s"] >= 0 for c in result["cut"]) and set(result["ratios_vs_diffusion"]) == {"hart", "discrete"}
