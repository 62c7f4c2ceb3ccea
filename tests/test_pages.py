"""The measured numbers of the course pages agree with the committed results they name.

README.md and notebooks/{results,instructor_guide,glossary}.md mark each number the project measured with
the JSON it comes from (`0.867<!-- cpu/eval_hart.json fd .3f -->`; the syntax is in
hart_mini/course/pages.py). `test_every_marked_number_is_current` fails while a page is stale. After new
results are committed, rewrite the marked numbers with

    HART_MINI_WRITE_PAGES=1 pytest tests/test_pages.py

and read the diff: a changed number may change a verdict, which the text around it states.
"""

from __future__ import annotations

import json
import os

import pytest

from hart_mini.course.pages import PAGES, ROOT, check, committed_results, fill, marks, render, stale_pages


@pytest.fixture(scope="module")
def results():
    return committed_results()


@pytest.mark.parametrize("page", PAGES)
def test_every_marked_number_is_current(page, results):
    path = ROOT / page
    text = path.read_text(encoding="utf-8")
    if os.environ.get("HART_MINI_WRITE_PAGES"):
        text = fill(text, results)
        path.write_text(text, encoding="utf-8")
    stale = check(text, results)
    assert not stale, f"{page} is stale (run HART_MINI_WRITE_PAGES=1 pytest tests/test_pages.py):\n" + "\n".join(
        f"  line {s['line']}: {s['shown']} -> {s['json']}  ({s['source']} {s['format']})" for s in stale)


def test_the_pages_mark_their_measured_numbers(results):
    counted = {page: len(marks((ROOT / page).read_text(encoding="utf-8"), results)) for page in PAGES}
    assert counted["notebooks/results.md"] >= 100 and counted["README.md"] >= 50, counted


def test_a_changed_number_is_reported_and_filled_back(results, tmp_path):
    """Edit one marked number in a copy of results.md: the check names it, fill restores the page."""
    text = (ROOT / "notebooks" / "results.md").read_text(encoding="utf-8")
    first = marks(text, results)[0]
    wrong = "9" + first["json"]
    edited = text[:first["start"]] + wrong + text[first["end"]:]
    (tmp_path / "results.md").write_text(edited, encoding="utf-8")
    stale = check((tmp_path / "results.md").read_text(encoding="utf-8"), results)
    assert [(s["line"], s["shown"], s["json"]) for s in stale] == [(first["line"], wrong, first["json"])]
    assert fill(edited, results) == text


def test_a_mark_without_its_number_or_key_is_an_error(results):
    assert check("FD <!-- cpu/eval_hart.json fd .3f -->", results)[0]["shown"] is None
    with pytest.raises(ValueError, match="no key 'fid'"):
        check("FD 0.867<!-- cpu/eval_hart.json fid .3f -->", results)
    with pytest.raises(ValueError, match="no such file"):
        check("FD 0.867<!-- cpu/nowhere.json fd .3f -->", results)


def test_key_paths_expressions_and_formats():
    data = {"a": {"x": 0.0055, "n": 3946938368.0},
            "rows": [{"steps": 5, "fd": 1.5046}, {"steps": 30, "fd": 1.2382}], "b": 2.0}
    results = lambda file: data  # noqa: E731
    assert marks("0.005<!-- f.json a.x .3f -->", results)[0]["json"] == "0.005"  # as Python prints 0.0055
    assert marks("1.238<!-- f.json rows[steps=30].fd .3f -->", results)[0]["json"] == "1.238"
    assert marks("1.505<!-- f.json rows.0.fd .3f -->", results)[0]["json"] == "1.505"
    assert marks("3 947<!-- f.json a.n / 1e6 ,.0f -->", results)[0]["json"] == "3 947"
    assert marks("x +0.27<!-- f.json rows.0.fd - rows.1.fd +.2f -->", results)[0]["json"] == "+0.27"
    assert marks("38 %<!-- f.json (1 - rows.1.fd / b) * 100 d -->", results)[0]["json"] == "38"
    assert render(-0.0001, ".3f") == "0.000" and render(1402.4, "d") == "1402"
    assert check("3-15<!-- f.json a.x * 1000 .0f -->", results)[0]["shown"] == "15"  # a range, not a sign
    with pytest.raises(ValueError, match="only key paths"):
        marks("1<!-- f.json a.x % 2 .0f -->", results)


def test_the_cli_check_reads_only_and_prints_json(capsys):
    from hart_mini.cli import main

    before = {page: (ROOT / page).read_text(encoding="utf-8") for page in PAGES}
    assert main(["course", "pages"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {**stale_pages(), **({"notes": printed["notes"]} if "notes" in printed else {})}
    assert set(printed["marked"]) == set(PAGES)
    assert before == {page: (ROOT / page).read_text(encoding="utf-8") for page in PAGES}
