"""The map head (HeadConfig.network 'map'): it denoises an image's last-scale map jointly, reads its neighbours,
keeps images apart, shares one noise level per map in the loss, and plugs into HART's training, sampling and
files like the MLP head."""

import dataclasses

import pytest
import torch

from hart_mini import checkpoint
from hart_mini.config import HeadConfig, get_preset
from hart_mini.model.data import ToyShapes
from hart_mini.model.diffusion import CosineSchedule, MLPHead, diffusion_loss
from hart_mini.model.hart import HART
from hart_mini.model.map_head import MapHead
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer

PRESET = get_preset("smoke")
C, D, PN = 8, 24, 4


def _randomised(head: torch.nn.Module) -> torch.nn.Module:
    """Every weight drawn (the zero-initialised output and modulations too), so outputs depend on inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    return head


def _head(**cfg) -> MapHead:
    return MapHead(HeadConfig(width=16, depth=2, freq_dim=16, **cfg), C, D, PN)


def test_the_map_head_outputs_zero_at_init_in_the_mlp_heads_shapes():
    head = _head()
    x, t, z = torch.randn(2 * PN * PN, C), torch.randint(0, 1000, (2 * PN * PN,)), torch.randn(2 * PN * PN, D)
    out = head(x, t, z)
    assert out.shape == (2 * PN * PN, C) and torch.count_nonzero(out) == 0


@pytest.mark.parametrize("conv", ["full", "depthwise"])
def test_the_map_head_reads_its_neighbours_and_the_mlp_head_does_not(conv):
    n = PN * PN
    x, t, z = torch.randn(2 * n, C), torch.full((2 * n,), 500), torch.randn(2 * n, D)
    moved = x.clone()
    moved[0] += 1.0  # image 0, token (0, 0)
    for head, reads in ((_randomised(_head(map_conv=conv)), True),
                        (_randomised(MLPHead(HeadConfig(width=16, depth=2, freq_dim=16), C, D)), False)):
        a, b = head(x, t, z), head(moved, t, z)
        assert (not torch.allclose(a[1], b[1])) == reads, "token (0, 1) sees token (0, 0) only through a map"
        assert torch.equal(a[n:], b[n:]), "image 1 must not see image 0"
        assert not torch.allclose(a[n + 1], b[1]) or not reads  # rows stay in token order


def test_depthwise_blocks_cost_about_an_mlp_block_and_full_ones_nine_times_more():
    def block_weights(conv):
        head = MapHead(HeadConfig(width=64, depth=1, network="map", map_conv=conv), C, D, PN)
        return sum(p.numel() for name, p in head.blocks.named_parameters() if "modulation" not in name)

    mlp = 2 * 64 * 64  # an MLP block's two W x W layers (their biases aside)
    assert block_weights("full") > 8 * mlp and block_weights("depthwise") < 1.2 * mlp


def test_the_map_head_refuses_rows_that_are_not_whole_maps():
    head = _head()
    with pytest.raises(ValueError, match="whole maps"):
        head(torch.randn(PN * PN + 1, C), torch.zeros(PN * PN + 1, dtype=torch.long), torch.randn(PN * PN + 1, D))


def test_a_blind_map_head_ignores_z():
    head = _randomised(MapHead(HeadConfig(width=16, depth=1, freq_dim=16), C, D, PN, reads_condition=False))
    for layer in (head.cond_embed, head.cond_input):
        layer.weight.data.zero_()
    n = PN * PN
    x, t = torch.randn(n, C), torch.full((n,), 10)
    assert torch.equal(head(x, t, torch.randn(n, D)), head(x, t, torch.randn(n, D)))
    assert not head.cond_embed.weight.requires_grad and not head.cond_input.weight.requires_grad


def test_the_loss_groups_share_one_noise_level_and_group_1_is_the_per_token_loss():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x_t, t, z):
            seen.append(t.clone())
            return torch.zeros_like(x_t)

    schedule, x0, z = CosineSchedule(1000), torch.randn(3 * 16, C), torch.randn(3 * 16, D)
    torch.manual_seed(1)
    diffusion_loss(Recorder(), x0, z, schedule, "v", batch_mul=2, group=16)
    t = seen[-1].view(-1, 16)  # (3 images x 2 noise draws, 16 tokens)
    assert (t == t[:, :1]).all() and t[:, 0].unique().numel() > 1
    torch.manual_seed(1)
    diffusion_loss(Recorder(), x0, z, schedule, "v", batch_mul=2)
    torch.manual_seed(1)
    diffusion_loss(Recorder(), x0, z, schedule, "v", batch_mul=2, group=1)
    assert torch.equal(seen[-1], seen[-2]) and seen[-1].view(-1, 16).unique(dim=1).shape[1] > 1
    with pytest.raises(ValueError, match="group"):
        diffusion_loss(Recorder(), x0, z, schedule, "v", group=5)


def test_the_config_keeps_the_map_head_to_the_last_scale_and_whole_maps():
    with pytest.raises(ValueError, match="network"):
        HeadConfig(network="conv")
    with pytest.raises(ValueError, match="network"):
        HeadConfig(network="map", mode="full")
    with pytest.raises(ValueError, match="every token"):
        HeadConfig(network="map", last_drop=0.5)
    with pytest.raises(ValueError, match="guided"):
        HeadConfig(guided=1)
    with pytest.raises(ValueError, match="map_conv"):
        HeadConfig(network="map", map_conv="separable")
    for bad in (-0.1, True, "1"):
        with pytest.raises(ValueError, match="temperature"):
            HeadConfig(temperature=bad)
    for bad in (-0.1, True, "1", float("inf"), float("nan")):
        with pytest.raises(ValueError, match="draw_scale"):
            HeadConfig(draw_scale=bad)
        with pytest.raises(ValueError, match="cfg_scale"):
            HeadConfig(cfg_scale=bad)
    head = HeadConfig(network="map", map_conv="depthwise", guided=False, cfg_scale=1.0)
    assert head.for_mode("full").network == "mlp" and head.for_mode("full").map_conv == "full"
    assert head.for_mode("early").cfg_scale is None, "the ablations' heads are guided as HART's, with the ramp"
    assert head.for_mode("last") == head


def _model(**head) -> HART:
    torch.manual_seed(0)
    model = HART(PRESET.transformer, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                 dataclasses.replace(PRESET.head, **head))
    model.measure_residual_scale(ToyShapes(PRESET.data).batch(range(16))["image"])
    return model


def test_hart_trains_a_map_head_in_its_stage_and_keeps_harts_mlp_for_the_joint_training():
    model = _model(network="map", stage_steps=2, true_token_share=0.5).train()
    assert isinstance(model.head, MLPHead), "the joint training's head is HART's MLP"
    model.reset_head()  # the stage's head
    assert isinstance(model.head, MapHead) and model.head.pn == model.scales[-1]
    batch = ToyShapes(PRESET.data).batch(range(4))
    loss, logs = model.loss(batch["image"], batch["caption"], head_only=True)
    loss.backward()
    assert torch.isfinite(loss) and "diff" in logs
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.transformer.parameters())


@pytest.mark.parametrize("guided", [True, False])
def test_hart_samples_with_a_map_head_guided_or_once(guided):
    model = _model(network="map", guided=guided).eval()
    _randomised(model.head)
    rows, forward = [], model.head.forward
    model.head.forward = lambda x, t, z: rows.append(len(x)) or forward(x, t, z)
    out = model.sample_latent(["a red circle", "a blue square"], cfg_scale=3.0, sampling_steps=2, seed=0)
    n = model.scales[-1] ** 2
    assert rows == [(4 if guided else 2) * n] * 2, "a guided head runs on [cond; uncond], an unguided one once"
    assert out["path"] == "continuous" and not torch.equal(out["latent"], out["f_hat"])


@pytest.mark.parametrize("conv", ["full", "depthwise"])
def test_a_map_head_round_trips_through_a_file(tmp_path, conv):
    model = _model(network="map", stage_steps=2, map_conv=conv, temperature=0.7, draw_scale=0.8)
    model.reset_head()
    _randomised(model.head)
    tok = tmp_path / "tokenizer.safetensors"
    checkpoint.save(tok, model.tokenizer.state_dict(), {"kind": "tokenizer",
                                                        "config": dataclasses.asdict(PRESET.tokenizer)})
    model.save(tmp_path / "hart.safetensors", tok)
    loaded = HART.from_file(tmp_path / "hart.safetensors")
    assert isinstance(loaded.head, MapHead) and loaded.head_cfg == model.head_cfg
    prompts = ["a small green dotted square at the top"]
    assert torch.equal(model.generate(prompts, seed=3), loaded.generate(prompts, seed=3))


@pytest.mark.parametrize("head", [{}, {"condition": "none"}, {"network": "map", "guided": False},
                                  {"network": "map"}])
def test_the_no_cache_reference_draws_the_heads_residual_as_the_sampler_does(head):
    from hart_mini.model import sampling_variants as variants

    model = _model(**head).eval()
    _randomised(model.head)
    with torch.no_grad():  # an untrained transformer's zero gates hide the caption: [cond; uncond] must differ
        for p in model.transformer.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    if head.get("condition") == "none":  # a blind head's weights on z stay zero
        model.head.cond_embed.weight.data.zero_()
    prompts = ["a red circle", "a large blue dotted square at the top"]
    cached = model.sample_latent(prompts, cfg_scale=2.0, sampling_steps=3, seed=5)
    uncached = variants.sample_latent(model, prompts, cfg_scale=2.0, sampling_steps=3, seed=5, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached["indices"], uncached["indices"]))
    assert torch.allclose(cached["latent"], uncached["latent"], atol=1e-4)
