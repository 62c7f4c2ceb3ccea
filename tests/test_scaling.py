"""Scaling out: torchrun + DDP (gloo, 2 processes) equals one process; kill -9 loses nothing saved."""

import os
import signal
import subprocess
import sys
import time

import torch

from hart_mini import checkpoint
from hart_mini.cli import main
from hart_mini.train import RunOptions

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HART_MINI_PRESET": "smoke"}


def _train_hart(out, *extra, launcher=(sys.executable, "-m", "hart_mini")):
    cmd = [*launcher, "train", "hart", "--preset", "smoke", "--out", str(out), "--device", "cpu", *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def _weights(folder):
    tensors, _ = checkpoint.load(folder / "hart.safetensors")
    return tensors


def test_ddp_with_two_processes_equals_one_process_with_two_micro_batches(tmp_path):
    single = _train_hart(tmp_path / "single", "--grad-accum", "2")
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "hart_mini")
    ddp = _train_hart(tmp_path / "ddp", launcher=torchrun)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"largest weight difference {worst}"
    history = checkpoint.load(tmp_path / "ddp" / "checkpoint.safetensors")[1]["history"]
    assert history[-1]["images_per_s"] > 0 and "data_wait_share" in history[-1]


def test_kill_9_mid_run_keeps_the_last_checkpoint_and_resume_finishes_the_same(tmp_path):
    assert _train_hart(tmp_path / "whole").returncode == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hart_mini", "train", "hart", "--preset", "smoke", "--out", str(out),
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = checkpoint.load(out / "checkpoint.safetensors")  # the last checkpoint is whole and readable
    assert meta["step"] in (15, 30)  # smoke: a checkpoint every 15 of 30 steps
    assert _train_hart(out, "--resume").returncode == 0
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_chunked_run_by_max_minutes_equals_one_run(tmp_path, capsys):
    assert main(["train", "judge", "--preset", "smoke", "--out", str(tmp_path / "one"), "--device", "cpu",
                 "--n-eval", "10"]) == 0
    chunks = 0
    while True:
        args = ["train", "judge", "--preset", "smoke", "--out", str(tmp_path / "chunks"), "--device", "cpu",
                "--n-eval", "10", "--max-minutes", "0"] + (["--resume"] if chunks else [])
        assert main(args) == 0
        chunks += 1
        _, meta = checkpoint.load(tmp_path / "chunks" / "judge.safetensors")  # written by every chunk
        if meta["finished"]:
            break
        assert meta["steps_done"] == chunks  # each stopped chunk leaves its model, flagged unfinished
    assert chunks == 20  # one step per chunk: max-minutes 0 stops at the first checkpoint after a step
    a, _ = checkpoint.load(tmp_path / "one" / "judge.safetensors")
    b, _ = checkpoint.load(tmp_path / "chunks" / "judge.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_options_validate():
    import pytest

    with pytest.raises(ValueError, match="grad_accum=0 is invalid"):
        RunOptions(grad_accum=0)
    with pytest.raises(ValueError, match="workers=-1 is invalid"):
        RunOptions(workers=-1)
