"""pytest set-up shared by the unit tests and the notebooks (nbval).

- Notebooks run in the `smoke` preset unless HART_MINI_PRESET is already set: the kernels nbval starts
  inherit this process's environment.
- At the end, a table of how long each notebook took (nbval reports one item per cell).
"""

import os
from collections import defaultdict

os.environ.setdefault("HART_MINI_PRESET", "smoke")
os.environ.setdefault("MPLBACKEND", "agg")  # scripts and tests never open windows

_seconds = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.write_sep("=", "notebook durations (all cells, smoke preset)")
    for path, seconds in sorted(_seconds.items()):
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_seconds.values()):7.1f} s  all notebooks")
