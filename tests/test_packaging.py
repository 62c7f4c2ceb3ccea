"""pyproject.toml, environment.yml, README and .ci/run agree with each other."""

import re
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_dependencies_have_ranges_with_upper_bounds():
    project = PYPROJECT["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert ">=" in req and "<" in req, f"{req!r}: give a range with an upper bound on the major version"


def test_environment_yml_only_installs_the_package_with_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(_name(d.split("=")[0]) for d in conda) == ["pip", "python"]
    python = next(d for d in conda if d.startswith("python="))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))
    assert '-e ".[dev]"' in pip or "-e .[dev]" in pip
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extra = [_name(r) for r in pip if not r.startswith("-e")]
    assert set(extra) <= declared, f"environment.yml pins {extra} that pyproject does not declare"


def test_environment_torch_pin_fits_pyproject_range():
    env = (ROOT / "environment.yml").read_text()
    pin = re.search(r"torch==([\d.]+)", env).group(1)
    spec = next(r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "torch")
    low, high = re.search(r">=([\d.]+),<([\d.]+)", spec).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))
    assert as_tuple(low) <= as_tuple(pin) < as_tuple(high)


def test_ci_runs_the_readme_test_command_and_pins_cpu_torch():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```\s*<!-- /test-command -->", readme, re.S)
    assert block and block.group(1).strip() == "pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and "pip install --quiet torch==2.13.0" in ci
    assert ci.index("torch==2.13.0") < ci.index('-e ".[dev]"'), "install torch before the package"
