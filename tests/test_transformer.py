"""The next-scale transformer: block-causal mask, KV cache, caption dropout, text errors, determinism."""

import dataclasses

import pytest
import torch

from hart_mini.config import TransformerConfig, get_preset
from hart_mini.model import sampling_variants as variants
from hart_mini.model.data import ToyShapes
from hart_mini.model.hart import HART, caption_dropout, filter_logits
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer

PRESET = get_preset("smoke")


def _model(position="absolute", seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(width=32, depth=2, num_heads=2, text_depth=1, position=position)
    model = HART(cfg, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(cfg.text_len))
    for name, p in model.named_parameters():  # AdaLN-Zero starts as identity: make every path matter
        if "modulation" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def _batch(n=3):
    return ToyShapes(PRESET.data).batch(range(n))


@pytest.mark.parametrize("position", ["absolute", "rope"])
def test_changing_scale_j_never_changes_logits_of_scales_up_to_j(position):
    model = _model(position)
    q, starts = model.tokenizer.quantizer, model.transformer.starts
    batch = _batch()
    ids, mask = model.encode_text(batch["caption"])
    drop = torch.zeros(len(ids), dtype=torch.bool)
    with torch.no_grad():
        indices = model.tokenizer.tokenize(batch["image"]).indices
        base, _ = model.transformer(ids, mask, q.teacher_forcing_inputs(indices), drop)
        for j in range(len(model.scales)):
            changed = [i if k != j else torch.randint_like(i, PRESET.tokenizer.codebook_size)
                       for k, i in enumerate(indices)]
            logits, _ = model.transformer(ids, mask, q.teacher_forcing_inputs(changed), drop)
            upto = starts[j + 1]  # image tokens of scales 1..j+1 (0-based scale j included)
            assert torch.equal(logits[:, :upto], base[:, :upto]), f"scale {j} leaked into earlier logits"
            if j < len(model.scales) - 1:
                assert not torch.allclose(logits[:, upto:], base[:, upto:]), "later scales must see scale j"


@pytest.mark.parametrize("position", ["absolute", "rope"])
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_kv_cached_sampling_matches_one_full_masked_pass(position, cfg_scale):
    model = _model(position)
    prompts = _batch(4)["caption"]
    cached = model.sample_latent(prompts, cfg_scale=cfg_scale, seed=3)
    q = model.tokenizer.quantizer
    ids, mask = model.encode_text(prompts)
    with torch.no_grad():  # one teacher-forced pass over the sampled tokens
        full, h = model.transformer(ids, mask, q.teacher_forcing_inputs(cached["indices"]),
                                    torch.zeros(len(prompts), dtype=torch.bool))
    starts = model.transformer.starts
    for k, logits in enumerate(cached["logits"]):
        assert torch.allclose(logits, full[:, starts[k]:starts[k + 1]], atol=1e-5), f"scale {k}"
    assert torch.allclose(cached["h"], h[:, starts[-2]:], atol=1e-5)
    uncached = variants.sample_latent(model, prompts, cfg_scale=cfg_scale, seed=3, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached["indices"], uncached["indices"]))


def test_padding_text_tokens_are_masked():
    model = _model()
    batch = _batch()
    ids, mask = model.encode_text(batch["caption"])
    assert (~mask).any(), "these captions must be shorter than text_len"
    inputs = model.tokenizer.quantizer.teacher_forcing_inputs(model.tokenizer.tokenize(batch["image"]).indices)
    drop = torch.zeros(len(ids), dtype=torch.bool)
    with torch.no_grad():
        before, _ = model.transformer(ids, mask, inputs, drop)
        model.transformer.text.embed.weight[0].add_(5.0)  # change what a pad token looks like
        after, _ = model.transformer(ids, mask, inputs, drop)
    assert torch.allclose(before, after, atol=1e-6)


def test_caption_dropout_rate_is_ten_percent():
    torch.manual_seed(0)
    rate = caption_dropout(10_000, 0.1, torch.device("cpu")).float().mean().item()
    assert 0.09 <= rate <= 0.11
    model = _model()
    seen = []
    original = model.transformer.forward

    def spy(ids, mask, inputs, drop, keep=None, prev=None):
        seen.append(drop)
        return original(ids, mask, inputs, drop, keep, prev)

    model.transformer.forward = spy
    batch = ToyShapes(PRESET.data).batch(range(100))
    torch.manual_seed(1)
    for _ in range(20):
        model.loss(batch["image"], batch["caption"])
    share = torch.cat(seen).float().mean().item()
    assert 0.07 <= share <= 0.13  # 2000 draws of the rate the model's loss uses


def test_generation_is_deterministic_given_the_seed():
    model = _model()
    prompts = ["a large red striped circle at the top left", "a small blue square left of a yellow triangle"]
    a = model.generate(prompts, cfg_scale=2.0, top_k=20, top_p=0.9, seed=7)
    b = model.generate(prompts, cfg_scale=2.0, top_k=20, top_p=0.9, seed=7)
    c = model.generate(prompts, cfg_scale=2.0, top_k=20, top_p=0.9, seed=8)
    assert a.shape == (2, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_words_and_empty_prompts_raise_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"unknown word 'blu' in prompt 'a blu circle'; did you mean 'blue'"):
        model.generate(["a blu circle"])
    with pytest.raises(ValueError, match="the prompt is empty"):
        model.generate(["   "])
    with pytest.raises(ValueError, match="non-empty list"):
        model.generate([])
    with pytest.raises(ValueError, match="has 17 words; at most 16 fit"):
        model.generate([" ".join(["red"] * 17)])


@pytest.mark.parametrize("knobs, message", [
    ({"cfg_scale": -1.0}, "cfg_scale=-1.0 is invalid"),
    ({"top_p": 0.0}, r"top_p=0.0 is invalid: expected a number in \(0, 1\]"),
    ({"top_p": 1.5}, "top_p=1.5 is invalid"),
    ({"top_k": -3}, "top_k=-3 is invalid"),
])
def test_bad_sampling_knobs_raise(knobs, message):
    with pytest.raises(ValueError, match=message):
        _model().generate(["a red circle at the top"], **knobs)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.15, 0.1]]]))
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[[True, True, False, False]]]
    assert torch.isfinite(filter_logits(logits, 0, 0.7)).tolist() == [[[True, True, False, False]]]
    assert torch.isfinite(filter_logits(logits, 0, 0.5)).tolist() == [[[True, False, False, False]]]
    assert torch.isfinite(filter_logits(logits, 0, 1.0)).all()


def test_caption_tokenizer_pads_on_the_left_and_supports_labels():
    tok = CaptionTokenizer.toyshapes(6)
    ids, mask = tok(["a red circle", "a large blue dotted square at"])
    assert mask.tolist() == [[False, False, False, True, True, True], [True] * 6]
    assert tok.decode(ids[0]) == "a red circle"
    labels = CaptionTokenizer.from_captions(["red circle", "Blue square", "red circle"], mode="labels")
    assert labels.vocab_size == 3 and labels(["blue square"])[0].tolist() == [[2]]
    with pytest.raises(ValueError, match="unknown caption 'green circle'"):
        labels(["green circle"])
    assert CaptionTokenizer.from_dict(tok.to_dict()).vocab == tok.vocab


def test_bad_transformer_config_names_the_field():
    with pytest.raises(ValueError, match="num_heads=3 is invalid: expected a divisor of width=32"):
        TransformerConfig(width=32, num_heads=3)
    with pytest.raises(ValueError, match="position='learned' is invalid"):
        TransformerConfig(position="learned")
    with pytest.raises(ValueError, match="cond_dropout=1.0 is invalid"):
        dataclasses.replace(TransformerConfig(), cond_dropout=1.0)
    with pytest.raises(ValueError, match="adaln_gate=2 is invalid: expected a number in"):
        TransformerConfig(adaln_gate=2)


@pytest.mark.parametrize("gate", [0.0, 1.0])
def test_an_adaln_zero_block_gives_its_attention_no_gradient_until_its_gate_grows(gate):
    """AdaLN-Zero (gate 0): at init every block is the identity, so no image token reads the caption and the
    attention's q, k weights get exactly zero gradient; gate 1 starts them as plain pre-norm blocks."""
    torch.manual_seed(0)
    cfg = TransformerConfig(width=32, depth=2, num_heads=2, text_depth=0, text_position="phrases", adaln_gate=gate)
    model = HART(cfg, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(cfg.text_len))
    batch = _batch(4)
    captions = ["a small red circle left of a large blue square"] * 4
    mirrored = ["a small red circle right of a large blue square"] * 4
    loss, _ = model.loss(batch["image"], model.text_tokenizer(captions))
    loss.backward()
    qkv = model.transformer.blocks[0].attn.qkv.weight.grad[:2 * cfg.width]  # the q and k rows
    with torch.no_grad():
        q = model.tokenizer.quantizer
        inputs = q.teacher_forcing_inputs(model.tokenizer.tokenize(batch["image"]).indices)
        drop = torch.zeros(4, dtype=torch.bool)
        a, _ = model.transformer(*model.encode_text(captions), inputs, drop)
        b, _ = model.transformer(*model.encode_text(mirrored), inputs, drop)
    if gate == 0.0:
        assert torch.count_nonzero(qkv) == 0
        assert torch.allclose(a[:, 1:], b[:, 1:])  # image tokens: the relation word is not read at all
    else:
        assert qkv.abs().sum() > 0
        assert not torch.allclose(a[:, 1:], b[:, 1:], atol=1e-4)


def test_grid_position_features_tell_coarse_cells_apart_and_match_fine_cells_at_the_same_place():
    from hart_mini.model.transformer import NextScaleTransformer, grid_embedding

    coarse = grid_embedding(NextScaleTransformer._grid(2, 8), 8, 64)  # the four 2x2 cells, (4, 64)
    fine = grid_embedding(NextScaleTransformer._grid(8, 8), 8, 64)  # the 64 8x8 cells
    assert torch.cdist(coarse, coarse).add(torch.eye(4) * 1e9).min() > 1.0  # well apart, not 0.02 apart
    nearest = torch.cdist(coarse, fine).argmin(1)  # the fine cell most like each coarse cell
    rows, cols = nearest // 8, nearest % 8
    assert ((rows < 4).tolist(), (cols < 4).tolist()) == ([True, True, False, False], [True, False, True, False])


def test_grid_features_reach_only_the_coarse_scales_and_absolute_has_none():
    from hart_mini.model.transformer import NextScaleTransformer

    scales = (1, 2, 3, 4, 6, 8)
    grid = NextScaleTransformer(TransformerConfig(width=32, num_heads=2, position="grid"), scales, 8, 16, 10).grid
    starts = [sum(p * p for p in scales[:k]) for k in range(len(scales) + 1)]
    per_scale = [grid[starts[k]:starts[k + 1]].abs().sum().item() for k in range(len(scales))]
    assert all(v > 0 for v in per_scale[:4]) and per_scale[4:] == [0.0, 0.0]  # pn <= 8 / 2 only
    two_by_two = grid[1:5]  # the four 2x2 inputs are one vector; these features tell them apart
    assert torch.pdist(two_by_two).min() > 1.0
    absolute = NextScaleTransformer(TransformerConfig(width=32, num_heads=2, position="absolute"), scales, 8, 16, 10)
    assert torch.count_nonzero(absolute.grid) == 0


def _encoder(position: str, depth: int = 1):
    from hart_mini.model.text import CaptionTokenizer, TextEncoder

    text = CaptionTokenizer.toyshapes(16)
    torch.manual_seed(0)
    return text, TextEncoder(text.vocab_size, 16, 32, depth, 2, position, text.article_id).eval()


@pytest.mark.parametrize("position", ["learned", "counted", "segments", "phrases"])
def test_text_encoder_tells_swapped_attributes_apart_unless_order_blind(position):
    """With no position signal the encoder is a bag of words: after the two objects' colours are swapped,
    "red" gets the same features as before, so nothing says which object is red. The order-aware encodings
    must give the first object's "red" and the second's different features (what `diagnose text` found
    missing)."""
    text, encoder = _encoder(position)
    captions = ["a small red circle left of a large blue square", "a small blue circle left of a large red square"]
    ids, mask = text(captions)
    red = text.index["red"]
    if position == "learned":
        with torch.no_grad():
            encoder.pos.zero_()  # the shipped encoder's std 0.02 is nearly this: 25x below the words
    with torch.no_grad():
        feats = encoder(ids, mask)
    first, second = feats[0][ids[0] == red], feats[1][ids[1] == red]  # (1, D) each
    gap = (first - second).abs().max().item()
    assert gap < 1e-5 if position == "learned" else gap > 0.1


@pytest.mark.parametrize("position", ["counted", "segments", "phrases"])
def test_counted_positions_do_not_move_with_the_padding(position):
    """A word's position vector depends on its place in the caption, not on how much padding comes first."""
    from hart_mini.model.text import CaptionTokenizer

    text, encoder = _encoder(position)
    ids, mask = text(["a small red circle at the top left"])
    short = CaptionTokenizer.toyshapes(12)
    ids12, mask12 = short(["a small red circle at the top left"])
    out16, out12 = encoder(ids, mask)[mask], encoder(ids12, mask12)[mask12]
    assert torch.allclose(out16, out12, atol=1e-5)


def test_segments_start_a_new_phrase_at_each_article():
    text, encoder = _encoder("segments")
    ids, mask = text(["a small red circle left of a large blue square"])
    phrase = encoder.phrase(ids)[mask]
    assert phrase.tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("position", ["counted", "segments", "phrases"])
def test_only_phrases_bind_an_objects_words_without_encoder_blocks(position):
    """With no encoder blocks a word's features are its own vector and its place, so swapping the two
    objects' shapes leaves the colour words' features unchanged: nothing tells the generator that red goes
    with the circle. 'phrases' adds the phrase's mean word vector, so "red" carries its object's shape."""
    text, encoder = _encoder(position, depth=0)
    captions = ["a small red circle left of a large blue square", "a small red square left of a large blue circle"]
    ids, mask = text(captions)
    with torch.no_grad():
        feats = encoder(ids, mask)
    for colour in ("red", "blue"):
        where = ids[0] == text.index[colour]
        gap = (feats[0][where] - feats[1][where]).abs().max().item()
        assert gap > 0.1 if position == "phrases" else gap < 1e-5


def test_phrase_means_average_each_noun_phrase_and_skip_padding():
    text, encoder = _encoder("phrases", depth=0)
    ids, mask = text(["a small red circle left of a large blue square"])
    words = encoder.embed(ids)
    means = encoder.phrase_means(words, ids, mask)[0]  # (T, D)
    first, second = mask[0].nonzero().flatten()[:6], mask[0].nonzero().flatten()[6:]  # "a small red circle left of"
    assert torch.allclose(means[first], words[0, first].mean(0).expand(6, -1), atol=1e-6)
    assert torch.allclose(means[second], words[0, second].mean(0).expand(4, -1), atol=1e-6)


def test_text_position_is_checked_and_needs_the_article_for_segments():
    from hart_mini.model.text import TextEncoder

    with pytest.raises(ValueError, match="text_position"):
        TransformerConfig(text_position="rope")
    for position in ("segments", "phrases"):
        with pytest.raises(ValueError, match="article_id"):
            TextEncoder(10, 16, 32, 1, 2, position, None)


def _raster_model(raster_scales=3, position="absolute"):
    torch.manual_seed(0)
    cfg = TransformerConfig(width=32, depth=2, num_heads=2, text_depth=1, position=position,
                            raster_scales=raster_scales)
    model = HART(cfg, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(cfg.text_len))
    for name, p in model.named_parameters():  # AdaLN-Zero and the zero prev_embed start silent: make them matter
        if "modulation" in name or "prev_embed" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_a_raster_token_sees_the_tokens_before_it_in_its_scale_and_no_later_one():
    model = _raster_model(raster_scales=3)
    q, starts = model.tokenizer.quantizer, model.transformer.starts
    batch = _batch()
    ids, mask = model.encode_text(batch["caption"])
    drop = torch.zeros(len(ids), dtype=torch.bool)

    def logits_of(indices):
        with torch.no_grad():
            return model.transformer(ids, mask, q.teacher_forcing_inputs(indices), drop,
                                     prev=model.previous_codes(indices))[0]

    indices = model.tokenizer.tokenize(batch["image"]).indices
    base = logits_of(indices)
    for k in (1, 2):  # the 2x2 and 3x3 scales are raster scales: change their token j = 1
        changed = [i.clone() for i in indices]
        changed[k].view(len(ids), -1)[:, 1] = (changed[k].view(len(ids), -1)[:, 1] + 1) % q.codebook.num_embeddings
        logits = logits_of(changed)
        first = starts[k]
        assert torch.equal(logits[:, :first + 2], base[:, :first + 2]), f"scale {k}: token 1 leaked backwards"
        assert not torch.allclose(logits[:, first + 2], base[:, first + 2]), f"scale {k}: token 2 must read token 1"
    # a parallel scale (4x4 here): its tokens do not see each other
    changed = [i.clone() for i in indices]
    changed[3].view(len(ids), -1)[:, 1] = (changed[3].view(len(ids), -1)[:, 1] + 1) % q.codebook.num_embeddings
    assert torch.equal(logits_of(changed)[:, :starts[4]], base[:, :starts[4]])


@pytest.mark.parametrize("position", ["absolute", "rope"])
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_raster_sampling_token_by_token_matches_one_teacher_forced_pass(position, cfg_scale):
    model = _raster_model(raster_scales=3, position=position)
    prompts = _batch(4)["caption"]
    cached = model.sample_latent(prompts, cfg_scale=cfg_scale, seed=3)
    q = model.tokenizer.quantizer
    ids, mask = model.encode_text(prompts)
    with torch.no_grad():
        full, h = model.transformer(ids, mask, q.teacher_forcing_inputs(cached["indices"]),
                                    torch.zeros(len(prompts), dtype=torch.bool),
                                    prev=model.previous_codes(cached["indices"]))
    starts = model.transformer.starts
    for k, logits in enumerate(cached["logits"]):
        assert torch.allclose(logits, full[:, starts[k]:starts[k + 1]], atol=1e-5), f"scale {k}"
    assert torch.allclose(cached["h"], h[:, starts[-2]:], atol=1e-5)
    forced = model.sample_latent(prompts, cfg_scale=cfg_scale, seed=5, forced=cached["indices"][:3])
    assert all(torch.equal(a, b) for a, b in zip(forced["indices"][:3], cached["indices"][:3]))


def test_raster_scales_are_checked():
    with pytest.raises(ValueError, match="raster_scales=-1 is invalid: expected an integer >= 0"):
        TransformerConfig(raster_scales=-1)
    cfg = TransformerConfig(width=32, depth=1, num_heads=2, text_depth=0, raster_scales=len(PRESET.tokenizer.scales))
    with pytest.raises(ValueError, match="raster_scales=6 is invalid: expected fewer than the tokenizer's 6"):
        HART(cfg, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(cfg.text_len))
    model = _raster_model()
    with pytest.raises(ValueError, match="raster_scales=3 is invalid: expected 0 here"):
        variants.sample_latent(model, _batch(2)["caption"], use_cache=False)
    with pytest.raises(ValueError, match="prev=None is invalid"):
        model.transformer(*model.encode_text(_batch(2)["caption"]), torch.zeros(2, 5, 8), torch.zeros(2).bool())
