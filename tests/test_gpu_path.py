"""What the GPU path needs, checked on the CPU: fp32 code distances under bf16, a FLOP probe that changes
nothing, an EMA of trained weights only, compiled blocks that do not recompile, one thread per data worker,
the final model written at the deadline, HART's token subsampling, the doctor's burst, the cost model."""

import dataclasses
import json

import pytest
import torch

from hart_mini import checkpoint
from hart_mini.budget import DEVICES, count_ops, step_cost
from hart_mini.config import HeadConfig, get_preset
from hart_mini.model.data import Prerendered, ToyShapes
from hart_mini.model.hart import HART
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer
from hart_mini.train import (
    EMA,
    RunOptions,
    compile_blocks,
    fit,
    toyshapes_batches,
    train_judge,
    train_tokenizer,
    uncompile,
)

PRESET = get_preset("smoke")


def _hart(head: HeadConfig | None = None, scales=None) -> HART:
    torch.manual_seed(0)
    tok_cfg = PRESET.tokenizer if scales is None else dataclasses.replace(PRESET.tokenizer, scales=scales)
    return HART(PRESET.transformer, HybridTokenizer(tok_cfg), CaptionTokenizer.toyshapes(), head or PRESET.head)


def test_nearest_code_is_the_fp32_one_under_bf16_autocast():
    torch.manual_seed(0)
    tok = HybridTokenizer(PRESET.tokenizer)
    q = tok.quantizer
    q.codebook.weight.data = 8 + 0.05 * torch.randn_like(q.codebook.weight)  # far from 0, close to each other
    x = 8 + 0.05 * torch.randn(4, PRESET.tokenizer.latent_channels, 8, 8)
    exact = q.nearest(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q.nearest(x), exact)
        v = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # the same distances in bf16 pick other codes:
        e = q.codebook.weight
        in_bf16 = (v.pow(2).sum(1, keepdim=True) - 2 * v @ e.t() + e.pow(2).sum(1)[None]).argmin(1)
        assert (in_bf16 != exact.flatten()).float().mean() > 0.05
        indices, f_hat, _, _ = q.quantize(tok.encoder(torch.rand(2, 3, 32, 32) * 2 - 1))
    assert f_hat.dtype == torch.float32


def test_flop_probe_changes_neither_the_weights_nor_the_codebook_usage(tmp_path):
    preset = dataclasses.replace(PRESET, tokenizer_train=dataclasses.replace(PRESET.tokenizer_train, steps=4,
                                                                               checkpoint_every=4, batch_size=8),
                                 decoder_train=dataclasses.replace(PRESET.decoder_train, steps=1, batch_size=8))
    train_tokenizer(preset, tmp_path / "plain")
    train_tokenizer(preset, tmp_path / "probed", RunOptions(peak_tflops=1.0))  # a known peak: the probe runs
    a, _ = checkpoint.load(tmp_path / "plain" / "tokenizer.safetensors")
    b, _ = checkpoint.load(tmp_path / "probed" / "tokenizer.safetensors")
    assert "quantizer.usage" in a and all(torch.equal(a[k], b[k]) for k in a)
    history = checkpoint.load(tmp_path / "probed" / "stage_a" / "checkpoint.safetensors")[1]["history"]
    assert history[-1]["mfu"] > 0


def test_ema_averages_the_trained_parameters_only(tmp_path):
    model = _hart()
    ema = EMA(model, 0.9, model.trainable_parameters())
    assert ema.state and not any(k.startswith("tokenizer.") for k in ema.state)
    before = {k: v.clone() for k, v in ema.state.items()}
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(1.0)
    ema.update(step=100)  # decay min(0.9, 101 / 110) = 0.9: the average moves a tenth of the way
    k = next(iter(before))
    assert torch.allclose(ema.state[k], before[k] + 0.1, atol=1e-6)


def test_compiled_blocks_see_tensors_only_and_do_not_recompile():
    from torch._dynamo.utils import counters

    model = _hart()
    data = ToyShapes(PRESET.data)
    compiled = compile_blocks(model, backend="eager")  # dynamo's guards and graphs, without a compiler
    graphs = []
    try:
        for step in range(4):  # other captions, other images every step
            batch = data.batch(range(8 * step, 8 * step + 8))
            loss, _ = model.loss(batch["image"], batch["caption"])
            loss.backward()
            graphs.append(counters["stats"]["unique_graphs"])
    finally:
        uncompile(compiled)
    assert graphs[0] > 0 and graphs[-1] == graphs[0], graphs
    assert all("forward" not in m.__dict__ for m in compiled)  # back to the class's eager forward


def test_data_workers_run_one_thread_each(tmp_path):
    data = ToyShapes(PRESET.data)
    cfg = dataclasses.replace(PRESET.judge_train, steps=2, checkpoint_every=2, log_every=1)
    draw = toyshapes_batches(data, cfg)
    model = torch.nn.Linear(1, 1)
    seen = []

    def batch_fn(step, micro, n_micro):
        return {**draw(step, micro, n_micro), "threads": torch.get_num_threads()}

    def loss_fn(batch):
        seen.append(batch["threads"])
        return model.weight.sum() * 0 + batch["image"].mean(), {}

    fit(model, list(model.parameters()), batch_fn, loss_fn, cfg, tmp_path, {}, RunOptions(workers=1))
    assert seen == [1, 1]


def test_a_deadline_still_writes_the_final_model_flagged_unfinished(tmp_path):
    result = train_judge(PRESET, tmp_path, RunOptions(max_minutes=0), n_eval=10)
    assert result["finished"] is False
    _, meta = checkpoint.load(tmp_path / "judge.safetensors")
    assert meta["finished"] is False and meta["steps_done"] == 1 and meta["steps_planned"] == PRESET.judge_train.steps
    tok = train_tokenizer(PRESET, tmp_path / "tok", RunOptions(max_minutes=0))
    _, meta = checkpoint.load(tmp_path / "tok" / "tokenizer.safetensors")
    assert "stage_b" not in tok and meta["finished"] is False and meta["stages"]["a"]["steps_done"] == 1


def test_token_subsampling_drops_only_last_scale_tokens():
    model = _hart()
    t = model.transformer
    with torch.no_grad():  # AdaLN-Zero starts every block as the identity: give attention something to do
        for p in t.parameters():
            p.normal_(0, 0.1)
    batch = ToyShapes(PRESET.data).batch(range(3))
    with torch.no_grad():
        indices, inputs, _ = model._targets(batch["image"])
        ids, mask = model.encode_text(batch["caption"])
        drop = torch.zeros(3, dtype=torch.bool)
        full_logits, full_h = t(ids, mask, inputs, drop)
        keep = torch.tensor([0, 5, 9, 30])  # 4 of the last scale's 64 tokens
        logits, h = t(ids, mask, inputs, drop, keep)
    last = t.starts[-2]
    assert logits.shape[1] == last + len(keep) and full_logits.shape[1] == t.starts[-1]
    assert torch.allclose(logits[:, :last], full_logits[:, :last], atol=1e-5)  # earlier scales: unchanged
    assert not torch.allclose(h[:, last:], full_h[:, last:][:, keep], atol=1e-4)  # fewer keys at the last scale


def test_token_subsampling_keeps_between_last_keep_and_half_and_only_in_training():
    head = dataclasses.replace(PRESET.head, last_drop=0.5, last_keep=8)
    model = _hart(head).train()
    n = model.scales[-1] ** 2
    kept = [len(model.kept_last_tokens(torch.device("cpu"))) for _ in range(200)]
    assert min(kept) >= 8 and max(kept) <= n // 2 and len(set(kept)) > 3
    batch = ToyShapes(PRESET.data).batch(range(4))
    loss, logs = model.loss(batch["image"], batch["caption"])
    assert torch.isfinite(loss) and logs["ce"].ndim == 0  # logs stay tensors: no read-back in the loss
    assert model.eval().kept_last_tokens(torch.device("cpu")) is None
    with pytest.raises(ValueError, match="last_drop=0.5 is invalid: expected 0 with mode='full'"):
        HeadConfig(mode="full", last_drop=0.5)


def test_prerendered_batches_equal_toyshapes_batches_for_any_number_of_workers():
    data = ToyShapes(dataclasses.replace(PRESET.data, train_size=50))
    text = CaptionTokenizer.toyshapes()
    a, b = Prerendered(data, workers=0, text=text), Prerendered(data, workers=2, text=text)
    picks = [3, 49, 0, 3]
    want = data.batch(picks)
    for got in (a.batch(picks), b.batch(picks)):
        assert torch.equal(got["image"], want["image"]) and got["caption"] == want["caption"]
        assert torch.equal(got["labels"], want["labels"]) and torch.equal(got["ids"], text(want["caption"])[0])


def test_doctor_runs_a_one_step_burst_and_names_torchs_attention_choice(tmp_path):
    from hart_mini.doctor import doctor

    report = doctor(PRESET, "cpu", steps=1, out=tmp_path / "samples.png")
    assert report["training_burst"]["steps"] == 1 and report["training_burst"]["workers"] == 0
    sdpa = report["sdpa"]
    assert sdpa["usable_with_block_causal_mask"][sdpa["chosen_by_torch"]]
    assert (tmp_path / "samples.png").is_file()


def test_cost_model_counts_a_linear_layer_exactly_and_extrapolates_the_batch():
    layer, x = torch.nn.Linear(64, 32), torch.randn(10, 64)
    ops = count_ops(lambda: layer(x))
    assert sum(op.flops for op in ops) == 2 * 10 * 64 * 32
    assert sum(op.bytes for op in ops) == 4 * (10 * 64 + 64 * 32 + 32 + 10 * 32)  # x, W, b read; y written once
    model = _hart()
    batch = ToyShapes(PRESET.data).batch(range(4))

    def run(n):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss, _ = model.loss(batch["image"][:n], CaptionTokenizer.toyshapes()(batch["caption"][:n]))
        loss.backward()

    direct = step_cost(run, 4, samples=(3, 4))  # counted at 4 itself
    extrapolated = step_cost(run, 4, samples=(1, 2))
    assert extrapolated.flops == pytest.approx(direct.flops, rel=1e-6)
    assert extrapolated.bytes == pytest.approx(direct.bytes, rel=0.02)
    gpu_bound = dataclasses.replace(DEVICES["h100"], dispatch_us=0.0)  # a tiny step is otherwise host-bound
    assert direct.seconds(gpu_bound) < direct.seconds(dataclasses.replace(gpu_bound, bandwidth_tbs=0.1))
    assert direct.seconds(DEVICES["h100"]) == pytest.approx(len(direct.ops) * 10e-6)


def test_cuda_settings_turn_off_cudnn_attention_and_leave_other_devices_alone():
    """cuDNN's SDPA builds a plan per sequence length, and HART's training draws a new length every step
    (44 ms of host time a step on an H200): on CUDA the settings turn it off; on the CPU they change nothing."""
    from hart_mini.runtime import cuda_settings

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        cuda_settings(torch.device("cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled()
        cuda_settings(torch.device("cuda"))  # only flags: no GPU needed to set them
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
        torch.backends.cuda.matmul.allow_tf32 = False


def test_step_profile_times_every_stage_and_names_its_top_calls(capsys):
    from hart_mini.cli import main

    assert main(["bench", "--step-profile", "--preset", "smoke", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["stages"]) == {"tokenizer_a", "judge", "hart", "diffusion"}
    for stage in result["stages"].values():
        assert stage["trainer_ms"] > 0 and stage["bare_ms"] > 0 and stage["ops"] > 100
        assert stage["device_ms"] is None and stage["top_device"] == []  # no device kernels on a CPU
        assert len(stage["top_host"]) == 10 and all(row["ms"] >= 0 for row in stage["top_host"])
