"""measure/regions.py: object and background masks from the scenes, and what is measured there."""

import dataclasses

import numpy as np

from hart_mini.config import get_preset
from hart_mini.measure.evaluate import held_out
from hart_mini.measure.regions import background_detail, held_out_regions, region_rms
from hart_mini.model.data import ToyShapes, object_mask, render

PRESET = get_preset("smoke")


def test_object_mask_marks_exactly_the_pixels_objects_change():
    scenes = [ToyShapes(PRESET.data, "test").scene(i) for i in range(6)]
    size = PRESET.data.image_size
    mask = object_mask(scenes, size)
    assert mask.shape == (6, size, size) and mask.any(axis=(1, 2)).all() and not mask.all()
    assert not object_mask([dataclasses.replace(s, objects=()) for s in scenes], size).any()
    quiet = np.zeros((6, size, size, 3), np.float32)
    bare = render([dataclasses.replace(s, objects=()) for s in scenes], quiet, size)
    assert np.array_equal(render(scenes, quiet, size)[~mask], bare[~mask])


def test_regions_split_cells_and_read_the_grain_of_a_background():
    n, latent = 5, 8
    regions = held_out_regions(PRESET.data, n, latent)
    assert regions["clean"].shape == (n, 3, PRESET.data.image_size, PRESET.data.image_size)
    assert not (regions["object_cells"] & regions["background_cells"]).any()
    assert regions["object_cells"].any() and regions["background_cells"].any()
    real = held_out(PRESET.data, n)["image"]
    assert background_detail(regions["clean"], regions) == 0 < background_detail(real, regions)
    lifted = regions["clean"] + 0.1 * regions["background"]  # every background pixel 0.1 brighter
    assert abs(background_detail(lifted, regions) - 0.1) < 1e-5
    x = 2.0 * regions["object_cells"].float() + regions["background_cells"].float()  # (n, 1, 8, 8)
    assert region_rms(x.expand(n, 4, latent, latent), regions) == {"object": 2.0, "background": 1.0}
