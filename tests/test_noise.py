"""Error bars and the rules built on them: binomial SE, seed aggregation, verdicts, guidance tuning and the
matched-quality selection of the benchmark (synthetic rows: no model runs)."""

import statistics

import pytest
import torch

from hart_mini.bench import choose_cfg, matched_point, matched_quality
from hart_mini.config import get_preset
from hart_mini.measure import evaluate
from hart_mini.measure.evaluate import aggregate_seeds, aggregate_training_seeds, attribute_counts, binomial_se, verdict
from hart_mini.model.data import ToyShapes


def test_binomial_se_is_sqrt_p_q_over_n_and_matches_simulated_spread():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.2, 400) == pytest.approx((0.2 * 0.8 / 400) ** 0.5)
    assert binomial_se(0.0, 10) == 0.0 and binomial_se(1.0, 10) == 0.0
    gen = torch.Generator().manual_seed(0)
    shares = (torch.rand(20000, 250, generator=gen) < 0.3).double().mean(1)  # 20 000 runs of 250 trials
    assert float(shares.std()) == pytest.approx(binomial_se(0.3, 250), rel=0.03)
    with pytest.raises(ValueError, match="n=0"):
        binomial_se(0.5, 0)
    with pytest.raises(ValueError, match="p=1.5"):
        binomial_se(1.5, 10)


def test_seed_spread_is_mean_and_sample_sd():
    values = [1.0, 1.2, 0.7]
    mean, sd = evaluate.seed_spread(values)
    assert mean == pytest.approx(statistics.fmean(values)) and sd == pytest.approx(statistics.stdev(values))
    assert evaluate.seed_spread([0.8]) == (0.8, 0.0)
    with pytest.raises(ValueError):
        evaluate.seed_spread([])


def test_attribute_counts_split_position_and_relation_by_object_count():
    captions = ToyShapes(get_preset("smoke").data, "test").batch(range(300))["caption"]
    counts = attribute_counts(captions)
    assert counts["prompt_accuracy"] == counts["acc_shape"] == 300
    assert counts["acc_position"] + counts["acc_relation"] == 300
    assert counts["acc_position"] == sum(" at the " in c for c in captions) > 0


def test_aggregate_seeds_gives_mean_sd_and_binomial_se_on_each_attributes_own_trials():
    rows = [{"n": 100, "fd": 1.0, "prompt_accuracy": 0.4, "acc_position": 0.5},
            {"n": 100, "fd": 1.4, "prompt_accuracy": 0.6, "acc_position": 0.7}]
    out = aggregate_seeds(rows, {"prompt_accuracy": 100, "acc_position": 25})
    assert out["fd"] == pytest.approx(1.2) and out["fd_sd"] == pytest.approx(statistics.stdev([1.0, 1.4]), abs=1e-4)
    assert out["prompt_accuracy"] == pytest.approx(0.5) and out["prompt_accuracy_se"] == pytest.approx(0.05)
    assert out["acc_position_se"] == pytest.approx(binomial_se(0.6, 25), abs=1e-4)  # 25 trials, not 100


def test_evaluate_generator_weights_each_chunk_by_the_trials_it_counted(monkeypatch):
    """Position accuracy is over one-object captions only: chunks must be pooled by those counts."""
    import hart_mini.measure.judge as judge_module
    from hart_mini.measure.judge import Judge

    preset = get_preset("smoke")

    def fake_accuracy(judge, images, captions):  # every position right in the first chunk, none in the second
        first = len(captions) == 500
        return {"prompt_accuracy": 0.0, "n": len(captions), "acc_position": 1.0 if first else 0.0}

    monkeypatch.setattr(judge_module, "prompt_accuracy", fake_accuracy)
    torch.manual_seed(0)
    n = 600
    noise_images = lambda prompts, seed: torch.rand(len(prompts), 3, 32, 32)
    result = evaluate.evaluate_generator(noise_images, Judge(32), preset.data, n)
    captions = ToyShapes(preset.data, "test", size=n).batch(range(n))["caption"]
    expected = attribute_counts(captions[:500])["acc_position"] / attribute_counts(captions)["acc_position"]
    assert abs(expected - 500 / n) > 1e-3  # weighting by chunk size instead would give 500 / n
    assert result["acc_position"] == pytest.approx(expected, abs=1e-4)


def _row(label, fd, fd_sd, acc, acc_se, **extra):
    return {"label": label, "fd": fd, "fd_sd": fd_sd, "prompt_accuracy": acc, "prompt_accuracy_se": acc_se, **extra}


def test_verdict_calls_differences_inside_the_combined_noise_that():
    a, b = _row("A", 1.00, 0.03, 0.50, 0.01), _row("B", 1.04, 0.03, 0.53, 0.01)
    fd = verdict(a, b, "fd")  # |0.04| < hypot(0.03, 0.03) = 0.042
    assert fd["verdict"] == "inside the noise" and fd["noise"] == pytest.approx(0.0424, abs=1e-4)
    assert verdict(a, b, "prompt_accuracy")["verdict"] == "B better"  # 0.03 > hypot(0.01, 0.01)
    quiet = _row("A", 1.00, 0.0, 0.50, 0.0)
    assert verdict(quiet, _row("B", 1.04, 0.0, 0.5, 0.0), "fd")["verdict"] == "A better"  # lower FD is better
    assert not evaluate.clearly_better(a, a, "fd")


def test_training_seed_spread_never_counts_for_less_than_the_sampling_noise():
    same = [{"train_seed": s, **_row("x", 1.0, 0.05, 0.5, 0.02)} for s in (0, 1)]  # two identical runs: sd 0
    agg = aggregate_training_seeds(same, "X")
    assert agg["fd_sd"] == 0.0 and agg["fd_sd_sampling"] == pytest.approx(0.05)
    other = aggregate_training_seeds([{"train_seed": s, **_row("y", 1.06, 0.05, 0.5, 0.02)} for s in (0, 1)], "Y")
    assert verdict(agg, other, "fd")["verdict"] == "inside the noise"  # 0.06 < hypot(0.05, 0.05)
    apart = aggregate_training_seeds([{"train_seed": 0, **_row("z", 0.9, 0.0, 0.5, 0.0)},
                                      {"train_seed": 1, **_row("z", 1.3, 0.0, 0.5, 0.0)}], "Z")
    assert apart["fd"] == pytest.approx(1.1) and apart["fd_sd"] == pytest.approx(0.2828, abs=1e-4)
    assert apart["train_seeds"] == [0, 1] and len(apart["per_train_seed"]) == 2


def _point(steps, fd, fd_sd, acc, acc_se, throughput=10.0, macs=1e9):
    return {"steps": steps, **_row(f"{steps} steps", fd, fd_sd, acc, acc_se), "throughput_img_s": throughput,
            "latency_s": 1 / throughput, "macs_per_image": macs}


HART = {**_row("HART", 1.00, 0.05, 0.50, 0.01), "throughput_img_s": 100.0, "latency_s": 0.01, "macs_per_image": 1e8}


def test_matched_point_is_the_fewest_steps_inside_the_noise_of_harts_quality():
    baseline = [_point(20, 0.90, 0.05, 0.52, 0.01, 20.0, 4e9), _point(5, 2.00, 0.05, 0.30, 0.01, 80.0, 1e9),
                _point(10, 1.05, 0.05, 0.49, 0.01, 40.0, 2e9)]  # unsorted on purpose
    assert matched_point(HART, baseline)["steps"] == 10  # FD +0.05 < 0.071, accuracy -0.01 < 0.014
    headline = matched_quality(HART, baseline)
    assert headline["baseline_steps"] == 10 and headline["throughput_ratio"] == 2.5 and headline["macs_ratio"] == 20.0
    exact = [{**p, "fd_sd": 0.0, "prompt_accuracy_se": 0.0} for p in baseline]
    noiseless_hart = {**HART, "fd_sd": 0.0, "prompt_accuracy_se": 0.0}
    assert matched_point(noiseless_hart, exact)["steps"] == 20  # without noise, 10 steps is simply worse


def test_matched_point_needs_both_fd_and_prompt_accuracy_and_is_null_when_never_reached():
    better_fd_worse_prompts = [_point(10, 0.50, 0.01, 0.40, 0.01), _point(30, 0.60, 0.01, 0.45, 0.01)]
    assert matched_point(HART, better_fd_worse_prompts) is None
    headline = matched_quality(HART, better_fd_worse_prompts)
    assert headline["baseline_steps"] is None and headline["throughput_ratio"] is None
    assert headline["macs_ratio"] is None and "does not reach" in headline["note"]
    reached_at_once = matched_quality(HART, [_point(5, 0.9, 0.01, 0.55, 0.01), _point(50, 0.8, 0.01, 0.6, 0.01)])
    assert reached_at_once["baseline_steps"] == 5 and "upper bound" in reached_at_once["note"]


def test_choose_cfg_takes_the_lowest_fd_among_settings_with_prompt_accuracy_inside_the_noise_of_the_best():
    sweep = [{"cfg": c, **_row(f"cfg {c}", fd, 0.02, acc, 0.02)} for c, fd, acc in
             ((0.0, 1.5, 0.20), (3.0, 0.9, 0.50), (4.5, 0.7, 0.48), (6.0, 0.6, 0.40))]
    assert choose_cfg(sweep)["cfg"] == 4.5  # 6.0 has the lowest FD but clearly fewer prompts right
    tight = [{**r, "prompt_accuracy_se": 0.001} for r in sweep]
    assert choose_cfg(tight)["cfg"] == 3.0  # with tiny noise only the best accuracy qualifies


def test_paired_verdict_cancels_what_varies_between_training_seeds():
    """One model with its head on and skipped: the training seeds move both alike, the difference stays."""
    on = aggregate_training_seeds([{"train_seed": 0, **_row("on", 0.90, 0.01, 0.5, 0.0)},
                                   {"train_seed": 1, **_row("on", 4.30, 0.01, 0.5, 0.0)}], "head on")
    off = aggregate_training_seeds([{"train_seed": 0, **_row("off", 0.95, 0.01, 0.5, 0.0)},
                                    {"train_seed": 1, **_row("off", 4.36, 0.01, 0.5, 0.0)}], "head skipped")
    assert verdict(on, off, "fd")["verdict"] == "inside the noise"  # the seeds' spread (2.4) swamps 0.055
    paired = verdict(on, off, "fd", paired=True)
    assert paired["verdict"] == "head on better"
    assert paired["noise"] == pytest.approx(0.0141, abs=1e-4)  # the sampling floor: the per-seed differences vary less
    other_seeds = aggregate_training_seeds([{"train_seed": 5, **_row("x", 1.0, 0.01, 0.5, 0.0)},
                                            {"train_seed": 6, **_row("x", 1.0, 0.01, 0.5, 0.0)}], "x")
    with pytest.raises(ValueError, match="same training seeds"):
        verdict(on, other_seeds, "fd", paired=True)
