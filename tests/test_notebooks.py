"""The committed notebooks: executed top to bottom, structured as the course promises, student versions."""

import json
import re
from pathlib import Path

import pytest

from hart_mini.course.student import COURSE_MAP, STUB, strip_solution, student_notebook, write_student_notebooks

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks_and_each_is_in_the_course_map():
    assert NOTEBOOKS, "no notebooks found"
    names = {name for name, *_ in COURSE_MAP}
    assert {p.stem for p in NOTEBOOKS} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_was_executed_top_to_bottom_in_one_kernel(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    with_output_no_count = [i for i, c in enumerate(code) if c.get("outputs") and c.get("execution_count") is None]
    assert not with_output_no_count, f"code cells {with_output_no_count} have outputs but no execution count"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"execution counts {counts}: re-run the notebook top to bottom"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "a committed notebook holds an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_goals_time_checked_outputs_and_exercises(path):
    cells = _cells(path)
    first = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# ")
    for words in ("Learning goals", "Prerequisites", "Time:"):
        assert words in first, f"the first cell must state '{words}'"
    sources = [_source(c) for c in cells]
    assert any("# NBVAL_CHECK_OUTPUT" in s for s in sources), "no cell's output is checked by nbval"
    assert any("## Summary" in s for s in sources) and any("## Exercises" in s for s in sources)
    solutions = [c for c in cells if "solution" in c.get("metadata", {}).get("tags", [])]
    assert len(solutions) >= 2, "at least two exercises with solution cells"
    assert any("check_" in s for s in sources), "exercises are checked with hart_mini.course.check"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_an_expected_results_box_for_smoke_and_cpu(path):
    last = _cells(path)[-1]
    text = _source(last)
    assert last["cell_type"] == "markdown" and text.startswith("## Expected results"), \
        "the last cell is the '## Expected results' box: what a correct run prints and shows"
    assert "`smoke`" in text and "`cpu`" in text, "the box says what to expect in both presets"


def test_strip_solution_keeps_the_signature_and_stubs_the_body():
    source = 'def f(x):\n    """Doc."""\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n'
    stripped = strip_solution(source)
    assert stripped == 'def f(x):\n    """Doc."""\n    ' + STUB
    assert strip_solution("answer = 42") == "# YOUR CODE HERE\n" + STUB
    with pytest.raises(ValueError, match="without"):
        strip_solution("### BEGIN SOLUTION\nx = 1\n")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_version_has_no_solutions_and_no_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    student = student_notebook(nb)
    for original, cell in zip(nb["cells"], student["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell["outputs"] == [] and cell["execution_count"] is None
        if "solution" in cell.get("metadata", {}).get("tags", []):
            assert "BEGIN SOLUTION" not in cell["source"] and "NotImplementedError" in cell["source"]
            assert cell["source"] != _source(original)


def test_student_notebooks_are_written_and_raise_not_implemented(tmp_path):
    written = write_student_notebooks(Path(NOTEBOOKS[0]).parent, tmp_path)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    nb = json.loads(written[0].read_text(encoding="utf-8"))
    solution = next(c for c in nb["cells"] if "solution" in c.get("metadata", {}).get("tags", []))
    with pytest.raises(NotImplementedError):
        exec(solution["source"], {})  # a stub that only defines a function raises when called instead


ROOT = Path(__file__).resolve().parents[1]


def test_course_map_is_current_and_readme_and_headers_state_its_times():
    from hart_mini.course.student import COURSE_PAGES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert {p.stem for p in NOTEBOOKS} == {name for name, *_ in COURSE_MAP}, "the map lists exactly the notebooks"
    for name, goal, cpu, gpu in COURSE_MAP:
        assert "planned" not in (goal + cpu + gpu).lower() and cpu.endswith("min") and gpu.endswith("min")
        assert f"| `{name}` | {goal} | {cpu} | {gpu} |" in readme, f"README's course map disagrees on {name}"
        header = _source(_cells(ROOT / "notebooks" / f"{name}.ipynb")[0])
        assert f"about {cpu} on a 2-core CPU (`cpu` preset)" in header and f"{gpu} on a GPU" in header, name
    welcome = "".join(_source(c) for c in _cells(ROOT / "notebooks" / "00_welcome.ipynb"))
    for page, _ in COURSE_PAGES:
        assert (ROOT / "notebooks" / page).is_file(), f"notebooks/{page} is missing"
        assert f"notebooks/{page}" in readme and f"({page})" in welcome, f"{page} is not linked from README and 00"


def test_the_repository_cites_no_document_it_does_not_contain():
    files = [*ROOT.glob("hart_mini/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("notebooks/*.ipynb"),
             *ROOT.glob("notebooks/*.md"), ROOT / "README.md"]
    outside = ["hart" + "_notes", "design" + ".md", "style" + ".md"]  # spelled in parts: this file is read too
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not [name for name in outside if name in text.lower()], path.name
        links = re.findall(r"\]\(([^)#\s]+)\)", text) if path.suffix in (".md", ".ipynb") else []  # case kept
        for link in links:  # relative markdown links must resolve
            if not link.startswith(("http://", "https://", "mailto:")):
                assert (path.parent / link).exists(), f"{path.name} links to {link}, which does not exist"
