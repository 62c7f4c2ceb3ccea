"""Numbers in the course pages, filled from the committed results (`python -m hart_mini course pages`).

A number the project measured is written in a page once, followed by an HTML comment that names where it
comes from; Markdown renders the comment as nothing:

    FD 0.867<!-- cpu/eval_hart.json fd .3f --> ± 0.030<!-- cpu/eval_hart.json fd_sd .3f -->

The comment holds three parts, separated by spaces:
- a JSON file, relative to data/results/;
- a key path into it: keys joined by dots (`models.hart.fd`), a list element by its index
  (`per_seed.0.fd`) or by a field it holds (`frontier.diffusion[steps=30].fd`), a key with spaces in
  quotes (`edits.'colour changed'.true_caption_wins`). A derived number is a small arithmetic
  expression of key paths and numbers with + - * / ** and parentheses (`models.hart.macs_per_image / 1e6`);
  a key path of another file is written `FILE:PATH`;
- a format: `.3f` (three decimals), `+.3f` (with its sign), `,.0f` (thousands apart by a space: 1 402),
  `d` (a whole number). Rounding is Python's, as the package and the notebooks print numbers (0.5525 ->
  0.552: the binary float lies just below).

`check(text, results)` lists every marked number that differs from its JSON; `fill(text, results)` returns
the text with each one replaced; a mark whose file or key is missing is an error (ValueError). No command
rewrites the pages (none writes into notebooks/ or data/): tests/test_pages.py fails while a page is stale
and rewrites the pages only when run with HART_MINI_WRITE_PAGES=1.
"""

from __future__ import annotations

import ast
import builtins
import json
import operator
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "data" / "results"
PAGES = ("README.md", "notebooks/results.md", "notebooks/instructor_guide.md", "notebooks/glossary.md")

MARK = re.compile(r"<!--\s*(?P<file>[\w./-]+\.json)\s+(?P<expr>.+?)\s+(?P<format>[+]?,?(?:\.\d+f|d))\s*-->")
KEY = r"[A-Za-z_]\w*|'[^']+'|\[\w+=[^\]\s]+\]"  # key  'a key with spaces'  [field=value]
REFERENCE = re.compile(rf"(?<![\w.'])(?:(?P<file>[\w./-]+\.json):)?"  # FILE: when another file's
                       rf"(?P<path>(?:{KEY})(?:\.\w+|\.'[^']+'|\[[^\]\s]+\])*)")
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow}


def lookup(data, path: str, where: str = "?"):
    """The value at a key path: 'a.b.0.c' or 'a[steps=8].c'."""
    value = data
    for part in re.findall(r"'[^']+'|\[\w+=[^\]]+\]|[^.\['\]]+", path):
        part = part.strip("'")
        if part.startswith("["):  # the one list element whose field equals the given value
            key, wanted = part[1:-1].split("=", 1)
            found = [x for x in value if isinstance(x, dict) and str(x.get(key)) in (wanted, f"{wanted}.0")]
            if len(found) != 1:
                raise ValueError(f"{where}: {path}: {len(found)} elements have {key}={wanted}")
            value = found[0]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise ValueError(f"{where}: {path}: no key {part!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {path} is {value!r}, not a number")
    return value


def evaluate(file: str, expr: str, results) -> float:
    """The value of one mark's expression; `results(file)` returns a JSON file's data."""
    values: dict[str, float] = {}

    def name(m: re.Match) -> str:
        values[f"_{len(values)}"] = lookup(results(m["file"] or file), m["path"], m["file"] or file)
        return f"_{len(values) - 1}"

    def run(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](run(node.left), run(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -run(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return values[node.id]
        raise ValueError(f"{file}: {expr!r}: only key paths, numbers, + - * / ** and parentheses")

    return run(ast.parse(REFERENCE.sub(name, expr), mode="eval").body)


def render(value: float, format: str) -> str:
    """The value as the page writes it: Python's format(), so as the package and the notebooks print it."""
    text = builtins.format(value, format.replace("d", ".0f")).replace(",", " ")
    return text.replace("-", "", 1) if float(text.replace(" ", "")) == 0 else text  # no "-0.000"


def number_before(text: str, end: int, format: str) -> re.Match | None:
    """The number that ends at `end` (just before a mark), written as `format` writes numbers."""
    body = r"\d{1,3}(?: \d{3})*(?:\.\d+)?" if "," in format else r"\d+(?:\.\d+)?"
    return re.search(rf"(?:(?<=[\s(])[+−-])?(?<![\d.]){body}$", text[max(0, end - 40):end])


def marks(text: str, results) -> list[dict]:
    """Every mark in a page: its line, its source, the number the page shows and the one its JSON gives."""
    out = []
    for m in MARK.finditer(text):
        found = number_before(text, m.start(), m["format"])
        value = evaluate(m["file"], m["expr"], results)
        out.append({"line": text.count("\n", 0, m.start()) + 1, "source": f"{m['file']} {m['expr']}",
                    "format": m["format"], "shown": found[0].replace("−", "-") if found else None,
                    "json": render(value, m["format"]), "start": m.start() - len(found[0]) if found else m.start(),
                    "end": m.start()})
    return out


def check(text: str, results) -> list[dict]:
    """The marks whose number differs from its JSON (shown None: no number stands right before the mark)."""
    return [{k: v for k, v in mark.items() if k not in ("start", "end")}
            for mark in marks(text, results) if mark["shown"] != mark["json"]]


def fill(text: str, results) -> str:
    """The text with every marked number replaced by its JSON's."""
    for mark in reversed(marks(text, results)):
        text = text[:mark["start"]] + mark["json"] + text[mark["end"]:]
    return text


def committed_results(root: Path = RESULTS):
    """A loader of data/results/ files, each read once."""
    cache: dict[str, object] = {}

    def load(file: str):
        if file not in cache:
            path = root / file
            if not path.is_file():
                raise ValueError(f"{file}: no such file under {root.name}/")
            cache[file] = json.loads(path.read_text())
        return cache[file]

    return load


def stale_pages(root: Path = ROOT) -> dict:
    """For the course pages: how many numbers each marks, and every stale one (what the CLI prints)."""
    results = committed_results(root / "data" / "results")
    pages, stale = {}, []
    for page in PAGES:
        text = (root / page).read_text(encoding="utf-8")
        pages[page] = len(marks(text, results))
        stale += [{"page": page, **s} for s in check(text, results)]
    return {"marked": pages, "stale": stale}
