"""Ablations: `python -m hart_mini ablate NAME --preset P --out DIR` (notebook 09 reads their results).

    head     residual head on vs off: HART; the same model with the head skipped; a discrete-only model
             trained with the same budget (HART's Table 5, "HART-VAR")
    full     residual head vs full-token head (MAR-style), each with a head-steps sweep (Fig. 7 left)
    early    diffusion-early (the head corrects every scale and feeds the next) vs diffusion-last (HART)
    steps    the head's sampling steps: 1, 2, 4, 8, 16, 50
    decoder  one decoder trained alternately vs a decoder trained on continuous latents only (Fig. 7)
    cfg      classifier-free guidance scale sweep
    position fixed 'grid' position features on the coarse scales vs VAR's learned vectors alone ('absolute'),
             with each variant's per-scale caption sensitivity (hart_mini.diagnose)

Noise. Every evaluation runs with several sampling seeds (`--seeds`): FD is the mean +- sd over them, each
accuracy comes with its binomial SE. The ablations that train models (head, early, full) train every
variant once per training seed (`--train-seeds`, TrainConfig.seed: initial weights and batches), in
DIR/<variant>_seed<s>_<preset>_<recipe> (reused if there; the recipe is a digest of the configs, the training
budget and the tokenizer, so another preset or recipe never reuses a variant), and report the mean +- sd
over training seeds. Each compared
difference gets a verdict (evaluate.verdict): "inside the noise" when it is smaller than the combined
spread, else which side is better. The reference HART (diffusion-last) is trained per seed too, except
that `--reference FILE` (e.g. the shipped one, trained with the preset's seed 0) stands in for the first
training seed's. Each ablation writes DIR/NAME.json (the numbers, N, seeds, device, command) and
DIR/NAME.png (error bars: the noise the verdicts use). DIR is the ablation's own folder: running an
ablation there again reuses its trained variants and replaces its NAME.json and NAME.png (DIR may not be in
data/ or notebooks/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from hart_mini import checkpoint
from hart_mini.bench import timed
from hart_mini.course import viz
from hart_mini.measure.evaluate import (
    aggregate_training_seeds,
    evaluate_seeds,
    evaluate_tokenizer,
    held_out,
    noise,
    verdict,
)
from hart_mini.model import sampling_variants
from hart_mini.pretrained import check_fits

ABLATIONS = ("head", "full", "early", "steps", "decoder", "cfg", "position")
TRAINED = ("head", "full", "early", "position")
STEPS = (1, 2, 4, 8, 16, 50)
CFGS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0)
NOISE = ("error bars and verdicts: FD's spread is the larger of its sd over training seeds and its sd over "
         "sampling seeds; an accuracy's the larger of its sd over training seeds and its binomial SE; a "
         "difference is inside the noise when smaller than sqrt(spread_a^2 + spread_b^2), or, for one model "
         "measured two ways (paired), than the sd over training seeds of the per-seed differences (never below "
         "the sampling noise)")


class Context:
    """What every ablation needs: preset, device, judge, held-out prompts, seeds, output folder."""

    def __init__(self, preset, out: Path, device: torch.device, judge, n_eval: int, tokenizer: Path | None,
                 reference: Path | None, seeds: Sequence[int] = (0, 1000, 2000), train_seeds: Sequence[int] = (0,),
                 evaluations: int | None = None):
        self.preset, self.out, self.device, self.judge, self.n = preset, out, device, judge, n_eval
        self.tokenizer, self.reference_file = tokenizer, reference
        self.seeds, self.train_seeds = list(seeds), list(train_seeds)
        self.real = held_out(preset.data, max(n_eval, 16))
        self._models: dict[tuple[str, int], object] = {}
        self.variants: dict[str, str] = {}  # variant -> the folder it was trained in (or reused from)
        self.bar = tqdm(total=evaluations, desc="ablate", unit="evaluation", dynamic_ncols=True)

    def evaluate(self, generate, label: str) -> dict:
        """FD and prompt accuracy on n_eval prompts over the sampling seeds, and the latency of 16 images."""
        self.bar.set_postfix_str(label)
        row = evaluate_seeds(generate, self.judge, self.preset.data, self.n, self.seeds,
                             {k: v[:self.n] for k, v in self.real.items()})
        prompts = self.real["caption"][:16]
        row["seconds_per_16_images"] = round(timed(lambda: generate(prompts, 0), self.device, 3, 1), 4)
        self.bar.update(1)
        return {"label": label, **row}

    def trained(self, mode: str, seed: int, position: str | None = None):
        """A HART of the given head mode (and transformer position scheme, default the preset's) trained with
        the preset's budget and training seed `seed`, in OUT/<mode>[_<position>]_seed<seed> (reused if there)."""
        from hart_mini import train
        from hart_mini.model.hart import HART

        name = mode if position is None else f"{mode}_{position}"
        if (name, seed) not in self._models:
            transformer = self.preset.transformer if position is None else dataclasses.replace(
                self.preset.transformer, position=position)
            preset = dataclasses.replace(self.preset, transformer=transformer,
                                         hart_train=dataclasses.replace(self.preset.hart_train, seed=seed))
            folder = self.out / variant_folder(preset, name, mode, self.tokenizer)
            self.variants[f"{name}_seed{seed}"] = folder.name
            file = folder / "hart.safetensors"
            # a run stopped early leaves its model, flagged unfinished: continue it
            done = file.exists() and checkpoint.load(file)[1].get("finished", True)
            if done and checkpoint.read_meta(file).get("preset") != preset.name:
                raise ValueError(f"{str(file)!r} was trained for preset {checkpoint.read_meta(file).get('preset')!r},"
                                 f" not {preset.name!r}, yet sits in this preset's variant folder: move it away")
            if not done:
                run = train.RunOptions(device=str(self.device), resume=True)
                train.train_hart(preset, folder, self.tokenizer, run,
                                 f"ablate: train_hart(mode={mode!r}, position={transformer.position!r}, "
                                 f"seed={seed})", mode)
            self._models[name, seed] = HART.from_file(file, self.device)
        return self._models[name, seed]

    def reference(self, seed: int | None = None):
        """The diffusion-last HART of a training seed (default: the first) every ablation compares against:
        --reference for the first seed when given, else trained here."""
        from hart_mini.model.hart import HART

        seed = self.train_seeds[0] if seed is None else seed
        if self.reference_file and seed == self.train_seeds[0]:
            if ("reference", seed) not in self._models:
                model = HART.from_file(self.reference_file, self.device)
                check_fits(model, self.preset, self.reference_file)
                self._models["reference", seed] = model
            return self._models["reference", seed]
        return self.trained("last", seed)

    def replicated(self, variants: dict[str, Callable[[int], Callable]]) -> list[dict]:
        """variants: label -> (training seed -> generate). Each evaluated for every training seed, then
        aggregated over them: mean and sd over training seeds, per-seed rows kept (aggregate_training_seeds)."""
        rows: dict[str, list[dict]] = {label: [] for label in variants}
        for seed in self.train_seeds:
            for label, make in variants.items():
                rows[label].append({"train_seed": seed, **self.evaluate(make(seed), label)})
        return [aggregate_training_seeds(r, label) for label, r in rows.items()]


def variant_folder(preset, name: str, mode: str, tokenizer: Path | None) -> str:
    """'<name>_seed<s>_<preset>_<recipe>': where a trained variant lives. The recipe is 8 hex digits of the
    sha256 of what makes the model (transformer, head, training budget and seed, data, tokenizer file), so a
    variant is reused only by a run that would train the very same one."""
    import hashlib
    import json

    from hart_mini import pretrained

    tokenizer = tokenizer or pretrained.path("tokenizer", preset.shipped)
    tok = tokenizer / "tokenizer.safetensors" if tokenizer.is_dir() else tokenizer
    recipe = {"transformer": dataclasses.asdict(preset.transformer), "train": dataclasses.asdict(preset.hart_train),
              "head": dataclasses.asdict(preset.head.for_mode(mode)),
              "data": dataclasses.asdict(preset.data), "tokenizer": checkpoint.sha256(tok)}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}_seed{preset.hart_train.seed}_{preset.name}_{digest}"


def _generator(model, **knobs):
    # sampling_variants.generate samples every head mode (the ablation models include 'full' and 'early')
    return lambda prompts, seed: sampling_variants.generate(model, prompts, seed=seed, **knobs)


def compare(a: dict, b: dict, paired: bool = False) -> list[dict]:
    """Verdicts of a vs b on FD and prompt accuracy (paired: the same trained models, see evaluate.verdict)."""
    return [verdict(a, b, metric, paired) for metric in ("fd", "prompt_accuracy")]


def _bars(rows: list[dict], title: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=viz.DPI)
    labels = [r["label"] for r in rows]
    axes[0].bar(labels, [r["fd"] for r in rows], yerr=[noise(r, "fd") for r in rows], capsize=4, color="tab:blue")
    axes[0].set(title="FD to real images (lower is better)")
    axes[1].bar(labels, [r["prompt_accuracy"] for r in rows], yerr=[noise(r, "prompt_accuracy") for r in rows],
                capsize=4, color="tab:green")
    axes[1].set(title="prompt accuracy (higher is better)", ylim=(0, 1))
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _sweep(xs, series: dict[str, list[dict]], xlabel: str, title: str, logx: bool = False) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=viz.DPI)
    for name, rows in series.items():
        for ax, key in zip(axes, ("fd", "prompt_accuracy")):
            ax.errorbar(xs[:len(rows)], [r[key] for r in rows], yerr=[noise(r, key) for r in rows], marker="o",
                        capsize=3, label=name)
        axes[2].plot(xs[:len(rows)], [r["seconds_per_16_images"] for r in rows], marker="o", label=name)
    for ax, key in zip(axes, ("FD (lower is better)", "prompt accuracy", "seconds per 16 images")):
        ax.set(xlabel=xlabel, title=key, xscale="log" if logx else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def ablate_head(ctx: Context) -> tuple[dict, plt.Figure]:
    rows = ctx.replicated({"HART (head on)": lambda s: _generator(ctx.reference(s)),
                           "same model, head skipped": lambda s: _generator(ctx.reference(s), use_head=False),
                           "discrete-only model": lambda s: _generator(ctx.trained("off", s))})
    return {"rows": rows, "verdicts": compare(rows[0], rows[2]) + compare(rows[0], rows[1], paired=True),
            "fd_better_with_head_vs_discrete_model": round(1 - rows[0]["fd"] / rows[2]["fd"], 4),
            "fd_better_with_head_vs_head_skipped": round(1 - rows[0]["fd"] / rows[1]["fd"], 4)}, \
        _bars(rows, "residual head on vs off")


def ablate_full(ctx: Context) -> tuple[dict, plt.Figure]:
    series = {"residual head (HART)": [], "full-token head (MAR-style)": []}
    verdicts = []
    for steps in STEPS:
        residual, full = ctx.replicated({
            f"residual, {steps}": lambda s, k=steps: _generator(ctx.reference(s), sampling_steps=k),
            f"full, {steps}": lambda s, k=steps: _generator(ctx.trained("full", s), sampling_steps=k)})
        series["residual head (HART)"].append(residual)
        series["full-token head (MAR-style)"].append(full)
        verdicts += compare(residual, full)
    return {"steps": list(STEPS), "series": series, "verdicts": verdicts}, \
        _sweep(STEPS, series, "head sampling steps", "residual vs full-token head", logx=True)


def ablate_early(ctx: Context) -> tuple[dict, plt.Figure]:
    rows = ctx.replicated({"diffusion-last (HART)": lambda s: _generator(ctx.reference(s)),
                           "diffusion-early": lambda s: _generator(ctx.trained("early", s))})
    return {"rows": rows, "verdicts": compare(rows[0], rows[1])}, _bars(rows, "diffusion-early vs diffusion-last")


def ablate_steps(ctx: Context) -> tuple[dict, plt.Figure]:
    """The head's steps; each count compared with the model's own (8: HART's choice) by a verdict."""
    model = ctx.reference()
    rows = [ctx.evaluate(_generator(model, sampling_steps=s), f"{s} steps") for s in STEPS]
    default = next((r for s, r in zip(STEPS, rows) if s == model.head_cfg.sampling_steps), None)
    verdicts = [v for r in rows if default and r is not default for v in compare(r, default)]
    return {"steps": list(STEPS), "rows": rows, "verdicts": verdicts}, \
        _sweep(STEPS, {"HART": rows}, "head sampling steps", "head sampling steps", logx=True)


def ablate_cfg(ctx: Context) -> tuple[dict, plt.Figure]:
    """The guidance sweep, and the scale the benchmark's tuning rule (bench.choose_cfg) picks from it."""
    from hart_mini.bench import CFG_RULE, choose_cfg

    rows = [{"cfg": c, **ctx.evaluate(_generator(ctx.reference(), cfg_scale=c), f"cfg {c}")} for c in CFGS]
    return {"cfg": list(CFGS), "rows": rows, "chosen": choose_cfg(rows)["cfg"], "rule": CFG_RULE}, \
        _sweep(CFGS, {"HART": rows}, "cfg scale", "guidance sweep")


def ablate_decoder(ctx: Context, stage_a: Path | None) -> tuple[dict, plt.Figure]:
    """Stage (b) twice from the same stage (a): alternating vs continuous-only decoder, same budget."""
    from hart_mini.model.data import ToyShapes
    from hart_mini.train import RunOptions, train_tokenizer

    preset = ctx.preset
    variants, metrics = {}, {}
    for mode in ("alternating", "continuous"):
        p = dataclasses.replace(preset, tokenizer=dataclasses.replace(preset.tokenizer, decoder_mode=mode))
        folder = ctx.out / f"decoder_{mode}"
        if mode == "continuous" and stage_a is None:  # start from the very stage (a) the first variant used
            stage_a = ctx.out / "decoder_alternating" / "stage_a"
        if stage_a is not None and not (folder / "stage_a" / "checkpoint.safetensors").exists():
            tensors, meta = checkpoint.load(Path(stage_a) / "checkpoint.safetensors")
            meta["config"]["decoder_mode"] = mode  # same weights; only stage (b) differs
            checkpoint.save(folder / "stage_a" / "checkpoint.safetensors", tensors, meta)
        train_tokenizer(p, folder, RunOptions(device=str(ctx.device), resume=True), f"ablate decoder ({mode})")
        from hart_mini.model.tokenizer import HybridTokenizer

        variants[mode] = HybridTokenizer.from_file(folder / "tokenizer.safetensors", ctx.device)
        metrics[mode] = evaluate_tokenizer(variants[mode], ToyShapes(preset.data, "test", size=ctx.n), ctx.n,
                                           judge=ctx.judge)
    rows, hart = [], ctx.reference()
    same_codes = torch.equal(hart.tokenizer.quantizer.codebook.weight.cpu(),
                             variants["alternating"].quantizer.codebook.weight.cpu())
    if same_codes:  # the reference's tokens are valid for both decoders: decode them with each
        original = {k: v.clone() for k, v in hart.tokenizer.decoder.state_dict().items()}
        for mode, tok in variants.items():
            hart.tokenizer.decoder.load_state_dict(tok.decoder.state_dict())
            rows.append(ctx.evaluate(_generator(hart), f"{mode} decoder, head on"))
            rows.append(ctx.evaluate(_generator(hart, use_head=False), f"{mode} decoder, head off"))
        hart.tokenizer.decoder.load_state_dict(original)
    fig = _bars(rows, "one alternating decoder vs a continuous-only decoder") if rows else plt.figure()
    verdicts = compare(rows[0], rows[2]) + compare(rows[1], rows[3]) if rows else []  # same head, other decoder
    return {"reconstruction": metrics, "generation": rows, "verdicts": verdicts,
            "note": None if same_codes else "the reference HART uses another codebook: generation not compared"}, fig


def ablate_position(ctx: Context) -> tuple[dict, plt.Figure]:
    """Why the coarse scales get fixed position features: the same HART with VAR's learned per-token vectors
    only. Its 2x2 inputs are one vector for all four tokens (the 1x1 token upsampled, then averaged back), so
    only those vectors can tell the four apart; and per scale, how much each model reads where the caption
    puts things (hart_mini.diagnose.caption_sensitivity, first training seed)."""
    from hart_mini.diagnose import caption_sensitivity

    grid, absolute = "grid features on the coarse scales", "learned vectors only (VAR)"
    rows = ctx.replicated({grid: lambda s: _generator(ctx.reference(s)),
                           absolute: lambda s: _generator(ctx.trained("last", s, position="absolute"))})
    n = min(ctx.n, 500)
    sensitivity = {grid: caption_sensitivity(ctx.reference(), ctx.preset.data, n),
                   absolute: caption_sensitivity(ctx.trained("last", ctx.train_seeds[0], position="absolute"),
                                                 ctx.preset.data, n)}
    verdicts = compare(rows[0], rows[1]) + [verdict(rows[0], rows[1], "acc_position")]
    return {"rows": rows, "verdicts": verdicts, "sensitivity": sensitivity}, \
        _bars(rows, "where the caption puts things: grid features vs learned vectors")


def run(name: str, preset, out: str | Path, device: str = "auto", n_eval: int | None = None,
        reference: str | Path | None = None, tokenizer: str | Path | None = None, stage_a: str | Path | None = None,
        judge: str | Path | None = None, command: str = "", seeds: Sequence[int] = (0, 1000, 2000),
        train_seeds: Sequence[int] = (0, 1)) -> dict:
    """Run one ablation; seeds: sampling seeds of every evaluation; train_seeds: training seeds of every
    variant that head, early and full train (the others use the first seed's reference only)."""
    from hart_mini import pretrained
    from hart_mini.config import require
    from hart_mini.runtime import describe_device, pick_device

    if name not in ABLATIONS:
        raise ValueError(f"ablation {name!r} is unknown: expected one of {ABLATIONS}")
    for field, values in (("seeds", seeds), ("train_seeds", train_seeds)):
        require(len(values) >= 1 and len(set(values)) == len(values) and all(v >= 0 for v in values), field,
                list(values), "one or more distinct integers >= 0")
    out, device = Path(out), pick_device(device)
    out.mkdir(parents=True, exist_ok=True)
    n_eval = n_eval or {"smoke": 16, "cpu": 1000, "gpu": 2000}[preset.name]
    from hart_mini.measure.judge import Judge

    judge_file = Path(judge) if judge else pretrained.path("judge", preset.shipped)
    judge = Judge.from_file(judge_file, device)
    check_fits(judge, preset, judge_file)
    train_seeds = list(train_seeds) if name in TRAINED else list(train_seeds)[:1]
    evaluations = {"head": 3 * len(train_seeds), "early": 2 * len(train_seeds), "steps": len(STEPS),
                   "position": 2 * len(train_seeds),
                   "full": 2 * len(STEPS) * len(train_seeds), "cfg": len(CFGS), "decoder": 4}[name]
    ctx = Context(preset, out, device, judge, n_eval, Path(tokenizer) if tokenizer else None,
                  Path(reference) if reference else None, seeds, train_seeds, evaluations)
    if name == "decoder":
        result, fig = ablate_decoder(ctx, Path(stage_a) if stage_a else None)
    else:
        result, fig = {"head": ablate_head, "full": ablate_full, "early": ablate_early, "steps": ablate_steps,
                       "cfg": ablate_cfg, "position": ablate_position}[name](ctx)
    ctx.bar.close()
    where = f" (stands in for training seed {train_seeds[0]})" if name in TRAINED else ""
    result = {"ablation": name, "preset": preset.name, "n_eval": n_eval, "seeds": list(seeds),
              "train_seeds": train_seeds if name in TRAINED else None, "noise": NOISE,
              "device": describe_device(device),
              "reference": f"{reference}{where}" if reference else "trained here", "command": command,
              "variants": ctx.variants or None, **result}
    checkpoint.write_json(out / f"{name}.json", result)
    viz.save(fig, out / f"{name}.png")
    return result
