"""The package's layers (hart_mini/__init__.py): a module imports only from its own layer or a lower one,
and no modules import each other in a circle. Checked on the source with `ast`, lazy imports included."""

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hart_mini"
FOUNDATION = {"config", "runtime", "checkpoint", "runs"}
LAYERS = ("foundation", "model", "measure", "course", "commands")  # lowest first


def layer(module: str) -> str:
    """'model.hart' -> 'model'; a top-level module is foundation or a command."""
    first = module.split(".")[0]
    if first in ("model", "measure", "course"):
        return first
    return "foundation" if first in FOUNDATION else "commands"


def modules() -> dict[str, Path]:
    """Every module of the package, named relative to it: 'cli', 'model.hart', ..."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if not name.endswith("__init__") and name != "__main__":
            out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules a file imports, anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hart_mini":
            base = node.module.removeprefix("hart_mini").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}".lstrip(".")
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("hart_mini.") for a in node.names if a.name.startswith("hart_mini.")}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, deps in sorted(g.items()) for b in sorted(deps)
            if rank[layer(b)] > rank[layer(a)]]


def circle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_model_wing_imports_alone():
    import importlib

    hart = importlib.import_module("hart_mini.model.hart")
    assert hasattr(hart, "HART")


def test_no_module_imports_from_a_higher_layer():
    assert upward(graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circle(graph()) is None


def test_the_checks_catch_an_upward_import_and_a_circle():
    g = graph()
    g["model.hart"] = g["model.hart"] | {"model.sampling_variants", "course.viz"}  # as before the layout
    assert "model.hart (model) imports course.viz (course)" in upward(g)
    assert set(circle(g)) == {"model.hart", "model.sampling_variants"}


def test_every_wing_says_what_it_holds():
    for wing in ("model", "measure", "course"):
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and "notebook" in doc, wing


@pytest.mark.parametrize("name", ["tokenizer", "hart", "diffusion", "judge"])
def test_shipped_checkpoints_name_no_module_path(name):
    """Shipped files load whatever the layout: their metadata names kinds and configs, never a module."""
    from hart_mini import checkpoint

    path = PACKAGE.parent / "data" / f"{name}_cpu.safetensors"
    _, meta = checkpoint.load(path)
    assert "hart_mini." not in json.dumps(meta) and "hart_mini/" not in json.dumps(meta)
