"""Student versions of the notebooks: solutions out, stubs in (`python -m hart_mini course student OUT`).

The course notebooks are the one source. A code cell tagged `solution` is an exercise answer:
- if it holds a `### BEGIN SOLUTION` ... `### END SOLUTION` block, only that block is replaced, so the
  function signature and docstring stay for the student;
- otherwise the whole cell is replaced.
The stub raises `NotImplementedError`. Student notebooks are written without outputs, execution counts or
saved state: the notebook keeps only its kernel and language metadata (no widget or tqdm state), each
cell only its tags (no timings).
"""

from __future__ import annotations

import json
from pathlib import Path

# The course map: notebook, what it teaches, time on a 2-core CPU (cpu preset) and on one GPU (gpu preset).
# CPU times are measured (notebooks/instructor_guide.md says how); GPU times are estimates until measured.
# The same times open each notebook ("Time:") and fill README's course map; tests/test_notebooks.py checks it.
COURSE_MAP = (
    ("00_welcome", "The environment, a shipped HART's samples, the course map, HART's idea in one figure",
     "1 min", "1 min"),
    ("01_toyshapes", "Procedural text-to-image data with fine detail; captions, labels, power spectra",
     "1 min", "1 min"),
    ("02_vector_quantization", "VQ from scratch: nearest code, straight-through, codebook collapse and restarts",
     "1 min", "1 min"),
    ("03_multiscale_residual_vq", "VAR's multi-scale residual quantizer, scale by scale; L = sum of pn squared",
     "1 min", "1 min"),
    ("04_hybrid_tokenizer", "Residual tokens and the alternating decoder: discrete vs continuous paths; a "
     "tokenizer trained briefly", "3 min", "1 min"),
    ("05_next_scale_transformer", "Next-scale prediction; you write the block-causal mask, attention and the loss; "
     "AdaLN, KV cache, guidance", "8 min", "1 min"),
    ("06_diffusion_from_scratch", "DDPM / DDIM on points and latent vectors; eps vs v, clipping; fewer steps",
     "3 min", "1 min"),
    ("07_residual_diffusion_head", "You write the head: its MLP, diffusion loss and sampler; why residuals are easy; "
     "conditioning; 8 vs 50 steps", "4 min", "1 min"),
    ("08_hart_end_to_end", "The assembled HART: you write the sampling loop; prompts to images, the head's effect "
     "and cost", "5 min", "1 min"),
    ("09_ablations", "Why our first HART put objects in the wrong corner (diagnose, force, fix); head on/off, "
     "full-token head, diffusion-early vs -last, steps, decoder, guidance", "3 min", "1 min"),
    ("10_efficiency", "Where sampling time goes; KV cache; MACs; the '9x faster' claim at matched quality", "1 min",
     "1 min"),
    ("11_scaling_up", "bf16, SDPA kernels, compile, MFU, data loading, torchrun + DDP, chunked runs",
     "1 min", "1 min"),
    ("12_capstone", "Your own HART: your quantizer, attention, head, losses, sampler and sampling loop wired together, "
     "trained beside a control run, compared with the shipped one", "17 min", "1 min"),
)

# Pages beside the notebooks (notebooks/*.md): what each is for.
COURSE_PAGES = (
    ("reading_list.md", "the papers, code and issue threads the course draws on, with links"),
    ("glossary.md", "the course's notation in one table: f, f_hat, r_k, pn, K, L, h, z, abar, v, ..."),
    ("troubleshooting.md", "common errors and what to do about them"),
    ("instructor_guide.md", "answers to every exercise and open question; measured times per notebook"),
    ("results.md", "each claim of the paper and the press, what we measure for it, with its noise, and a verdict"),
)

SOLUTION_TAG = "solution"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write your solution here")'
NOTEBOOK_METADATA = ("kernelspec", "language_info")  # the notebook metadata a student version keeps


def strip_solution(source: str) -> str:
    """Replace the solution block(s) of one cell's source with a stub."""
    lines = source.splitlines()
    if not any(line.strip() == BEGIN for line in lines):
        return "# YOUR CODE HERE\n" + STUB
    out, inside = [], False
    for line in lines:
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + STUB)
            inside = True
        elif line.strip() == END:
            if not inside:
                raise ValueError(f"'{END}' without '{BEGIN}' in a solution cell:\n{source}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"'{BEGIN}' without '{END}' in a solution cell:\n{source}")
    return "\n".join(out)


def student_notebook(notebook: dict) -> dict:
    """A copy of a notebook (nbformat JSON) with solutions stubbed, every output and saved state cleared."""
    nb = json.loads(json.dumps(notebook))
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k in NOTEBOOK_METADATA}
    for cell in nb["cells"]:
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k == "tags"}
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            source = strip_solution(source)
        cell["source"] = source
        cell["outputs"], cell["execution_count"] = [], None
    return nb


def is_course_notebook(notebook: dict) -> bool:
    """Does a notebook still hold a solution (a cell tagged `solution` that raises no NotImplementedError)? Then
    it is a course notebook, not a student version (whose stubs an instructor may edit, but which still raise)."""
    return any(SOLUTION_TAG in c.get("metadata", {}).get("tags", []) and "NotImplementedError" not in
               "".join(c["source"]) for c in notebook.get("cells", []) if c.get("cell_type") == "code")


def check_student_folder(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse, before writing anything, a student folder that is the course itself (or holds course notebooks:
    OUTDIR and --notebooks swapped), and a non-empty one unless `overwrite`: an instructor edits student
    notebooks, and a second run would replace those edits."""
    from hart_mini.runs import output_folder

    folder = out.is_dir()
    course = [p for p in sorted(out.glob("*.ipynb")) if is_course_notebook(json.loads(p.read_text("utf-8")))] \
        if folder else []
    if folder and (out.resolve() == src.resolve() or course):
        raise ValueError(f"the student folder {str(out)!r} is the course itself (it holds {len(course)} course "
                         "notebooks with their solutions); did you swap OUTDIR and --notebooks? Give a new folder")
    output_folder(out, "the student folder")  # not a file, not in the shipped set, can be made
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise ValueError(f"the student folder {str(out)!r} is not empty ({len(held)} files, e.g. {held[0]!r}): "
                         "give a new folder, or pass --overwrite to replace its notebooks (edits made there are lost)")


def write_student_notebooks(src: str | Path, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write a student version of every notebook in `src` to `out`; returns the written paths. `out` must be
    a new or empty folder (or overwrite=True), and never the course itself."""
    src, out = Path(src), Path(out)
    notebooks = sorted(src.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {str(src)!r}")
    check_student_folder(src, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = student_notebook(json.loads(path.read_text(encoding="utf-8")))
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written
