"""The prompt-following diagnostic: caption flips, per-scale sensitivity, forced coarse scales, the CLI."""

import dataclasses
import json

import pytest
import torch

from hart_mini import diagnose
from hart_mini.cli import main
from hart_mini.config import get_preset
from hart_mini.model.data import ToyShapes, parse_caption
from hart_mini.model.hart import HART
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer

PRESET = get_preset("smoke")


def _model(seed=0):
    torch.manual_seed(seed)
    model = HART(PRESET.transformer, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                 dataclasses.replace(PRESET.head, mode="last"))
    model.measure_residual_scale(ToyShapes(PRESET.data).batch(range(16))["image"])
    return model.eval()


def test_flips_reflect_positions_through_the_centre_and_reverse_relations():
    assert diagnose.flip_caption("a small red circle at the top left") == (
        "a small red circle at the bottom right", "position")
    assert diagnose.flip_caption("a large blue square at the left")[0].endswith("at the right")
    assert diagnose.flip_caption("a small red circle at the center") is None  # its own mirror image
    flipped, kind = diagnose.flip_caption("a small red circle left of a large blue dotted square")
    assert kind == "relation" and flipped == "a small red circle right of a large blue dotted square"
    for p in range(9):
        assert diagnose.mirrored_position(diagnose.mirrored_position(p)) == p
    # every flipped caption parses, and changes what the caption asks for
    for caption in ToyShapes(PRESET.data).batch(range(60))["caption"]:
        flipped = diagnose.flip_caption(caption)
        if flipped is not None:
            a, b = parse_caption(caption), parse_caption(flipped[0])
            assert a["objects"] == b["objects"] and (a["position"], a["relation"]) != (b["position"], b["relation"])


def test_a_model_that_ignores_its_caption_has_zero_sensitivity_and_one_that_reads_it_does_not():
    # AdaLN-Zero: every block starts as the identity, so no image token can see the text (the 1x1 scale is
    # read off the last word itself, so it is not blind)
    model = _model()
    blind = diagnose.caption_sensitivity(model, PRESET.data, n=8)
    assert blind["scales"] == list(PRESET.tokenizer.scales)
    for kind in ("position", "relation"):
        assert blind[kind]["n"] == 8 and len(blind[kind]["sensitivity"]) == len(PRESET.tokenizer.scales)
        assert all(abs(s) < 1e-5 for s in blind[kind]["sensitivity"][1:])
    with torch.no_grad():  # open the gates: now attention to the words reaches every position
        for block in model.transformer.blocks:
            block.modulation[1].weight.normal_(0, 0.5)
    reading = diagnose.caption_sensitivity(model, PRESET.data, n=8)
    assert max(abs(s) for s in reading["position"]["sensitivity"][1:]) > 1e-3


def test_forced_scales_are_used_as_given_and_the_rest_is_sampled():
    model = _model()
    batch = ToyShapes(PRESET.data, "test").batch(range(3))
    truth = model.tokenizer.tokenize(batch["image"]).indices
    out = model.sample_latent(batch["caption"], seed=1, forced=truth[:2])
    assert all(torch.equal(out["indices"][k], truth[k]) for k in range(2))
    everything = model.sample_latent(batch["caption"], seed=1, forced=truth, use_head=False)
    assert torch.equal(everything["f_hat"], model.tokenizer.tokenize(batch["image"]).f_hat)
    with pytest.raises(ValueError, match=r"forced\[1\].shape"):
        model.sample_latent(batch["caption"], forced=[truth[0], truth[0]])


def test_forced_scales_rows_cover_every_k():
    from hart_mini.measure.judge import Judge

    rows = diagnose.forced_scales(_model(), Judge(), PRESET.data, n=4, batch_size=2)
    assert [r["k"] for r in rows] == list(range(len(PRESET.tokenizer.scales) + 1))
    assert rows[-1]["forced_tokens"] == PRESET.tokenizer.num_tokens and all(r["n"] == 4 for r in rows)


def test_diagnose_command_writes_json_and_figure(tmp_path, capsys):
    out, fig = tmp_path / "diag.json", tmp_path / "diag.png"
    assert main(["diagnose", "--preset", "smoke", "--n", "4", "--device", "cpu", "--json", str(out),
                 "--figure", str(fig)]) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert len(result["forced"]) == 7 and set(result["sensitivity"]) == {"scales", "position", "relation"}
    assert fig.stat().st_size > 0


def _judge():
    from hart_mini.measure.judge import Judge

    torch.manual_seed(0)
    return Judge(PRESET.data.image_size, 8).eval()


def test_diagnose_head_gives_every_regime_and_column_with_shared_tokens():
    from hart_mini import diagnose_head

    model = _model()
    with torch.no_grad():  # a head whose output depends on its inputs
        for p in model.head.parameters():
            p.normal_(0, 0.1)
    table = diagnose_head.head_table(model, _judge(), PRESET.data, n=6, seeds=(0, 1), batch_size=3)
    assert list(table["regimes"]) == ["free", "own", "true"] and table["real_residual_rms"] > 0
    assert "true_residual" not in table["regimes"]["free"] and "head_cosine" not in table["regimes"]["free"]
    for regime in ("own", "true"):
        cells = table["regimes"][regime]
        assert set(diagnose_head.COLUMNS) <= set(cells) and -1 <= cells["head_cosine"] <= 1
        assert cells["head_size_ratio"] > 0 and cells["head_rms"] > 0
    for cells in table["regimes"].values():  # the paired FD gain: off - on, seed by seed
        gains = [off - on for on, off in zip(cells["head_on"]["fd_seeds"], cells["head_off"]["fd_seeds"])]
        assert len(gains) == 2 and abs(cells["fd_gain"] - sum(gains) / 2) < 1e-3
    # the texture reading: every object cell of every seed once per column, the paired gain its diagonals' difference
    objects = int((diagnose_head.cell_targets(diagnose_head.held_out(PRESET.data, 6)["labels"])["shape"]
                   != diagnose_head.NONE).sum())
    assert "texture_confusion" not in table["regimes"]["free"]
    for regime in ("own", "true"):
        cells = table["regimes"][regime]
        on, off = (torch.tensor(cells["texture_confusion"][c]) for c in ("head_on", "head_off"))
        assert on.shape == (3, 3) and int(on.sum()) == int(off.sum()) == 2 * objects
        assert abs(cells["texture_gain"] - float(on.trace() - off.trace()) / (2 * objects)) < 1e-4
        assert cells["texture_gain_se"] >= 0
    # with every token true, the head-off image is the tokenizer's discrete reconstruction, exactly
    real = diagnose_head.held_out(PRESET.data, 6)
    drawn = diagnose_head.draw_regime(model, real, "true", 3.0, seed=0, batch_size=3)
    tok = model.tokenizer
    discrete = tok.decode(tok.quantizer.quantize(tok.encode(real["image"]))[1], "discrete").clamp(-1, 1).add(1).div(2)
    assert torch.allclose(drawn["images"]["head_off"], discrete, atol=1e-5)
    assert not torch.allclose(drawn["images"]["head_on"], drawn["images"]["head_off"])
    # the pixel noise control: the head-off image plus the data's own per-pixel noise (clipped to [0, 1])
    grain = drawn["images"]["pixel_noise"] - drawn["images"]["head_off"]
    inside = (drawn["images"]["pixel_noise"] > 0) & (drawn["images"]["pixel_noise"] < 1)
    assert abs(float(grain[inside].std()) - diagnose_head.PIXEL_NOISE_STD) < 0.1 * diagnose_head.PIXEL_NOISE_STD
    assert abs(float(grain[inside].mean())) < 0.1 * diagnose_head.PIXEL_NOISE_STD
    both = inside & (drawn["images"]["head_on_pixel_noise"] > 0) & (drawn["images"]["head_on_pixel_noise"] < 1)
    on_grain = drawn["images"]["head_on_pixel_noise"] - drawn["images"]["head_on"]  # the same grain on head on
    assert torch.allclose(on_grain[both], grain[both], atol=1e-6)


def test_the_noise_control_has_the_real_residuals_covariance():
    from hart_mini import diagnose_head

    model = _model()
    real = diagnose_head.held_out(PRESET.data, 6)
    stats = diagnose_head.residual_stats(model, real, batch_size=4)
    tok = model.tokenizer
    f = tok.encode(real["image"])
    r = (f - tok.quantizer.quantize(f)[1]).permute(0, 2, 3, 1).flatten(0, 2).double()  # (cells, C)
    assert abs(stats["rms"] - float(r.pow(2).mean().sqrt())) < 1e-6
    sigma = torch.cov(r.T, correction=0).float()
    L = stats["factor"]
    assert torch.allclose(L @ L.T, sigma, atol=1e-6) and torch.equal(L, L.tril())
    C = sigma.shape[0]
    drawn = diagnose_head.noise_control(torch.zeros(1, C, 300, 300), L, torch.Generator().manual_seed(0))
    n = drawn.permute(0, 2, 3, 1).reshape(-1, C)
    assert torch.allclose(torch.cov(n.T), sigma, atol=0.05 * float(sigma.diagonal().max()))
    # the control adds noise to f_hat only: same f_hat, same seed, same control
    f_hat = torch.randn(2, C, 4, 4)
    a = diagnose_head.noise_control(f_hat, L, torch.Generator().manual_seed(3))
    b = diagnose_head.noise_control(f_hat, L, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, f_hat)


def test_a_head_that_adds_nothing_measures_zero_and_matches_head_off(monkeypatch):
    from hart_mini import diagnose_head

    model = _model()
    monkeypatch.setattr(model, "_head_sample", lambda z, t, guided, steps, g: torch.zeros(
        z.shape[0] // (2 if guided else 1), z.shape[1], model.tokenizer.cfg.latent_channels))
    table = diagnose_head.head_table(model, _judge(), PRESET.data, n=4, seeds=(0,), batch_size=4)
    for cells in table["regimes"].values():
        assert cells["head_rms"] == 0 and cells["head_on"]["fd"] == cells["head_off"]["fd"] and cells["fd_gain"] == 0
        assert cells["head_on"]["fd_mean"] == cells["head_off"]["fd_mean"]
        assert cells["head_on_pixel_noise"]["fd"] == cells["pixel_noise"]["fd"] and cells["fd_gain_with_grain"] == 0
        assert all(cells.get(f"head_rms_{k}", 0) == 0 for k in diagnose_head.REGIONS)
    assert table["regimes"]["true"]["head_cosine"] == 0
    for regime in ("own", "true"):  # the same images: the same texture readings
        cells = table["regimes"][regime]
        assert cells["texture_confusion"]["head_on"] == cells["texture_confusion"]["head_off"]
        assert cells["texture_gain"] == 0 and cells["texture_gain_se"] == 0


def test_head_noise_adds_the_controls_mottle_to_the_head_column_alone(monkeypatch):
    from hart_mini import diagnose_head

    model = _model()
    monkeypatch.setattr(model, "_head_sample", lambda z, t, guided, steps, g: torch.zeros(
        z.shape[0] // (2 if guided else 1), z.shape[1], model.tokenizer.cfg.latent_channels))
    real = diagnose_head.held_out(PRESET.data, 6)
    factor = diagnose_head.residual_stats(model, real, batch_size=3)["factor"]
    drawn = {s: diagnose_head.draw_regime(model, real, "own", 3.0, seed=0, batch_size=3, noise_factor=factor,
                                          head_noise=s) for s in (0.0, 0.5, 1.0)}
    for column in ("head_off", "noise_control", "pixel_noise", "true_residual"):  # the other columns keep their draws
        assert torch.equal(drawn[0.5]["images"][column], drawn[0.0]["images"][column])
    assert torch.equal(drawn[0.0]["images"]["head_on"], drawn[0.0]["images"]["head_off"])  # a head adding nothing
    assert not torch.allclose(drawn[0.5]["images"]["head_on"], drawn[0.0]["images"]["head_on"])
    assert not torch.allclose(drawn[1.0]["images"]["head_on"], drawn[1.0]["images"]["noise_control"])  # own draw
    rms = {s: d["sums"]["d2"] ** 0.5 for s, d in drawn.items()}  # the same mottle, scaled: rms in proportion
    assert rms[0.0] == 0 and abs(rms[1.0] / rms[0.5] - 2) < 1e-4
    with pytest.raises(ValueError, match="head_noise"):
        diagnose_head.head_table(model, _judge(), PRESET.data, n=4, seeds=(0,), head_noise=-1)


def test_spatial_split_parts_add_up_and_read_where_a_map_holds_its_energy():
    from hart_mini.diagnose_head import SPLIT, spatial_split

    torch.manual_seed(0)
    white = torch.randn(8, 4, 16, 16)
    parts = spatial_split(white)
    assert set(parts) == set(SPLIT) and sum(parts.values()) == pytest.approx(float(white.pow(2).sum()), rel=1e-6)
    rms = {k: (v / white.numel()) ** 0.5 for k, v in parts.items()}  # white: coarse 1/2, fine sqrt(3)/2
    assert rms["coarse"] == pytest.approx(0.5, abs=0.02) and rms["fine"] == pytest.approx(3 ** 0.5 / 2, abs=0.02)
    flat = torch.randn(8, 4, 1, 1).expand(8, 4, 16, 16)  # one value per image and channel: all global
    assert spatial_split(flat)["coarse"] < 1e-6 and spatial_split(flat)["fine"] < 1e-6
    blocks = torch.nn.functional.interpolate(torch.randn(8, 4, 8, 8), scale_factor=2)  # constant on 2x2 cells
    assert spatial_split(blocks)["fine"] < 1e-6 < spatial_split(blocks)["coarse"]
    odd = torch.randn(3, 2, 7, 5)  # an odd map: its last row and column in smaller blocks, still orthogonal
    assert sum(spatial_split(odd).values()) == pytest.approx(float(odd.pow(2).sum()), rel=1e-6)


def test_draw_scale_multiplies_the_head_draw_and_keeps_the_other_columns():
    import dataclasses

    from hart_mini import diagnose_head

    model = _model()
    with torch.no_grad():  # a head whose output depends on its inputs
        for p in model.head.parameters():
            p.normal_(0, 0.1)
    real = diagnose_head.held_out(PRESET.data, 6)
    factor = diagnose_head.residual_stats(model, real, batch_size=3)["factor"]
    drawn = {}
    for s in (0.0, 0.5, 1.0):
        model.head_cfg = dataclasses.replace(model.head_cfg, draw_scale=s)
        drawn[s] = diagnose_head.draw_regime(model, real, "own", 3.0, seed=0, batch_size=3, noise_factor=factor)
    for column in ("head_off", "noise_control", "pixel_noise", "true_residual"):
        assert torch.equal(drawn[0.5]["images"][column], drawn[1.0]["images"][column])
    assert torch.allclose(drawn[0.0]["images"]["head_on"], drawn[0.0]["images"]["head_off"], atol=1e-6)
    rms = {s: d["sums"]["d2"] ** 0.5 for s, d in drawn.items()}  # the same draw, scaled
    assert rms[0.0] == 0 and rms[1.0] > 0 and abs(rms[1.0] / rms[0.5] - 2) < 1e-4
    for d in drawn.values():  # the split adds up to the draw
        assert sum(d["sums"][k] for k in diagnose_head.SPLIT) == pytest.approx(d["sums"]["d2"], rel=1e-5, abs=1e-12)


def test_head_table_refuses_a_negative_or_infinite_head_noise():
    from hart_mini import diagnose_head

    for bad in (-1, float("inf")):
        with pytest.raises(ValueError, match="head_noise"):
            diagnose_head.head_table(_model(), _judge(), PRESET.data, n=4, seeds=(0,), head_noise=bad)


def test_head_table_splits_fd_and_the_draw():
    from hart_mini import diagnose_head

    model = _model()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.1)
    table = diagnose_head.head_table(model, _judge(), PRESET.data, n=6, seeds=(0,), batch_size=3)
    real = table["real_residual_split"]
    assert set(real) == set(diagnose_head.SPLIT)
    assert sum(v ** 2 for v in real.values()) == pytest.approx(table["real_residual_rms"] ** 2, rel=1e-2)
    for cells in table["regimes"].values():
        for column in diagnose_head.COLUMNS:
            if column in cells:  # the mean term is a part of FD
                assert 0 <= cells[column]["fd_mean"] <= cells[column]["fd"] + 1e-3
        split = sum(cells[f"head_split_{k}"] ** 2 for k in diagnose_head.SPLIT)
        assert split == pytest.approx(cells["head_rms"] ** 2, rel=1e-2)
    assert set(table["real_residual_by_region"]) == set(diagnose_head.REGIONS)
    assert "head_rms_object" not in table["regimes"]["free"]  # a drawn scene is not the held-out one
    for regime in ("own", "true"):
        assert min(table["regimes"][regime][f"head_rms_{k}"] for k in diagnose_head.REGIONS) > 0
    text = diagnose_head.format_table(table)
    assert "(mean term)" in text and "the real residual's: global" in text and "on object cells" in text


def test_diagnose_head_refuses_a_model_without_a_last_scale_head():
    from hart_mini import diagnose_head

    model = HART(PRESET.transformer, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                 dataclasses.replace(PRESET.head, mode="off"))
    with pytest.raises(ValueError, match="mode 'last'"):
        diagnose_head.head_table(model, _judge(), PRESET.data, n=4)


def test_diagnose_head_command_prints_the_table_and_writes_json_and_figure(tmp_path, capsys):
    out, fig = tmp_path / "head.json", tmp_path / "head.png"
    assert main(["diagnose", "head", "--preset", "smoke", "--n", "4", "--seeds", "0,1", "--device", "cpu",
                 "--json", str(out), "--figure", str(fig)]) == 0
    captured = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result == json.loads(captured.out) and result["seeds"] == [0, 1]
    assert "head_on" in result["regimes"]["free"] and "true_residual" in result["regimes"]["true"]
    assert "real residual rms" in captured.err and fig.stat().st_size > 0
    shipped = result["head_sampling"]  # the model's own, then the flags' (recorded, so a table says how it drew)
    again = tmp_path / "cooler.json"
    assert main(["diagnose", "head", "--preset", "smoke", "--n", "4", "--device", "cpu", "--json", str(again),
                 "--head-temperature", "0.5", "--head-sampling-steps", "3"]) == 0
    assert json.loads(again.read_text())["head_sampling"] == {"steps": 3, "temperature": 0.5,
                                                              "added_noise": 0.0, "scale": 1.0,
                                                              "cfg_scale": shipped["cfg_scale"]} != shipped
    assert "the head in 3 steps at temperature 0.5" in capsys.readouterr().err
    assert main(["diagnose", "head", "--preset", "smoke", "--n", "4", "--device", "cpu", "--json", str(again),
                 "--overwrite", "--head-noise", "0.5"]) == 0
    assert json.loads(again.read_text())["head_sampling"]["added_noise"] == 0.5
    assert "plus 0.5 x the noise control's noise" in capsys.readouterr().err
    assert main(["diagnose", "head", "--preset", "smoke", "--head-temperature", "-1"]) == 2
    assert main(["diagnose", "head", "--preset", "smoke", "--head-noise", "-0.1"]) == 2
    assert main(["diagnose", "head", "--preset", "smoke", "--n", "4", "--device", "cpu", "--json", str(again),
                 "--overwrite", "--head-scale", "0.5"]) == 0
    assert json.loads(again.read_text())["head_sampling"]["scale"] == 0.5
    assert "its draw x 0.5" in capsys.readouterr().err
    assert main(["diagnose", "head", "--preset", "smoke", "--head-scale", "-0.1"]) == 2
    assert main(["diagnose", "head", "--preset", "smoke", "--n", "4", "--device", "cpu", "--json", str(again),
                 "--overwrite", "--head-cfg", "0.25"]) == 0
    assert json.loads(again.read_text())["head_sampling"]["cfg_scale"] == 0.25
    assert "guided at its own cfg 0.25" in capsys.readouterr().err
    assert main(["diagnose", "head", "--preset", "smoke", "--head-cfg", "-1"]) == 2


def test_caption_edits_keep_the_words_and_change_what_is_asked():
    caption = "a small blue square left of a large yellow dotted triangle"
    assert diagnose.caption_of(parse_caption(caption)) == caption
    swapped = {"colours swapped": "a small yellow square left of a large blue dotted triangle",
               "shapes swapped": "a small blue triangle left of a large yellow dotted square"}
    assert all(diagnose.edit_caption(caption, edit) == want for edit, want in swapped.items())
    assert diagnose.edit_caption(caption, "relation mirrored").endswith("right of a large yellow dotted triangle")
    assert diagnose.edit_caption("a small red circle at the top", "colours swapped") is None  # one object
    assert diagnose.edit_caption("a small red circle left of a large red square", "colours swapped") is None
    for c in ToyShapes(PRESET.data, "test").batch(range(80))["caption"]:
        for edit in diagnose.TEXT_EDITS:
            edited = diagnose.edit_caption(c, edit)
            if edited is not None:  # a caption the grammar can write, asking for something else
                assert parse_caption(edited) != parse_caption(c)
                if edit != "colour changed":  # the same words in another order
                    assert sorted(edited.split()) == sorted(c.split()) or edit == "relation mirrored"
    with pytest.raises(ValueError, match="edit="):
        diagnose.edit_caption(caption, "louder")


def test_text_probe_is_at_chance_for_a_blind_model_and_sees_edits_a_reading_model_sees():
    model = _model()  # AdaLN-Zero at init: no image token reads the words
    blind = diagnose.text_probe(model, PRESET.data, n=6, batch_size=3)
    assert set(blind["edits"]) == set(diagnose.TEXT_EDITS)
    for r in blind["edits"].values():
        assert r["n"] == 6 and all(abs(v) < 1e-5 for v in r["sensitivity"][1:])
    with torch.no_grad():
        for block in model.transformer.blocks:
            block.modulation[1].weight.normal_(0, 0.5)
    reading = diagnose.text_probe(model, PRESET.data, n=6, batch_size=3)
    assert abs(reading["edits"]["colour changed"]["overall"]) > 1e-4
    assert "true caption wins" in diagnose.format_text_probe(reading)


def test_text_probe_reads_the_diffusion_baseline_by_its_denoising_error():
    from hart_mini.model.baselines import LatentDiffusion

    torch.manual_seed(0)
    model = LatentDiffusion(PRESET.transformer, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                            PRESET.baseline).eval()
    images = ToyShapes(PRESET.data).batch(range(4))
    # common random numbers: the same images and captions give the same error, call after call
    first = diagnose.denoising_error(model, images["image"], images["caption"])
    again = diagnose.denoising_error(model, images["image"], images["caption"])
    assert first.shape == (4, 1) and torch.equal(first, again)
    blind = diagnose.text_probe(model, PRESET.data, n=6, batch_size=3)  # zero output layers at init: no caption read
    assert blind["columns"] == ["denoising"] and "denoising" in blind["unit"]
    for r in blind["edits"].values():
        assert r["n"] == 6 and r["sensitivity"] == [0.0] and r["true_caption_wins"] == 0.0
    with torch.no_grad():
        for layer in (model.out, model.out_modulation[1], *(b.modulation[1] for b in model.blocks)):
            layer.weight.normal_(0, 0.5)
    reading = diagnose.text_probe(model, PRESET.data, n=6, batch_size=3)
    assert abs(reading["edits"]["colour changed"]["overall"]) > 1e-4
    assert "denoising" in diagnose.format_text_probe(reading)


def test_diagnose_text_command_prints_the_probe_and_refuses_a_figure(tmp_path, capsys):
    out = tmp_path / "text.json"
    assert main(["diagnose", "text", "--preset", "smoke", "--n", "3", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["edits"]["relation mirrored"]["n"] == 3 and "true caption wins" in capsys.readouterr().err
    assert main(["diagnose", "text", "--preset", "smoke", "--figure", str(tmp_path / "t.png")]) == 2
    assert "--figure" in capsys.readouterr().err and not (tmp_path / "t.png").exists()
    assert main(["diagnose", "text", "--model", "diffusion", "--preset", "smoke", "--n", "3", "--device", "cpu",
                 "--json", str(out), "--overwrite"]) == 0
    result = json.loads(out.read_text())
    assert "shipped diffusion" in result["model"] and result["columns"] == ["denoising"]
    assert main(["diagnose", "scales", "--model", "diffusion", "--preset", "smoke"]) == 2
    assert "--model diffusion" in capsys.readouterr().err


def test_texture_reading_counts_each_object_cell_by_its_true_and_read_texture():
    from hart_mini import diagnose_head

    real = diagnose_head.held_out(PRESET.data, 5)
    target = diagnose_head.cell_targets(real["labels"])
    occupied = target["shape"] != diagnose_head.NONE

    class Reads:  # a judge that reads every cell's texture as `texture`
        def __init__(self, texture):
            self.texture, self.weight = texture, torch.nn.Parameter(torch.zeros(1))

        def parameters(self):
            return iter([self.weight])

        def predict(self, images):
            return {"texture": torch.full((len(images), 9), self.texture)}

    for texture in range(3):
        confusion, right = diagnose_head.texture_reading(Reads(texture), real["image"] * 0.5 + 0.5, real["labels"])
        truth = torch.bincount(target["texture"][occupied], minlength=3)
        assert torch.equal(confusion[:, texture], truth) and int(confusion.sum()) == int(occupied.sum())
        assert torch.equal(right, (target["texture"][occupied] == texture).float())
