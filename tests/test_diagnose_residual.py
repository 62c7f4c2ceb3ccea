"""diagnose residual: the residuals a head could draw, each checked for what it claims to be."""

import json

import pytest
import torch

from hart_mini import diagnose_residual as probe
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.measure.judge import Judge
from hart_mini.model.tokenizer import HybridTokenizer

PRESET = get_preset("smoke")


def _tokenizer():
    torch.manual_seed(0)
    return HybridTokenizer(PRESET.tokenizer).eval()


def _judge():
    torch.manual_seed(0)
    return Judge(PRESET.data.image_size, 8).eval()


def test_cells_and_uncells_are_inverse_and_row_major():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(probe.uncells(probe.cells(x), x), x)
    assert torch.equal(probe.cells(x)[1], x[0, :, 0, 1])  # cell (row 0, column 1) of the first image


def test_same_code_draws_come_from_pool_cells_with_that_code():
    pool_codes = torch.tensor([3, 1, 3, 2, 1, 3])
    pool_r = torch.arange(6.0)[:, None].repeat(1, 2)  # residual of pool cell i: (i, i)
    codes = torch.tensor([3, 1, 2, 7] * 50)
    drawn = probe.same_code_draws(codes, pool_codes, pool_r, torch.Generator().manual_seed(0))
    for code, r in zip(codes.tolist(), drawn):
        if code == 7:  # never in the pool
            assert torch.equal(r, torch.zeros(2))
        else:
            assert pool_codes[int(r[0])] == code
    assert {int(r[0]) for c, r in zip(codes.tolist(), drawn) if c == 3} == {0, 2, 5}  # every match is drawn


def test_shuffled_within_keeps_each_images_cells_and_moves_them():
    r = torch.randn(3, 4, 5, 5)
    s = probe.shuffled_within(r, torch.Generator().manual_seed(0))
    for i in range(3):
        a, b = probe.cells(r[i:i + 1]), probe.cells(s[i:i + 1])
        assert torch.equal(a[a[:, 0].argsort()], b[b[:, 0].argsort()])  # the same vectors
    assert not torch.equal(s, r)


def test_ridge_recovers_a_residual_that_is_linear_in_the_neighbourhood():
    torch.manual_seed(0)
    f_hat = torch.randn(40, 3, 6, 6)
    r = torch.roll(f_hat, 1, dims=3) * 0.5 - f_hat  # each cell's residual from itself and its left neighbour
    r[..., 0] = -f_hat[..., 0]  # no left neighbour at the edge (zero padding)
    W = probe.fit_ridge(f_hat, r, k=3, ridge=1e-6, batch_size=7)
    assert probe.r_squared(r, probe.predict_ridge(f_hat, W, 3)) > 0.999
    W1 = probe.fit_ridge(f_hat, r, k=1, ridge=1e-6)
    assert probe.r_squared(r, probe.predict_ridge(f_hat, W1, 1)) < 0.9  # a single cell cannot see its neighbour


def test_pixel_predictor_starts_at_zero_and_leaves_the_decoder_untouched():
    tok = _tokenizer()
    images = torch.rand(16, 3, 32, 32) * 2 - 1
    f = tok.encode(images)
    f_hat = tok.quantizer.quantize(f)[1]
    assert torch.equal(probe.PixelPredictor(f.shape[1])(f_hat), torch.zeros_like(f_hat))
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    flags = [p.requires_grad for p in tok.parameters()]
    predictor = probe.train_pixel_predictor(tok, images, f_hat, steps=3, batch_size=4)
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in before.items())
    assert flags == [p.requires_grad for p in tok.parameters()]
    assert predictor(f_hat).abs().sum() > 0  # it learned something


def test_residual_table_none_and_true_bound_the_pixel_gap():
    examples = {}
    table = probe.residual_table(_tokenizer(), _judge(), PRESET.data, n=6, pool=12, patch=3,
                                 pixel_steps=2, batch_size=4, examples=examples)
    cols = table["columns"]
    assert list(cols) == list(probe.COLUMNS) and set(examples) == set(probe.COLUMNS)
    assert cols["none"]["pixel_gap_closed"] == 0 and cols["true"]["pixel_gap_closed"] == pytest.approx(1, abs=1e-3)
    assert cols["true"]["latent_error"] == 0 and cols["none"]["added_rms"] == 0
    assert cols["true"]["added_rms"] == pytest.approx(table["residual_rms"], abs=1e-4)
    text = probe.format_table(json.loads(json.dumps(table, sort_keys=True)))  # as read back from a JSON file
    assert "R^2" in text and [line.split()[0] for line in text.splitlines()[2:-1]] == [
        "none", "true", "noise", "same_code", "shuffled", "predicted", "for_pixels"]
    assert text.splitlines()[-1].startswith("real images' background detail")
    # where the residual sits, and how grainy each column's backgrounds are: the noise control adds grain
    assert set(table["residual_rms_by_region"]) == {"object", "background"} and table["real_background_detail"] > 0
    assert all(c["background_detail"] >= 0 for c in cols.values())
    assert cols["noise"]["background_detail"] != cols["none"]["background_detail"]


def test_residual_table_refuses_bad_sizes():
    with pytest.raises(ValueError, match="patch=4"):
        probe.residual_table(_tokenizer(), _judge(), PRESET.data, n=4, pool=4, patch=4)
    with pytest.raises(ValueError, match="n=1"):
        probe.residual_table(_tokenizer(), _judge(), PRESET.data, n=1)


def test_diagnose_residual_command_writes_json_and_figure(tmp_path, capsys):
    out, fig = tmp_path / "residual.json", tmp_path / "residual.png"
    assert main(["diagnose", "residual", "--preset", "smoke", "--n", "4", "--pool", "8", "--patch", "3",
                 "--pixel-steps", "0", "--device", "cpu", "--json", str(out), "--figure", str(fig)]) == 0
    captured = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result == json.loads(captured.out) and "for_pixels" not in result["columns"]
    assert "diagnose residual" in captured.err and fig.stat().st_size > 0
    assert main(["diagnose", "residual", "--patch", "2"]) == 2
    assert "odd integer" in capsys.readouterr().err
