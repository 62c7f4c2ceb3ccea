"""Ablations: `python -m hart_mini ablate NAME --preset P --out DIR` (notebook 09 reads their results).

    head     residual head on vs off: HART; the same model with the head skipped; a discrete-only model
             trained with the same budget (HART's Table 5, "HART-VAR")
    full     residual head vs full-token head (MAR-style), each with a head-steps sweep (Fig. 7 left)
    early    diffusion-early (the head corrects every scale and feeds the next) vs diffusion-last (HART)
    steps    the head's sampling steps: 1, 2, 4, 8, 16, 50
    decoder  one decoder trained alternately vs a decoder trained on continuous latents only (Fig. 7)
    cfg      classifier-free guidance scale sweep

Models that an ablation trains get the preset's HART budget and land in DIR/<variant>; the reference
HART is `--reference FILE` (e.g. the shipped one) or is trained too. Each ablation writes DIR/NAME.json
(the numbers, N, device, commands) and DIR/NAME.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from hart_mini import checkpoint, viz
from hart_mini.bench import timed
from hart_mini.evaluate import evaluate_generator, evaluate_tokenizer, held_out

ABLATIONS = ("head", "full", "early", "steps", "decoder", "cfg")
STEPS = (1, 2, 4, 8, 16, 50)
CFGS = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0)


class Context:
    """What every ablation needs: preset, device, judge, held-out prompts, output folder."""

    def __init__(self, preset, out: Path, device: torch.device, judge, n_eval: int, tokenizer: Path | None,
                 reference: Path | None):
        self.preset, self.out, self.device, self.judge, self.n = preset, out, device, judge, n_eval
        self.tokenizer, self.reference_file = tokenizer, reference
        self.real = held_out(preset.data, max(n_eval, 16))
        self._reference = None

    def evaluate(self, generate, label: str) -> dict:
        """FD and prompt accuracy on n_eval prompts, and the latency of 16 images, for generate(prompts, seed)."""
        row = evaluate_generator(generate, self.judge, self.preset.data, self.n,
                                 reference={k: v[:self.n] for k, v in self.real.items()})
        prompts = self.real["caption"][:16]
        row["seconds_per_16_images"] = round(timed(lambda: generate(prompts, 0), self.device, 3, 1), 4)
        row["label"] = label
        return row

    def trained(self, mode: str):
        """A HART of the given head mode, trained with the preset's budget in OUT/<mode> (reused if there)."""
        from hart_mini.hart import HART
        from hart_mini.train import RunOptions, train_hart

        folder = self.out / mode
        if not (folder / "hart.safetensors").exists():
            run = RunOptions(device=str(self.device), resume=True)
            train_hart(self.preset, folder, self.tokenizer, run, f"ablate: train_hart(mode={mode!r})", mode)
        return HART.from_file(folder / "hart.safetensors", self.device)

    @property
    def reference(self):
        """The diffusion-last HART every ablation compares against."""
        if self._reference is None:
            from hart_mini.hart import HART

            self._reference = (HART.from_file(self.reference_file, self.device) if self.reference_file
                               else self.trained("last"))
        return self._reference


def _generator(model, **knobs):
    return lambda prompts, seed: model.generate(prompts, seed=seed, **knobs)


def _bars(rows: list[dict], title: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=viz.DPI)
    labels = [r["label"] for r in rows]
    axes[0].bar(labels, [r["fd"] for r in rows], color="tab:blue")
    axes[0].set(title="FD to real images (lower is better)")
    axes[1].bar(labels, [r["prompt_accuracy"] for r in rows], color="tab:green")
    axes[1].set(title="prompt accuracy (higher is better)", ylim=(0, 1))
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _sweep(xs, series: dict[str, list[dict]], xlabel: str, title: str, logx: bool = False) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=viz.DPI)
    for name, rows in series.items():
        for ax, key in zip(axes, ("fd", "prompt_accuracy", "seconds_per_16_images")):
            ax.plot(xs[:len(rows)], [r[key] for r in rows], marker="o", label=name)
    for ax, key in zip(axes, ("FD (lower is better)", "prompt accuracy", "seconds per 16 images")):
        ax.set(xlabel=xlabel, title=key, xscale="log" if logx else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def ablate_head(ctx: Context) -> tuple[dict, plt.Figure]:
    hart, discrete = ctx.reference, ctx.trained("off")
    rows = [ctx.evaluate(_generator(hart), "HART (head on)"),
            ctx.evaluate(_generator(hart, use_head=False), "same model, head skipped"),
            ctx.evaluate(_generator(discrete), "discrete-only model")]
    fd_gain = 1 - rows[0]["fd"] / rows[2]["fd"]
    return {"rows": rows, "fd_better_with_head_vs_discrete_model": round(fd_gain, 4),
            "fd_better_with_head_vs_head_skipped": round(1 - rows[0]["fd"] / rows[1]["fd"], 4)}, \
        _bars(rows, "residual head on vs off")


def ablate_full(ctx: Context) -> tuple[dict, plt.Figure]:
    series = {"residual head (HART)": [ctx.evaluate(_generator(ctx.reference, sampling_steps=s), f"residual, {s}")
                                       for s in STEPS]}
    full = ctx.trained("full")
    series["full-token head (MAR-style)"] = [ctx.evaluate(_generator(full, sampling_steps=s), f"full, {s}")
                                             for s in STEPS]
    return {"steps": list(STEPS), "series": series}, _sweep(STEPS, series, "head sampling steps",
                                                           "residual vs full-token head", logx=True)


def ablate_early(ctx: Context) -> tuple[dict, plt.Figure]:
    rows = [ctx.evaluate(_generator(ctx.reference), "diffusion-last (HART)"),
            ctx.evaluate(_generator(ctx.trained("early")), "diffusion-early")]
    return {"rows": rows}, _bars(rows, "diffusion-early vs diffusion-last")


def ablate_steps(ctx: Context) -> tuple[dict, plt.Figure]:
    rows = [ctx.evaluate(_generator(ctx.reference, sampling_steps=s), f"{s} steps") for s in STEPS]
    return {"steps": list(STEPS), "rows": rows}, _sweep(STEPS, {"HART": rows}, "head sampling steps",
                                                       "head sampling steps", logx=True)


def ablate_cfg(ctx: Context) -> tuple[dict, plt.Figure]:
    rows = [ctx.evaluate(_generator(ctx.reference, cfg_scale=c), f"cfg {c}") for c in CFGS]
    return {"cfg": list(CFGS), "rows": rows}, _sweep(CFGS, {"HART": rows}, "cfg scale", "guidance sweep")


def ablate_decoder(ctx: Context, stage_a: Path | None) -> tuple[dict, plt.Figure]:
    """Stage (b) twice from the same stage (a): alternating vs continuous-only decoder, same budget."""
    from hart_mini.data import ToyShapes
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
        from hart_mini.tokenizer import HybridTokenizer

        variants[mode] = HybridTokenizer.from_file(folder / "tokenizer.safetensors", ctx.device)
        metrics[mode] = evaluate_tokenizer(variants[mode], ToyShapes(preset.data, "test", size=ctx.n), ctx.n,
                                           judge=ctx.judge)
    rows, hart = [], ctx.reference
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
    return {"reconstruction": metrics, "generation": rows,
            "note": None if same_codes else "the reference HART uses another codebook: generation not compared"}, fig


def run(name: str, preset, out: str | Path, device: str = "auto", n_eval: int | None = None,
        reference: str | Path | None = None, tokenizer: str | Path | None = None, stage_a: str | Path | None = None,
        judge: str | Path | None = None, command: str = "") -> dict:
    from hart_mini import pretrained
    from hart_mini.runtime import describe_device, pick_device

    if name not in ABLATIONS:
        raise ValueError(f"ablation {name!r} is unknown: expected one of {ABLATIONS}")
    out, device = Path(out), pick_device(device)
    out.mkdir(parents=True, exist_ok=True)
    n_eval = n_eval or {"smoke": 16, "cpu": 1000, "gpu": 2000}[preset.name]
    from hart_mini.judge import Judge

    judge = Judge.from_file(judge, device) if judge else pretrained.load("judge", preset.shipped, device)
    ctx = Context(preset, out, device, judge, n_eval, Path(tokenizer) if tokenizer else None,
                  Path(reference) if reference else None)
    if name == "decoder":
        result, fig = ablate_decoder(ctx, Path(stage_a) if stage_a else None)
    else:
        result, fig = {"head": ablate_head, "full": ablate_full, "early": ablate_early, "steps": ablate_steps,
                       "cfg": ablate_cfg}[name](ctx)
    result = {"ablation": name, "preset": preset.name, "n_eval": n_eval, "device": describe_device(device),
              "reference": str(reference) if reference else "trained here", "command": command, **result}
    checkpoint.write_json(out / f"{name}.json", result)
    viz.save(fig, out / f"{name}.png")
    return result
