"""The command line: `python -m hart_mini COMMAND ...`. Every command has --help and prints JSON.

    data preview   a captioned grid of ToyShapes images
    demo           what the course builds, in one picture
    course student student notebooks with the solutions removed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hart_mini.config import PRESET_NAMES, default_preset_name, get_preset

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def emit(result: dict) -> dict:
    """Print a command's result as JSON (the one output format of the CLI) and return it."""
    print(json.dumps(result, indent=2, sort_keys=True))
    return result


def add_preset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None,
                        help="budget preset (default: $HART_MINI_PRESET, else cpu)")


def cmd_data_preview(args) -> dict:
    from hart_mini import viz
    from hart_mini.data import ToyShapes

    preset = get_preset(args.preset)
    dataset = ToyShapes(preset.data, split=args.split)
    batch = dataset.batch(range(args.start, args.start + args.n))
    path = viz.save(viz.image_grid(batch["image"], batch["caption"], ncols=min(8, args.n)), args.out)
    return emit({"out": str(path), "preset": preset.name, "split": args.split, "n": args.n,
                 "image_size": preset.data.image_size, "captions": batch["caption"]})


def cmd_demo(args) -> dict:
    from hart_mini import viz
    from hart_mini.data import ToyShapes

    preset = get_preset(args.preset)
    batch = ToyShapes(preset.data, split="test").batch(range(8))
    fig = viz.image_grid(batch["image"], batch["caption"], ncols=8,
                         title="ToyShapes: the captions HART will learn to draw")
    path = viz.save(fig, args.out)
    return emit({
        "out": str(path), "preset": preset.name, "what": "a preview of the training data",
        "next": "notebooks/00_welcome.ipynb explains what the course builds on top of it",
        "captions": batch["caption"],
    })


def cmd_course_student(args) -> dict:
    from hart_mini.course import write_student_notebooks

    written = write_student_notebooks(args.notebooks, args.outdir)
    return emit({"out": str(args.outdir), "notebooks": [p.name for p in written]})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hart_mini",
                                     description="hart_mini: rebuild HART from scratch, one notebook at a time.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="look at the data").add_subparsers(dest="action", required=True)
    p = data.add_parser("preview", help="save a captioned grid of ToyShapes images")
    add_preset(p)
    p.add_argument("--out", type=Path, default=Path("toyshapes.png"), help="PNG to write")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument("--start", type=int, default=0, help="index of the first image")
    p.set_defaults(func=cmd_data_preview)

    p = sub.add_parser("demo", help="the course's main job in one picture")
    add_preset(p)
    p.add_argument("--out", type=Path, default=Path("hart_mini_demo.png"), help="PNG to write")
    p.set_defaults(func=cmd_demo)

    course = sub.add_parser("course", help="instructor tools").add_subparsers(dest="action", required=True)
    p = course.add_parser("student", help="write student notebooks (solution cells replaced by stubs)")
    p.add_argument("outdir", type=Path, help="folder for the student notebooks")
    p.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="course notebooks to convert")
    p.set_defaults(func=cmd_course_student)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None) is None and hasattr(args, "preset"):
        args.preset = default_preset_name()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
