"""bench and ablate run at smoke size and write valid JSON (with an untrained judge: numbers, not quality)."""

import dataclasses
import json

import pytest
import torch

from hart_mini import checkpoint
from hart_mini.ablate import ABLATIONS
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.judge import Judge
from hart_mini.tokenizer import HybridTokenizer
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


def test_bench_writes_valid_json_with_ratios(models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "smoke", "--hart", str(models / "hart"), "--baseline", str(models / "diffusion"),
                 "--judge", str(models / "judge.safetensors"), "--n", "4", "--batch", "4", "--repeats", "1",
                 "--baseline-steps", "3", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"hart", "discrete", "diffusion"}
    for row in result["models"].values():
        assert row["latency_s"] > 0 and row["throughput_img_s"] > 0 and row["macs_per_image"] > 0
        assert row["n"] == 4 and "fd" in row and "prompt_accuracy" in row
    assert set(result["ratios_vs_diffusion"]) == {"hart", "discrete"}
    assert json.loads(capsys.readouterr().out)["cfg"] == 3.0


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_runs_at_smoke_size_and_writes_json_and_a_figure(name, models, tmp_path):
    args = ["ablate", name, "--preset", "smoke", "--out", str(tmp_path), "--n", "4", "--device", "cpu",
            "--judge", str(models / "judge.safetensors"), "--tokenizer", str(models / "tokenizer.safetensors")]
    if name != "decoder":
        args += ["--reference", str(models / "hart" / "hart.safetensors")]
    assert main(args) == 0
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["ablation"] == name and result["n_eval"] == 4 and (tmp_path / f"{name}.png").stat().st_size > 0


def test_kv_cache_benchmark_reports_both_sizes():
    from hart_mini.bench import kv_cache_speedup

    small = dataclasses.replace(PRESET, transformer=dataclasses.replace(PRESET.transformer, width=16, num_heads=2))
    result = kv_cache_speedup([small], torch.device("cpu"), batch=2, repeats=1)
    row = result["smoke"]
    assert row["tokens"] == 130 and row["seconds_with_cache"] > 0 and row["speedup"] > 0
