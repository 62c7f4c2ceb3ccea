"""Exercise checkers: say *how far* an answer is from the reference, not only that it is wrong.

    check_close("spectrum", mine, reference)   ->  ✓ spectrum: close (max difference 3.1e-08)
    check_exact("tokens", mine, reference)     ->  ✗ tokens: 3 of 130 entries differ, first at index (7,)

A passing check prints one line. A failing one prints the same kind of line and raises `CheckFailed`
(an AssertionError), so a notebook stops at the first wrong answer and CI notices it.
"""

from __future__ import annotations

import numpy as np
import torch


class CheckFailed(AssertionError):
    """An exercise answer does not match the reference."""


def _as_array(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu()
        return x.float().numpy() if x.dtype in (torch.bfloat16, torch.float16) else x.numpy()
    return np.asarray(x)


def _fail(name: str, message: str) -> None:
    line = f"✗ {name}: {message}"
    print(line)
    raise CheckFailed(line)


def _shape_matches(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape:
        _fail(name, f"shape {got.shape}, expected {expected.shape}")


def check_exact(name: str, got, expected) -> None:
    """Every entry must be equal (integers, strings, booleans, or floats that should match bit for bit)."""
    g, e = _as_array(got), _as_array(expected)
    _shape_matches(name, g, e)
    wrong = g != e
    if np.any(wrong):
        first = tuple(int(i) for i in np.argwhere(wrong)[0])
        _fail(name, f"{int(wrong.sum())} of {wrong.size} entries differ, first at index {first} "
                    f"(got {g[first]!r}, expected {e[first]!r})")
    print(f"✓ {name}: exact")


def check_close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Entries must agree within atol + rtol * |expected|; reports exact / close / max difference."""
    g, e = _as_array(got).astype(np.float64), _as_array(expected).astype(np.float64)
    _shape_matches(name, g, e)
    if np.array_equal(g, e, equal_nan=True):
        print(f"✓ {name}: exact")
        return
    diff = np.abs(g - e)
    diff = np.where(np.isnan(g) & np.isnan(e), 0.0, np.where(np.isnan(diff), np.inf, diff))
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    bad = diff > atol + rtol * np.abs(e)
    if np.any(bad):
        where = f" at index {tuple(int(i) for i in worst)}" if diff.ndim else ""
        _fail(name, f"max difference {diff.max():.3g}{where} (got {g[worst]:.6g}, expected {e[worst]:.6g}); "
                    f"{int(bad.sum())} of {bad.size} entries outside atol={atol:g}, rtol={rtol:g}")
    print(f"✓ {name}: close (max difference {diff.max():.2g})")


def check_true(name: str, condition: bool, hint: str = "") -> None:
    """A yes/no property, with a hint printed when it does not hold."""
    if not bool(condition):
        _fail(name, hint or "the condition does not hold")
    print(f"✓ {name}")
