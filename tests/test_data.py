"""ToyShapes: determinism, captions that match labels, fine detail, and clear errors."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from hart_mini.config import DataConfig
from hart_mini.measure.metrics import high_frequency_energy
from hart_mini.model.data import (
    COLOURS,
    LABEL_DIM,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    ImageFolder,
    ToyShapes,
    mottle,
    render,
    true_relations,
)


def test_vocabulary_meets_the_design_minimums():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 6 and len(SIZES) == 2 and len(TEXTURES) >= 3
    assert len(POSITIONS) == 9 and set(RELATIONS) == {"left of", "right of", "above", "below"}


@pytest.mark.parametrize("size", [32, 64])
def test_batch_shapes_range_and_labels(size):
    batch = ToyShapes(DataConfig(image_size=size)).batch(range(6))
    assert batch["image"].shape == (6, 3, size, size) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["labels"].shape == (6, LABEL_DIM) and len(batch["caption"]) == 6


def test_item_is_identical_on_repeat_and_matches_batch():
    ds = ToyShapes(DataConfig())
    one = ds[17]
    again = ds.batch([3, 17])
    assert torch.equal(one["image"], again["image"][1]) and one["caption"] == again["caption"][1]


def _digest_in_subprocess(index: int) -> str:
    code = ("import hashlib; from hart_mini.model.data import ToyShapes; "
            f"px, _ = ToyShapes().images([{index}]); print(hashlib.sha256(px.tobytes()).hexdigest())")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_item_is_bit_identical_across_processes():
    px, _ = ToyShapes().images([123])
    here = hashlib.sha256(px.tobytes()).hexdigest()
    assert _digest_in_subprocess(123) == here


def test_splits_and_seeds_give_different_images():
    train, test = ToyShapes(split="train"), ToyShapes(split="test")
    other_seed = ToyShapes(DataConfig(seed=1))
    a = train.images([0])[0]
    assert not np.array_equal(a, test.images([0])[0])
    assert not np.array_equal(a, other_seed.images([0])[0])


def _caption_from_labels(labels) -> str:
    def words(shape, colour, size, texture):
        tex = "" if TEXTURES[texture] == "plain" else TEXTURES[texture] + " "
        return f"a {SIZES[size]} {list(COLOURS)[colour]} {tex}{SHAPES[shape]}"
    first = words(*labels[0:4])
    if labels[5] < 0:
        return f"{first} at the {POSITIONS[labels[4]]}"
    return f"{first} {RELATIONS[labels[10]]} {words(*labels[5:9])}"


def test_captions_are_a_function_of_labels_and_relations_are_true():
    batch = ToyShapes().batch(range(300))
    two = 0
    for caption, labels in zip(batch["caption"], batch["labels"].tolist()):
        assert caption == _caption_from_labels(labels)
        if labels[5] >= 0:
            two += 1
            assert labels[4] != labels[9], "two objects never share a grid cell"
            assert labels[10] in true_relations(labels[4], labels[9])
    assert 0.2 < two / 300 < 0.5  # p_two_objects = 0.35


def test_objects_are_drawn_where_their_labels_say():
    """The brightest-saturated pixels of a one-object image fall in its labelled 3x3 cell."""
    ds = ToyShapes(DataConfig(p_two_objects=0.0))
    px, scenes = ds.images(range(40))
    for pixels, scene in zip(px.astype(np.float32), scenes):
        chroma = pixels.max(-1) - pixels.min(-1)  # the background is grey, the objects are coloured
        ys, xs = np.nonzero(chroma > 0.5 * chroma.max())
        cell = 32 / 3
        assert (int(ys.mean() // cell), int(xs.mean() // cell)) == divmod(scene.objects[0].position, 3)


def test_textures_mottle_and_noise_add_high_frequency_energy():
    ds = ToyShapes()
    px, scenes = ds.images(range(64))
    flat_scenes = [s.__class__(tuple(o.__class__(o.shape, o.colour, o.size, 0, o.position) for o in s.objects),
                               s.relation, s.background) for s in scenes]
    flat = render(flat_scenes, np.zeros_like(px, dtype=np.float32), 32)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert high_frequency_energy(to_t(px)) > 1.5 * high_frequency_energy(to_t(flat))


def test_bad_dataset_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="split='valid'"):
        ToyShapes(split="valid")
    ds = ToyShapes(DataConfig(train_size=10))
    with pytest.raises(ValueError, match=r"index=10 is invalid"):
        ds[10]
    with pytest.raises(ValueError, match="at least one image index"):
        ds.batch([])
    with pytest.raises(ValueError, match="size=0"):
        ToyShapes(size=0)


# --- the folder dataset ---------------------------------------------------------------------------

def _save(path, array, mode=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def test_folder_dataset_converts_greyscale_palette_and_rgba(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    _save(tmp_path / "red_circle" / "a.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    _save(tmp_path / "red_circle" / "grey.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    rgba = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent -> composited on white
    _save(tmp_path / "blue-square" / "alpha.png", rgba)
    palette = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "blue-square" / "p.gif")
    ds = ImageFolder(tmp_path, image_size=32)
    assert ds.captions == ["blue square", "red circle"] and len(ds) == 4
    batch = ds.batch(range(4))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["caption"] == ["blue square", "blue square", "red circle", "red circle"]
    assert torch.allclose(batch["image"][0], torch.ones(3, 32, 32))  # transparent -> white


def test_folder_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class.*holds no images"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        ImageFolder(tmp_path)


def test_mottle_is_the_bilinear_upsampling_of_its_grid():
    # mottle() runs in torch (numpy's einsum left OpenBLAS threads spinning beside the training step): it must
    # still be the separable bilinear interpolation of the grid, here written out elementwise in numpy
    grid = np.random.default_rng(0).normal(0.0, 1.0, size=(3, 9, 9, 3)).astype(np.float32)
    size = 32
    pos = (np.arange(size) + 0.5) * (grid.shape[1] - 1) / size
    lo = np.minimum(pos.astype(int), grid.shape[1] - 2)
    w = (pos - lo)[None, :, None, None]
    rows = grid[:, lo] * (1 - w) + grid[:, lo + 1] * w  # along h: (3, H, 9, 3)
    w = w.transpose(0, 2, 1, 3)
    expected = rows[:, :, lo] * (1 - w) + rows[:, :, lo + 1] * w  # along w: (3, H, W, 3)
    got = mottle(grid, size)
    assert got.dtype == np.float32 and got.shape == (3, size, size, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
