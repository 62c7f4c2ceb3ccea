"""Exercise checkers: say *how far* an answer is from the reference, never what the reference is.

    check_answer("03.2", next_input(f_hat, 4), f_hat=f_hat, k=2, quantizer=q)
        ->  ✓ 03.2 the transformer's input for the next scale: close (max difference 3.1e-08)
    check_close("spectrum", mine, reference)   ->  ✗ spectrum: 3 of 17 entries are off (largest difference 2e-02)

`check_answer` is what every exercise of the course calls. The expected answer comes from
`hart_mini.course.exercises`, which recomputes it *independently* from what the notebook gives it (the data, a
model, the problem's numbers), with the package's own functions, never from the student's code. Nothing
an exercise expects is written in a notebook, and a failing check prints the size of the error, not the
expected value, so the student versions of the notebooks do not give the answers away.

A *build step* (a piece of HART the student writes: a loss, a sampler, a sampling loop) is checked by its
function, not by one value it returned: the student passes the function itself, and the exercise runs it
in a setting that tests what the piece is for (non-trivial scale weights and head weight for a loss,
gradients into every trained part, both samplers), then compares stage by stage: token ids exactly, the
first wrong scale named, continuous values within a tolerance that floating-point reordering never
reaches.

`check_exact`, `check_close`, `check_gradient` and `check_true` are the comparisons themselves; the
notebooks also use them to check a from-scratch piece against the package's. A passing check prints one
line. A failing one prints the same kind of line and raises `CheckFailed` (an AssertionError), so a
notebook stops at the first wrong answer and CI notices it.
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
    if isinstance(x, (list, tuple)) and any(torch.is_tensor(v) for v in x):
        return np.stack([_as_array(v) for v in x])
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
        if wrong.ndim == 0:
            _fail(name, "not the expected value")
        first = tuple(int(i) for i in np.argwhere(wrong)[0])
        _fail(name, f"{int(wrong.sum())} of {wrong.size} entries differ, the first at index {first}")
    print(f"✓ {name}: exact")


def check_close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Entries must agree within atol + rtol * |expected|; reports exact / close / how far off."""
    g, e = _as_array(got).astype(np.float64), _as_array(expected).astype(np.float64)
    _shape_matches(name, g, e)
    if np.array_equal(g, e, equal_nan=True):
        print(f"✓ {name}: exact")
        return
    diff = np.abs(g - e)
    diff = np.where(np.isnan(g) & np.isnan(e), 0.0, np.where(np.isnan(diff), np.inf, diff))
    bad = diff > atol + rtol * np.abs(e)
    if np.any(bad):
        if diff.ndim == 0:  # one number: how far off, relatively, to one significant digit
            size = float(np.abs(e))
            far = f"{float(diff) / size:.0%} of its size" if size > 0 and np.isfinite(diff) else "not close"
            _fail(name, f"off by about {far} (allowed: atol={atol:g}, rtol={rtol:g})")
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        _fail(name, f"{int(bad.sum())} of {bad.size} entries are off, the worst at index {worst} (difference "
                    f"{float(diff.max()):.0e}; allowed: atol={atol:g}, rtol={rtol:g})")
    print(f"✓ {name}: close (max difference {float(diff.max()):.2g})")


def check_gradient(name: str, got, expected, rtol: float = 1e-3) -> None:
    """A gradient (one flat tensor over a part's parameters) must match in relative L2 error:
    |g - e| / |e| <= rtol. None or all zeros where the reference is not: no gradient reaches the part."""
    e = _as_array(expected).astype(np.float64)
    g = None if got is None else _as_array(got).astype(np.float64)
    if g is None or (not np.any(g) and np.any(e)):
        _fail(name, "no gradient reaches these parameters: does your loss detach them, or return a number "
                    "instead of a tensor?")
    _shape_matches(name, g, e)
    size = float(np.linalg.norm(e))
    error = float(np.linalg.norm(g - e)) / (size if size > 0 else 1.0)
    if not np.isfinite(error) or error > rtol:
        _fail(name, f"off by {error:.0%} of its size (relative L2 error {error:.1e}; allowed {rtol:g})")
    print(f"✓ {name}: close (relative error {error:.1g})")


def check_true(name: str, condition: bool, hint: str = "") -> None:
    """A yes/no property, with a hint printed when it does not hold."""
    if not bool(condition):
        _fail(name, hint or "the condition does not hold")
    print(f"✓ {name}")


def check_answer(exercise: str, answer, **given) -> None:
    """Check the answer to `exercise` ('NN.k': notebook NN, exercise k) against its independent reference.

    `given` holds what the exercise starts from (data, a model, the problem's numbers): the reference is
    computed from it alone.
    """
    from hart_mini.course.exercises import EXERCISES, WrongForm

    if exercise not in EXERCISES:
        raise KeyError(f"no exercise {exercise!r}; known: {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[exercise]
    name = f"{exercise} {ex.name}"
    if ex.run is not None:  # a build step: run the student's function in the exercise's own setting
        if not callable(answer):
            _fail(name, "give your function (or module) itself, not what it returned: the check runs it")
        try:
            answer = ex.run(answer, **given)
        except WrongForm as e:
            _fail(name, f"your function returned the wrong form: {e}")
    elif ex.prepare is not None:
        try:
            answer = ex.prepare(answer)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            _fail(name, f"the answer has the wrong form: {e}")
    expected = ex.reference(**given)
    parts = expected.items() if isinstance(expected, dict) else [(None, expected)]
    if isinstance(expected, dict) and not isinstance(answer, dict):
        _fail(name, f"the answer should be a dict with the keys {list(expected)}")
    for key, value in parts:
        part = name if key is None else f"{name} [{key!r}]"
        if key is not None and key not in answer:
            _fail(part, "missing from the answer")
        got = answer if key is None else answer[key]
        how = ex.how if isinstance(ex.how, str) else ex.how.get(key, ex.how.get(str(key).split()[0], "close"))
        if how == "exact":
            check_exact(part, got, value)
        elif how == "gradient":
            check_gradient(part, got, value)
        else:
            check_close(part, got, value, atol=ex.atol, rtol=ex.rtol)
