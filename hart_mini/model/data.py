"""ToyShapes, a procedural text-to-image dataset, and a folder dataset for your own images.

Nothing is downloaded: image `i` of a split is a pure function of `(seed, split, i)`, so it is the same
on every machine. Each image holds 1-2 objects drawn with anti-aliased edges and a texture, on a graded
background with a fine mottled pattern (a random field on a 2-px grid) and a little pixel noise. HART's
residual tokens only have something to learn when images carry fine detail that discrete tokens lose but a
continuous latent can keep: textures and mottling finer than one token (4 px) are exactly that. The mottle
is random per image, though, so no token and no head can know which mottle an image has: what a head can
learn of it is its statistics (measured in notebook 07, section 5: `python -m hart_mini diagnose residual`).

    a scene  = 1-2 objects, each (shape, colour, size, texture, position) + a relation for two objects
    caption  = "a large red striped circle at the top left"
             | "a small blue square left of a large yellow dotted triangle"
    labels   = (LABEL_DIM,) integers: per object (shape, colour, size, texture, position), then relation;
               -1 where there is no second object or no relation

Images come out as `(B, 3, H, W)` float tensors in [-1, 1], or as `(B, H, W, 3)` uint8 arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hart_mini.config import DataConfig, require

# The fixed, documented vocabulary of the data. Indices into these tuples are the labels.
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {  # name -> sRGB in 0..255; six hues that stay apart when darkened by a texture
    "red": (214, 48, 49),
    "orange": (243, 136, 33),
    "yellow": (245, 215, 45),
    "green": (46, 168, 72),
    "blue": (45, 105, 230),
    "purple": (155, 75, 205),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "dotted")  # "plain" is left out of captions
POSITIONS = (  # the 3x3 grid, row-major: position p sits at row p // 3, column p % 3
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = {"train": 0, "val": 1, "test": 2}
OBJECT_FIELDS = ("shape", "colour", "size", "texture", "position")
LABEL_DIM = 2 * len(OBJECT_FIELDS) + 1  # two object slots + the relation

_CELL_CENTRES = (0.18, 0.5, 0.82)  # centre of grid row/column, as a fraction of the image side
_RADIUS = (0.105, 0.15)  # object radius per size, as a fraction of the image side
_JITTER = 0.015  # +- centre jitter, fraction of the side
_NOISE_STD = 0.01  # per-pixel Gaussian noise on the whole image, in [0, 1] units
_MOTTLE_STD = (0.035, 0.012)  # a smooth random field: luminance, and per channel
_MOTTLE_SPACING = 2  # pixels between the field's grid points at 32 px (scaled with the image size)


@dataclass(frozen=True)
class ShapeObject:
    """One object: attribute indices, plus the small random offsets used to draw it."""

    shape: int
    colour: int
    size: int
    texture: int
    position: int
    dx: float = 0.0  # centre jitter (fraction of the side)
    dy: float = 0.0
    phase: float = 0.0  # texture phase in [0, 1)

    @property
    def words(self) -> str:
        texture = "" if TEXTURES[self.texture] == "plain" else TEXTURES[self.texture] + " "
        return f"a {SIZES[self.size]} {COLOUR_NAMES[self.colour]} {texture}{SHAPES[self.shape]}"


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image, except its pixel noise."""

    objects: tuple[ShapeObject, ...]
    relation: int = -1  # index into RELATIONS, from objects[0] to objects[1]; -1 for one object
    background: tuple[float, ...] = (0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.0)  # rgb0, rgb1, angle

    @property
    def caption(self) -> str:
        first = self.objects[0]
        if len(self.objects) == 1:
            return f"{first.words} at the {POSITIONS[first.position]}"
        return f"{first.words} {RELATIONS[self.relation]} {self.objects[1].words}"

    @property
    def labels(self) -> np.ndarray:
        out = np.full(LABEL_DIM, -1, dtype=np.int64)
        for slot, obj in enumerate(self.objects):
            out[slot * 5:(slot + 1) * 5] = (obj.shape, obj.colour, obj.size, obj.texture, obj.position)
        out[-1] = self.relation
        return out


def parse_caption(caption: str) -> dict:
    """Invert the caption grammar: {'objects': [(shape, colour, size, texture), ...], 'position': int or None,
    'relation': int or None}. Raises ValueError for text the grammar cannot produce."""
    words = caption.strip().lower().split()

    def one_object(tokens: list[str]) -> tuple[tuple[int, int, int, int], list[str]]:
        if len(tokens) < 4 or tokens[0] != "a" or tokens[1] not in SIZES or tokens[2] not in COLOURS:
            raise ValueError(f"cannot parse {caption!r}: expected 'a <size> <colour> [<texture>] <shape>'")
        size, colour, rest = SIZES.index(tokens[1]), COLOUR_NAMES.index(tokens[2]), tokens[3:]
        texture = 0
        if rest[0] in TEXTURES:
            texture, rest = TEXTURES.index(rest[0]), rest[1:]
        if not rest or rest[0] not in SHAPES:
            raise ValueError(f"cannot parse {caption!r}: expected a shape among {SHAPES}")
        return (SHAPES.index(rest[0]), colour, size, texture), rest[1:]

    first, rest = one_object(words)
    if rest[:2] == ["at", "the"]:
        place = " ".join(rest[2:])
        if place not in POSITIONS:
            raise ValueError(f"cannot parse {caption!r}: unknown position {place!r}")
        return {"objects": [first], "position": POSITIONS.index(place), "relation": None}
    for r, phrase in enumerate(RELATIONS):
        n = len(phrase.split())
        if " ".join(rest[:n]) == phrase:
            second, tail = one_object(rest[n:])
            if tail:
                raise ValueError(f"cannot parse {caption!r}: unexpected words {' '.join(tail)!r}")
            return {"objects": [first, second], "position": None, "relation": r}
    raise ValueError(f"cannot parse {caption!r}: expected 'at the <position>' or a relation after the first object")


def true_relations(position_a: int, position_b: int) -> list[int]:
    """Indices of every relation that holds from the object at cell a to the object at cell b."""
    (row_a, col_a), (row_b, col_b) = divmod(position_a, 3), divmod(position_b, 3)
    out = []
    if col_a != col_b:
        out.append(RELATIONS.index("left of" if col_a < col_b else "right of"))
    if row_a != row_b:
        out.append(RELATIONS.index("above" if row_a < row_b else "below"))
    return out


def sample_scene(rng: np.random.Generator, p_two_objects: float) -> Scene:
    """Draw a scene's attributes, layout and background from `rng`."""
    n_objects = 2 if rng.random() < p_two_objects else 1
    cells = rng.choice(9, size=n_objects, replace=False)
    objects = tuple(
        ShapeObject(
            shape=int(rng.integers(len(SHAPES))), colour=int(rng.integers(len(COLOURS))),
            size=int(rng.integers(len(SIZES))), texture=int(rng.integers(len(TEXTURES))),
            position=int(cell), dx=float(rng.uniform(-_JITTER, _JITTER)),
            dy=float(rng.uniform(-_JITTER, _JITTER)), phase=float(rng.random()),
        )
        for cell in cells
    )
    relation = int(rng.choice(true_relations(int(cells[0]), int(cells[1])))) if n_objects == 2 else -1
    dark = rng.uniform(0.10, 0.28) + rng.uniform(-0.04, 0.04, size=3)  # a dim, slightly tinted grey
    light = dark + rng.uniform(0.08, 0.20)
    background = (*dark.tolist(), *light.tolist(), float(rng.uniform(0, 2 * np.pi)))
    return Scene(objects, relation, background)


# ---------------------------------------------------------------------------------------------------
# Rendering: signed distance functions on the pixel grid, vectorised over a batch of scenes.
# coverage = clip(0.5 - sdf, 0, 1) with sdf in pixels gives one pixel of anti-aliasing at every edge.


def shape_sdf(shape: int, px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of radius r centred at the origin."""
    if SHAPES[shape] == "circle":
        return np.sqrt(px**2 + py**2) - r
    if SHAPES[shape] == "square":  # exact box distance, half side 0.86 r (about a circle's area)
        qx, qy = np.abs(px) - 0.86 * r, np.abs(py) - 0.86 * r
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if SHAPES[shape] == "diamond":  # an L1 ball: a square turned by 45 degrees
        return (np.abs(px) + np.abs(py) - 1.2 * r) / np.sqrt(2)
    # triangle: equilateral, pointing up, half side a (Inigo Quilez's exact formula), y axis up
    a, k = 1.15 * r, np.sqrt(3.0)
    x, y = np.abs(px) - a, -py + a / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * a, 0)
    return -np.sqrt(x**2 + y**2) * np.sign(y)


def texture_pattern(texture: int, px: np.ndarray, py: np.ndarray, phase: np.ndarray, period: float) -> np.ndarray:
    """Brightness pattern in [0, 1]: 1 keeps the colour, 0 is the texture's second tone."""
    if TEXTURES[texture] == "striped":  # a diagonal sinusoidal grating
        u = (px + py) / np.sqrt(2) / period + phase
        return 0.5 + 0.5 * np.sin(2 * np.pi * u)
    if TEXTURES[texture] == "dotted":  # a lattice of anti-aliased dots
        step = 1.15 * period
        ox, oy = (px / step + phase) % 1.0 - 0.5, (py / step + phase) % 1.0 - 0.5
        dist = np.sqrt(ox**2 + oy**2) * step
        return 1.0 - np.clip(0.5 + 0.3 * step - dist, 0, 1)
    return np.ones_like(px)


def mottle(grid: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear upsampling of random values on a coarse grid (B, g, g, 3) -> a smooth field (B, H, W, 3)."""
    g = grid.shape[1]
    pos = (np.arange(image_size, dtype=np.float32) + 0.5) * (g - 1) / image_size  # pixel centre in grid units
    lo = np.minimum(pos.astype(int), g - 2)
    frac = pos - lo
    M = np.zeros((image_size, g), dtype=np.float32)  # (H, g) interpolation weights
    M[np.arange(image_size), lo], M[np.arange(image_size), lo + 1] = 1 - frac, frac
    # out[b, h, w] = sum_g,k M[h, g] grid[b, g, k] M[w, k], in torch rather than numpy: numpy's einsum calls
    # OpenBLAS, whose threads keep spinning after the call and took both cores of a 2-core machine from the
    # training step that follows (the frozen tokenizer's encoder ran 2.5x slower); torch shares one thread
    # pool. The same numbers (identical uint8 images over 3 000 training scenes).
    M = torch.from_numpy(M)
    with torch.autocast("cpu", enabled=False):  # float32 inside a caller's bf16 autocast too
        return torch.einsum("hg,bgkc,wk->bhwc", M, torch.from_numpy(grid), M).numpy()


def render(scenes: list[Scene], noise: np.ndarray, image_size: int) -> np.ndarray:
    """Draw scenes; noise (B, H, W, 3) is added last. Returns uint8 (B, H, W, 3)."""
    size = image_size
    period = 3.5 * (size / 32) ** 0.5  # texture period in pixels: finer than a token at every size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres, (H, W)
    bg = np.array([s.background for s in scenes], dtype=np.float32)  # (B, 7)
    ramp = (np.cos(bg[:, 6, None, None]) * (xs - size / 2) + np.sin(bg[:, 6, None, None]) * (ys - size / 2))
    ramp = 0.5 + ramp / size  # (B, H, W), about 0..1 along a random direction
    image = bg[:, None, None, 0:3] + (bg[:, None, None, 3:6] - bg[:, None, None, 0:3]) * ramp[..., None]

    for slot in range(2):  # object 0 first, then object 1 on top of it
        rows = [(b, s.objects[slot]) for b, s in enumerate(scenes) if len(s.objects) > slot]
        for shape in range(len(SHAPES)):
            group = [(b, o) for b, o in rows if o.shape == shape]
            if not group:
                continue
            idx = np.array([b for b, _ in group])
            obj = {f: np.array([getattr(o, f) for _, o in group], dtype=np.float32)[:, None, None]
                   for f in ("colour", "size", "texture", "position", "dx", "dy", "phase")}
            row, col = np.divmod(obj["position"], 3)
            cx = (np.take(_CELL_CENTRES, col.astype(int)) + obj["dx"]) * size
            cy = (np.take(_CELL_CENTRES, row.astype(int)) + obj["dy"]) * size
            radius = np.take(_RADIUS, obj["size"].astype(int)) * size
            px, py = xs - cx, ys - cy  # (n, H, W) coordinates relative to each object's centre
            alpha = np.clip(0.5 - shape_sdf(shape, px, py, radius), 0, 1)[..., None]
            colour = np.array(list(COLOURS.values()), dtype=np.float32)[obj["colour"][:, 0, 0].astype(int)] / 255
            pattern = np.ones_like(px)
            for texture in range(1, len(TEXTURES)):
                mask = obj["texture"][:, 0, 0] == texture
                if mask.any():
                    pattern[mask] = texture_pattern(texture, px[mask], py[mask], obj["phase"][mask], period)
            second = np.where(obj["texture"][..., None] == TEXTURES.index("dotted"),
                              0.35 * colour[:, None, None] + 0.65,  # light dots
                              0.45 * colour[:, None, None])  # dark stripes
            shade = 1.0 - 0.12 * (py / size)[..., None]  # soft top light, a little extra detail
            fill = (pattern[..., None] * colour[:, None, None] + (1 - pattern[..., None]) * second) * shade
            image[idx] = image[idx] * (1 - alpha) + fill * alpha
    image = image + noise
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def object_mask(scenes: list[Scene], image_size: int) -> np.ndarray:
    """(B, H, W) bool: the pixels an object of the scene covers, anti-aliased edges included (where the scene
    drawn without noise differs from its background alone)."""
    quiet = np.zeros((len(scenes), image_size, image_size, 3), np.float32)
    bare = [dataclasses.replace(s, objects=()) for s in scenes]
    return (render(scenes, quiet, image_size) != render(bare, quiet, image_size)).any(-1)


class ToyShapes(torch.utils.data.Dataset):
    """A split of ToyShapes. Items are dicts: image (3, H, W) in [-1, 1], caption, labels (LABEL_DIM,).

    `batch(indices)` draws many items at once (vectorised), which is what the trainers use.
    """

    def __init__(self, config: DataConfig | None = None, split: str = "train", size: int | None = None):
        self.config = config or DataConfig()
        require(split in SPLITS, "split", split, f"one of {tuple(SPLITS)}")
        self.split = split
        self.size = (self.config.train_size if split == "train" else 5_000) if size is None else size
        require(isinstance(size, int) and size >= 1 if size is not None else True, "size", size,
                "an integer >= 1 or None")

    def __len__(self) -> int:
        return self.size

    def _check_index(self, i: int) -> int:
        require(0 <= int(i) < self.size, "index", i, f"an integer in [0, {self.size}) for this split")
        return int(i)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, SPLITS[self.split], self._check_index(i)])

    def scene(self, i: int) -> Scene:
        return sample_scene(self._rng(i), self.config.p_two_objects)

    def images(self, indices) -> tuple[np.ndarray, list[Scene]]:
        """uint8 images (B, H, W, 3) and their scenes for a list of indices."""
        indices = list(indices)
        require(len(indices) >= 1, "indices", indices, "at least one image index")
        scenes, noise, grids = [], [], []
        size = self.config.image_size
        g = 32 // _MOTTLE_SPACING + 1  # the mottle's grid points per side, the same for 32 and 64 px
        for i in indices:
            rng = self._rng(i)
            scenes.append(sample_scene(rng, self.config.p_two_objects))
            noise.append(rng.normal(0.0, _NOISE_STD, size=(size, size, 3)).astype(np.float32))
            grids.append((rng.normal(0.0, _MOTTLE_STD[0], size=(g, g, 1))
                          + rng.normal(0.0, _MOTTLE_STD[1], size=(g, g, 3))).astype(np.float32))
        detail = np.stack(noise) + mottle(np.stack(grids), size)  # (B, H, W, 3)
        return render(scenes, detail, size), scenes

    def batch(self, indices) -> dict:
        """image (B, 3, H, W) float in [-1, 1], caption (list of B str), labels (B, LABEL_DIM) int64."""
        pixels, scenes = self.images(indices)
        return {
            "image": uint8_to_tensor(pixels),
            "caption": [s.caption for s in scenes],
            "labels": torch.from_numpy(np.stack([s.labels for s in scenes])),
        }

    def __getitem__(self, i: int) -> dict:
        item = self.batch([i])
        return {"image": item["image"][0], "caption": item["caption"][0], "labels": item["labels"][0]}


def _draw_chunk(job: tuple) -> tuple:
    """Pool task: images lo..hi-1 of a split -> (uint8 pixels, captions, labels, token ids or None)."""
    config, split, size, lo, hi, text = job
    pixels, scenes = ToyShapes(config, split, size).images(range(lo, hi))
    captions = [s.caption for s in scenes]
    ids = text(captions)[0].numpy() if text is not None else None
    return pixels, captions, np.stack([s.labels for s in scenes]), ids


def draw_many(data: ToyShapes, n: int, workers: int = 0, chunk: int = 1000, text=None) -> dict:
    """Images 0..n-1 of a split, drawn by `workers` processes (0: in this one): pixels (n, H, W, 3) uint8,
    captions, labels (n, LABEL_DIM), and with a caption tokenizer `text` their token ids (n, T). The result
    is the same for any number of workers: image i is a function of (seed, split, i) alone."""
    import multiprocessing

    from hart_mini.runtime import one_thread

    require(isinstance(n, int) and 1 <= n <= len(data), "n", n, f"an integer in [1, {len(data)}]")
    jobs = [(data.config, data.split, len(data), lo, min(lo + chunk, n), text) for lo in range(0, n, chunk)]
    if workers <= 0 or len(jobs) == 1:
        parts = [_draw_chunk(job) for job in jobs]
    else:  # fork: the children start at once and share the parent's imports
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), initializer=one_thread) as pool:
            parts = list(pool.imap(_draw_chunk, jobs))
    out = {"pixels": np.concatenate([p[0] for p in parts]), "caption": [c for p in parts for c in p[1]],
           "labels": np.concatenate([p[2] for p in parts])}
    if text is not None:
        out["ids"] = np.concatenate([p[3] for p in parts])
    return out


class Prerendered:
    """A ToyShapes split drawn once into memory, on any device (a GPU holds 100 000 images of 64 px in
    1.2 GB): `batch(indices)` is then an index, not a drawing, and a GPU never waits for NumPy.

    Image i is image i of the split, bit for bit, so a trainer gets the same batches either way. With a
    caption tokenizer `text`, batches also carry the captions' token ids and mask, on the device."""

    def __init__(self, data: ToyShapes, n: int | None = None, workers: int = 0,
                 device: str | torch.device = "cpu", text=None):
        drawn = draw_many(data, len(data) if n is None else n, workers, text=text)
        self.config, self.split = data.config, data.split
        self.pixels = torch.from_numpy(drawn["pixels"]).to(device)  # (N, H, W, 3) uint8
        self.captions = drawn["caption"]
        self.labels = torch.from_numpy(drawn["labels"]).to(device)  # (N, LABEL_DIM)
        self.ids = torch.from_numpy(drawn["ids"]).to(device) if text is not None else None  # (N, T)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, indices) -> dict:
        """Like ToyShapes.batch: image (B, 3, H, W) in [-1, 1], caption, labels; plus ids and mask (B, T)."""
        idx = torch.as_tensor(np.asarray(list(indices) if isinstance(indices, range) else indices), dtype=torch.long)
        on = idx.to(self.pixels.device, non_blocking=True)
        out = {"image": self.pixels[on].permute(0, 3, 1, 2).float().div(127.5).sub(1.0),  # as uint8_to_tensor
               "caption": [self.captions[i] for i in idx.tolist()], "labels": self.labels[on]}
        if self.ids is not None:
            out["ids"] = self.ids[on]
            out["mask"] = out["ids"] != 0
        return out


def uint8_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Your own images: ROOT/<caption>/<image>. The folder name, with _ and - as spaces, is the caption.

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def to_rgb(im, path: str | Path = "image"):
    """Any Pillow image -> 8-bit RGB, keeping what its pixels mean.

    Pillow's own convert("RGB") clips instead of scaling: a 16-bit mid-grey (32 896) comes out white and a
    float image in [0, 1] black. So: 16-bit grey is divided by 257 (65 535 -> 255), float grey is read as
    [0, 1] and multiplied by 255; palette, grey + alpha and RGBA images are composited on white.
    """
    from PIL import Image

    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        x = np.asarray(im, dtype=np.float64)
        lo, hi = (0.0, 1.0) if im.mode == "F" else (0.0, 65535.0)
        if x.size and (x.min() < lo - 1e-3 or x.max() > hi + 1e-3 or not np.isfinite(x).all()):
            kind = "float" if im.mode == "F" else "integer"
            raise ValueError(f"{kind} image {str(path)!r} spans [{x.min():.4g}, {x.max():.4g}]; expected "
                             f"[{lo:g}, {hi:g}] (float images in [0, 1], integer ones up to 16 bit)")
        im = Image.fromarray(np.round(np.clip(x, lo, hi) / hi * 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "P", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


class ImageFolder(torch.utils.data.Dataset):
    """Images in class sub-folders; items look like ToyShapes' (labels = the class index).

    Greyscale, 16-bit, float, palette and RGBA images are converted to RGB by `to_rgb` (alpha is composited
    on white); a photo's EXIF orientation is applied (it is drawn as a viewer shows it); every image is resized
    (shorter side) and centre-cropped to `image_size`. Two folders that read as the same caption (a_red_circle
    and a-red-circle) are refused: they would be two classes with one caption.
    """

    def __init__(self, root: str | Path, image_size: int = 32):
        from PIL import Image

        self.root, self.image_size = Path(root), image_size
        require(isinstance(image_size, int) and image_size >= 8, "image_size", image_size, "an integer >= 8")
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a folder")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ValueError(f"{str(self.root)!r} has no class sub-folders; expected ROOT/<caption>/<image>.png")
        self.captions = [p.name.replace("_", " ").replace("-", " ").strip() for p in folders]
        seen: dict[str, Path] = {}
        for folder, caption in zip(folders, self.captions):
            key = " ".join(caption.lower().split())  # as the caption tokenizer reads it
            if key in seen:
                raise ValueError(f"class folders {str(seen[key])!r} and {str(folder)!r} both read as the caption "
                                 f"{key!r}: merge them, or rename one")
            seen[key] = folder
        self.files: list[tuple[Path, int]] = []
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"class folder {str(folder)!r} holds no images (looked for {IMAGE_SUFFIXES})")
            for path in files:
                try:
                    with Image.open(path):  # reads the header only: cheap, catches non-images early
                        pass
                except Exception as e:  # PIL raises several types; the message is what matters
                    raise ValueError(f"cannot read image {str(path)!r}: {e}") from e
                self.files.append((path, label))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        """Image i as uint8 (H, W, 3)."""
        from PIL import Image, ImageOps

        path, _ = self.files[i]
        try:
            with Image.open(path) as im:
                im.load()
                im = to_rgb(ImageOps.exif_transpose(im), path)  # a photo's rotation, as a viewer shows it
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"cannot decode image {str(path)!r} as RGB: {e}") from e
        scale = self.image_size / min(im.size)
        w, h = max(self.image_size, round(im.width * scale)), max(self.image_size, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
        im = im.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = np.asarray(im, dtype=np.uint8)
        require(pixels.shape == (self.image_size, self.image_size, 3), "decoded image shape", pixels.shape,
                f"({self.image_size}, {self.image_size}, 3) for {path}")
        return pixels

    def batch(self, indices) -> dict:
        pixels = np.stack([self.load(int(i)) for i in indices])
        labels = [self.files[int(i)][1] for i in indices]
        return {
            "image": uint8_to_tensor(pixels),
            "caption": [self.captions[label] for label in labels],
            "labels": torch.tensor(labels, dtype=torch.int64),
        }

    def __getitem__(self, i: int) -> dict:
        item = self.batch([i])
        return {"image": item["image"][0], "caption": item["caption"][0], "labels": item["labels"][0]}
