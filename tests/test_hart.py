"""The assembled HART: every head mode end to end, determinism, knobs, files, training and exact resume."""

import dataclasses
import json

import pytest
import torch

from hart_mini import checkpoint, runs
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.model import sampling_variants as variants
from hart_mini.model.data import ToyShapes
from hart_mini.model.hart import HART
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer
from hart_mini.train import RunOptions, train_hart

PRESET = get_preset("smoke")


def _model(mode="last", seed=0, **head):
    torch.manual_seed(seed)
    model = HART(PRESET.transformer, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                 dataclasses.replace(PRESET.head, mode=mode, **head))
    model.measure_residual_scale(ToyShapes(PRESET.data).batch(range(16))["image"])
    return model


@pytest.mark.parametrize("mode", ["off", "last", "full", "early"])
def test_each_mode_trains_and_samples_end_to_end(mode):
    model = _model(mode).train()
    batch = ToyShapes(PRESET.data).batch(range(6))
    loss, logs = model.loss(batch["image"], batch["caption"])
    loss.backward()
    assert torch.isfinite(loss) and ("diff" in logs) == (mode != "off")
    grads = [p.grad for p in model.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.tokenizer.parameters())  # the tokenizer stays frozen
    images = variants.generate(model, batch["caption"][:2], cfg_scale=2.0, seed=1)  # any head mode
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_generation_with_the_head_is_deterministic_given_a_seed():
    model = _model("last")
    with torch.no_grad():  # make the head's output depend on its inputs
        for p in model.head.parameters():
            p.normal_(0, 0.1)
    prompts = ["a large red striped circle at the top left"] * 2
    a, b = model.generate(prompts, seed=4), model.generate(prompts, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, model.generate(prompts, seed=5))
    assert not torch.equal(a, model.generate(prompts, seed=4, use_head=False))


def test_last_mode_residual_is_added_to_the_discrete_latent():
    model = _model("last")
    prompts = ["a small blue square at the center"]
    with_head = model.sample_latent(prompts, seed=2)
    without = model.sample_latent(prompts, seed=2, use_head=False)
    assert with_head["path"] == "continuous" and without["path"] == "discrete"
    assert torch.equal(with_head["f_hat"], without["f_hat"])  # the head never changes the tokens
    assert torch.equal(without["latent"], without["f_hat"])
    added = with_head["latent"] - with_head["f_hat"]  # the residual drawn by the head, (1, C, h, w)
    assert 0 < float(added.std()) < 10 * float(model.residual_scale)


def test_in_diffusion_early_the_head_output_feeds_the_next_scale():
    model = _model("early")
    prompts = ["a small blue square at the center"]
    before = variants.sample_latent(model, prompts, seed=2)["logits"]
    with torch.no_grad():
        model.head.output.bias.fill_(0.5)  # the head now adds a constant correction at every scale
    after = variants.sample_latent(model, prompts, seed=2)["logits"]
    assert torch.equal(before[0], after[0])  # scale 1 is read from the text alone
    assert not torch.allclose(before[1], after[1])  # scale 2's input includes scale 1's correction


def test_full_mode_scores_no_tokens_at_the_last_scale():
    model = _model("full")
    batch = ToyShapes(PRESET.data).batch(range(3))
    with torch.no_grad():
        model.transformer.head.bias[:] = 0
        ce_before = model.loss(batch["image"], batch["caption"])[1]["ce"]
        model.transformer.head.weight[:] = 0  # uniform logits everywhere
        ce = model.loss(batch["image"], batch["caption"])[1]["ce"]
    assert ce == pytest.approx(torch.log(torch.tensor(float(PRESET.tokenizer.codebook_size))).item(), rel=1e-4)
    assert ce_before != ce


@pytest.mark.parametrize("knobs, message", [
    ({"cfg_scale": -0.5}, "cfg_scale=-0.5 is invalid"),
    ({"sampling_steps": 0}, "sampling_steps=0 is invalid"),
    ({"top_p": 0.0}, "top_p=0.0 is invalid"),
    ({"top_p": 1.01}, "top_p=1.01 is invalid"),
])
def test_bad_knobs_raise_clear_errors(knobs, message):
    with pytest.raises(ValueError, match=message):
        _model("last").generate(["a red circle at the top"], **knobs)


def test_save_and_load_round_trip_with_the_tokenizer_beside_it(tmp_path):
    tok_file = _tokenizer_file(tmp_path)
    torch.manual_seed(1)
    model = HART(PRESET.transformer, HybridTokenizer.from_file(tok_file), CaptionTokenizer.toyshapes(),
                 PRESET.head)
    model.measure_residual_scale(ToyShapes(PRESET.data).batch(range(16))["image"])
    model.save(tmp_path / "hart.safetensors", tok_file, {"preset": "smoke"})
    tensors, meta = checkpoint.load(tmp_path / "hart.safetensors")
    assert not any(k.startswith("tokenizer.") for k in tensors) and meta["tokenizer_file"] == tok_file.name
    loaded = HART.from_file(tmp_path / "hart.safetensors")
    assert loaded.mode == "last" and float(loaded.residual_scale) == float(model.residual_scale)
    prompts = ["a large green dotted diamond at the bottom"]
    assert torch.equal(model.generate(prompts, seed=3), loaded.generate(prompts, seed=3))
    with pytest.raises(ValueError, match="not a HART model"):
        HART.from_file(tok_file)
    checkpoint.save(tok_file, {k: v + 1 for k, v in checkpoint.load(tok_file)[0].items()}, checkpoint.load(tok_file)[1])
    with pytest.raises(ValueError, match="is not the tokenizer .* was trained with"):
        HART.from_file(tmp_path / "hart.safetensors")


def _tokenizer_file(tmp_path):
    torch.manual_seed(0)
    tok = HybridTokenizer(PRESET.tokenizer)
    path = tmp_path / "tokenizer.safetensors"
    checkpoint.save(path, tok.state_dict(), {"kind": "tokenizer", "config": dataclasses.asdict(PRESET.tokenizer)})
    return path


def _short(steps=4):
    return dataclasses.replace(PRESET, hart_train=dataclasses.replace(PRESET.hart_train, steps=steps,
                                                                      checkpoint_every=2, batch_size=4))


def test_two_runs_agree_and_training_resumes_exactly(tmp_path):
    tok = _tokenizer_file(tmp_path)
    preset = _short()
    train_hart(preset, tmp_path / "whole", tok)
    train_hart(preset, tmp_path / "again", tok)
    first = train_hart(preset, tmp_path / "pieces", tok, RunOptions(max_minutes=0))
    assert first["finished"] is False
    train_hart(preset, tmp_path / "pieces", tok, RunOptions(resume=True))
    a, meta = checkpoint.load(tmp_path / "whole" / "hart.safetensors")
    b, _ = checkpoint.load(tmp_path / "pieces" / "hart.safetensors")
    c, _ = checkpoint.load(tmp_path / "again" / "hart.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a), "two runs from scratch differ"
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"
    assert meta["head"]["mode"] == "last" and (tmp_path / "whole" / "samples.png").is_file()


def test_a_training_mix_changes_the_training_images_and_not_the_evaluation(tmp_path):
    from hart_mini.train import training_mix

    preset = _short(2)
    preset = dataclasses.replace(preset, hart_train=dataclasses.replace(preset.hart_train, two_objects=1.0))
    mixed = training_mix(preset, preset.hart_train)
    assert mixed.data.p_two_objects == 1.0 and preset.data.p_two_objects == PRESET.data.p_two_objects
    train = ToyShapes(mixed.data, "train")
    assert all(len(train.scene(i).objects) == 2 for i in range(50))
    train_hart(preset, tmp_path / "run", _tokenizer_file(tmp_path))
    assert checkpoint.load(tmp_path / "run" / "hart.safetensors")[1]["data"]["p_two_objects"] == 1.0
    assert training_mix(PRESET, PRESET.judge_train) is PRESET  # no mix set: the data's own


def test_cli_trains_discrete_only_and_samples(tmp_path, capsys):
    tok = _tokenizer_file(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "hart", "--preset", "smoke", "--tokenizer", str(tok), "--out", str(out),
                 "--no-residual-head", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == PRESET.hart_train.steps
    assert checkpoint.load(out / "hart.safetensors")[1]["head"]["mode"] == "off"
    grid = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(out), "--prompt", "a small red circle at the top", "--n", "2",
                 "--cfg", "2", "--seed", "0", "--out", str(grid)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert grid.is_file() and result["prompts"] == ["a small red circle at the top"] * 2
    assert main(["sample", "--ckpt", str(out), "--prompt", "a purple hexagon", "--out", str(grid), "--overwrite"]) == 2
    assert "unknown word 'hexagon'" in capsys.readouterr().err


def test_the_head_stage_trains_the_head_alone_and_resumes_exactly(tmp_path):
    tok = _tokenizer_file(tmp_path)
    joint = _short()
    staged = dataclasses.replace(joint, head=dataclasses.replace(joint.head, stage_steps=3))
    train_hart(joint, tmp_path / "joint", tok)
    result = train_hart(staged, tmp_path / "staged", tok)
    assert result["head_stage"]["step"] == 3 and (tmp_path / "staged" / "head_stage").is_dir()
    a, _ = checkpoint.load(tmp_path / "joint" / "hart.safetensors")
    b, meta = checkpoint.load(tmp_path / "staged" / "hart.safetensors")
    head = [k for k in a if k.startswith(("head.", "cond_norm."))]
    assert head and all(torch.equal(a[k], b[k]) for k in a if k not in head), "the stage moved the transformer"
    assert not all(torch.equal(a[k], b[k]) for k in head), "the stage did not train the head"
    assert meta["head"]["stage_steps"] == 3
    cut = train_hart(staged, tmp_path / "pieces", tok, RunOptions(max_minutes=0))
    assert cut["finished"] is False and "head_stage" not in cut
    train_hart(staged, tmp_path / "pieces", tok, RunOptions(resume=True))
    c, _ = checkpoint.load(tmp_path / "pieces" / "hart.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b), "the resumed staged run differs from the uninterrupted one"


def _laid_out(steps=3, **changes):
    return dataclasses.replace(PRESET.transformer, layout_steps=steps, **changes)


def test_the_layout_loss_is_the_full_passes_cross_entropy_of_the_coarse_scales():
    torch.manual_seed(0)
    cfg = dataclasses.replace(_laid_out(), cond_dropout=0.0)  # no random caption drop: both passes alike
    model = HART(cfg, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(), PRESET.head).train()
    batch = ToyShapes(PRESET.data).batch(range(4))
    loss, logs = model.loss(batch["image"], batch["caption"], layout=True)
    loss.backward()
    n = model.transformer.starts[cfg.layout_scales]  # 1 + 4 + 9 tokens
    with torch.no_grad():  # block-causal: the coarse tokens' logits do not see the finer scales
        indices, inputs, _ = model._targets(batch["image"])
        ids, mask = model.encode_text(batch["caption"])
        logits, _ = model.transformer(ids, mask, inputs, torch.zeros(4, dtype=torch.bool))
        targets = torch.cat([i.flatten(1) for i in indices], dim=1)
        full = torch.nn.functional.cross_entropy(logits[:, :n].transpose(1, 2), targets[:, :n])
    assert n == 14 and "diff" not in logs
    torch.testing.assert_close(loss.detach(), full, rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in model.head.parameters()), "the layout stage trains no head"
    assert model.transformer.head.weight.grad is not None
    with pytest.raises(ValueError, match="layout"):
        model.loss(batch["image"], batch["caption"], head_only=True, layout=True)


def test_layout_settings_are_validated():
    with pytest.raises(ValueError, match="layout_steps"):
        _laid_out(-1)
    with pytest.raises(ValueError, match="layout_scales"):
        HART(_laid_out(layout_scales=len(PRESET.tokenizer.scales)), HybridTokenizer(PRESET.tokenizer),
             CaptionTokenizer.toyshapes())


def test_the_layout_stage_runs_first_and_resumes_exactly(tmp_path):
    tok = _tokenizer_file(tmp_path)
    preset = dataclasses.replace(_short(), transformer=_laid_out(3))
    whole = train_hart(preset, tmp_path / "whole", tok)
    assert whole["layout_stage"] == {"step": 3, "seconds": whole["layout_stage"]["seconds"], "finished": True}
    assert whole["step"] == preset.hart_train.steps and (tmp_path / "whole" / "layout_stage").is_dir()
    assert checkpoint.load(tmp_path / "whole" / "hart.safetensors")[1]["transformer"]["layout_steps"] == 3
    plain = train_hart(_short(), tmp_path / "plain", tok)
    a, _ = checkpoint.load(tmp_path / "whole" / "hart.safetensors")
    b, _ = checkpoint.load(tmp_path / "plain" / "hart.safetensors")
    assert "layout_stage" not in plain and not torch.equal(a["transformer.head.weight"], b["transformer.head.weight"])
    cut = train_hart(preset, tmp_path / "pieces", tok, RunOptions(max_minutes=0))  # stops inside the layout stage
    assert cut["finished"] is False and cut["layout_stage"]["step"] == 1 and cut["step"] == 0
    runs.check_resumable(tmp_path / "pieces", "hart")  # what `train hart --resume` asks first: its stage counts
    train_hart(preset, tmp_path / "pieces", tok, RunOptions(resume=True))
    c, _ = checkpoint.load(tmp_path / "pieces" / "hart.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a), "the resumed run differs from the uninterrupted one"


def test_head_only_loss_gives_no_gradient_to_the_transformer():
    model = _model("last").train()
    batch = ToyShapes(PRESET.data).batch(range(4))
    loss, logs = model.loss(batch["image"], batch["caption"], head_only=True)
    loss.backward()
    assert torch.equal(loss.detach(), logs["diff"])
    assert all(p.grad is None for p in model.transformer.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    with pytest.raises(ValueError, match="head_only"):
        _model("off").loss(batch["image"], batch["caption"], head_only=True)


def test_a_joint_weight_of_zero_trains_the_transformer_on_its_cross_entropy_alone():
    batch = ToyShapes(PRESET.data).batch(range(4))
    losses = {}
    for weight in (1.0, 0.0):
        model = _model("last", loss_weight=weight, stage_steps=3).train()
        torch.manual_seed(1)  # the same dropped captions for both
        losses[weight] = model.loss(batch["image"], batch["caption"])
    (joint, joint_logs), (alone, alone_logs) = losses[1.0], losses[0.0]
    assert "diff" in joint_logs and "diff" not in alone_logs
    assert torch.equal(alone.detach(), joint_logs["ce"]) and torch.equal(alone.detach(), alone_logs["ce"])
    assert joint.item() > alone.item()  # CE + the head's term
    alone.backward()
    assert all(p.grad is None for p in model.head.parameters())  # the head waits for its stage
    head_loss, logs = model.loss(batch["image"], batch["caption"], head_only=True)
    assert torch.equal(head_loss.detach(), logs["diff"])  # where it learns
    from hart_mini.config import HeadConfig

    with pytest.raises(ValueError, match="never learn"):
        HeadConfig(loss_weight=0.0)  # no stage: the head would never train
    HeadConfig(loss_weight=0.0, mode="off")  # no head: nothing to train


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_true_token_share_picks_the_true_last_scale_token_for_that_share_of_images(share, monkeypatch):
    model = _model("last", true_token_share=share).train()
    batch = ToyShapes(PRESET.data).batch(range(16))
    truth = model.tokenizer.tokenize(batch["image"]).indices[-1].flatten(1)  # (B, n)
    seen, condition = [], model.condition
    monkeypatch.setattr(model, "condition", lambda h, idx, frozen=False: seen.append(idx) or condition(h, idx, frozen))
    torch.manual_seed(0)
    model.loss(batch["image"], batch["caption"], head_only=True)
    chosen = seen[0]
    true_rows = (chosen == truth).all(1)  # a sampled token map of an untrained model is never all right
    if share == 0.5:  # both kinds of image in one batch (fixed seed)
        assert 0 < int(true_rows.sum()) < 16
        assert all((chosen[i] != truth[i]).float().mean() > 0.5 for i in range(16) if not true_rows[i])
    else:
        assert int(true_rows.sum()) == 16 * share


def test_true_token_share_is_validated():
    from hart_mini.config import HeadConfig

    with pytest.raises(ValueError, match="true_token_share"):
        HeadConfig(true_token_share=1.5)


def test_a_head_that_reads_nothing_ignores_z_and_its_condition_weights_never_train():
    model = _model("last", condition="none", sampled_tokens=False).train()
    weight = model.head.cond_embed.weight
    assert not weight.requires_grad and torch.count_nonzero(weight) == 0
    params = [p for p in [*model.head.parameters(), *model.cond_norm.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    batch = ToyShapes(PRESET.data).batch(range(4))
    for _ in range(3):
        loss, _ = model.loss(batch["image"], batch["caption"], head_only=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert weight.grad is None and torch.count_nonzero(weight) == 0
    x, t = torch.randn(5, PRESET.tokenizer.latent_channels), torch.randint(0, 1000, (5,))
    z1, z2 = torch.randn(5, PRESET.transformer.width), torch.randn(5, PRESET.transformer.width)
    assert torch.equal(model.head(x, t, z1), model.head(x, t, z2))
    with pytest.raises(ValueError, match="condition"):
        _model("full", condition="none")


def test_with_a_stage_the_joint_head_is_harts_and_the_stage_trains_the_configured_one():
    model = _model("last", condition="none", sampled_tokens=False, stage_steps=3)
    assert model.head.cond_embed.weight.requires_grad, "the joint training's head reads z (its gradient shapes h)"
    assert model.true_token_share(head_only=False) == 0.0 and model.true_token_share(head_only=True) == 1.0
    model.reset_head()  # what the stage starts from
    assert not model.head.cond_embed.weight.requires_grad
    assert _model("last", sampled_tokens=False).true_token_share(head_only=False) == 1.0  # no stage: the config


def test_a_head_that_reads_nothing_samples_once_unguided():
    model = _model("last", condition="none").eval()
    rows, forward = [], model.head.forward
    model.head.forward = lambda x, t, z: rows.append(len(x)) or forward(x, t, z)
    out = model.sample_latent(["a red circle", "a blue square"], cfg_scale=3.0, sampling_steps=2, seed=0)
    n = model.scales[-1] ** 2
    assert rows == [2 * n, 2 * n], "one unguided pass per step over the B images' tokens"
    assert out["path"] == "continuous" and not torch.equal(out["latent"], out["f_hat"])


HEAD_PROMPTS = ["a large red striped circle at the top left", "a small blue square"]


def _model_whose_head_reads_its_inputs(network: str) -> HART:
    """A HART with a last-scale head of `network` whose random weights make its output depend on its inputs
    (a fresh head's output layer is zero)."""
    model = _model("last", network=network).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("network", ["mlp", "map"])
def test_the_head_temperature_scales_its_start_noise_and_zero_draws_the_same_residual_for_every_seed(network):
    model, prompts = _model_whose_head_reads_its_inputs(network), HEAD_PROMPTS
    forced = model.sample_latent(prompts, seed=0)["indices"]  # every scale's tokens given: only the head draws

    def residual(seed, temperature):
        model.head_cfg = dataclasses.replace(model.head_cfg, temperature=temperature)
        out = model.sample_latent(prompts, seed=seed, forced=forced)
        return out["latent"] - out["f_hat"]

    assert torch.equal(residual(1, 0.0), residual(2, 0.0)), "no start noise: DDIM follows the head's means"
    assert not torch.allclose(residual(1, 1.0), residual(2, 1.0))
    assert not torch.allclose(residual(1, 1.0), residual(1, 0.5))


@pytest.mark.parametrize("network", ["mlp", "map"])
def test_the_draw_scale_multiplies_the_heads_draw_and_changes_nothing_else(network):
    model, prompts = _model_whose_head_reads_its_inputs(network), HEAD_PROMPTS

    def draw(scale):
        model.head_cfg = dataclasses.replace(model.head_cfg, draw_scale=scale)
        return model.sample_latent(prompts, seed=1)

    full, half, none = draw(1.0), draw(0.5), draw(0.0)
    for out in (half, none):  # the same tokens: the scale is applied after every draw
        assert all(torch.equal(a, b) for a, b in zip(out["indices"], full["indices"]))
        assert torch.equal(out["f_hat"], full["f_hat"])
    d = full["latent"] - full["f_hat"]
    assert d.abs().max() > 0
    assert torch.allclose(half["latent"] - half["f_hat"], 0.5 * d, atol=1e-6)
    assert torch.equal(none["latent"], none["f_hat"])


@pytest.mark.parametrize("network", ["mlp", "map"])
def test_the_heads_own_cfg_replaces_the_logits_guidance_and_zero_draws_from_the_conditional_branch(network):
    model = _model_whose_head_reads_its_inputs(network)
    B, n = len(HEAD_PROMPTS), model.scales[-1] ** 2
    D = model.sample_latent(HEAD_PROMPTS, seed=0)["h"].shape[-1]
    z = torch.randn(2 * B, n, D, generator=torch.Generator().manual_seed(0))  # [cond; uncond], halves that differ

    def draw(t_cfg, guided, head_cfg):
        model.head_cfg = dataclasses.replace(model.head_cfg, cfg_scale=head_cfg)
        with torch.no_grad():
            return model._head_sample(z if guided else z[:B], t_cfg, guided, 4, torch.Generator().manual_seed(1))

    conditional = draw(3.0, False, None)
    assert torch.allclose(draw(3.0, True, 0.0), conditional, atol=1e-5), "cfg 0: the conditional branch alone"
    assert torch.equal(draw(3.0, True, 1.0), draw(1.0, True, None)), "its own t, whatever the logits' t_cfg"
    assert torch.equal(draw(3.0, True, 1.0), draw(6.0, True, 1.0))
    assert not torch.allclose(draw(3.0, True, None), draw(3.0, True, 1.0))
    assert not torch.allclose(draw(3.0, True, 1.0), conditional)
    assert torch.equal(draw(3.0, False, 0.5), conditional), "unguided: its cfg is not read"


def test_train_head_gives_a_trained_hart_a_fresh_head_and_keeps_its_transformer(tmp_path):
    from hart_mini.train import train_head

    tok = _tokenizer_file(tmp_path)
    joint = _short()
    train_hart(joint, tmp_path / "joint", tok)
    blind = dataclasses.replace(joint, head=dataclasses.replace(joint.head, stage_steps=3, condition="none",
                                                                sampled_tokens=False))
    result = train_head(blind, tmp_path / "head", tmp_path / "joint")
    assert result["step"] == 3 and result["finished"]
    a, _ = checkpoint.load(tmp_path / "joint" / "hart.safetensors")
    b, meta = checkpoint.load(tmp_path / "head" / "hart.safetensors")
    head = [k for k in a if k.startswith(("head.", "cond_norm."))]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in head), "the head stage moved the transformer"
    assert meta["head"]["condition"] == "none" and meta["head_stage_seconds"] >= 0
    loaded = HART.from_file(tmp_path / "head" / "hart.safetensors")
    assert not loaded.head.cond_embed.weight.requires_grad and torch.count_nonzero(loaded.head.cond_embed.weight) == 0
    with pytest.raises(ValueError, match="stage_steps"):
        train_head(joint, tmp_path / "none", tmp_path / "joint")
