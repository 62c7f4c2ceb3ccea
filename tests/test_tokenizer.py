"""The hybrid tokenizer: the invariants of multi-scale residual VQ, its two training stages, clear errors."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from hart_mini import checkpoint
from hart_mini.cli import main
from hart_mini.config import SCALES_64, TokenizerConfig, get_preset
from hart_mini.measure.evaluate import evaluate_tokenizer
from hart_mini.model.data import ToyShapes
from hart_mini.model.tokenizer import HybridTokenizer
from hart_mini.train import RunOptions, fit, train_tokenizer

SMOKE = get_preset("smoke").tokenizer


def _model(cfg=SMOKE, seed=0):
    torch.manual_seed(seed)
    return HybridTokenizer(cfg).eval()


def _images(n=4, size=32):
    return ToyShapes(dataclasses.replace(get_preset("smoke").data, image_size=size)).batch(range(n))["image"]


def test_f_hat_plus_residual_is_f_with_no_phi_at_the_last_scale():
    tokens = _model().tokenize(_images())
    assert torch.allclose(tokens.f_hat + tokens.residual, tokens.f, atol=1e-6)
    model = _model()
    last = len(SMOKE.scales) - 1
    idx = tokens.indices[last]
    assert torch.equal(model.quantizer.contribution(idx, last), model.quantizer.codebook(idx).permute(0, 3, 1, 2))


@pytest.mark.parametrize("scales, size, L", [(SMOKE.scales, 32, 130), (SCALES_64, 64, 680)])
def test_token_count_is_sum_of_squares_and_shapes_follow_the_preset(scales, size, L):
    cfg = dataclasses.replace(SMOKE, image_size=size, scales=scales)
    assert cfg.num_tokens == L == sum(p * p for p in scales)
    model = _model(cfg)
    tokens = model.tokenize(_images(2, size))
    assert tokens.f.shape == (2, cfg.latent_channels, size // 4, size // 4)
    assert [tuple(i.shape) for i in tokens.indices] == [(2, p, p) for p in scales]
    assert tokens.sequence.shape == (2, L)
    assert model.decode(tokens.f).shape == (2, 3, size, size)
    assert model.quantizer.teacher_forcing_inputs(tokens.indices).shape == (2, L - 1, cfg.latent_channels)


def test_indices_to_f_hat_equals_the_encoders_f_hat():
    model = _model()
    tokens = model.tokenize(_images())
    assert torch.allclose(model.quantizer.indices_to_f_hat(tokens.indices), tokens.f_hat, atol=1e-6)


def test_teacher_forcing_inputs_are_the_cumulative_f_hat_downsampled():
    model = _model()
    tokens = model.tokenize(_images())
    q, scales = model.quantizer, SMOKE.scales
    inputs = q.teacher_forcing_inputs(tokens.indices)
    start = 0
    for k in range(len(scales) - 1):
        partial = q.indices_to_f_hat(tokens.indices[: k + 1]) if k > 0 else q.contribution(tokens.indices[0], 0)
        expected = q.next_input(partial, k).flatten(2).transpose(1, 2)
        n = scales[k + 1] ** 2
        assert torch.allclose(inputs[:, start:start + n], expected, atol=1e-6)
        start += n


def test_gradients_reach_the_encoder_through_the_straight_through_path():
    model = _model().train()
    x = _images()
    f = model.encode(x)
    _, f_hat, _, _ = model.quantizer.quantize(f)
    recon = torch.nn.functional.mse_loss(model.decoder(f + (f_hat - f).detach()), x)  # no VQ loss term
    recon.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert model.quantizer.codebook.weight.grad is None  # the codebook learns only from the VQ loss


def test_first_restart_initialises_the_codebook_from_encoder_outputs():
    model = _model()  # eval: quantize does not count usage, so every code is still unused
    f = model.encode(_images())
    _, _, _, rests = model.quantizer.quantize(f)
    moved = model.quantizer.restart_dead_codes(rests)
    assert moved == SMOKE.codebook_size  # usage starts at zero: every code is dead
    pool = torch.cat([r.permute(0, 2, 3, 1).reshape(-1, SMOKE.latent_channels) for r in rests])
    nearest = torch.cdist(model.quantizer.codebook.weight, pool).min(1).values
    assert float(nearest.max().detach()) < 0.05 * float(pool.std()) + 1e-6


def test_stage_b_trains_only_the_decoder():
    model = _model().train()
    params = model.start_stage_b()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder")}
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    opt = torch.optim.SGD(params, lr=0.1)
    loss, _ = model.stage_b_loss(_images())
    loss.backward()
    opt.step()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items() if k != "quantizer.usage")
    assert any(not torch.equal(model.decoder.state_dict()[k], v) for k, v in decoder.items())


def test_separate_mode_decodes_the_discrete_path_with_its_own_decoder():
    model = _model(dataclasses.replace(SMOKE, decoder_mode="separate"))
    model.start_stage_b()
    tokens = model.tokenize(_images())
    assert torch.equal(model.decode(tokens.f_hat, "discrete"), model.decoder_discrete(tokens.f_hat))
    with torch.no_grad():
        model.decoder_discrete.net[0].bias.add_(1.0)
    assert not torch.allclose(model.decode(tokens.f_hat, "discrete"), model.decode(tokens.f_hat, "continuous"))


def _pixels_one_cell_reaches(cfg, i=3, j=4):
    """The output pixels (H, W) whose value changes when latent cell (i, j) alone changes."""
    decoder = _model(cfg).decoder
    f = torch.randn(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    g = f.clone()
    g[0, :, i, j] += 3.0
    with torch.no_grad():
        return (decoder(g) - decoder(f)).abs().amax(dim=1)[0] > 0


@pytest.mark.parametrize("field, cells", [("local", 0), ("near", 1)])
def test_a_local_decoder_draws_each_cell_into_the_patches_it_reaches_and_one_pixel_around_them(field, cells):
    """local: cell (3, 4) changes its own 4x4 patch; near: the patches of the 3x3 cells around it. Plus the
    1-pixel border of the last 3x3 convolution, and nothing else."""
    reach = _pixels_one_cell_reaches(dataclasses.replace(SMOKE, decoder_field=field))
    top, bottom, left, right = 4 * (3 - cells), 4 * (4 + cells), 4 * (4 - cells), 4 * (5 + cells)
    inside = torch.zeros_like(reach)
    inside[top - 1:bottom + 1, left - 1:right + 1] = True
    assert reach[top:bottom, left:right].all() and not (reach & ~inside).any()
    assert (_pixels_one_cell_reaches(SMOKE) & ~inside).sum() > 100  # the wide decoder reaches far beyond


@pytest.mark.parametrize("field", ["local", "near"])
def test_a_local_decoder_round_trips_through_a_file(tmp_path, field):
    cfg = dataclasses.replace(SMOKE, decoder_field=field)
    model = _model(cfg)
    checkpoint.save(tmp_path / "t.safetensors", model.state_dict(),
                    {"kind": "tokenizer", "config": dataclasses.asdict(cfg)})
    loaded = HybridTokenizer.from_file(tmp_path / "t.safetensors")
    f = torch.randn(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    assert loaded.cfg.decoder_field == field and torch.equal(loaded.decode(f), model.decode(f))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, 64, 64), "images are 64x64 but this tokenizer takes 32x32"),
    (torch.zeros(2, 1, 32, 32), "must have 3 channels"),
    (torch.zeros(2, 4, 32, 32), "must have 3 channels"),
    (torch.full((2, 3, 32, 32), 255.0), r"span \[255, 255\] but must lie in \[-1, 1\]"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "must be float in"),
    (torch.zeros(3, 32, 32), r"must be a \(B, 3, 32, 32\) tensor"),
])
def test_bad_images_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        _model().tokenize(bad)


def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match="scales=.* ending at the latent size 8"):
        TokenizerConfig(scales=(1, 2, 4))
    with pytest.raises(ValueError, match="decoder_mode='both' is invalid"):
        TokenizerConfig(decoder_mode="both")
    with pytest.raises(ValueError, match="channels=12 is invalid: expected a multiple of 8"):
        TokenizerConfig(channels=12)
    with pytest.raises(ValueError, match="decoder_field='narrow' is invalid: expected 'wide', 'near' or 'local'"):
        TokenizerConfig(decoder_field="narrow")


def _short_preset(steps_a=6, steps_b=4):
    p = get_preset("smoke")
    return dataclasses.replace(
        p, tokenizer_train=dataclasses.replace(p.tokenizer_train, steps=steps_a, checkpoint_every=2, batch_size=8),
        decoder_train=dataclasses.replace(p.decoder_train, steps=steps_b, checkpoint_every=2, batch_size=8))


def test_resume_continues_exactly(tmp_path):
    preset = _short_preset()
    train_tokenizer(preset, tmp_path / "whole")
    first = train_tokenizer(preset, tmp_path / "pieces", RunOptions(max_minutes=0))  # stops at the first checkpoint
    assert first["stage_a"]["finished"] is False and first["stage_a"]["step"] == 1
    train_tokenizer(preset, tmp_path / "pieces", RunOptions(resume=True))
    a, _ = checkpoint.load(tmp_path / "whole" / "tokenizer.safetensors")
    b, _ = checkpoint.load(tmp_path / "pieces" / "tokenizer.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("recon.png", "loss.png", "history.json"):
        assert (tmp_path / "whole" / "stage_a" / name).is_file()


def test_existing_checkpoint_needs_resume_and_matching_config(tmp_path):
    preset = _short_preset(2, 1)
    train_tokenizer(preset, tmp_path)
    with pytest.raises(ValueError, match="already holds a tokenizer run .*: pass --resume"):
        train_tokenizer(preset, tmp_path)
    other = dataclasses.replace(preset, tokenizer=dataclasses.replace(preset.tokenizer, codebook_size=32))
    with pytest.raises(ValueError, match="config.codebook_size: expected 32, checkpoint has 64"):
        train_tokenizer(other, tmp_path, RunOptions(resume=True))


def test_fit_stops_on_a_non_finite_loss(tmp_path):
    model = torch.nn.Linear(2, 1)
    cfg = get_preset("smoke").tokenizer_train
    with pytest.raises(FloatingPointError, match="the loss is nan at step 0"):
        fit(model, list(model.parameters()), lambda step, micro, n: {},
            lambda batch: (model.weight.sum() * float("nan"), {}), cfg, tmp_path, {})


def test_saved_tokenizer_loads_and_evaluates(tmp_path, capsys):
    preset = _short_preset(4, 2)
    train_tokenizer(preset, tmp_path)
    model = HybridTokenizer.from_file(tmp_path / "tokenizer.safetensors")
    metrics = evaluate_tokenizer(model, ToyShapes(preset.data, "test", size=20), n=20, batch_size=8)
    for key in ("psnr_discrete", "psnr_continuous", "mse_discrete", "mse_continuous", "codebook_usage",
                "perplexity", "hf_ratio_discrete", "hf_ratio_continuous"):
        assert key in metrics
    assert 0 < metrics["codebook_usage"] <= 1 and 1 <= metrics["perplexity"] <= preset.tokenizer.codebook_size
    out = tmp_path / "eval.json"
    assert main(["eval", "tokenizer", "--preset", "smoke", "--ckpt", str(tmp_path), "--n", "8",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 8 and json.loads(capsys.readouterr().out)["n"] == 8
    with pytest.raises(ValueError, match="holds a 'other', not a tokenizer"):
        checkpoint.save(tmp_path / "x.safetensors", {}, {"kind": "other"})
        HybridTokenizer.from_file(tmp_path / "x.safetensors")


@pytest.mark.parametrize("p, size", [(1, 16), (2, 16), (3, 8), (5, 16), (6, 8), (13, 16), (4, 4)])
def test_bicubic_up_is_interpolates_bicubic_with_its_gradient(p, size):
    """The matmul form of the scales' upsampling computes what F.interpolate(mode='bicubic') computes, in
    value and gradient, border clamping included (float64: no rounding to hide a wrong tap)."""
    from hart_mini.model.tokenizer import bicubic_up

    z = torch.randn(3, 4, p, p, dtype=torch.float64, requires_grad=True)
    want, got = F.interpolate(z, size=(size, size), mode="bicubic"), bicubic_up(z, size)
    assert got.dtype == z.dtype and torch.allclose(got, want, atol=1e-12)
    weights = torch.randn_like(want)
    (g_want,), (g_got,) = (torch.autograd.grad((out * weights).sum(), z) for out in (want, got))
    assert torch.allclose(g_got, g_want, atol=1e-10)


def test_bicubic_up_keeps_fp32_under_bf16_autocast():
    """The quantizer runs in fp32 under autocast; its upsampling must not drop to bf16 (interpolate does not)."""
    from hart_mini.model.tokenizer import bicubic_up

    z = torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bicubic_up(z, 16)
    assert got.dtype == torch.float32
    assert torch.allclose(got, F.interpolate(z, size=(16, 16), mode="bicubic"), atol=1e-5)
