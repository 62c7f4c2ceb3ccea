"""hart_mini: HART (Hybrid Autoregressive Transformer, Tang et al. 2024) rebuilt from scratch for a course.

The package in layers; a module imports only from its own layer or a lower one (tests/test_layout.py):
    foundation  config, runtime, checkpoint, runs        presets, devices, safetensors files, run folders
    model/      what the course rebuilds (notebooks 01-08), read top to bottom beside its notebook
    measure/    metrics, judge, evaluate (notebooks 09-10)
    course/     viz, check, exercises, student: the notebooks' tools
    commands    pretrained, train, bench, ablate, diagnose, budget, plan, pipeline, export, doctor, cli:
                what `python -m hart_mini ...` runs
"""

__version__ = "0.1.0"
