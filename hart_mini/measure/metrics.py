"""Image metrics: PSNR, radially averaged power spectra, and the Frechet distance of feature sets.

The power spectrum shows what a tokenizer loses: the discrete tokens keep the low frequencies (shapes,
colours) and drop the high ones (texture, noise, sharp edges). We summarise it as the share of energy
above half the Nyquist frequency, of a reconstruction relative to the original.

Images are (B, 3, H, W) tensors in [-1, 1].
"""

from __future__ import annotations

import torch


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, (B,)."""
    return (x.float() - y.float()).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, (B,); data_range 2 for images in [-1, 1]."""
    # PSNR = 10 log10(range^2 / MSE)
    return 10 * torch.log10(data_range**2 / mse(x, y).clamp_min(1e-12))


def radial_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Mean power at each integer spatial frequency 0..H//2 (cycles per image), (H//2 + 1,) float64.

    Each image's per-channel mean is removed first, so the DC bin holds ~0 and the curve shows structure.
    """
    x = images.double()
    if x.ndim == 3:
        x = x[:, None]
    B, C, H, W = x.shape
    if H != W:
        raise ValueError(f"radial_power_spectrum needs square images, got H={H}, W={W}")
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=(0, 1)) / (H * W)  # (H, W)
    freq = torch.fft.fftfreq(H, d=1.0 / H)  # integer frequencies, cycles per image
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).round().long()  # (H, W)
    keep = radius <= H // 2
    total = torch.zeros(H // 2 + 1, dtype=torch.float64).index_add_(0, radius[keep], power[keep])
    count = torch.zeros(H // 2 + 1, dtype=torch.float64).index_add_(0, radius[keep], torch.ones_like(power[keep]))
    return total / count.clamp_min(1)


def high_frequency_energy(images: torch.Tensor) -> float:
    """Power summed over frequencies above half the Nyquist frequency (H/4 cycles per image)."""
    spectrum = radial_power_spectrum(images)
    cutoff = images.shape[-1] // 4
    return float(spectrum[cutoff + 1:].sum())


def high_frequency_ratio(reconstructions: torch.Tensor, originals: torch.Tensor) -> float:
    """High-frequency energy of reconstructions / of the originals (1.0 = all detail kept)."""
    return high_frequency_energy(reconstructions) / max(high_frequency_energy(originals), 1e-12)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix, by eigendecomposition (float64)."""
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F), in float64:

        ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr( (S_a^1/2 S_b S_a^1/2)^1/2 )

    The matrix square roots come from eigendecompositions of symmetric matrices, which stay stable where
    scipy's general sqrtm can return complex noise.
    """
    a, b = a.double(), b.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, F) with the same F, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError("each feature set needs at least 2 samples")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(root_a @ s_b @ root_a)
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * torch.trace(cross)
    return float(fd.clamp_min(0))


def frechet_mean_term(a: torch.Tensor, b: torch.Tensor) -> float:
    """FD's first term ||mu_a - mu_b||^2 (feature sets (N, F), (M, F)): the part of frechet_distance that a shift
    of the features' mean makes; the rest is the covariances' term."""
    return float((a.double().mean(0) - b.double().mean(0)).pow(2).sum())
