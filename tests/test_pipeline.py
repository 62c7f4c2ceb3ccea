"""The one-command pipeline: a smoke run on the CPU end to end, its exports and import, and its plans."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hart_mini import checkpoint, pretrained
from hart_mini import plan as plan_module
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.costs import dry_run, stage_model
from hart_mini.export import KINDS, MAX_FILE_BYTES, MAX_TOTAL_BYTES, export_model, ship_run
from hart_mini.plan import OPTIONAL_MIN_FACTOR, PipelineOptions, plan_steps
from hart_mini.rehearse import RETURNED

ROOT = Path(__file__).resolve().parents[1]


def started(out: Path) -> list[str]:
    """The steps a run started, in order, from its log."""
    return re.findall(r"\] (\w+): start$", (out / "pipeline.log").read_text(), re.M)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke pipeline on the CPU, shared by the tests: the preset's steps at most (max-scale 1) in a budget
    no machine needs, deadlines stretched so that none fires (what a run does when late is tested on its
    own, without a clock)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "SLACK", 1e6)
        code = main(["pipeline", "--preset", "smoke", "--budget-minutes", "60", "--out", str(out), "--device", "cpu",
                     "--max-scale", "1", "--n-eval", "16"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_pipeline_trains_evaluates_and_benchmarks_everything(smoke_run):
    out, results = smoke_run
    assert results["status"] == "done" and results["failed"] == {}
    assert results["skipped"] == {"cost_model": "no cost model for this device"}
    order = started(out)
    assert order == ["data", "timing", "plan", "tokenizer", "judge", "tokenizer_eval", "hart", "diffusion", "discrete",
                     "samples", "pack", "evaluation_hart", "evaluation_diffusion", "evaluation_discrete", "bench",
                     "repack"] and set(order) == set(results["steps"])
    for name in ("tokenizer", "judge", "hart", "hart_head_skipped", "diffusion", "discrete"):
        assert name in results["metrics"], name
    n = results["eval_sizes"]["n"]
    assert all(results["metrics"][k]["n"] == n for k in ("hart", "diffusion", "discrete"))
    evaluated = {"hart": "export/hart_smoke", "diffusion": "export/diffusion_smoke", "discrete": "discrete/hart"}
    for name, file in evaluated.items():
        assert results["metrics"][name]["model"] == str(out / f"{file}.safetensors")  # the exported file, evaluated
    smoke = get_preset("smoke")
    for stage in ("hart", "diffusion"):  # max-scale 1: the preset's steps, all of them, finished
        training = results["training"][stage]
        assert training["finished"] and training["step"] == results["plan"]["stages"][stage]["steps"]
    assert results["plan"]["stages"]["hart"]["steps"] == smoke.hart_train.steps
    assert set(results["bench"]["ratios_vs_diffusion"]) == {"hart", "discrete"} and results["bench"]["cut"] == []
    assert [p["steps"] for p in results["bench"]["frontier"]["diffusion"]] == [5, 10, 20, 30, 50]
    assert (out / "samples.png").is_file() and (out / "pipeline.log").read_text().count("done") >= 10
    with tarfile.open(out / "extras.tar.gz") as tar:
        names = tar.getnames()
    assert {"hart/history.json", "comparison.png", "bench.png"} <= set(names)
    assert not (out / "extras.tar.gz.partial").exists() and not (out / "timing").exists()


def test_every_step_after_training_is_planned_measured_and_calibrated(smoke_run):
    """The plan holds a measured cost for every step after training and every stage's overhead; results.json
    sets each step's planned seconds beside its measured ones, and records the attention kernels and memory."""
    from hart_mini.plan import AFTER, ORDER

    _, results = smoke_run
    plan, timing = results["plan"], results["timing"]
    assert set(plan["after_s"]) == {a.name for a in AFTER}
    assert set(ORDER) == set(plan["after_s"]) | set(plan["stages"])
    assert plan["cuttable"] == ["bench_extra", "repack", "cost_model"] and timing["errors"] == {}
    measured = {"tokenizer_eval", "eval_hart", "eval_hart_head_skipped", "eval_diffusion", "one_hart",
                "throughput_diffusion", "samples", "pack"}
    assert measured <= set(timing["call_s"]) and all(timing["call_s"][k] > 0 for k in measured)
    assert all(s["overhead_s"] >= 0 for s in plan["stages"].values()) and plan["stages"]["hart"]["overhead_s"] > 0
    calibration = results["calibration"]
    for step in ("tokenizer", "judge", "hart", "samples", "evaluation_hart", "bench"):
        row = calibration["steps"][step]
        assert row["planned_s"] > 0 and row["measured_s"] == results["steps"][step]["seconds"], step
    for stage, row in calibration["ms_per_step"].items():
        assert row["burst_ms"] > 0 and row["trained_ms"] > 0 and row["cost_model_ms"] is None, stage  # CPU
    assert results["attention"]["training"] == ["_scaled_dot_product_flash_attention_for_cpu",
                                                "_scaled_dot_product_flash_attention_for_cpu_backward"]
    assert results["memory"]["peak_gpu_gb"] is None and results["memory"]["host_peak_gb"] > 0


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


def readme_budget_minutes() -> float:
    return float(re.search(r"pipeline --preset gpu --budget-minutes ([\d.]+)", device_command()).group(1))


def test_gpu_preset_keeps_every_model_in_the_readme_budget_on_an_h100_by_the_cost_model():
    """At the README command's budget, by FLOPs and bytes on an H100: every stage, the discrete-only model
    included, keeps at least 75 % of the preset's steps, and the evaluation of 2 000 prompts per generator,
    the benchmark and every overhead fit with a 10 % margin that also holds the steps cut first. (The dry
    run reads no clock: a busy machine gets this answer too.)"""
    plan = dry_run(PipelineOptions(preset="gpu", budget_minutes=readme_budget_minutes(), max_scale=1.0))
    assert set(plan["stages"]) == {"tokenizer_a", "tokenizer_b", "judge", "hart", "diffusion", "discrete"}
    assert OPTIONAL_MIN_FACTOR <= plan["factor"] <= 1.0 and plan["stages"]["discrete"]["steps"] == plan["stages"][
        "hart"]["steps"]
    assert plan["fits"] and plan["cuttable_fits_in_the_margin"]
    assert plan["costs"]["hart"]["tflop"] > 0 and plan["costs"]["hart"]["gb_moved"] > 0
    assert plan["after_s"]["tokenizer_eval"] > plan["after_s"]["evaluation_hart"]  # the spectra, on the CPU
    half = plan["at_half_the_attention_rate"]
    assert half["attention_tflops"] == 50.0 and half["step_ms"]["hart"] > plan["stages"]["hart"]["step_ms"]


def test_dry_run_reads_no_clock(monkeypatch):
    """The same plan on an idle and on a loaded machine: here every clock runs 1000 times slower."""
    opts = PipelineOptions(preset="smoke", budget_minutes=2)
    idle = dry_run(opts)
    slow = iter(range(0, 10**9, 1000))
    for clock in ("perf_counter", "process_time", "monotonic", "time"):
        monkeypatch.setattr(time, clock, lambda: float(next(slow)))
    loaded = dry_run(opts)
    monkeypatch.undo()
    assert loaded["counted_in_s"] > 100 * max(idle["counted_in_s"], 0.1)  # the clock was slow indeed
    assert {k: v for k, v in loaded.items() if k != "counted_in_s"} == {
        k: v for k, v in idle.items() if k != "counted_in_s"}


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
    overhead = dict.fromkeys(step_s, 0.01)
    after = {"evaluation_discrete": 0.01, "samples": 0.02, "bench_extra": 5 * need}  # bench_extra: cuttable
    filled = make_plan(preset, opts, step_s, overhead, {"data": 0.1 * need}, after, "synthetic")
    assert 1.0 < filled["factor"] < 10.0 and filled["fits"]  # the budget filled to the margin, not beyond
    assert filled["expected_total_s"] + filled["margin_s"] == pytest.approx(60 * opts.budget_minutes, rel=0.02)
    assert filled["cuttable_s"] == round(5 * need, 1) and not filled["cuttable_fits_in_the_margin"]


def test_deadlines_keep_the_planned_time_of_every_later_step_but_the_cuttable_ones():
    from hart_mini.plan import SLACK, deadline, reserve

    stages = {n: {"seconds": s, "overhead_s": 1.0} for n, s in (("tokenizer_a", 10.0), ("tokenizer_b", 5.0),
                                                                ("judge", 2.0), ("hart", 40.0), ("diffusion", 30.0))}
    after = {"tokenizer_eval": 3.0, "samples": 2.0, "pack": 0.5, "evaluation_hart": 4.0,
             "evaluation_diffusion": 6.0, "bench": 8.0, "bench_extra": 20.0, "repack": 0.5, "cost_model": 20.0}
    plan = {"stages": stages, "after_s": after, "margin_s": 12.0, "cuttable": ["bench_extra", "repack", "cost_model"]}
    must_after = 2.0 + 0.5 + 4.0 + 6.0 + 8.0  # samples ... bench: never evaluation_discrete (not planned)
    assert reserve(plan, "hart") == pytest.approx(31.0 + must_after + 1.0 + 12.0)  # + diffusion, own overhead, margin
    assert reserve(plan, "diffusion") == pytest.approx(must_after + 1.0 + 12.0)
    assert reserve(plan, "pack") == pytest.approx(4.0 + 6.0 + 8.0)  # after training: the margin is free
    assert reserve(plan, "bench") == reserve(plan, "bench_extra") == reserve(plan, "cost_model") == 0.0
    end = 1000.0
    assert deadline(plan, ("hart",), 0.0, end) == pytest.approx(40.0 * SLACK + 10)  # its own time, with slack
    late = end - 60.0  # 60 s left: HART must leave what the later steps need
    assert deadline(plan, ("hart",), late, end) == pytest.approx(end - reserve(plan, "hart"))
    assert deadline(plan, ("tokenizer_a", "tokenizer_b"), late, end) == pytest.approx(
        end - reserve(plan, "tokenizer_b") - 1.0)  # stage a's overhead comes before b's training ends
    assert deadline(plan, ("bench", "bench_extra"), end - 20, end) == pytest.approx(end)  # may use the margin


def test_timing_bursts_cover_the_kept_token_counts_training_meets():
    """HART's step time grows with the last-scale tokens it keeps; the burst's timed steps take one count
    from each of its equally likely bins, so their mean is training's mean and their range spans its draws."""
    from hart_mini.model.hart import last_kept_count
    from hart_mini.plan import KEPT_QUANTILES, expected_kept, mean_step_s, timed_kept_counts

    head, n = get_preset("gpu").head, 256
    counts = timed_kept_counts(head, n, KEPT_QUANTILES)
    torch.manual_seed(0)
    draws = sorted(last_kept_count(head, n, torch.rand(())) for _ in range(2000))
    assert len(counts) == KEPT_QUANTILES and counts == sorted(counts, reverse=True)
    assert counts[-1] <= draws[len(draws) // 10] and counts[0] >= draws[9 * len(draws) // 10]
    assert abs(sum(counts) / len(counts) - sum(draws) / len(draws)) < 2.0
    assert abs(sum(counts) / len(counts) - expected_kept(head, n)) < 2.0
    # the windows of a burst: the warm-up (3 steps) left out, the others weighted by their steps
    history = [{"step": 3, "images_per_s": 1.0}, {"step": 6, "images_per_s": 12.0}, {"step": 7, "images_per_s": 4.0}]
    assert mean_step_s(history, 12) == pytest.approx((3 * 1.0 + 1 * 3.0) / 4)


def test_export_refuses_a_file_over_the_limit(tmp_path, monkeypatch):
    from hart_mini import export
    from hart_mini.model.tokenizer import HybridTokenizer

    cfg = get_preset("smoke").tokenizer
    checkpoint.save(tmp_path / "tokenizer.safetensors", HybridTokenizer(cfg).state_dict(),
                    {"kind": "tokenizer", "config": dataclasses.asdict(cfg)})
    monkeypatch.setattr(export, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match="over the 0 MiB a file may have"):
        export_model("tokenizer", tmp_path / "tokenizer.safetensors", tmp_path / "export", "smoke")


def device_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- device-command -->\s*```bash\n(.*?)```\s*<!-- /device-command -->", readme, re.S)
    assert block, "README.md needs the device command between <!-- device-command --> markers"
    return block.group(1).strip()


def test_readme_device_command_fits_the_device_tool_and_brings_back_at_most_8_files():
    command = device_command()
    assert len(command) <= 2000
    assert "timeout" in command and "tee" in command and "$OUT" in command
    assert re.search(r"rm -rf \"\$RUN\"", command) and "RUN=runs/" in command  # a fresh folder in the repository
    assert "pipeline --preset gpu --budget-minutes 7 --out \"$RUN\"" in command
    copied = re.search(r"for f in (.*?); do", command).group(1).split()
    assert len(copied) + 1 <= 8  # + the log that tee writes into $OUT
    assert {f"export/{k}_gpu.safetensors" for k in KINDS} | set(RETURNED) == set(copied) | {"pipeline.log"}


def test_the_baselines_steps_are_counted_from_one_and_two_steps():
    from hart_mini.budget import StepCost, count_ops
    from hart_mini.costs import sample_batch
    from hart_mini.plan import repeat_steps

    smoke = get_preset("smoke")
    model, _, _ = stage_model("diffusion", smoke, torch.device("cpu"))
    prompt = sample_batch(smoke, 1, torch.device("cpu"))["caption"]
    one, two, direct = (count_ops(lambda s=s: model.generate(prompt, sampling_steps=s)) for s in (1, 2, 10))
    estimated, direct = repeat_steps(one, two, 1, 10), StepCost(1, direct)
    assert estimated.flops == pytest.approx(direct.flops, rel=0.01)
    assert len(estimated.ops) == pytest.approx(len(direct.ops), rel=0.02)


# --- the README's device command, run here with the CPU for the GPU; the rehearsal it runs ---------------------


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    """The README's device command as the device tool runs it (bash, in a copy of the repository, $OUT an
    empty folder each time), with the CPU for the GPU at smoke size (--preset smoke --rehearse --device cpu):
    twice in a row in one repository copy, then a third time with the pipeline refusing its arguments."""
    repo = tmp_path_factory.mktemp("device") / "repo"
    repo.mkdir()
    (repo / "hart_mini").symlink_to(ROOT / "hart_mini")
    script = (device_command().replace("python3 -m hart_mini", f"{sys.executable} -m hart_mini")
              .replace("--preset gpu", "--preset smoke --rehearse --device cpu")
              .replace("_gpu.safetensors", "_smoke.safetensors"))
    assert script.count("smoke") == 5 and script.count("--budget-minutes 7") == 1  # the preset, four weights
    runs = []  # a budget no machine needs (nothing is cut, however busy this one), then one refused at once
    for i, budget in enumerate(("60", "60", "0")):
        text = script.replace("--budget-minutes 7", f"--budget-minutes {budget}")
        out = repo.parent / f"out{i}"
        out.mkdir()
        env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(["bash", "-c", text], cwd=repo, env=env, capture_output=True, text=True)
        runs.append({"rc": done.returncode, "out": out, "stdout": done.stdout,
                     "files": sorted(p.name for p in out.iterdir()), "left": repo.parent / f"left{i}"})
        if (repo / "runs" / "device").exists():  # what the scratch folder held after this run
            shutil.copytree(repo / "runs" / "device", runs[-1]["left"])
    return repo, runs


def test_readme_device_command_run_twice_in_one_folder_brings_back_each_runs_own_files(device_runs):
    repo, (first, second, _) = device_runs
    returned = sorted([f"{k}_smoke.safetensors" for k in KINDS] + list(RETURNED))
    assert first["rc"] == 0 and second["rc"] == 0, second["stdout"][-3000:]
    assert first["files"] == returned and second["files"] == returned
    ids = [json.loads((r["out"] / "results.json").read_text())["run_id"] for r in (first, second)]
    assert ids[0] != ids[1]  # the second run ran: it was not refused, and its results came back
    results = json.loads((second["out"] / "results.json").read_text())
    for entry in results["export"]["models"].values():  # and its weights are its own
        assert checkpoint.sha256(second["out"] / entry["file"]) == entry["sha256"]
    assert json.loads((second["left"] / "results.json").read_text())["run_id"] == ids[1]
    log = (second["out"] / "pipeline.log").read_text()
    assert f"run {ids[1]}" in log and ids[0] not in log


def test_readme_device_command_brings_back_what_exists_when_the_run_fails(device_runs):
    repo, (_, _, failed) = device_runs
    assert failed["rc"] == 2 and failed["files"] == ["pipeline.log"]  # its own log; nothing of the run before
    assert "argument --budget-minutes: 0 is invalid" in (failed["out"] / "pipeline.log").read_text()  # named, one line
    assert failed["stdout"].count("not written: ") == 7 and not (repo / "runs" / "device").exists()
    assert not failed["left"].exists()  # the run before it was cleared away, not left to be copied


def test_smoke_rehearsal_runs_every_step_once_at_the_preset_shapes_and_checks_what_it_wrote(device_runs):
    """CI's rehearsal (smoke shapes, for time; `pipeline --preset gpu --rehearse` runs the gpu shapes in
    ~10 minutes): every step of the pipeline, one training step per stage, then check_run passes."""
    from hart_mini.plan import ORDER, REHEARSAL_EVAL, REHEARSAL_STEPS

    _, (_, second, _) = device_runs
    results = json.loads((second["out"] / "results.json").read_text())
    assert results["rehearsal"] and results["rehearsal_checks"]["ok"], results["rehearsal_checks"]
    assert len(results["rehearsal_checks"]["checks"]) == 11
    order = started(second["out"])  # the steps in the order they ran: the plan's order
    assert set(order) == set(results["steps"]) and order[:3] == ["data", "timing", "plan"]
    assert [n for n in ORDER if n in order] == [n for n in order if n in ORDER]
    assert set(ORDER) - set(order) == {"tokenizer_a", "tokenizer_b", "bench_extra"}  # inside tokenizer, bench
    assert all(s["steps"] == REHEARSAL_STEPS for s in results["plan"]["stages"].values())
    assert results["training"]["hart"]["step"] == REHEARSAL_STEPS and results["eval_sizes"]["n"] == REHEARSAL_EVAL[
        "n"]
    assert results["predicted"]["device"].startswith("NVIDIA H100")  # the cost model ran, for --target


def test_check_run_fails_on_a_missing_figure_and_an_altered_weight(device_runs, tmp_path):
    from hart_mini.rehearse import check_run

    run = tmp_path / "run"
    shutil.copytree(device_runs[1][1]["left"], run)
    assert check_run(run)["ok"]
    (run / "samples.png").unlink()
    with open(run / "export" / "judge_smoke.safetensors", "ab") as f:
        f.write(b"\0")
    checks = check_run(run)
    assert not checks["ok"]
    failed = {k for k, v in checks["checks"].items() if not v["ok"]}
    assert failed == {"figures", "every model exported", "ship-run and the loaders read it back"}


def test_the_discrete_only_model_not_planned_still_trains_when_its_turn_comes_with_time_left(tmp_path, monkeypatch):
    """Planned without it (here the plan is told it needs more than any budget), the run checks again after
    HART: with the time there, it trains HART's steps, is evaluated and calibrated like a planned stage."""
    plain = plan_module.plan_steps
    monkeypatch.setattr(plan_module, "plan_steps", lambda *args: plain(*args[:4], {"discrete": 1e9}))
    out = tmp_path / "run"
    assert main(["pipeline", "--preset", "smoke", "--rehearse", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "discrete" in results["plan"]["skipped"] and "discrete" not in results.get("skipped", {})
    assert results["training"]["discrete"]["step"] == results["training"]["hart"]["step"]
    assert results["metrics"]["discrete"]["n"] >= 2 and results["calibration"]["ms_per_step"]["discrete"]["trained_ms"]
    assert results["rehearsal_checks"]["ok"]
