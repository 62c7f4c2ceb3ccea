"""Runtime helpers, metrics and exercise checkers."""

import math

import pytest
import torch

from hart_mini.course import check
from hart_mini.measure import metrics
from hart_mini.runtime import autocast_dtype, pick_device, seed_everything


def test_seed_everything_reproduces_torch_draws():
    seed_everything(5)
    a = torch.randn(4)
    g = seed_everything(5)
    assert torch.equal(a, torch.randn(4))
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=torch.Generator().manual_seed(5)))


def test_pick_device_auto_and_errors():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device='tpu' is invalid"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="precision='int8' is invalid"):
        autocast_dtype(torch.device("cpu"), "int8")
    assert autocast_dtype(torch.device("cpu")) is None


def test_spectrum_of_a_grating_peaks_at_its_frequency():
    x = torch.arange(32.0)
    grating = torch.sin(2 * math.pi * 5 * x / 32)[None, None, None, :].expand(1, 3, 32, 32)
    spectrum = metrics.radial_power_spectrum(grating)
    assert spectrum.shape == (17,) and int(spectrum.argmax()) == 5


def test_blurring_lowers_the_high_frequency_ratio_and_psnr():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert metrics.high_frequency_ratio(blurred, x) < 0.2
    assert metrics.high_frequency_ratio(x, x) == pytest.approx(1.0)
    assert torch.all(metrics.psnr(x, x) > 100) and torch.all(metrics.psnr(blurred, x) < 20)


def test_checkers_report_exact_close_and_max_difference(capsys):
    check.check_exact("ints", [1, 2, 3], torch.tensor([1, 2, 3]))
    check.check_close("floats", torch.tensor([1.0, 2.0]), [1.0, 2.0 + 1e-7])
    out = capsys.readouterr().out
    assert "✓ ints: exact" in out and "✓ floats: close (max difference 1e-07)" in out
    off = r"1 of 2 entries are off, the worst at index \(1,\) \(difference 5e-01"
    with pytest.raises(check.CheckFailed, match=off):
        check.check_close("floats", [1.0, 2.5], [1.0, 2.0])
    with pytest.raises(check.CheckFailed, match=r"1 of 3 entries differ, the first at index \(2,\)"):
        check.check_exact("ints", [1, 2, 4], [1, 2, 3])
    with pytest.raises(check.CheckFailed, match=r"shape \(2,\), expected \(3,\)"):
        check.check_close("shape", [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(check.CheckFailed, match="hint text"):
        check.check_true("flag", False, "hint text")
