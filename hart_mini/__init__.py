"""hart_mini: HART (Hybrid Autoregressive Transformer, Tang et al. 2024) rebuilt from scratch for a course.

One file per concept, read top to bottom beside its notebook:
    config     dataclass configs and the smoke / cpu / gpu presets
    data       ToyShapes (procedural text-to-image data) and a folder dataset
    runtime    seeding, device and dtype selection
    checkpoint safetensors checkpoints, atomic writes, checksums, config checks
    runs       run folders (run.json) and output paths, checked before any work
    metrics    PSNR and power spectra
    viz        image grids and plots of fixed size
    check      exercise checkers
    course     student notebooks
"""

__version__ = "0.1.0"
