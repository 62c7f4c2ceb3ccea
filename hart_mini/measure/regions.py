"""Where the objects are: masks from the held-out scenes, for probes that ask where detail sits.

A ToyShapes image is a few objects on a graded background, plus the data's random detail (a mottle field and
pixel noise) everywhere. Knowing each scene, we can split an image, or a latent map, into

    object pixels        pixels an object covers (object_mask)
    background pixels    the rest
    object cells         latent cells (one token, 4x4 px at 32 px) more than half covered by objects
    background cells     latent cells with no object pixel (cells on an edge are neither)

and measure two things there:

    background detail    rms over background pixels of (image - the scene drawn without noise): how much
                         grain a background shows; real images: the data's mottle and pixel noise
    region rms           rms of a latent map (a residual, a head's draw) over object and background cells
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hart_mini.model.data import ToyShapes, object_mask, render, uint8_to_tensor


def held_out_regions(data_config, n: int, latent_size: int) -> dict:
    """The first n test scenes (held_out's images): clean (N, 3, H, W) in [-1, 1], each scene drawn without
    its noise; background (N, 1, H, W) bool pixels; object_cells and background_cells (N, 1, h, w) bool."""
    data = ToyShapes(data_config, "test", size=max(n, 1))
    scenes = [data.scene(i) for i in range(n)]
    size = data_config.image_size
    objects = torch.from_numpy(object_mask(scenes, size))[:, None].float()  # (N, 1, H, W)
    share = F.adaptive_avg_pool2d(objects, latent_size)  # (N, 1, h, w): object share of each cell
    quiet = torch.zeros(n, size, size, 3).numpy()
    return {"clean": uint8_to_tensor(render(scenes, quiet, size)), "background": objects == 0,
            "object_cells": share > 0.5, "background_cells": share == 0}


def background_detail(images: torch.Tensor, regions: dict) -> float:
    """rms over background pixels of images (N, 3, H, W) in [-1, 1] minus the clean scenes."""
    mask = regions["background"].to(images.device)  # (N, 1, H, W)
    detail = (images - regions["clean"].to(images.device)) * mask
    return float(detail.pow(2).sum() / (mask.sum() * images.shape[1]).clamp_min(1)) ** 0.5


def region_sums(x: torch.Tensor, regions: dict, start: int = 0) -> dict[str, tuple[float, int]]:
    """Sums of squares of a latent map x (B, C, h, w) over its object and background cells, and how many entries
    each holds; x holds images start..start+B-1 of the regions."""
    out = {}
    for name in ("object", "background"):
        cells = regions[f"{name}_cells"][start:start + len(x)].to(x.device).float()  # (B, 1, h, w)
        out[name] = (float((x.pow(2) * cells).sum()), int(cells.sum()) * x.shape[1])
    return out


def region_rms(x: torch.Tensor, regions: dict) -> dict[str, float]:
    """rms of a latent map x (N, C, h, w) over the object cells and over the background cells."""
    return {name: (total / max(count, 1)) ** 0.5 for name, (total, count) in region_sums(x, regions).items()}
