"""Configuration: one validated dataclass per component, and the named presets.

Every config checks itself in `__post_init__`: a bad value raises a `ValueError` that names the field,
the value and what would be valid. A *preset* bundles the configs for one budget:

    smoke  tiny shapes for tests and notebook CI (seconds)
    cpu    a student's laptop: 32 px, trained in minutes on 2 cores
    gpu    one GPU: 64 px with VAR's 256-px scale schedule

Notebooks and the CLI read the default preset from the environment variable `HART_MINI_PRESET`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

PRESET_NAMES = ("smoke", "cpu", "gpu")
ENV_PRESET = "HART_MINI_PRESET"


def require(ok: bool, name: str, value: object, valid: str) -> None:
    """Raise a ValueError naming the field, its value and what is valid, unless `ok`."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {valid}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataConfig:
    """ToyShapes, the procedural text-to-image data (see `hart_mini.data`)."""

    image_size: int = 32  # H = W in pixels: 32 (CPU presets) or 64 (GPU preset)
    seed: int = 0  # image i of a split is a pure function of (seed, split, i)
    train_size: int = 50_000  # number of distinct training images
    p_two_objects: float = 0.35  # share of images with two objects and a relation caption

    def __post_init__(self):
        require(self.image_size in (32, 64), "image_size", self.image_size, "32 or 64")
        require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        require(_is_int(self.train_size) and self.train_size >= 1, "train_size", self.train_size,
                "an integer >= 1")
        require(0.0 <= self.p_two_objects <= 1.0, "p_two_objects", self.p_two_objects, "a number in [0, 1]")


@dataclass(frozen=True)
class Preset:
    """All configs for one budget. Later components add their config here."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        require(self.name in PRESET_NAMES, "name", self.name, f"one of {PRESET_NAMES}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(name: str) -> Preset:
    if name == "smoke":
        return Preset(name, data=DataConfig(image_size=32, train_size=2_000))
    if name == "cpu":
        return Preset(name, data=DataConfig(image_size=32, train_size=50_000))
    return Preset(name, data=DataConfig(image_size=64, train_size=200_000))


def default_preset_name() -> str:
    """The preset named by `HART_MINI_PRESET`, or `cpu` when it is unset."""
    name = os.environ.get(ENV_PRESET, "").strip() or "cpu"
    require(name in PRESET_NAMES, ENV_PRESET, name, f"one of {PRESET_NAMES}")
    return name


def get_preset(name: str | None = None) -> Preset:
    """Return the preset `name` (default: `HART_MINI_PRESET`, else `cpu`)."""
    name = default_preset_name() if name is None else name
    require(name in PRESET_NAMES, "preset", name, f"one of {PRESET_NAMES}")
    return _build(name)
