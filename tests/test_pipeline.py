"""The one-command pipeline: a smoke run on the CPU end to end, its exports and import, and its plans."""

import dataclasses
import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hart_mini import checkpoint, pretrained
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.export import MAX_FILE_BYTES, MAX_TOTAL_BYTES, export_model, ship_run
from hart_mini.pipeline import dry_run, stage_model
from hart_mini.plan import PipelineOptions, plan_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke pipeline on the CPU (a 2-minute budget, the preset's steps at most), shared by the tests."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    code = main(["pipeline", "--preset", "smoke", "--budget-minutes", "2", "--out", str(out), "--device", "cpu",
                 "--max-scale", "1"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_pipeline_trains_evaluates_and_benchmarks_everything(smoke_run):
    out, results = smoke_run
    assert results["status"] == "done" and results["failed"] == {}
    for step in ("data", "timing", "plan", "tokenizer", "judge", "tokenizer_eval", "hart", "diffusion", "discrete",
                 "bench", "samples", "pack"):
        assert step in results["steps"], step
    for name in ("tokenizer", "judge", "hart", "hart_head_skipped", "diffusion", "discrete"):
        assert name in results["metrics"], name
    n = results["eval_sizes"]["n"]
    assert all(results["metrics"][k]["n"] == n for k in ("hart", "diffusion", "discrete"))
    assert results["plan"]["fits"] and results["elapsed_s"] < results["budget_s"]
    smoke = get_preset("smoke")
    for stage in ("hart", "diffusion"):  # max-scale 1: the preset's steps, all of them, finished
        training = results["training"][stage]
        assert training["finished"] and training["step"] == results["plan"]["stages"][stage]["steps"]
    assert results["plan"]["stages"]["hart"]["steps"] == smoke.hart_train.steps
    assert set(results["bench"]["ratios_vs_diffusion"]) == {"hart", "discrete"}
    assert (out / "samples.png").is_file() and (out / "pipeline.log").read_text().count("done") >= 10
    with tarfile.open(out / "extras.tar.gz") as tar:
        names = tar.getnames()
    assert "hart/history.json" in names and "comparison.png" in names


def test_exported_weights_are_fp16_within_the_size_limits_and_listed(smoke_run):
    out, results = smoke_run
    entries = results["export"]["models"]
    assert set(entries) == {"tokenizer_smoke", "judge_smoke", "hart_smoke", "diffusion_smoke"}
    total = 0
    for entry in entries.values():
        path = out / "export" / entry["file"]
        assert path.stat().st_size == entry["bytes"] <= MAX_FILE_BYTES
        assert checkpoint.sha256(path) == entry["sha256"]
        total += entry["bytes"]
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).ndim > 0}
        assert torch.float16 in dtypes and torch.float32 not in dtypes, (entry["file"], dtypes)
        for key in ("kind", "preset", "config", "command", "metrics", "train_seconds", "device", "finished"):
            assert key in entry, key
    assert total <= MAX_TOTAL_BYTES and results["export"]["sizes"]["total_bytes"] == total
    assert results["export"]["sizes"]["within_limits"] and "errors" not in results["export"]
    assert entries["hart_smoke"]["metrics"]["eval_n"] == results["eval_sizes"]["n"]
    assert "fd_head_skipped" in entries["hart_smoke"]["metrics"]


def test_ship_run_puts_the_files_in_data_and_the_loaders_read_them_as_fp32(smoke_run, tmp_path, monkeypatch):
    out, results = smoke_run
    back = tmp_path / "returned"  # what the device script copies into $OUT: the files side by side
    back.mkdir()
    for entry in results["export"]["models"].values():
        (back / entry["file"]).write_bytes((out / "export" / entry["file"]).read_bytes())
    for name in ("results.json", "pipeline.log", "samples.png", "extras.tar.gz"):
        (back / name).write_bytes((out / name).read_bytes())
    assert len(list(back.iterdir())) <= 8
    data = tmp_path / "data"
    shipped = ship_run(back, data)
    assert shipped["models"] == sorted(results["export"]["models"])
    assert (data / "results" / "smoke" / "results.json").is_file()
    assert (data / "results" / "smoke" / "hart" / "loss.png").is_file()
    manifest = json.loads((data / "manifest.json").read_text())
    monkeypatch.setattr(pretrained, "DATA", data)
    monkeypatch.setattr(pretrained, "MANIFEST", data / "manifest.json")
    for kind in ("tokenizer", "judge", "hart", "diffusion"):
        assert manifest["models"][f"{kind}_smoke"]["sha256"] == checkpoint.sha256(data / f"{kind}_smoke.safetensors")
        model = pretrained.load(kind, "smoke")
        assert all(p.dtype == torch.float32 for p in model.parameters())
    images = pretrained.load("hart", "smoke").generate(["a large red striped circle at the top left"])
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_ship_run_refuses_a_file_that_does_not_match_its_sha256(smoke_run, tmp_path):
    out, results = smoke_run
    back = tmp_path / "returned"
    back.mkdir()
    (back / "results.json").write_bytes((out / "results.json").read_bytes())
    for entry in results["export"]["models"].values():
        (back / entry["file"]).write_bytes((out / "export" / entry["file"]).read_bytes())
    with open(back / "judge_smoke.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        ship_run(back, tmp_path / "data")


def test_a_second_run_into_the_same_folder_is_refused(smoke_run, capsys):
    out, _ = smoke_run
    assert main(["pipeline", "--preset", "smoke", "--out", str(out), "--device", "cpu"]) == 2
    assert "already holds a pipeline run" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["pipeline", "--preset", "smoke", "--budget-minutes", "2", "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert not out.exists()
    assert "tokenizer_a" in captured.err and captured.out.lstrip().startswith("{")  # the table on stderr, JSON out
    smoke = get_preset("smoke")
    assert plan["stages"]["hart"]["batch"] == smoke.hart_train.batch_size
    for stage in plan["stages"].values():
        assert stage["steps"] >= 1 and stage["seconds"] > 0
    assert plan["fits"]


def test_gpu_preset_fits_eight_minutes_on_an_h100_by_the_cost_model():
    """The `gpu` preset at its own steps (max_scale 1): every stage, the discrete-only model included, and
    the evaluation of 2 000 prompts per generator fit 8 minutes with a 10 % margin, by FLOPs and bytes."""
    plan = dry_run(PipelineOptions(preset="gpu", budget_minutes=8, max_scale=1.0))
    gpu = get_preset("gpu")
    assert set(plan["stages"]) == {"tokenizer_a", "tokenizer_b", "judge", "hart", "diffusion", "discrete"}
    assert plan["stages"]["hart"]["steps"] == gpu.hart_train.steps and plan["factor"] == 1.0
    assert plan["fits"] and plan["expected_total_s"] + plan["margin_s"] <= 480
    assert plan["costs"]["hart"]["tflop"] > 0 and plan["costs"]["hart"]["gb_moved"] > 0


def test_gpu_preset_weights_fit_the_export_limits_in_fp16():
    gpu = get_preset("gpu")
    sizes = {}
    for name in ("tokenizer_a", "judge", "hart", "diffusion"):
        with torch.device("meta"):
            model, params, _ = stage_model(name, gpu, torch.device("meta"))
        shipped = model.parameters() if name in ("tokenizer_a", "judge") else params
        sizes[name] = 2 * sum(p.numel() for p in shipped)
    assert max(sizes.values()) < MAX_FILE_BYTES and sum(sizes.values()) < 0.95 * MAX_TOTAL_BYTES, sizes


def test_plan_scales_every_stage_by_one_factor_and_drops_the_optional_one_when_short():
    preset = get_preset("smoke")
    step_s = {"tokenizer_a": 0.01, "tokenizer_b": 0.01, "judge": 0.01, "hart": 0.02, "diffusion": 0.02,
              "discrete": 0.02}
    planned = {"tokenizer_a": 30, "tokenizer_b": 10, "judge": 20, "hart": 30, "diffusion": 30, "discrete": 30}
    need = sum(planned[k] * step_s[k] for k in planned)  # seconds at the preset's steps
    roomy = plan_steps(preset, step_s, 10 * need, max_scale=2.0, extra={})
    assert roomy["factor"] == 2.0 and roomy["steps"]["hart"] == 60 and roomy["steps"]["discrete"] == 60
    tight = plan_steps(preset, step_s, 0.5 * need, max_scale=2.0, extra={})
    assert "discrete" in tight["skipped"] and "discrete" not in tight["steps"]
    required = need - planned["discrete"] * step_s["discrete"]
    assert tight["factor"] == pytest.approx(0.5 * need / required, rel=1e-3)
    assert tight["steps"]["hart"] == int(30 * 0.5 * need / required)
    from hart_mini.plan import make_plan

    opts = PipelineOptions(preset="smoke", budget_minutes=need * 1.5 / 60, max_scale=10.0)
    filled = make_plan(preset, opts, step_s, {"data": 0.1 * need, "evaluation_discrete": 0.01}, "synthetic")
    assert 1.0 < filled["factor"] < 10.0 and filled["fits"]  # the budget filled to the margin, not beyond
    assert filled["expected_total_s"] + filled["margin_s"] == pytest.approx(60 * opts.budget_minutes, rel=0.02)


def test_export_refuses_a_file_over_the_limit(tmp_path, monkeypatch):
    from hart_mini import export
    from hart_mini.model.tokenizer import HybridTokenizer

    cfg = get_preset("smoke").tokenizer
    checkpoint.save(tmp_path / "tokenizer.safetensors", HybridTokenizer(cfg).state_dict(),
                    {"kind": "tokenizer", "config": dataclasses.asdict(cfg)})
    monkeypatch.setattr(export, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match="over the 0 MiB a file may have"):
        export_model("tokenizer", tmp_path / "tokenizer.safetensors", tmp_path / "export", "smoke")


def test_readme_device_command_fits_the_device_tool_and_brings_back_at_most_8_files():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- device-command -->\s*```bash\n(.*?)```\s*<!-- /device-command -->", readme, re.S)
    assert block, "README.md needs the device command between <!-- device-command --> markers"
    command = block.group(1).strip()
    assert len(command) <= 2000
    assert "timeout" in command and "tee" in command and "$OUT" in command
    assert "pipeline --preset gpu --budget-minutes 8" in command
    copied = re.search(r"cp (.*?) \"\$OUT\"/", command).group(1).split()
    assert len(copied) + 1 <= 8  # + the log that tee writes into $OUT


def test_the_baselines_steps_are_counted_from_one_and_two_steps():
    from hart_mini.budget import StepCost, count_ops
    from hart_mini.pipeline import _sample_batch
    from hart_mini.plan import repeat_steps

    smoke = get_preset("smoke")
    model, _, _ = stage_model("diffusion", smoke, torch.device("cpu"))
    prompt = _sample_batch(smoke, 1, torch.device("cpu"))["caption"]
    one, two, direct = (count_ops(lambda s=s: model.generate(prompt, sampling_steps=s)) for s in (1, 2, 10))
    estimated, direct = repeat_steps(one, two, 1, 10), StepCost(1, direct)
    assert estimated.flops == pytest.approx(direct.flops, rel=0.01)
    assert len(estimated.ops) == pytest.approx(len(direct.ops), rel=0.02)
