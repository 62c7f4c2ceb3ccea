"""The command line's argument types: a bad value is refused while parsing, before any work, naming the flag.

argparse turns the ArgumentTypeError of a type into one line, `error: argument --n: 0 is invalid: expected an
integer >= 1`; hart_mini.cli prints it without a traceback.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from hart_mini.config import MAX_CFG_SCALE

SEED_LIMIT = 2**32  # torch seeds its CPU generator with 32 bits: seed 2**32 draws what seed 0 draws


def count(low: int, why: str = ""):
    """An integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is invalid: expected an integer >= {low}{why}")
        return value
    return parse


def odd(text: str) -> int:
    """An odd integer >= 1 (a neighbourhood of k x k cells around one)."""
    value = count(1)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: expected an odd integer >= 1 (1, 3, 5, ...)")
    return value


def eval_count(text: str) -> int:
    """0 (no evaluation) or the >= 2 samples a Frechet distance needs."""
    value = count(0)(text)
    if value == 1:
        raise argparse.ArgumentTypeError("1 is invalid: expected 0 (speed only) or an integer >= 2 (FD needs 2)")
    return value


def seed(text: str) -> int:
    """A sampling or training seed in [0, 2**32)."""
    value = count(0)(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is invalid: expected an integer in [0, 2**32) (torch seeds with "
                                         "32 bits, so a larger seed would repeat a smaller one's images)")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is invalid: expected a finite number")
    return value


def positive(text: str) -> float:
    """A finite number > 0 (minutes, a scale, a peak)."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is invalid: expected a finite number > 0")
    return value


def not_negative(expected: str):
    """A finite number >= 0; `expected` names one in the error."""
    def parse(text: str) -> float:
        value = number(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is invalid: expected {expected}")
        return value
    return parse


non_negative = not_negative("a finite number >= 0")  # a multiple of something, 0 = none of it
temperature = not_negative("a number >= 0 (1 = the model's own spread)")  # a sampler's; 0 draws no noise
minutes = not_negative("a finite number of minutes >= 0")  # 0: stop at the first checkpoint


def share(low: float, high: float):
    """A number in [low, high)."""
    def parse(text: str) -> float:
        value = number(text)
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"{text} is invalid: expected a number in [{low:g}, {high:g})")
        return value
    return parse


def guidance(text: str) -> float:
    """A classifier-free guidance scale in [0, MAX_CFG_SCALE]."""
    value = number(text)
    if not 0 <= value <= MAX_CFG_SCALE:
        raise argparse.ArgumentTypeError(f"{text} is invalid: expected a number in [0, {MAX_CFG_SCALE:g}] "
                                         "(0 = no guidance; larger values only amplify noise)")
    return value


def probability(text: str) -> float:
    value = number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is invalid: expected a number in (0, 1] (1 = off)")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1], both ends included."""
    value = number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is invalid: expected a number in [0, 1]")
    return value


def prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty: describe an image, e.g. 'a large red striped "
                                         "circle at the top', or leave out --prompt to use held-out captions")
    return text


def listed(parse: Callable[[str], object], what: str) -> Callable[[str], list]:
    """An argparse type: '5,10,20' -> [parse('5'), parse('10'), parse('20')]; an empty list or a bad item is
    refused, naming the item: `argument --cfg-sweep: -2 is invalid: expected a number in [0, 20] ... (in 1,-2)`."""
    def parse_list(text: str) -> list:
        values = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                values.append(parse(part))
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise argparse.ArgumentTypeError(f"{e} (in {text})") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}")
        return values

    return parse_list


def distinct_seeds(text: str) -> list[int]:
    """Comma-separated seeds, each in [0, 2**32), none twice."""
    values = listed(seed, "seeds")(text)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: a seed appears twice")
    return values
