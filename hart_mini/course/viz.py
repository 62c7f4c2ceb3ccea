"""Pictures: image grids with captions, curves and spectra, in figures of fixed size.

Every figure's size and dpi depend only on what is drawn (number of images, columns), never on the
machine, so notebook outputs read the same everywhere. Images may be (B, 3, H, W) tensors in [-1, 1] or
(B, H, W, 3) uint8 arrays.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

DPI = 100
CELL = 1.5  # inches per image in a grid
GRID_CAPTIONED = 64  # at most this many images get a captioned grid; more go into one plain mosaic


def to_uint8(images) -> np.ndarray:
    """(B, 3, H, W) float tensor in [-1, 1] or (B, H, W, 3) uint8 array -> (B, H, W, 3) uint8."""
    if torch.is_tensor(images):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images tensor must be (B, 3, H, W), got {tuple(images.shape)}")
        x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round()
        return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    return images


def _bare(ax: plt.Axes) -> None:
    """No ticks, no frame; unlike set_axis_off, axis labels still show."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def image_grid(images, captions: list[str] | None = None, ncols: int = 8, title: str | None = None,
               cell: float = CELL, wrap: int = 22) -> plt.Figure:
    """A grid of images, each with its (wrapped) caption underneath."""
    pixels = to_uint8(images)
    n = len(pixels)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {n} images but {len(captions)} captions")
    lines = lambda c: [line for part in c.split("\n") for line in textwrap.wrap(part, wrap)]  # keep line breaks
    text_h = 0.0 if captions is None else 0.14 * (max(len(lines(c)) for c in captions) + 0.8)
    height = nrows * (cell + text_h) + (0.3 if title else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell, height), dpi=DPI, squeeze=False)
    for i, ax in enumerate(axes.flat):
        _bare(ax)
        if i >= n:
            continue
        ax.imshow(pixels[i], interpolation="nearest")
        if captions is not None:  # an x-label, so tight_layout leaves room for it
            ax.set_xlabel("\n".join(lines(captions[i])), fontsize=6, labelpad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig


def mosaic(images, ncols: int | None = None) -> plt.Figure:
    """Many images tiled into one picture at one figure pixel per image pixel, without captions: a single
    image, so it draws as fast for 100 000 images as a captioned grid draws 64."""
    pixels = to_uint8(images)
    n, H, W, _ = pixels.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = -(-n // ncols)
    canvas = np.full((nrows * H, ncols * W, 3), 255, dtype=np.uint8)  # white where the last row ends
    for i in range(n):
        row, col = divmod(i, ncols)
        canvas[row * H:(row + 1) * H, col * W:(col + 1) * W] = pixels[i]
    fig = plt.figure(figsize=(ncols * W / DPI, nrows * H / DPI), dpi=DPI)
    fig.figimage(canvas, resize=False)
    return fig


def object_crops(images: torch.Tensor, prompts: list[str] | None = None, cells: list[int | None] | None = None,
                 size: int | None = None) -> torch.Tensor:
    """Zoom on each image's object: a size x size window (half the image by default) centred on a cell of
    the 3x3 grid. The cell is `cells[i]` (say, where the judge found the object), else the position the
    prompt names; with neither (a two-object prompt, nothing found) the whole image is shown, downsampled.
    images (B, 3, H, W) -> (B, 3, size, size).
    """
    from hart_mini.model.data import parse_caption

    B, _, H, W = images.shape
    size = size or H // 2
    if cells is None:
        cells = [parse_caption(p)["position"] for p in prompts] if prompts is not None else [None] * B
    out = []
    for image, cell in zip(images, cells):
        if cell is None:
            out.append(torch.nn.functional.interpolate(image[None], size=(size, size), mode="area")[0])
            continue
        row, col = divmod(cell, 3)
        cy, cx = (2 * row + 1) * H // 6, (2 * col + 1) * W // 6  # the cell's centre
        top, left = min(max(cy - size // 2, 0), H - size), min(max(cx - size // 2, 0), W - size)
        out.append(image[:, top:top + size, left:left + size])
    return torch.stack(out)


def image_rows(rows: dict[str, object], cell: float = CELL) -> plt.Figure:
    """Several rows of images with a label on the left of each: e.g. originals / discrete / continuous."""
    names = list(rows)
    pixels = [to_uint8(rows[k]) for k in names]
    ncols = max(len(p) for p in pixels)
    fig, axes = plt.subplots(len(names), ncols, figsize=(ncols * cell + 0.8, len(names) * cell), dpi=DPI,
                             squeeze=False)
    for r, (name, row) in enumerate(zip(names, pixels)):
        for c, ax in enumerate(axes[r]):
            _bare(ax)
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def plot_curves(curves: dict[str, tuple], xlabel: str = "", ylabel: str = "", title: str = "",
                logy: bool = False, size: tuple[float, float] = (6.0, 3.5)) -> plt.Figure:
    """Line plot of several named (x, y) curves."""
    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    for name, (x, y) in curves.items():
        ax.plot(np.asarray(x), np.asarray(y), label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_spectra(spectra: dict[str, object], title: str = "Radially averaged power spectrum",
                 size: tuple[float, float] = (6.0, 3.5)) -> plt.Figure:
    """Power against spatial frequency (log scale), one line per name; a dotted line at half Nyquist."""
    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    n = 0
    for name, spectrum in spectra.items():
        s = np.asarray(spectrum, dtype=np.float64)
        n = len(s)
        ax.semilogy(np.arange(1, n), s[1:], label=name)  # skip the DC bin (mean removed)
    ax.axvline((n - 1) / 2, color="grey", ls=":", lw=1)
    ax.set(xlabel="spatial frequency (cycles per image)", ylabel="power", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Save a figure (PNG, or the format its suffix names; parents created) and close it; returns the path."""
    from hart_mini.runs import IMAGE_SUFFIXES, output_file

    try:
        path = output_file(path, "figure path", IMAGE_SUFFIXES)  # matplotlib would append .png to a bare name
    except ValueError:
        plt.close(fig)
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
