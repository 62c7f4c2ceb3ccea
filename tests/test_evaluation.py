"""Judge, FD, prompt accuracy and the latent diffusion baseline."""

import dataclasses

import pytest
import torch

from hart_mini import pretrained
from hart_mini.config import get_preset
from hart_mini.measure.evaluate import attribute_counts
from hart_mini.measure.judge import NONE, Judge, cell_targets, prompt_accuracy
from hart_mini.measure.metrics import frechet_distance, frechet_mean_term
from hart_mini.model.baselines import LatentDiffusion
from hart_mini.model.data import SHAPES, ToyShapes, parse_caption
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer

PRESET = get_preset("smoke")


def test_fd_of_a_set_with_itself_is_zero_and_grows_with_noise():
    torch.manual_seed(0)
    a = torch.randn(2000, 16) @ torch.randn(16, 16) + 3.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    distances = [frechet_distance(a, a + s * torch.randn_like(a)) for s in (0.1, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] < 0.1 < distances[-1]
    shifted = frechet_distance(a, a + torch.tensor(2.0))  # a pure mean shift of 2 in 16 dims: 16 * 4 = 64
    assert shifted == pytest.approx(64.0, rel=1e-6)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, a[:, :3])


def test_fd_mean_term_is_the_mean_shift_alone():
    torch.manual_seed(0)
    a = torch.randn(2000, 16) @ torch.randn(16, 16) + 3.0
    assert frechet_mean_term(a, a + torch.tensor(2.0)) == pytest.approx(64.0, rel=1e-6)  # all of that FD
    spread = a + 0.5 * torch.randn_like(a)
    spread = spread - spread.mean(0) + a.mean(0)  # a's mean, a wider covariance
    assert frechet_mean_term(a, spread) < 1e-9 < frechet_distance(a, spread)  # FD only in the covariances
    b = 1.5 * a + 1.0
    assert 0 < frechet_mean_term(a, b) < frechet_distance(a, b)


def test_captions_parse_back_to_their_labels():
    batch = ToyShapes(PRESET.data).batch(range(200))
    for caption, labels in zip(batch["caption"], batch["labels"].tolist()):
        parsed = parse_caption(caption)
        assert parsed["objects"][0] == tuple(labels[0:4])
        if labels[5] < 0:
            assert parsed["position"] == labels[4] and parsed["relation"] is None
        else:
            assert parsed["objects"][1] == tuple(labels[5:9]) and parsed["relation"] == labels[10]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_caption("a purple cloud")


def test_cell_targets_put_each_object_in_its_cell():
    labels = ToyShapes(PRESET.data).batch(range(50))["labels"]
    targets = cell_targets(labels)
    occupied = (targets["shape"] != NONE).sum(1)
    assert torch.equal(occupied, (labels[:, [0, 5]] >= 0).sum(1))
    assert torch.all((targets["colour"] >= 0) == (targets["shape"] != NONE))


class _Oracle(Judge):
    """A judge that reads the true labels: prompt accuracy must then be 1 on real images."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels

    def predict(self, images):
        return cell_targets(self.labels)


def test_prompt_accuracy_is_one_for_a_perfect_judge_and_drops_for_wrong_prompts():
    batch = ToyShapes(PRESET.data).batch(range(100))
    oracle = _Oracle(batch["labels"])
    assert prompt_accuracy(oracle, batch["image"], batch["caption"])["prompt_accuracy"] == 1.0
    shuffled = batch["caption"][1:] + batch["caption"][:1]
    assert prompt_accuracy(oracle, batch["image"], shuffled)["prompt_accuracy"] < 0.2


def test_one_and_two_object_prompt_accuracy_split_the_overall_one():
    """The overall accuracy is the two splits weighted by their captions; wrong two-object captions lower the
    two-object split alone."""
    batch = ToyShapes(PRESET.data).batch(range(100))
    oracle = _Oracle(batch["labels"])
    two = [len(parse_caption(c)["objects"]) == 2 for c in batch["caption"]]
    n2 = sum(two)
    assert 0 < n2 < 100
    perfect = prompt_accuracy(oracle, batch["image"], batch["caption"])
    assert perfect["prompt_accuracy_one"] == perfect["prompt_accuracy_two"] == 1.0
    pairs = [i for i, t in enumerate(two) if t]  # each two-object image gets another two-object caption
    captions = list(batch["caption"])
    for i, j in zip(pairs, pairs[1:] + pairs[:1]):
        captions[i] = batch["caption"][j]
    result = prompt_accuracy(oracle, batch["image"], captions)
    assert result["prompt_accuracy_one"] == 1.0 and result["prompt_accuracy_two"] < 0.2
    weighted = ((100 - n2) * result["prompt_accuracy_one"] + n2 * result["prompt_accuracy_two"]) / 100
    assert result["prompt_accuracy"] == pytest.approx(weighted)
    counts = attribute_counts(batch["caption"])
    assert counts["prompt_accuracy_two"] == n2 and counts["prompt_accuracy_one"] == 100 - n2


def test_object_accuracy_counts_each_object_of_the_images_with_the_right_count():
    """A perfect judge reads every object right; captions whose two objects' shapes are swapped (objects that
    differ in every attribute, so the pairing stays the right one) make exactly those shapes wrong and nothing
    else; one-object images are counted apart."""
    from hart_mini.measure.judge import object_accuracy

    batch = ToyShapes(PRESET.data).batch(range(200))
    oracle = _Oracle(batch["labels"])
    two = [i for i, c in enumerate(batch["caption"]) if len(parse_caption(c)["objects"]) == 2]
    assert object_accuracy(oracle, batch["image"], batch["caption"]) == {
        "images": len(two), "shape": 1.0, "colour": 1.0, "size": 1.0, "texture": 1.0}
    assert object_accuracy(oracle, batch["image"], batch["caption"], objects=1)["images"] == 200 - len(two)
    captions, swapped = list(batch["caption"]), 0
    for i in two:
        first, second = parse_caption(captions[i])["objects"]
        if all(a != b for a, b in zip(first, second)):
            words = captions[i].split()
            at = [j for j, w in enumerate(words) if w in SHAPES]
            words[at[0]], words[at[1]] = words[at[1]], words[at[0]]
            captions[i], swapped = " ".join(words), swapped + 1
    result = object_accuracy(oracle, batch["image"], captions)
    assert swapped > 0 and result["colour"] == result["size"] == result["texture"] == 1.0
    assert result["shape"] == pytest.approx(1 - swapped / len(two))


def _one_image_judge(cells: dict):
    """A judge that sees, in one image, the objects {cell: (shape, colour, size, texture)}."""
    pred = {k: torch.full((1, 9), NONE if k == "shape" else 0, dtype=torch.long) for k in ("shape", *ATTRS)}
    for cell, attrs in cells.items():
        for k, v in zip(("shape", *ATTRS), attrs):
            pred[k][0, cell] = v

    class _Fixed(torch.nn.Module):
        def predict(self, images):
            return pred

    return _Fixed()


ATTRS = ("colour", "size", "texture")


def test_pairing_prefers_the_order_in_which_the_relation_holds_on_a_tie():
    # two identical red small plain circles at cells 0 (top left) and 2 (top right): both orders match every
    # attribute, and only (2, 0) makes "right of" true
    judge = _one_image_judge({0: (0, 0, 0, 0), 2: (0, 0, 0, 0)})
    caption = "a small red circle right of a small red circle"
    assert prompt_accuracy(judge, torch.zeros(1, 3, 32, 32), [caption])["prompt_accuracy"] == 1.0


def test_pairing_considers_every_detected_object_not_only_the_first_two():
    # three detections; the caption's square and triangle are the 2nd and 3rd (cells 4 and 5)
    judge = _one_image_judge({0: (0, 1, 0, 0), 4: (1, 0, 1, 0), 5: (2, 4, 0, 0)})
    caption = "a large red square left of a small blue triangle"
    result = prompt_accuracy(judge, torch.zeros(1, 3, 32, 32), [caption])
    assert result["acc_shape"] == 1.0 and result["acc_colour"] == 1.0 and result["acc_relation"] == 1.0
    assert result["acc_count"] == 0.0 and result["prompt_accuracy"] == 0.0  # three objects for two named


@pytest.mark.skipif(not pretrained.available("judge", "cpu"), reason="the cpu judge is not shipped yet")
def test_shipped_judge_reads_real_images_correctly():
    judge = pretrained.load("judge", "cpu")
    held = ToyShapes(get_preset("cpu").data, "test").batch(range(500))
    result = prompt_accuracy(judge, held["image"], held["caption"])
    assert result["prompt_accuracy"] >= 0.95, result


def test_latent_diffusion_baseline_trains_and_samples():
    torch.manual_seed(0)
    model = LatentDiffusion(PRESET.transformer, HybridTokenizer(PRESET.tokenizer), CaptionTokenizer.toyshapes(),
                            dataclasses.replace(PRESET.baseline, sampling_steps=4))
    batch = ToyShapes(PRESET.data).batch(range(4))
    model.measure_latent_scale(batch["image"])
    loss, logs = model.loss(batch["image"], batch["caption"])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in model.tokenizer.parameters())
    a = model.generate(batch["caption"][:2], cfg_scale=2.0, seed=1)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, model.generate(batch["caption"][:2], cfg_scale=2.0, seed=1))
    with pytest.raises(ValueError, match="cfg_scale=-1 is invalid"):
        model.generate(["a red circle at the top"], cfg_scale=-1)


def test_a_late_evaluation_measures_what_it_drew_and_says_how_many():
    """With its deadline already past, an evaluation stops after its first batch (at least 2 samples, FD needs
    them) and says so; without one it draws every batch."""
    import time

    from hart_mini.measure.evaluate import evaluate_generator, evaluate_tokenizer

    drawn = []

    def generate(prompts, seed):
        drawn.append(len(prompts))
        return torch.rand(len(prompts), 3, 32, 32)

    judge, past = Judge(32), time.perf_counter() - 1
    late = evaluate_generator(generate, judge, PRESET.data, 10, 3, deadline=past)
    assert drawn == [3] and late["n"] == 3 and late["n_planned"] == 10 and late["cut_by_deadline"]
    drawn.clear()
    assert evaluate_generator(generate, judge, PRESET.data, 10, 1, deadline=past)["n"] == 2 and drawn == [1, 1]
    drawn.clear()
    full = evaluate_generator(generate, judge, PRESET.data, 10, 3)
    assert drawn == [3, 3, 3, 1] and full["n"] == 10 and "cut_by_deadline" not in full
    tokenizer, data = HybridTokenizer(PRESET.tokenizer), ToyShapes(PRESET.data, "test", size=10)
    late = evaluate_tokenizer(tokenizer, data, 10, batch_size=4, judge=judge, deadline=past)
    assert late["n"] == 4 and late["cut_by_deadline"] and "fd_discrete" in late
    assert evaluate_tokenizer(tokenizer, data, 10, batch_size=4)["n"] == 10
