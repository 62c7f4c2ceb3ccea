"""The judge: a small CNN that reads ToyShapes attributes back from an image. It is the course's honest
stand-in for Inception (FID) and for GenEval, which we cannot download.

For each cell of the 3x3 grid it predicts the shape there (or "none"), and the colour, size and texture
of that shape. From its predictions:
- prompt accuracy: does an image show what its caption asks for (objects, attributes, position or
  relation)? Overall and per attribute, like a toy GenEval;
- features: the pooled last conv layer (`features`), whose Frechet distance between generated and real
  images is our FD (metrics.frechet_distance).

Images are (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_mini import checkpoint
from hart_mini.model.data import COLOURS, SHAPES, SIZES, TEXTURES, parse_caption, true_relations

NONE = len(SHAPES)  # the shape class of an empty cell
HEADS = {"shape": len(SHAPES) + 1, "colour": len(COLOURS), "size": len(SIZES), "texture": len(TEXTURES)}
ATTRIBUTES = ("shape", "colour", "size", "texture")


def cell_targets(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Data labels (B, 11) -> per-cell targets (B, 9) per head; -100 (ignored) where a cell is empty."""
    B, device = labels.shape[0], labels.device
    out = {"shape": torch.full((B, 9), NONE, dtype=torch.long, device=device)}
    out.update({k: torch.full((B, 9), -100, dtype=torch.long, device=device) for k in ("colour", "size", "texture")})
    for slot in range(2):  # scatter, not boolean indexing: no read-back of how many objects there are
        obj = labels[:, slot * 5:(slot + 1) * 5]
        present = obj[:, 0] >= 0  # (B,)
        cell = obj[:, 4:5].clamp_min(0)  # (B, 1); an absent object writes back what its cell already holds
        for i, name in enumerate(ATTRIBUTES):
            value = torch.where(present[:, None], obj[:, i:i + 1], out[name].gather(1, cell))
            out[name].scatter_(1, cell, value)
    return out


class Judge(nn.Module):
    """conv stages (each: two 3x3 convs + GroupNorm + SiLU, then 2x2 pooling) -> per-cell heads."""

    def __init__(self, image_size: int = 32, width: int = 32):
        super().__init__()
        if image_size not in (32, 64):
            raise ValueError(f"image_size={image_size!r} is invalid: expected 32 or 64")
        self.image_size = image_size
        layers, c_in = [], 3
        widths = [width, 2 * width, 4 * width] + ([4 * width] if image_size == 64 else [])
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)  # (B, 4w, 8, 8)
        self.cells = nn.Conv2d(c_in, sum(HEADS.values()), 1)  # per-cell logits, on 3x3 pooled features
        self.feature_dim = c_in

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """-> ({head: logits (B, 9, classes)}, features (B, feature_dim))."""
        h = self.body(x)  # (B, F, 8, 8)
        logits = self.cells(F.adaptive_avg_pool2d(h, 3)).flatten(2).transpose(1, 2)  # (B, 9, sum classes)
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=-1))), h.mean(dim=(2, 3))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits, _ = self(images)
        targets = {k: v.to(images.device, non_blocking=True) for k, v in cell_targets(labels).items()}
        losses = {k: F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten(), ignore_index=-100) for k in HEADS}
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-cell predicted classes (B, 9) per head."""
        logits, _ = self(images)
        return {k: v.argmax(-1) for k, v in logits.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[1]

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> Judge:
        tensors, meta = checkpoint.load(path)
        if meta.get("kind") != "judge":
            raise ValueError(f"{str(path)!r} holds a {meta.get('kind')!r}, not a judge")
        model = checkpoint.config_from(cls, meta, "config", path)
        checkpoint.load_module(model, tensors, str(path))
        model.meta = meta
        return model.to(device).eval()


@torch.no_grad()
def attribute_accuracy(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-cell accuracy against true labels: shape over all cells (empty included), the other attributes
    over occupied cells, and 'position' = every cell's occupancy right."""
    pred = {k: v.cpu() for k, v in judge.predict(images).items()}
    target = cell_targets(labels.cpu())
    out = {"shape": float((pred["shape"] == target["shape"]).float().mean())}
    occupied = target["shape"] != NONE
    for k in ("colour", "size", "texture"):
        out[k] = float((pred[k][occupied] == target[k][occupied]).float().mean())
    out["position"] = float(((pred["shape"] != NONE) == occupied).all(1).float().mean())
    return out


def _objects(pred: dict[str, torch.Tensor], b: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Detected objects of image b: (cell, (shape, colour, size, texture))."""
    cells = (pred["shape"][b] != NONE).nonzero().flatten().tolist()
    return [(c, tuple(int(pred[k][b, c]) for k in ATTRIBUTES)) for c in cells]


def _agreement(objects: list, wanted: list) -> int:
    """How many attributes of detected objects (cell, attributes) equal the wanted ones, pairwise."""
    return sum(a == w for (_, got), want in zip(objects, wanted) for a, w in zip(got, want))


def _placed(objects: list, want: dict) -> bool:
    """Is the position (one object) or the relation (two objects) of the paired detections the named one?"""
    if len(objects) == 1:
        return objects[0][0] == want["position"]
    return want["relation"] in true_relations(objects[0][0], objects[1][0])


def pair_objects(seen: list, want: dict) -> list:
    """Pair the caption's objects with detected ones: among every ordered choice of detections (all of them,
    not only the first two), take the one matching the most attributes; on a tie, one whose position or
    relation holds. [] when fewer objects were detected than named."""
    from itertools import permutations

    n = len(want["objects"])
    candidates = [list(objs) for objs in permutations(seen, n)]
    if not candidates:
        return []
    return max(candidates, key=lambda objs: (_agreement(objs, want["objects"]), _placed(objs, want)))


@torch.no_grad()
def prompt_accuracy(judge: Judge, images: torch.Tensor, captions: list[str]) -> dict:
    """Share of images whose judged content matches their caption, overall and per attribute.

    An image matches if the judge sees as many objects as the caption names, each with the named shape,
    colour, size and texture, at the named position (one object) or in the named relation (two). Caption
    objects are paired with detected ones by `pair_objects`. prompt_accuracy_one / _two: the same share
    over the one-object / two-object captions alone (present when there are any).
    """
    pred = {k: v.cpu() for k, v in judge.predict(images).items()}
    keys = ("count", *ATTRIBUTES, "position", "relation")
    hits, totals, overall = dict.fromkeys(keys, 0), dict.fromkeys(keys, 0), 0
    by_objects = {1: [0, 0], 2: [0, 0]}  # objects in the caption -> [matched images, images]
    for b, caption in enumerate(captions):
        want, seen = parse_caption(caption), _objects(pred, b)
        n = len(want["objects"])
        ok = {"count": len(seen) == n}
        pairs = pair_objects(seen, want)
        for i, name in enumerate(ATTRIBUTES):
            ok[name] = bool(pairs) and all(got[i] == wanted[i] for (_, got), wanted in zip(pairs, want["objects"]))
        ok["position" if n == 1 else "relation"] = bool(pairs) and _placed(pairs, want)
        for k, v in ok.items():
            hits[k] += int(v)
            totals[k] += 1
        overall += int(all(ok.values()))
        by_objects[n][0] += int(all(ok.values()))
        by_objects[n][1] += 1
    result = {"prompt_accuracy": overall / len(captions), "n": len(captions)}
    # one-object and two-object prompts apart: a model can get most single objects right and no pairs
    for n, name in ((1, "one"), (2, "two")):
        if by_objects[n][1]:
            result[f"prompt_accuracy_{name}"] = by_objects[n][0] / by_objects[n][1]
    result.update({f"acc_{k}": hits[k] / totals[k] for k in keys if totals[k]})
    return result


@torch.no_grad()
def object_accuracy(judge: Judge, images: torch.Tensor, captions: list[str], objects: int = 2) -> dict:
    """Each attribute's accuracy per object, over the images of `objects`-object captions in which the judge
    sees exactly that many objects (paired with the caption's by `pair_objects`): when a two-object image has
    the right count, which attribute goes wrong, and is it worse than in one-object images?
    -> {'images': the images counted, 'shape': share of their objects drawn with the named shape, ...}"""
    pred = {k: v.cpu() for k, v in judge.predict(images).items()}
    hits, seen_objects, images_counted = dict.fromkeys(ATTRIBUTES, 0), 0, 0
    for b, caption in enumerate(captions):
        want, seen = parse_caption(caption), _objects(pred, b)
        if len(want["objects"]) != objects or len(seen) != objects:
            continue
        images_counted += 1
        for (_, got), wanted in zip(pair_objects(seen, want), want["objects"]):
            seen_objects += 1
            for i, name in enumerate(ATTRIBUTES):
                hits[name] += int(got[i] == wanted[i])
    share = {k: v / seen_objects if seen_objects else float("nan") for k, v in hits.items()}
    return {"images": images_counted, **share}


@torch.no_grad()
def misses(judge: Judge, images: torch.Tensor, captions: list[str]) -> list[list[str]]:
    """For each image, the parts of its caption the judge does not see ([] when it sees all of them):
    a figure can name each sample's failures under it."""
    out = []
    for image, caption in zip(images, captions):
        result = prompt_accuracy(judge, image[None], [caption])
        out.append([k[len("acc_"):] for k, v in result.items() if k.startswith("acc_") and v < 1])
    return out


@torch.no_grad()
def object_cells(judge: Judge, images: torch.Tensor) -> list[int | None]:
    """For each image, the grid cell (0-8, row-major) where the judge sees an object; None if it sees none
    or more than one. For zooming on what a model actually drew (`viz.object_crops(..., cells=...)`)."""
    shapes = judge.predict(images)["shape"].cpu()  # (B, 9): a shape class per cell, NONE where empty
    found = [(row != NONE).nonzero().flatten().tolist() for row in shapes]
    return [cells[0] if len(cells) == 1 else None for cells in found]


def real_image_metrics(judge: Judge, held: dict) -> dict:
    """The judge on real held-out images `held` (ToyShapes.batch): every attribute's accuracy, and the prompt
    accuracy of the real images themselves (the ceiling of any generator's, 1.0 for a perfect judge)."""
    images = held["image"].to(next(judge.parameters()).device)
    metrics = {"n": len(held["caption"]),
               **{f"acc_{k}": round(v, 4) for k, v in attribute_accuracy(judge, images, held["labels"]).items()}}
    metrics["real_prompt_accuracy"] = round(prompt_accuracy(judge, images, held["caption"])["prompt_accuracy"], 4)
    return metrics
