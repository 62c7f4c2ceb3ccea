"""The command line: `python -m hart_mini COMMAND ...`. Every command has --help and prints JSON.

    data preview     a captioned grid of ToyShapes images
    demo             prompts -> images with the shipped HART, as a captioned grid
    train tokenizer  both tokenizer stages, resumable (--resume) and chunkable (--max-minutes)
    train hart       the next-scale transformer (+ residual head) on a frozen tokenizer's tokens
    train judge      the attribute classifier behind FD and prompt accuracy
    train diffusion  the latent diffusion baseline (DiT-style, same text conditioning and budget)
    eval hart        FD and prompt accuracy of a trained or shipped HART
    sample           prompts -> a grid of images from a trained or shipped HART
    eval tokenizer   reconstruction metrics of a trained or shipped tokenizer
    eval judge       the judge's accuracy on real images, and their prompt accuracy
    diagnose         which scales read the caption; prompt accuracy with the true coarse scales forced
    diagnose head    what the residual head adds: head on / off / noise control / true residual, free and true tokens
    diagnose text    whether a model reads word order: CE of true tokens under mirrored / swapped captions
    diagnose residual what any head could add: residuals that know what a head knows, decoded (true tokens)
    bench            the quality-speed frontier: HART vs the diffusion baseline at matched quality
    ablate NAME      head, full, early, steps, decoder, cfg, position: JSON + figure
    ship KIND        copy a trained model into data/ and record it in the manifest
    pipeline         the whole course in one process and one time budget: train, evaluate, bench, export
    ship-run FOLDER  put what a pipeline run brought back into data/ and data/results/PRESET/
    doctor           check this machine: device, bf16, SDPA kernels, a training burst, samples
    course student   student notebooks with the solutions removed
    course pages     the course pages' numbers checked against data/results/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from hart_mini import runs
from hart_mini.arguments import (
    count,
    distinct_seeds,
    eval_count,
    fraction,
    guidance,
    listed,
    minutes,
    non_negative,
    odd,
    positive,
    probability,
    prompt,
    seed,
    share,
    temperature,
)
from hart_mini.config import (
    DECODER_FIELDS,
    HEAD_CONDITIONS,
    HEAD_MODES,
    HEAD_NETWORKS,
    MAP_CONVS,
    PRESET_NAMES,
    default_preset_name,
    get_preset,
)
from hart_mini.runs import IMAGE_SUFFIXES, JSON_SUFFIXES

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: argument --n: 0 is invalid: expected an integer >= 1 (...)`."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


NOTES: list[str] = []  # what a command must tell besides its numbers (an unfinished model, what ship replaced)


def note(text: str) -> None:
    """A line for the user: printed on stderr after the result, and kept in the result as 'notes'."""
    NOTES.append(text)


def emit(result: dict, json_file: Path | None = None) -> dict:
    """Print a command's result as JSON (the one output format of the CLI), also to json_file if given; then
    its notes on stderr, so they are the last thing a user reads."""
    if NOTES:
        result = {**result, "notes": list(NOTES)}
    if json_file:
        from hart_mini import checkpoint

        checkpoint.write_json(json_file, result)
    print(json.dumps(result, indent=2, sort_keys=True))
    for line in NOTES:
        print(line, file=sys.stderr)
    return result


def output(path: Path | None, flag: str, args, suffixes: tuple[str, ...] = JSON_SUFFIXES) -> Path | None:
    """Check a file the command will write, before any work (hart_mini.runs.command_output)."""
    return None if path is None else runs.command_output(path, flag, suffixes, args.overwrite)


GRID_BATCH = 64  # images generated, or drawn, at a time: memory stays flat for any --n


def save_grid(pixels, captions: list[str], out: Path, title: str | None = None) -> Path:
    """Images (B, H, W, 3) uint8 as a captioned grid; beyond viz.GRID_CAPTIONED images, as one plain mosaic
    (captions on thousands of images are unreadable, and a figure with an axes per image would not fit)."""
    from hart_mini.course import viz

    if len(pixels) > viz.GRID_CAPTIONED:
        return viz.save(viz.mosaic(pixels), out)
    return viz.save(viz.image_grid(pixels, captions, ncols=min(8, len(pixels)), title=title), out)


def evaluated_parser(evaluate, name: str, help: str, what: str) -> argparse.ArgumentParser:
    """An `eval NAME` command for a generator (see `evaluated`): model, judge, N, guidance, seeds, output."""
    p = evaluate.add_parser(name, help=help)
    add_preset(p)
    p.add_argument("--ckpt", type=Path, default=None, help=f"{what} file or training folder (default: shipped)")
    p.add_argument("--judge", type=Path, default=None, help="judge file or folder (default: shipped)")
    p.add_argument("--n", type=count(2, " (FD needs 2)"), default=1000,
                   help="number of samples (and of real reference images)")
    p.add_argument("--cfg", type=guidance, default=3.0, help="classifier-free guidance scale")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=distinct_seeds, default=[0, 1000, 2000],
                       help="sampling seeds in [0, 2**32), comma-separated: FD is reported as mean +- sd over them "
                            "(default 0,1000,2000)")
    seeds.add_argument("--seed", type=seed, default=None,
                       help="one sampling seed only (same as --seeds S): added to every batch's seed")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_overwrite(p)
    return p


def add_caption_options(p) -> None:
    """The caption options HART and the baseline share: how the encoder reads word order, how many training
    captions name two objects."""
    from hart_mini.config import TEXT_POSITIONS

    p.add_argument("--text-position", choices=TEXT_POSITIONS, default=None,
                   help="how the caption encoder tells word order (default: the preset's; cpu: phrases, gpu and "
                        "smoke: learned): see TextEncoder in hart_mini/model/text.py")
    p.add_argument("--text-depth", type=count(0), default=None,
                   help="transformer blocks of the caption encoder (default: the preset's; 0: the word and position "
                        "vectors go to the generator as they are, notebook 09 section 7)")
    p.add_argument("--adaln-gate", type=fraction, default=None,
                   help="initial gate of the generator blocks' AdaLN: 0 is AdaLN-Zero, 1 a plain pre-norm block at the "
                        "start (TransformerConfig.adaln_gate; default: the preset's, cpu 1, gpu and smoke 0)")
    p.add_argument("--two-objects", type=fraction, default=None,
                   help="share of training images with two objects and a relation (TrainConfig.two_objects; "
                        "default: the preset's, cpu 0.5, smoke and gpu the data's 0.35); evaluations keep theirs")


def add_preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None,
                        help="budget preset (default: $HART_MINI_PRESET, else cpu)")


def cmd_data_preview(args) -> dict:
    import numpy as np
    from tqdm.auto import tqdm

    from hart_mini.model.data import ToyShapes

    preset = get_preset(args.preset)
    output(args.out, "--out", args, IMAGE_SUFFIXES)
    dataset = ToyShapes(preset.data, split=args.split)
    if args.start + args.n > len(dataset):
        raise ValueError(f"argument --n: {args.n} images from --start {args.start} run past the {args.split} split's "
                         f"{len(dataset)} images (preset {preset.name!r}): lower --n or --start")
    pixels, captions = [], []
    for lo in tqdm(range(args.start, args.start + args.n, 1000), desc="draw", unit="1000 images",
                   disable=args.n <= 1000):
        drawn, scenes = dataset.images(range(lo, min(lo + 1000, args.start + args.n)))
        pixels.append(drawn)
        captions += [s.caption for s in scenes]
    path = save_grid(np.concatenate(pixels), captions, args.out)
    return emit({"out": str(path), "preset": preset.name, "split": args.split, "n": args.n,
                 "image_size": preset.data.image_size, "captions": captions})


DEMO_PROMPTS = [
    "a large red striped circle at the top left", "a small blue square at the center",
    "a large yellow dotted triangle at the bottom right", "a large green diamond at the top",
    "a small purple striped circle left of a large orange square",
    "a large blue dotted triangle above a small yellow circle",
    "a large orange striped square at the left", "a small red dotted diamond right of a large green circle",
]


def cmd_demo(args) -> dict:
    """HART's main job: prompts -> a captioned grid, with the shipped model (an error without one)."""
    import time

    from hart_mini import pretrained
    from hart_mini.course import viz
    from hart_mini.runtime import describe_device, pick_device

    preset = get_preset(args.preset)
    output(args.out, "--out", args, IMAGE_SUFFIXES)
    device = pick_device(args.device)
    model = pretrained.load("hart", preset.shipped, device)  # no shipped HART: a FileNotFoundError that says so
    start = time.perf_counter()
    images = model.generate(DEMO_PROMPTS, cfg_scale=args.cfg, sampling_steps=args.steps, seed=args.seed)
    seconds = time.perf_counter() - start
    steps = args.steps or model.head_cfg.sampling_steps
    title = f"HART ({preset.shipped} model): cfg {args.cfg}, {steps} head steps, seed {args.seed}"
    path = viz.save(viz.image_grid(images * 2 - 1, DEMO_PROMPTS, ncols=4, title=title), args.out)
    return emit({"out": str(path), "model": f"data/hart_{preset.shipped}.safetensors", "prompts": DEMO_PROMPTS,
                 "cfg": args.cfg, "head_steps": steps, "seed": args.seed,
                 "device": describe_device(device), "seconds": round(seconds, 3)})


def command_line() -> str:
    """The command as typed, for manifests and results: `python -m hart_mini ...`, with absolute paths made
    relative to the repository (or bare names outside it), so no result records one machine's folders."""
    return runs.portable_command(sys.argv[1:])


def resolve(kind: str, ckpt: Path | None, preset: str | None, device: str):
    """A model of `kind` ('tokenizer', 'hart', 'judge', 'diffusion') and where it came from: --ckpt (a file,
    or a training folder holding KIND.safetensors), else the one shipped for the preset (smoke uses cpu's).
    A model made for another image size or latent grid than the preset's is refused, naming the preset it
    was trained for; an unfinished one gets a note."""
    from hart_mini import pretrained
    from hart_mini.runtime import cuda_settings, pick_device

    device = pick_device(device)
    cuda_settings(device)  # TF32 for what stays fp32, SDPA without cuDNN plans (runtime.py)
    if ckpt is None:
        shipped = get_preset(preset).shipped
        path, source = pretrained.path(kind, shipped), f"shipped {kind} ({shipped})"
    else:
        path = ckpt / f"{kind}.safetensors" if ckpt.is_dir() else ckpt
        source = runs.portable(path)
    model = pretrained.loader(kind)(path, device=device)
    pretrained.check_fits(model, get_preset(preset), path)
    stopped = pretrained.unfinished(model.meta)
    if stopped:
        note(f"note: {path if ckpt else source} {stopped}: its numbers are those of a model still in training; "
             f"continue its run with `python -m hart_mini train {kind} --out FOLDER --resume`")
    return model, source


def cmd_train_tokenizer(args) -> dict:
    from hart_mini.train import train_tokenizer

    preset = get_preset(args.preset)
    if args.decoder_field is not None:
        preset = dataclasses.replace(preset, tokenizer=dataclasses.replace(preset.tokenizer,
                                                                          decoder_field=args.decoder_field))
    result = train_tokenizer(preset, args.out, run_options(args, "tokenizer"), command_line())
    return emit({"preset": args.preset, "out": str(args.out), **result})


def caption_options(preset, args):
    """The preset with --text-position, --text-depth and --adaln-gate (and HART's --scale-balance,
    --layout-steps, --layout-scales and --raster-scales) applied to its transformer (HART and the baseline share
    it), and --two-objects to its training data."""
    changes = {k: v for k, v in (("text_position", args.text_position), ("text_depth", args.text_depth),
                                 ("scale_balance", getattr(args, "scale_balance", None)),
                                 ("layout_steps", getattr(args, "layout_steps", None)),
                                 ("layout_scales", getattr(args, "layout_scales", None)),
                                 ("raster_scales", getattr(args, "raster_scales", None)),
                                 ("adaln_gate", args.adaln_gate)) if v is not None}
    preset = dataclasses.replace(preset, transformer=dataclasses.replace(preset.transformer, **changes))
    if args.two_objects is not None:  # the generators' training mix; evaluations keep the data's
        preset = dataclasses.replace(preset, **{name: dataclasses.replace(getattr(preset, name),
                                                                          two_objects=args.two_objects)
                                                for name in ("hart_train", "baseline_train")})
    return preset


def head_options(preset, train_seed: int | None, **head):
    """The preset with the head fields given (None: the preset's) and the HART training seed, if given."""
    head = {k: v for k, v in head.items() if v is not None}
    preset = dataclasses.replace(preset, head=dataclasses.replace(preset.head, **head))
    if train_seed is not None:
        preset = dataclasses.replace(preset, hart_train=dataclasses.replace(preset.hart_train, seed=train_seed))
    return preset


def add_head_network_options(p) -> None:
    """The head that samples: its network, size, guidance and steps (HeadConfig; default: the preset's)."""
    p.add_argument("--head-network", choices=HEAD_NETWORKS, default=None,
                   help="mlp: one token at a time (HART's); map: the last scale's whole token map at once, 3x3 "
                        "convolutions between tokens (HeadConfig.network; default: the preset's)")
    p.add_argument("--head-width", type=count(1), default=None, help="the head's width (HeadConfig.width)")
    p.add_argument("--head-depth", type=count(1), default=None, help="the head's blocks (HeadConfig.depth)")
    p.add_argument("--head-guidance", choices=("on", "off"), default=None,
                   help="guide the head's draws as the logits (on, HART's) or draw once from the conditional "
                        "branch (off) (HeadConfig.guided; default: the preset's)")
    p.add_argument("--head-conv", choices=MAP_CONVS, default=None,
                   help="the map head's convolutions: full 3x3, or depthwise 3x3 then a per-token MLP (in "
                        "multiplies, about the MLP head's cost) (HeadConfig.map_conv; default: the preset's)")
    p.add_argument("--head-sampling-steps", type=count(1), default=None,
                   help="the head's sampling steps (HeadConfig.sampling_steps; default: the preset's)")
    add_head_sampler_options(p, "the preset's")


def add_head_sampler_options(p, default: str) -> None:
    """The head sampler's knobs that training never reads: its temperature and its draw's scale."""
    p.add_argument("--head-temperature", type=temperature, default=None,
                   help=f"the head sampler's temperature: x_T ~ N(0, T^2 I), 1 = the head's own spread "
                        f"(HeadConfig.temperature; default: {default})")
    p.add_argument("--head-draw-scale", "--head-scale", dest="head_draw_scale", type=non_negative, default=None,
                   help=f"multiply the head's draw by this, its shape kept; 1 = as it comes "
                        f"(HeadConfig.draw_scale; default: {default})")
    p.add_argument("--head-cfg", type=non_negative, default=None,
                   help=f"the head's own guidance scale t, whatever the logits' cfg; 0 = the conditional branch "
                        f"alone (HeadConfig.cfg_scale; default: {default}; None there = the logits' t, HART's)")


def head_network(args) -> dict:
    """The HeadConfig fields of add_head_network_options (None: the preset's)."""
    guided = None if args.head_guidance is None else args.head_guidance == "on"
    return {"network": args.head_network, "width": args.head_width, "depth": args.head_depth, "guided": guided,
            "map_conv": args.head_conv, "sampling_steps": args.head_sampling_steps,
            "temperature": args.head_temperature, "draw_scale": args.head_draw_scale,
            "cfg_scale": args.head_cfg}


def cmd_train_hart(args) -> dict:
    from hart_mini.train import train_hart

    mode = "off" if args.no_residual_head else args.mode
    preset = head_options(caption_options(get_preset(args.preset), args), args.train_seed,
                          stage_steps=args.head_stage_steps, true_token_share=args.true_token_share,
                          condition=args.head_condition, loss_weight=args.joint_head_weight, **head_network(args))
    if args.steps is not None:  # the full training's; the layout and head stages keep theirs
        preset = dataclasses.replace(preset, hart_train=dataclasses.replace(preset.hart_train, steps=args.steps))
    result = train_hart(preset, args.out, args.tokenizer, run_options(args, "hart"), command_line(), mode)
    return emit({"preset": args.preset, "out": str(args.out), **result})


def cmd_train_head(args) -> dict:
    from hart_mini.train import train_head

    preset = head_options(get_preset(args.preset), args.train_seed, stage_steps=args.steps,
                          condition=args.head_condition, true_token_share=args.true_token_share,
                          **head_network(args))
    result = train_head(preset, args.out, args.source, run_options(args, "hart"), command_line())
    return emit({"preset": args.preset, "out": str(args.out), **result})


def cmd_train_diffusion(args) -> dict:
    from hart_mini.train import train_diffusion

    result = train_diffusion(caption_options(get_preset(args.preset), args), args.out, args.tokenizer,
                             run_options(args, "diffusion"), command_line())
    return emit({"preset": args.preset, "out": str(args.out), **result})


def cmd_train_judge(args) -> dict:
    from hart_mini.train import train_judge

    result = train_judge(get_preset(args.preset), args.out, run_options(args, "judge"), command_line(), args.n_eval)
    return emit({"preset": args.preset, "out": str(args.out), **result})


def evaluated(kind: str, args, sample) -> dict:
    """`eval hart` and `eval diffusion`: check the outputs and seeds, load the model and the judge, and
    evaluate sample(model, prompts, seed) -> images in bf16 on CUDA (fp32 elsewhere) over the seeds.
    Returns the model, its source, the seeds and evaluate_seeds' result."""
    from hart_mini.measure.evaluate import evaluate_seeds
    from hart_mini.runtime import inference_autocast, pick_device

    output(args.json, "--json", args)
    seeds = [args.seed] if args.seed is not None else args.seeds
    check_seed_span(seeds, args.n, "--seeds" if args.seed is None else "--seed")
    model, source = resolve(kind, args.ckpt, args.preset, args.device)
    judge, _ = resolve("judge", args.judge, args.preset, args.device)

    def generate(prompts, seed):
        with inference_autocast(pick_device(args.device)):  # bf16 + TF32 on CUDA, as in training
            return sample(model, prompts, seed)

    result = evaluate_seeds(generate, judge, get_preset(args.preset).data, args.n, seeds, desc=f"eval {kind}")
    return model, source, seeds, result


def cmd_eval_hart(args) -> dict:
    from hart_mini.model import sampling_variants as variants  # every head mode, the ablations' too

    model, source, seeds, result = evaluated("hart", args, lambda model, prompts, seed: variants.generate(
        model, prompts, cfg_scale=args.cfg, top_k=args.top_k, top_p=args.top_p, sampling_steps=args.steps,
        seed=seed, use_head=not args.no_head))
    return emit({"model": source, "mode": model.mode, "head": not args.no_head, "cfg": args.cfg, "seed": seeds[0],
                 "steps": args.steps or model.head_cfg.sampling_steps, **result}, args.json)


def cmd_eval_diffusion(args) -> dict:
    model, source, seeds, result = evaluated("diffusion", args, lambda model, prompts, seed: model.generate(
        prompts, cfg_scale=args.cfg, sampling_steps=args.steps, seed=seed))
    return emit({"model": source, "cfg": args.cfg, "seed": seeds[0],
                 "steps": args.steps or model.diffusion.sampling_steps, **result}, args.json)


def cmd_sample(args) -> dict:
    import numpy as np
    from tqdm.auto import tqdm

    from hart_mini.model import sampling_variants as variants  # every head mode, the ablations' too
    from hart_mini.model.data import tensor_to_uint8

    output(args.out, "--out", args, IMAGE_SUFFIXES)
    check_seed_span([args.seed], args.n, "--seed")
    model, source = resolve("hart", args.ckpt, args.preset, args.device)
    off_grammar = check_prompt(model, args.prompt) if args.prompt is not None else None
    if off_grammar and not args.off_grammar:
        raise ValueError(f"argument --prompt: {off_grammar}; ToyShapes captions read 'a <size> <colour> [<texture>] "
                         "<shape> at the <position>' or '<object> <relation> <object>' (pass --off-grammar to draw "
                         "it anyway)")
    if off_grammar:
        note("note: drew a prompt the caption grammar cannot produce (--off-grammar): the model never saw such "
             "a caption, so expect it to draw what it can place of it")
    prompts = [args.prompt] * args.n if args.prompt is not None else model_prompts(model, args.n)
    pixels = []  # uint8, batch by batch: batch i (its first image's index) is drawn with seed + i
    for i in tqdm(range(0, args.n, GRID_BATCH), desc="sample", unit="batch", disable=args.n <= GRID_BATCH):
        images = variants.generate(model, prompts[i:i + GRID_BATCH], cfg_scale=args.cfg, top_k=args.top_k,
                                   top_p=args.top_p, sampling_steps=args.steps, seed=args.seed + i,
                                   use_head=not args.no_head)
        pixels.append(tensor_to_uint8(images * 2 - 1))
    path = save_grid(np.concatenate(pixels), prompts, args.out)
    return emit({"out": str(path), "model": source, "mode": model.mode, "prompts": prompts[:GRID_BATCH],
                 "n": args.n, "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                 "head": not args.no_head, "steps": args.steps or model.head_cfg.sampling_steps})


def check_seed_span(seeds: list[int], n: int, flag: str) -> None:
    """Batch i of n images is drawn with seed s + i: every such seed must stay below 2**32 (torch's 32-bit
    seeds would wrap around to the images of a small seed)."""
    from hart_mini.arguments import SEED_LIMIT

    if max(seeds) + n > SEED_LIMIT:
        raise ValueError(f"argument {flag}: {max(seeds)} with --n {n} is invalid: batch i is drawn with seed + i, "
                         f"which must stay below 2**32; use a seed <= {SEED_LIMIT - n}")


def check_prompt(model, text: str) -> str | None:
    """Why a prompt is off the caption grammar, or None. A word outside the model's vocabulary is refused
    (no flag draws a word the model has no vector for); for a model of ToyShapes' vocabulary, text the grammar
    cannot produce (three objects, scrambled words) is off it. A model trained on an ImageFolder has its own
    vocabulary (of words, or of whole captions), which its caption tokenizer checks."""
    from hart_mini.model.data import parse_caption
    from hart_mini.model.text import normalise, toyshapes_words

    try:
        model.text_tokenizer.encode(text)
    except ValueError as e:
        raise ValueError(f"argument --prompt: {e}") from None
    if set(model.text_tokenizer.vocab[1:]) != set(toyshapes_words()):
        return None
    try:
        parse_caption(normalise(text))
    except ValueError as e:
        return str(e)
    return None


def model_prompts(model, n: int) -> list[str]:
    """n held-out ToyShapes captions (the test split's, from its start), for sampling without --prompt."""
    from hart_mini.config import DataConfig
    from hart_mini.model.data import ToyShapes

    data = ToyShapes(DataConfig(image_size=model.tokenizer.cfg.image_size), "test", size=max(n, 5000))
    return [data.scene(i).caption for i in range(n)]  # scenes alone: no image is drawn


def cmd_eval_tokenizer(args) -> dict:
    from hart_mini.measure.evaluate import evaluate_tokenizer
    from hart_mini.model.data import ToyShapes

    output(args.json, "--json", args)
    tokenizer, source = resolve("tokenizer", args.ckpt, args.preset, args.device)
    preset = get_preset(args.preset)
    judge = resolve("judge", args.judge, args.preset, args.device)[0] if args.fd else None
    data = ToyShapes(preset.data, "test", size=max(args.n, 1))
    result = {"tokenizer": source, "split": "test", **evaluate_tokenizer(tokenizer, data, args.n, judge=judge)}
    return emit(result, args.json)


def cmd_eval_judge(args) -> dict:
    from hart_mini.measure.evaluate import held_out
    from hart_mini.measure.judge import real_image_metrics

    output(args.json, "--json", args)
    judge, source = resolve("judge", args.ckpt, args.preset, args.device)
    result = {"judge": source, "split": "test",
              **real_image_metrics(judge, held_out(get_preset(args.preset).data, args.n))}
    return emit(result, args.json)


def cmd_diagnose(args) -> dict:
    from hart_mini import diagnose
    from hart_mini.course import viz

    if args.figure and args.what == "text":
        raise ValueError("--figure draws the 'scales' and 'head' diagnoses; 'text' prints its table and JSON")
    if args.what == "residual":
        return diagnose_residual(args)
    if args.model == "diffusion" and args.what != "text":
        raise ValueError(f"--model diffusion is for 'diagnose text'; '{args.what}' reads HART's scales or head")
    output(args.json, "--json", args)
    output(args.figure, "--figure", args, IMAGE_SUFFIXES)
    model, source = resolve(args.model, args.ckpt, args.preset, args.device)
    data = get_preset(args.preset).data
    if args.what == "text":
        result = {"model": source, **diagnose.text_probe(model, data, args.n)}
        print(diagnose.format_text_probe(result), file=sys.stderr)
        return emit(result, args.json)
    judge, _ = resolve("judge", args.judge, args.preset, args.device)
    if args.what == "head":
        from hart_mini import diagnose_head

        seeds = [args.seed] if args.seeds is None else args.seeds
        knobs = {"sampling_steps": args.head_sampling_steps, "temperature": args.head_temperature,
                 "draw_scale": args.head_draw_scale, "cfg_scale": args.head_cfg}
        model.head_cfg = dataclasses.replace(model.head_cfg, **{k: v for k, v in knobs.items() if v is not None})
        examples = {}
        table = diagnose_head.head_table(model, judge, data, args.n, tuple(seeds), args.cfg, examples=examples,
                                         head_noise=args.head_noise)
        return emit_diagnosis({"model": source, **table}, diagnose_head.format_table(table),
                              lambda real: diagnose_head.figure(examples, real), data, args)
    result = {"model": source, "cfg": args.cfg, "seed": args.seed,
              "sensitivity": diagnose.caption_sensitivity(model, data, args.n),
              "forced": diagnose.forced_scales(model, judge, data, args.n, args.cfg, args.seed)}
    if args.figure:
        result["figure"] = str(viz.save(diagnose.figure(result), args.figure))
    return emit(result, args.json)


def diagnose_residual(args) -> dict:
    """`diagnose residual`: the tokenizer's residuals, decoded (hart_mini/diagnose_residual.py)."""
    from hart_mini import diagnose_residual as probe

    if args.model != "hart":
        raise ValueError("--model diffusion is for 'diagnose text'; 'residual' reads a tokenizer (--ckpt)")
    output(args.json, "--json", args)
    output(args.figure, "--figure", args, IMAGE_SUFFIXES)
    tokenizer, source = resolve("tokenizer", args.ckpt, args.preset, args.device)
    judge, _ = resolve("judge", args.judge, args.preset, args.device)
    data = get_preset(args.preset).data
    examples = {} if args.figure else None
    table = probe.residual_table(tokenizer, judge, data, args.n, args.pool, args.patch, args.pixel_steps, args.seed,
                                 examples=examples)
    return emit_diagnosis({"tokenizer": source, **table}, probe.format_table(table),
                          lambda real: probe.figure(examples, real), data, args)


def emit_diagnosis(result: dict, text: str, figure, data, args) -> dict:
    """A diagnosis's table for people on stderr; with --figure, figure(the first real held-out images) saved
    there; the JSON out."""
    from hart_mini.course import viz
    from hart_mini.measure.evaluate import held_out

    print(text, file=sys.stderr)
    if args.figure:
        real = held_out(data, min(args.n, 8))["image"]
        result["figure"] = str(viz.save(figure(real), args.figure))
    return emit(result, args.json)


def cmd_bench(args) -> dict:
    from hart_mini.bench import frontier, frontier_figure, kv_cache_speedup
    from hart_mini.course import viz
    from hart_mini.runtime import describe_device, inference_autocast, pick_device

    output(args.json, "--json", args)
    only_speed = args.kv_cache or args.step_profile
    figure = args.figure or (args.json.with_suffix(".png") if args.json and not only_speed and args.n else None)
    output(figure, "--figure" if args.figure else "--figure (beside --json)", args, IMAGE_SUFFIXES)
    device = pick_device(args.device)
    if args.step_profile:  # where a training step's time goes, stage by stage
        from hart_mini.runtime import data_workers
        from hart_mini.step_profile import profile_stages

        result = {"stages": profile_stages(get_preset(args.preset), device, workers=data_workers(device)),
                  "preset": args.preset, "device": describe_device(device),
                  "torch": __import__("torch").__version__, "command": command_line()}
        return emit(result, args.json)
    if args.kv_cache:  # the KV cache alone, at 32 px (cpu preset sizes) and 64 px (gpu preset sizes)
        result = {"kv_cache": kv_cache_speedup([get_preset("cpu"), get_preset("gpu")], device, args.batch,
                                               args.repeats), "device": describe_device(device),
                  "command": command_line()}
        return emit(result, args.json)
    preset = get_preset(args.preset)
    hart, hart_source = resolve("hart", args.hart, args.preset, args.device)
    baseline, base_source = resolve("diffusion", args.baseline, args.preset, args.device)
    judge, _ = resolve("judge", args.judge, args.preset, args.device)
    cfgs = [args.cfg] if args.cfg is not None else ([3.0] if args.n == 0 else args.cfg_sweep)
    with inference_autocast(device):  # bf16 + TF32 on CUDA, as in training; fp32 elsewhere
        result = frontier(hart, baseline, judge, preset.data, device, args.n, args.seeds, args.baseline_steps,
                          args.head_steps, cfgs, args.tune_at, args.batch, args.repeats)
    result.update(device=describe_device(device), hart=hart_source, baseline=base_source,
                  figure=str(figure) if figure and args.n > 0 else None,
                  torch=__import__("torch").__version__, command=command_line())
    if result["figure"]:  # the figure needs quality: none for --n 0
        viz.save(frontier_figure(result), figure)
    return emit(result, args.json)


def cmd_ablate(args) -> dict:
    from hart_mini.ablate import run

    runs.output_folder(args.out)
    judge = args.judge / "judge.safetensors" if args.judge and args.judge.is_dir() else args.judge
    return emit(run(args.name, get_preset(args.preset), args.out, args.device, args.n, args.reference,
                    args.tokenizer, args.stage_a, judge, command_line(), seeds=args.seeds,
                    train_seeds=args.train_seeds))


def cmd_doctor(args) -> dict:
    from hart_mini.doctor import doctor

    output(args.out, "--out", args, IMAGE_SUFFIXES)
    return emit(doctor(get_preset(args.preset), args.device, args.steps, args.out, args.workers))


def cmd_pipeline(args) -> dict:
    from hart_mini.costs import dry_run
    from hart_mini.pipeline import run
    from hart_mini.plan import PipelineOptions, table

    if not args.dry_run:
        runs.output_folder(args.out)
    opts = PipelineOptions(preset=args.preset, budget_minutes=args.budget_minutes, out=args.out, device=args.device,
                           n_eval=args.n_eval, margin=args.margin, max_scale=args.max_scale, compile=args.compile,
                           workers=args.workers, target=args.target, rehearse=args.rehearse,
                           rehearse_batch=args.rehearse_batch, command=command_line())
    if args.dry_run:
        plan = dry_run(opts)
        print(table(plan), file=sys.stderr)
        return emit(plan)
    results = run(opts)
    shown = ("status", "elapsed_s", "failed", "skipped", "metrics", "files", "rehearsal_checks")
    out = emit({**{k: results[k] for k in shown if k in results}, "results": str(args.out / "results.json"),
                "written": sorted(str(p.relative_to(args.out)) for p in args.out.rglob("*") if p.is_file())})
    checks = results.get("rehearsal_checks")
    if checks is not None and not checks["ok"]:
        failed = [k for k, v in checks["checks"].items() if not v["ok"]]
        raise ValueError(f"the rehearsal in {str(args.out)!r} failed {len(failed)} check(s): {', '.join(failed)} "
                         "(details under rehearsal_checks in its results.json)")
    return out


def cmd_ship_run(args) -> dict:
    from hart_mini import pretrained
    from hart_mini.export import ship_run

    return emit(ship_run(args.folder, args.data or pretrained.DATA, replace=args.replace))


def cmd_ship(args) -> dict:
    from hart_mini import checkpoint, pretrained

    metrics = checkpoint.read_json(args.metrics, "--metrics") if args.metrics else None
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"--metrics {str(args.metrics)!r} holds a JSON {type(metrics).__name__}, not an object of "
                         "metrics (the file `eval ... --json` writes)")
    entry = pretrained.ship(args.kind, args.preset, args.ckpt, args.command, metrics, replace=args.replace)
    if entry.get("replaced"):
        old = entry["replaced"]
        note(f"note: replaced data/{old['file']} (sha256 {old['sha256'][:12]}..., made by: {old['command']}); "
             + ("its metrics were kept: measure the new model and ship again with --metrics"
                if metrics is None else "with the metrics given"))
    return emit(entry)


def cmd_course_student(args) -> dict:
    from hart_mini.course.student import write_student_notebooks

    written = write_student_notebooks(args.notebooks, args.outdir, overwrite=args.overwrite)
    return emit({"out": str(args.outdir), "notebooks": [p.name for p in written]})


def cmd_course_pages(args) -> dict:
    from hart_mini.course.pages import stale_pages

    result = stale_pages()
    if result["stale"]:
        note(f"note: {len(result['stale'])} numbers in the pages differ from data/results/: "
             "HART_MINI_WRITE_PAGES=1 pytest tests/test_pages.py rewrites them")
    return emit(result)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an --out folder that holds another run (never replaces a tokenizer "
                             "that a model there was trained with)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--max-minutes", type=minutes, default=None,
                        help="stop cleanly at a checkpoint after this long; continue later with --resume")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="autocast dtype (auto: bf16 on CUDA, fp32 elsewhere)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--workers", type=count(0), default=0, help="DataLoader processes drawing batches ahead")
    parser.add_argument("--grad-accum", type=count(1), default=1, help="micro-batches per step and process")
    parser.add_argument("--peak-tflops", type=positive, default=None,
                        help="the device's peak for MFU (default: bf16 dense peak of known GPUs)")


def training(sub, name: str, help: str, func, on_tokenizer: bool = True) -> argparse.ArgumentParser:
    """A `train NAME` command: preset, output folder, (tokenizer,) and the run options."""
    p = sub.add_parser(name, help=help)
    add_preset(p)
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoints, figures and the result")
    if on_tokenizer:
        p.add_argument("--tokenizer", type=Path, default=None,
                       help="tokenizer file or training folder (default: the preset's shipped tokenizer)")
    add_run_options(p)
    p.set_defaults(func=func)
    return p


def run_options(args, kind: str):
    """The run options of a `train KIND` command, after checking --out and --resume (before any work)."""
    from hart_mini.runtime import world
    from hart_mini.train import RunOptions

    runs.output_folder(args.out)
    preset = get_preset(args.preset)
    configs = {"tokenizer": (preset.tokenizer_train, preset.decoder_train), "hart": (preset.hart_train,),
               "diffusion": (preset.baseline_train,), "judge": (preset.judge_train,)}[kind]
    n_micro = world()[2] * args.grad_accum
    for cfg in configs:
        if cfg.batch_size % n_micro:
            raise ValueError(f"argument --grad-accum: {args.grad_accum} is invalid: preset {preset.name!r} trains "
                             f"with batches of {cfg.batch_size}, which {world()[2]} process(es) x --grad-accum must "
                             "divide")
    if args.resume:
        runs.check_resumable(args.out, kind)
    return RunOptions(device=args.device, precision=args.precision, compile=args.compile, workers=args.workers,
                      grad_accum=args.grad_accum, max_minutes=args.max_minutes, resume=args.resume,
                      overwrite=args.overwrite, peak_tflops=args.peak_tflops)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist (never files in data/ or notebooks/, nor a run.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m hart_mini",
                    description="hart_mini: rebuild HART from scratch, one notebook at a time.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="look at the data").add_subparsers(dest="action", required=True)
    p = data.add_parser("preview", help="save a captioned grid of ToyShapes images")
    add_preset(p)
    p.add_argument("--out", type=Path, default=Path("toyshapes.png"), help="PNG to write")
    p.add_argument("--n", type=count(1), default=16, help="number of images")
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument("--start", type=count(0), default=0, help="index of the first image")
    add_overwrite(p)
    p.set_defaults(func=cmd_data_preview)

    p = sub.add_parser("demo", help="prompts -> images with the shipped HART, as a captioned grid")
    add_preset(p)
    p.add_argument("--out", type=Path, default=Path("hart_mini_demo.png"), help="PNG to write")
    p.add_argument("--cfg", type=guidance, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--steps", type=count(1), default=None, help="head sampling steps (default: the model's, 8)")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed, in [0, 2**32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_overwrite(p)
    p.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="action", required=True)
    p = training(train, "tokenizer", "train the hybrid tokenizer: stage (a) autoencoder + VQ, (b) decoder",
                 cmd_train_tokenizer, on_tokenizer=False)
    p.add_argument("--decoder-field", choices=DECODER_FIELDS, default=None,
                   help="what a decoded pixel sees: wide (the whole latent), near (its latent cell and the 8 around "
                        "it) or local (its own cell) (TokenizerConfig.decoder_field; default: the preset's: near "
                        "for cpu, wide for smoke and gpu)")
    p = training(train, "hart", "train HART's transformer and residual head on a frozen tokenizer", cmd_train_hart)
    p.add_argument("--mode", choices=HEAD_MODES, default=None,
                   help="residual head: off, last (HART, the preset default), full (MAR-style), early")
    p.add_argument("--no-residual-head", action="store_true", help="the discrete-only model (same as --mode off)")
    p.add_argument("--head-stage-steps", type=count(0), default=None,
                   help="after the joint training, train the head alone this many steps on the final transformer "
                        "(default: the preset's, 0)")
    p.add_argument("--true-token-share", type=fraction, default=None,
                   help="share of training images whose head sees the true last-scale token instead of a sampled "
                        "one (HeadConfig.true_token_share; default: the preset's, 0 as HART)")
    p.add_argument("--head-condition", choices=HEAD_CONDITIONS, default=None,
                   help="what the head reads: hidden+token (HART's z) or none (the residuals' distribution alone; "
                        "HeadConfig.condition, default: the preset's)")
    add_head_network_options(p)
    p.add_argument("--joint-head-weight", type=fraction, default=None,
                   help="lambda of the full training's loss CE + lambda * the head's diffusion loss (HeadConfig."
                        "loss_weight; default: the preset's); 0, with a head stage: CE alone, and the head learns "
                        "in its stage only")
    p.add_argument("--steps", type=count(1), default=None,
                   help="steps of the full training (the preset's hart_train.steps; the layout and head stages "
                        "keep theirs)")
    p.add_argument("--train-seed", type=seed, default=None,
                   help="seed of the initial weights and the batches, in [0, 2**32) (default: the preset's, 0)")
    add_caption_options(p)
    p.add_argument("--scale-balance", type=fraction, default=None,
                   help="cross-entropy weight of a scale's tokens: 0 weighs every token alike (the preset's), 1 "
                        "gives every scale the same total weight (TransformerConfig.scale_balance)")
    p.add_argument("--layout-steps", type=count(0), default=None,
                   help="steps on the coarse scales alone (--layout-scales) before the full training, where "
                        "relations are learned (TransformerConfig.layout_steps; default: the preset's, cpu 2000, "
                        "gpu and smoke 0)")
    p.add_argument("--layout-scales", type=count(1), default=None,
                   help="how many coarse scales the layout stage trains (TransformerConfig.layout_scales; default: "
                        "the preset's; cpu 4: 1x1..4x4)")
    p.add_argument("--raster-scales", type=count(0), default=None,
                   help="draw the first N scales one token at a time, each token seeing the ones before it in its "
                        "scale (TransformerConfig.raster_scales; default: the preset's, 0: VAR's parallel scales)")
    p = training(train, "head", "the head stage alone: a fresh residual head trained on a trained HART's frozen "
                 "transformer (the preset's head: condition, tokens, steps)", cmd_train_head, on_tokenizer=False)
    p.add_argument("--source", type=Path, required=True, help="the trained HART: a file or training folder")
    p.add_argument("--steps", type=count(1), default=None,
                   help="steps of the head stage (default: the preset's HeadConfig.stage_steps)")
    p.add_argument("--head-condition", choices=HEAD_CONDITIONS, default=None,
                   help="what the head reads: hidden+token (HART's z) or none (default: the preset's)")
    p.add_argument("--true-token-share", type=fraction, default=None,
                   help="share of training images whose head sees the true last-scale token instead of one drawn "
                        "from the logits (HeadConfig.true_token_share; default: the preset's)")
    add_head_network_options(p)
    p.add_argument("--train-seed", type=seed, default=None,
                   help="seed of the fresh head and the batches, in [0, 2**32) (default: the preset's, 0)")
    p = training(train, "diffusion", "train the DiT-style latent diffusion baseline", cmd_train_diffusion)
    add_caption_options(p)
    p = training(train, "judge", "train the attribute classifier used by FD and prompt accuracy", cmd_train_judge,
                 on_tokenizer=False)
    p.add_argument("--n-eval", type=count(1), default=5000, help="held-out images for the reported accuracy")

    p = sub.add_parser("sample", help="generate a captioned grid of images")
    add_preset(p)
    p.add_argument("--ckpt", type=Path, default=None, help="HART file or training folder (default: shipped)")
    p.add_argument("--prompt", type=prompt, default=None,
                   help="one prompt for all images (default: held-out captions)")
    p.add_argument("--n", type=count(1), default=8, help="number of images")
    p.add_argument("--cfg", type=guidance, default=3.0, help="classifier-free guidance scale (0 = off)")
    p.add_argument("--top-k", type=count(0), default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling threshold (1 = off)")
    p.add_argument("--steps", type=count(1), default=None,
                   help="diffusion steps of the head (default: the model's, 8)")
    p.add_argument("--no-head", action="store_true", help="skip the residual head: the discrete-only image")
    p.add_argument("--off-grammar", action="store_true",
                   help="draw a --prompt that ToyShapes' caption grammar cannot produce (for experiments)")
    p.add_argument("--seed", type=seed, default=0,
                   help="sampling seed, in [0, 2**32); batch i (of 64 images) is drawn with seed + i")
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help=f"PNG to write: a captioned grid, or beyond {GRID_BATCH} images a plain mosaic")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_overwrite(p)
    p.set_defaults(func=cmd_sample)

    evaluate = sub.add_parser("eval", help="measure a model").add_subparsers(dest="action", required=True)
    p = evaluate.add_parser("tokenizer", help="PSNR/MSE of both paths, codebook usage, perplexity, HF ratio")
    add_preset(p)
    p.add_argument("--ckpt", type=Path, default=None, help="tokenizer file or training folder (default: shipped)")
    p.add_argument("--n", type=count(1), default=1000, help="number of held-out test images")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--fd", action="store_true", help="also fd_discrete / fd_continuous (needs a judge)")
    p.add_argument("--judge", type=Path, default=None, help="judge file or folder (default: shipped)")
    add_overwrite(p)
    p.set_defaults(func=cmd_eval_tokenizer)

    p = evaluate.add_parser("judge", help="the judge on real held-out images: each attribute, and the prompt "
                            "accuracy of the real images themselves (its ceiling, 1.0 for a perfect judge)")
    add_preset(p)
    p.add_argument("--ckpt", type=Path, default=None, help="judge file or training folder (default: shipped)")
    p.add_argument("--n", type=count(1), default=5000, help="number of held-out test images")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_overwrite(p)
    p.set_defaults(func=cmd_eval_judge)

    p = evaluated_parser(evaluate, "hart", "FD and prompt accuracy on N held-out captions", "HART")
    p.add_argument("--top-k", type=count(0), default=0)
    p.add_argument("--top-p", type=probability, default=1.0)
    p.add_argument("--steps", type=count(1), default=None, help="head sampling steps (default: the model's)")
    p.add_argument("--no-head", action="store_true", help="evaluate the discrete-only images")
    p.set_defaults(func=cmd_eval_hart)

    p = evaluated_parser(evaluate, "diffusion", "the diffusion baseline's FD and prompt accuracy on N held-out "
                         "captions", "baseline")
    p.add_argument("--steps", type=count(1), default=None, help="DDIM steps (default: the model's, 30)")
    p.set_defaults(func=cmd_eval_diffusion)

    p = sub.add_parser("diagnose", help="per-scale caption sensitivity and the forced-coarse-scales curve "
                                        "(scales, the default), what the residual head adds (head), whether "
                                        "the model reads word order (text)")
    p.add_argument("what", nargs="?", choices=("scales", "head", "text", "residual"), default="scales",
                   help="scales: caption sensitivity per scale and forced coarse scales; head: head on / off / "
                        "noise control / true residual in free generation, with scales 1..K-1 true and with every "
                        "token true; text: the likelihood test of two-object captions mirrored, swapped or changed; "
                        "residual: with every token true, residuals a head could draw (real ones from cells with the "
                        "same token, shuffled, predicted from the neighbourhood or for the decoder's pixels), decoded")
    add_preset(p)
    p.add_argument("--model", choices=("hart", "diffusion"), default="hart",
                   help="text: the model to probe, HART (CE per scale) or the diffusion baseline (its denoising error)")
    p.add_argument("--ckpt", type=Path, default=None, help="HART (or with --model diffusion, baseline; for "
                                                          "residual, tokenizer) file or training folder "
                                                          "(default: shipped)")
    p.add_argument("--judge", type=Path, default=None, help="judge file or folder (default: shipped)")
    p.add_argument("--n", type=count(1), default=500, help="held-out captions per measurement")
    p.add_argument("--cfg", type=guidance, default=3.0, help="guidance scale for the samples")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed, in [0, 2**32)")
    p.add_argument("--seeds", type=distinct_seeds, default=None,
                   help="head: sampling seeds, FD's sd over them (default: --seed only)")
    p.add_argument("--head-sampling-steps", type=count(1), default=None,
                   help="head: the head's sampling steps (default: the model's)")
    add_head_sampler_options(p, "the model's")
    p.add_argument("--head-noise", type=non_negative, default=0.0,
                   help="head: add this many times the noise control's noise (drawn per latent cell with the real "
                        "residuals' covariance) to the head's draw; a probe of a head that draws the structure and "
                        "leaves the mottle to noise (default: 0)")
    p.add_argument("--pool", type=count(1), default=10_000,
                   help="residual: training images whose residuals the same-code draws and the predictors use")
    p.add_argument("--patch", type=odd, default=5, help="residual: the neighbourhood (k x k cells) of the prediction")
    p.add_argument("--pixel-steps", type=count(0), default=2000,
                   help="residual: training steps of the pixel predictor (0: leave that column out)")
    p.add_argument("--figure", type=Path, default=None,
                   help="also draw the measurements (scales) or every cell's example images (head, residual) into "
                        "this PNG")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add_overwrite(p)
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("bench", help="the quality-speed frontier of HART and the diffusion baseline, and HART's "
                                     "speed-up at matched quality")
    add_preset(p)
    p.add_argument("--hart", type=Path, default=None, help="HART file or folder (default: shipped)")
    p.add_argument("--baseline", type=Path, default=None, help="diffusion baseline file or folder (default: shipped)")
    p.add_argument("--judge", type=Path, default=None, help="judge file or folder (default: shipped)")
    p.add_argument("--n", type=eval_count, default=1000,
                   help="samples per seed for FD and prompt accuracy (0 = speed only)")
    p.add_argument("--seeds", type=distinct_seeds, default=[0, 1000, 2000],
                   help="sampling seeds for every quality point (FD mean +- sd over them)")
    p.add_argument("--batch", type=count(1), default=64, help="batch size for throughput")
    p.add_argument("--repeats", type=count(1), default=5, help="timed runs per measurement (median)")
    p.add_argument("--baseline-steps", type=listed(count(1), "step counts"), default=[5, 10, 20, 30, 50],
                   help="DDIM step counts of the baseline to sweep")
    p.add_argument("--head-steps", type=listed(count(1), "step counts"), default=[1, 2, 4, 8, 16],
                   help="head step counts of HART to sweep (its default, 8, is always added)")
    p.add_argument("--cfg-sweep", type=listed(guidance, "guidance scales"), default=[0.0, 1.0, 2.0, 3.0, 4.5, 6.0],
                   help="guidance scales each model is tuned over (lowest FD among those with prompt accuracy "
                        "inside the noise of the best)")
    p.add_argument("--cfg", type=guidance, default=None,
                   help="one guidance scale for both models, no tuning (with --n 0 the default is 3.0)")
    p.add_argument("--tune-at", choices=("default", "each"), default="default",
                   help="tune guidance at each model's default steps (8 head, 30 DDIM) or at every swept step count")
    p.add_argument("--kv-cache", action="store_true",
                   help="only time sampling with vs without the KV cache at 32 px and 64 px (untrained models)")
    p.add_argument("--step-profile", action="store_true",
                   help="only profile one training step of every stage of --preset: trainer and bare ms, the "
                        "device's busy ms, the top host calls and kernels (hart_mini/step_profile.py)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    p.add_argument("--figure", type=Path, default=None,
                   help="PNG of the frontier (default: beside --json, same name)")
    add_overwrite(p)
    p.set_defaults(func=cmd_bench)

    from hart_mini.ablate import ABLATIONS

    p = sub.add_parser("ablate", help="run one ablation: JSON + figure in --out")
    p.add_argument("name", choices=ABLATIONS)
    add_preset(p)
    p.add_argument("--out", type=Path, required=True, help="folder for models, NAME.json and NAME.png")
    p.add_argument("--reference", type=Path, default=None, help="the HART to compare with (default: train one)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer for trained variants (default: shipped)")
    p.add_argument("--stage-a", type=Path, default=None, help="decoder ablation: a tokenizer's stage_a folder")
    p.add_argument("--judge", type=Path, default=None, help="judge file or folder (default: shipped)")
    p.add_argument("--n", type=count(2, " (FD needs 2)"), default=None,
                   help="samples per evaluation (default: by preset)")
    p.add_argument("--seeds", type=distinct_seeds, default=[0, 1000, 2000],
                   help="sampling seeds of every evaluation (FD mean +- sd over them)")
    p.add_argument("--train-seeds", type=distinct_seeds, default=[0, 1],
                   help="head, early, full: train every variant with each of these seeds, in OUT/<variant>_seed<s> "
                        "(reused if there); --reference stands in for the first seed's HART")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("doctor", help="check this machine for the course (under 2 minutes)")
    add_preset(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--steps", type=count(3, " (the burst logs its speed every steps // 3 steps)"), default=30,
                   help="steps of the training burst")
    p.add_argument("--out", type=Path, default=Path("doctor_samples.png"), help="PNG of a few samples")
    p.add_argument("--workers", type=count(0), default=None,
                   help="data processes for the burst (default: on CUDA one per core but one, at most 8)")
    add_overwrite(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("pipeline", help="the whole course in one process and one time budget (see --help)",
                       description="Train tokenizer, judge, HART, the diffusion baseline and (if it fits) the "
                       "discrete-only model; export fp16 weights, draw samples, evaluate and benchmark, all inside "
                       "--budget-minutes. Step counts and every step's deadline come from timing bursts and one "
                       "measured pass of everything after training; what may be cut comes last. DIR/results.json "
                       "is rewritten after every step and records planned against measured seconds.")
    add_preset(p)
    p.add_argument("--budget-minutes", type=positive, default=None,
                   help="wall-clock budget of the whole run (default 8; 60 with --rehearse, so that every step runs)")
    p.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="folder for everything the run writes")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stages, steps, batch, expected seconds on --target) without training")
    p.add_argument("--rehearse", action="store_true",
                   help="every step at the preset's real shapes, one training step per stage and a handful of "
                   "samples, then check every file the run wrote (the gpu preset: under 10 min on 2 CPU cores)")
    p.add_argument("--rehearse-batch", type=count(2), default=None,
                   help="a rehearsal's training batch (default: the preset's)")
    p.add_argument("--target", choices=("h100", "h200"), default="h100",
                   help="the GPU a dry run plans for (and a rehearsal's cost model predicts for)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--n-eval", type=count(2, " (FD needs 2)"), default=None,
                   help="samples per generator (default: gpu 2000, smoke 64)")
    p.add_argument("--margin", type=share(0, 0.5), default=0.1, help="share of the budget kept free (default 0.1)")
    p.add_argument("--max-scale", type=positive, default=2.0,
                   help="at most this many times the preset's steps when the device is fast (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile the repeated blocks (plans assume eager)")
    p.add_argument("--workers", type=count(0), default=None,
                   help="processes drawing the data (default: one per core but one on CUDA, else 0)")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("ship-run", help="put a pipeline run's returned files into data/ and data/results/PRESET/")
    p.add_argument("folder", type=Path, help="folder holding results.json and the exported .safetensors files")
    p.add_argument("--data", type=Path, default=None, help="the data folder (default: the repository's data/)")
    p.add_argument("--replace", action="store_true", help="replace shipped weights and results that differ")
    p.set_defaults(func=cmd_ship_run)

    p = sub.add_parser("ship", help="copy a trained model into data/ and record it in data/manifest.json")
    p.add_argument("kind", choices=("tokenizer", "hart", "judge", "diffusion"), help="what the file holds")
    add_preset(p)
    p.add_argument("--ckpt", type=Path, required=True, help="the trained .safetensors file")
    p.add_argument("--metrics", type=Path, default=None,
                   help="JSON file of metrics to record (from eval); default: the replaced file's, else none")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--replace", action="store_true", help="replace the model shipped for this kind and preset")
    p.set_defaults(func=cmd_ship)

    course = sub.add_parser("course", help="instructor tools").add_subparsers(dest="action", required=True)
    p = course.add_parser("student", help="write student notebooks (solution cells replaced by stubs)")
    p.add_argument("outdir", type=Path, help="folder for the student notebooks")
    p.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="course notebooks to convert")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the notebooks of an existing student folder (your edits there are lost)")
    p.set_defaults(func=cmd_course_student)
    p = course.add_parser("pages", help="check the numbers of the course pages against data/results/ (reads only)",
                          description="Every number marked in README.md and notebooks/{results,instructor_guide,"
                                      "glossary}.md, checked against the JSON it names (hart_mini/course/pages.py). "
                                      "Prints how many each page marks and every stale one; writes nothing.")
    p.set_defaults(func=cmd_course_pages)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 with one `error: ...` line (no traceback) for a bad input."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad argument (2), already printed
        return e.code if isinstance(e.code, int) else 0
    NOTES.clear()
    try:
        if getattr(args, "preset", None) is None and hasattr(args, "preset"):
            args.preset = default_preset_name()  # HART_MINI_PRESET, checked
        args.func(args)
    except (ValueError, OSError, FloatingPointError) as e:  # user errors and faults: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
