"""Robustness rows about what commands read: models used under another preset, checksums, seeds, prompts the
caption grammar cannot produce, image folders, and messages that name the argument or file at fault."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from robustness_harness import (
    ROOT,
    SMOKE,
    case,
    cli,
    copy_run,
    edit_header,
    edit_metadata,
    relative,
    resave,
    sample,
    shipped_repo,
)

# --- a model under another preset -------------------------------------------------------------------------------


@case("silent wrong result", "the 32 px cpu HART evaluated under the 64 px gpu preset (FD 9.82 instead of 1.20)",
      "eval hart --preset gpu --ckpt data/hart_cpu.safetensors",
      r"^exit 2: error: 'data/hart_cpu.safetensors' was trained for preset 'cpu' \(32 px images, latent grid 8x8\), "
      r"but preset 'gpu' works with 64 px images, latent grid 16x16: pass --preset cpu$")
def case_hart_under_another_preset(trained, mp):
    shipped_repo(mp)
    return cli("eval", "hart", "--preset", "gpu", "--device", "cpu", "--ckpt", "data/hart_cpu.safetensors",
               "--judge", "data/judge_cpu.safetensors", "--n", "2", "--seed", "0")


@case("silent wrong result", "the 32 px cpu judge under the gpu preset (real-image accuracy 0.375)",
      "eval judge --preset gpu --ckpt data/judge_cpu.safetensors",
      r"^exit 2: error: 'data/judge_cpu.safetensors' was trained for preset 'cpu' \(32 px images\), but preset 'gpu' "
      r"works with 64 px images: pass --preset cpu$")
def case_judge_under_another_preset(trained, mp):
    shipped_repo(mp)
    return cli("eval", "judge", "--preset", "gpu", "--device", "cpu", "--ckpt", "data/judge_cpu.safetensors",
               "--n", "4")


@case("silent wrong result", "ablate where another preset's variant was trained (it was reused as this preset's)",
      "ablate head --preset smoke --out ab  (ab/off_seed0: a cpu-preset discrete-only model)",
      r"^exit 0: trained the smoke variant in ab/off_seed0_smoke_<recipe>; the cpu model in ab/off_seed0 not used$")
def case_ablate_keys_variants_by_preset_and_recipe(trained, mp):
    import hart_mini.train as train

    calls, real = [], train.train_hart

    def quick(preset, out, *args, **kwargs):  # 2 steps: the row is about which folder, not the model
        calls.append(Path(out).name)
        short = dataclasses.replace(preset, hart_train=dataclasses.replace(preset.hart_train, steps=2, batch_size=4))
        return real(short, out, *args, **kwargs)

    mp.setattr(train, "train_hart", quick)
    Path("ab/off_seed0").mkdir(parents=True)
    for name, target in (("hart_cpu", "hart"), ("tokenizer_cpu", "tokenizer_cpu")):
        shutil.copyfile(ROOT / "data" / f"{name}.safetensors", f"ab/off_seed0/{target}.safetensors")
    out = cli("ablate", "head", *SMOKE, "--out", "ab", "--n", "2", "--seeds", "0", "--train-seeds", "0",
              "--reference", str(trained / "har" / "hart.safetensors"))
    assert out.startswith("exit 0") and calls, f"no smoke variant was trained ({out})"
    folder = re.sub(r"_[0-9a-f]{8}$", "_<recipe>", calls[0])
    return f"exit 0: trained the smoke variant in ab/{folder}; the cpu model in ab/off_seed0 not used"


# --- checksums --------------------------------------------------------------------------------------------------


@case("silent wrong result", "its checksums deleted from the header, then num_heads edited (it loaded, warning that "
      "the file was old)", "sample --ckpt run/hart.safetensors  (header: no hart_mini_sha256, num_heads 1)",
      r"^exit 2: error: 'run/hart.safetensors' carries no checksums, but it records checkpoint_format 2, whose files "
      r"always carry them")
def case_checksums_deleted(trained, mp):
    run = copy_run(trained, "har")
    edit_header(run / "hart.safetensors", lambda header: header.update(hart_mini_sha256=None))
    edit_metadata(run / "hart.safetensors", lambda meta: meta["transformer"].update(num_heads=1))
    return sample()


for _value, _what in (("5", "a number"), ("[1, 2]", "a list")):
    def _run(trained, mp, value=_value):
        run = copy_run(trained, "har")
        edit_header(run / "hart.safetensors", lambda header: header.update(hart_mini_sha256=value))
        return sample()

    _run.__name__ = f"case_checksum_entry_{_what.split()[-1]}"
    case("traceback", f"a malformed checksum entry: {_what}", f"sample --ckpt run/hart.safetensors  "
         f"(header: hart_mini_sha256 = {_value})", r"^exit 2: error: 'run/hart.safetensors': its checksum entry "
         rf"'hart_mini_sha256' is malformed \({re.escape(repr(_value))}; expected")(_run)


@case("unclear message", "metadata that is not JSON", "sample --ckpt run/hart.safetensors  (header: hart_mini = '{x')",
      r"^exit 2: error: 'run/hart.safetensors': its hart_mini metadata is not valid JSON")
def case_metadata_not_json(trained, mp):
    run = copy_run(trained, "har")
    edit_header(run / "hart.safetensors", lambda header: header.update(hart_mini_sha256=None, hart_mini="{x"))
    return sample()


@case("traceback", "a manifest overwritten by another file (KeyError: 'models')", "sample  (data/manifest.json: "
      "an eval result)", r"^exit 2: error: data/manifest.json holds no 'models' table .*git checkout")
def case_manifest_without_models(trained, mp):
    repo = shipped_repo(mp)
    (repo / "data" / "manifest.json").write_text('{"fd": 0.8}\n')
    return relative(cli("sample", *SMOKE, "--n", "1", "--out", "x.png"))


# --- seeds and sizes --------------------------------------------------------------------------------------------


@case("silent wrong result", "a seed of 2**32 (it drew seed 0's images)", "sample --seed 4294967296",
      r"^exit 2: error: argument --seed: 4294967296 is invalid: expected an integer in \[0, 2\*\*32\)")
def case_seed_2_to_the_32(trained, mp):
    copy_run(trained, "har")
    return sample("--seed", str(2**32))


@case("unclear message", "a seed past 64 bits (error: Overflow when unpacking long long)",
      "sample --seed 18446744073709551616", r"^exit 2: error: argument --seed: 18446744073709551616 is invalid")
def case_seed_overflow(trained, mp):
    copy_run(trained, "har")
    return sample("--seed", str(2**64))


@case("silent wrong result", "--seed beside --seeds (--seeds was dropped)", "eval hart --seeds 0,1000 --seed 5",
      r"^exit 2: error: argument --seed: not allowed with argument --seeds")
def case_seed_beside_seeds(trained, mp):
    return cli("eval", "hart", *SMOKE, "--n", "2", "--seeds", "0,1000", "--seed", "5")


@case("traceback", "more images than fit one batch (--n 100000 ran as one batch and died)",
      "sample --prompt ... --n 1000", r"^exit 0: 16 batches of at most 64 images; --out: a 1024 x 1024 px mosaic$")
def case_large_n_in_batches(trained, mp):
    from PIL import Image

    from hart_mini.model import sampling_variants

    batches = []

    def generate(model, prompts, **knobs):  # stands in for the model: the row is about batches and the grid
        if len(prompts) > 64:
            raise MemoryError(f"{len(prompts)} images at once")
        batches.append(len(prompts))
        return torch.rand(len(prompts), 3, 32, 32)

    mp.setattr(sampling_variants, "generate", generate)
    out = cli("sample", *SMOKE, "--prompt", "a large red circle at the top", "--n", "1000", "--out", "x.png")
    with Image.open("x.png") as im:
        size = im.size
    return f"{out.split(':')[0]}: {len(batches)} batches of at most {max(batches)} images; --out: a {size[0]} x " \
           f"{size[1]} px mosaic"


@case("unclear message", "--n past the end of the split (error: index=5000 is invalid)",
      "data preview --split test --start 4990 --n 20",
      r"^exit 2: error: argument --n: 20 images from --start 4990 run past the test split's 5000 images")
def case_preview_past_the_split(trained, mp):
    return cli("data", "preview", *SMOKE[:2], "--split", "test", "--start", "4990", "--n", "20", "--out", "p.png")


@case("unclear message", "an infinite budget (error: cannot convert float NaN to integer)",
      "pipeline --budget-minutes inf --dry-run",
      r"^exit 2: error: argument --budget-minutes: inf is invalid: expected a finite number")
def case_budget_inf(trained, mp):
    return cli("pipeline", *SMOKE, "--budget-minutes", "inf", "--dry-run")


@case("unclear message", "a negative guidance scale in a sweep (it was used)", "bench --n 0 --cfg-sweep 1,-2",
      r"^exit 2: error: argument --cfg-sweep: -2 is invalid: expected a number in \[0, 20\]")
def case_negative_cfg_in_sweep(trained, mp):
    return cli("bench", *SMOKE, "--n", "0", "--batch", "2", "--repeats", "1", "--cfg-sweep", "1,-2")


@case("unclear message", "a model that stopped after 1 of its 30 steps, evaluated (nothing said so)",
      "eval hart --ckpt run  (run/hart.safetensors: finished false, 1 of 30 steps)",
      r"^exit 0: note: run/hart.safetensors stopped after 1 of 30 training steps \(finished: false\)")
def case_eval_of_an_unfinished_model(trained, mp):
    run = copy_run(trained, "har")
    resave(run / "hart.safetensors", finished=False, steps_done=1)
    return cli("eval", "hart", *SMOKE, "--ckpt", "run", "--n", "2", "--seed", "0")


# --- prompts ----------------------------------------------------------------------------------------------------


@case("silent wrong result", "a three-object prompt (drawn as if valid)",
      'sample --prompt "a small red circle left of a large blue square above a small green triangle"',
      r"^exit 2: error: argument --prompt: cannot parse .*: unexpected words 'above a small green triangle'")
def case_three_object_prompt(trained, mp):
    copy_run(trained, "har")
    return sample("--prompt", "a small red circle left of a large blue square above a small green triangle")


@case("silent wrong result", "a scrambled prompt (drawn as if valid)", 'sample --prompt "circle striped red large a '
      'at left top the"', r"^exit 2: error: argument --prompt: cannot parse .*: expected 'a <size> <colour>")
def case_scrambled_prompt(trained, mp):
    copy_run(trained, "har")
    return sample("--prompt", "circle striped red large a at left top the")


@case("silent wrong result", "the same, drawn on purpose", 'sample --prompt "circle striped red large a at left top '
      'the" --off-grammar', r"^exit 0: note: drew a prompt the caption grammar cannot produce")
def case_scrambled_prompt_on_purpose(trained, mp):
    copy_run(trained, "har")
    return sample("--prompt", "circle striped red large a at left top the", "--off-grammar")


# --- image folders ----------------------------------------------------------------------------------------------


@case("silent wrong result", "a photo whose EXIF orientation turns it upside down (read unturned)",
      "ImageFolder(root)  (root/a_red_circle/photo.jpg: red top, blue bottom, EXIF orientation 3)",
      r"^top: blue, bottom: red \(as a viewer shows it\)$")
def case_image_exif_orientation(trained, mp):
    from PIL import Image

    from hart_mini.model.data import ImageFolder

    Path("images/a_red_circle").mkdir(parents=True)
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16, :, 0], pixels[16:, :, 2] = 255, 255  # stored: red on top, blue below
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180 degrees to show
    Image.fromarray(pixels).save("images/a_red_circle/photo.jpg", exif=exif, quality=95)
    image = ImageFolder("images", image_size=32).batch([0])["image"][0]
    colour = lambda rgb: "red" if rgb[0] > rgb[2] else "blue"
    return f"top: {colour(image[:, 4, 16])}, bottom: {colour(image[:, 28, 16])} (as a viewer shows it)"


@case("silent wrong result", "two class folders with one caption (two classes, one caption)",
      "ImageFolder(root)  (root/a_red_circle/, root/a-red-circle/)",
      r"^ValueError: class folders 'images/a-red-circle' and 'images/a_red_circle' both read as the caption "
      r"'a red circle'")
def case_image_folders_with_one_caption(trained, mp):
    from PIL import Image

    from hart_mini.model.data import ImageFolder

    for folder in ("a_red_circle", "a-red-circle"):
        Path(f"images/{folder}").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(f"images/{folder}/x.png")
    try:
        data = ImageFolder("images", image_size=32)
    except ValueError as e:
        return f"ValueError: {e}"
    return f"no error: {len(data.captions)} classes, captions {json.dumps(data.captions)}"
