"""Exercises are generated from solutions: ``solutions/NN_*.ipynb`` → ``exercises/NN_*.ipynb``.

A solution notebook follows nbgrader's conventions, so a course already running nbgrader can
import it unchanged:

- a cell the student fills in carries ``metadata.nbgrader.solution = true``; the answer sits
  between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` and becomes a stub that raises
  ``NotImplementedError`` (a solution cell without markers becomes the stub as a whole);
- a graded test cell carries ``grade = true`` and ``points``; its asserts between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed from the exercise (the
  grader puts them back, see ``grade.py``), the visible asserts stay;
- every nbgrader cell has a ``grade_id`` unique within the notebook.

Generating is a pure function of the solution file (same input, same bytes), so running it
twice changes nothing and a test can tell when ``exercises/`` is out of date.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from .notebooks import clean_notebook, is_checked, serialize, write_atomic

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's default stubs
TEXT_STUB = "YOUR ANSWER HERE"


def nbgrader(cell) -> dict:
    """A cell's nbgrader metadata ({} when it has none or it is malformed)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def grade_id(cell) -> str | None:
    gid = nbgrader(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def is_answer(cell) -> bool:
    """A cell the student writes (nbgrader "solution" cell)."""
    return bool(nbgrader(cell).get("solution"))


def is_test(cell) -> bool:
    """A graded test cell (nbgrader "autograder tests" cell)."""
    meta = nbgrader(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


def exercise_name(path) -> str:
    """``solutions/01_evolution.ipynb`` → ``01_evolution``; submissions are matched by this name."""
    return Path(path).stem


def solution_paths(folder) -> list[Path]:
    """The solution notebooks of a course, in lecture order."""
    return sorted(Path(folder).glob("*.ipynb"))


def check_solution(nb, name: str = "solution") -> None:
    """Raise ``ValueError`` naming the rule a solution notebook breaks (else return None).

    The rules are nbgrader's, restricted to what the autograder supports: unique grade ids,
    markers only in the cells they belong to and balanced, graded cells worth positive points,
    no manually graded cells, and no stored output under an answer (it would reveal it)."""
    seen = set()
    for i, cell in enumerate(nb.cells):
        where = f"{name}, cell {i}" + (f" ({grade_id(cell)})" if grade_id(cell) else "")
        meta = nbgrader(cell)
        if meta:
            gid = grade_id(cell)
            if gid is None:
                raise ValueError(f"{where}: an nbgrader cell needs a non-empty grade_id")
            if gid in seen:
                raise ValueError(f"{where}: grade_id {gid!r} is used twice; grade ids must be unique")
            seen.add(gid)
        if meta.get("task"):
            raise ValueError(f"{where}: manually graded task cells are not supported; "
                             "state the task in markdown and grade it with a test cell")
        if meta.get("grade") and meta.get("solution"):
            raise ValueError(f"{where}: manually graded cells (grade and solution) are not supported; "
                             "split it into an answer cell and a graded test cell")
        if meta.get("grade") and cell.cell_type != "code":
            raise ValueError(f"{where}: a graded cell must be a code cell with asserts")
        if is_test(cell):
            points = meta.get("points")
            if isinstance(points, bool) or not isinstance(points, (int, float)) or points <= 0:
                raise ValueError(f"{where}: a graded test cell must be worth a positive number of points")
        if is_answer(cell) and is_checked(cell):
            raise ValueError(f"{where}: an answer cell must not be marked '# NBVAL_CHECK_OUTPUT' "
                             "(its stored output would give the answer away)")
        _regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, where)
        _regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, where)
        if _has_marker(cell.source, BEGIN_SOLUTION, END_SOLUTION) and not is_answer(cell):
            raise ValueError(f"{where}: '{BEGIN_SOLUTION}' outside an answer cell "
                             "(set metadata.nbgrader.solution = true)")
        if _has_marker(cell.source, BEGIN_HIDDEN, END_HIDDEN) and not is_test(cell):
            raise ValueError(f"{where}: '{BEGIN_HIDDEN}' outside a graded test cell")
    if not any(is_test(c) for c in nb.cells):
        raise ValueError(f"{name}: a solution notebook needs at least one graded test cell")


def _has_marker(source: str, begin: str, end: str) -> bool:
    return any(line.strip().startswith((begin, end)) for line in source.splitlines())


def _regions(source: str, begin: str, end: str, where: str = "cell") -> list[tuple[int, int]]:
    """Line spans ``(first, last)`` of the regions delimited by ``begin``/``end`` marker lines."""
    spans, start = [], None
    for i, line in enumerate(source.splitlines()):
        text = line.strip()
        if text.startswith(begin):
            if start is not None:
                raise ValueError(f"{where}: '{begin}' twice without '{end}' in between")
            start = i
        elif text.startswith(end):
            if start is None:
                raise ValueError(f"{where}: '{end}' without a '{begin}' before it")
            spans.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"{where}: '{begin}' is never closed by '{end}'")
    return spans


def _replace_regions(source: str, begin: str, end: str, stub: str | None) -> tuple[str, bool]:
    """Replace every region by ``stub`` indented like its begin marker (``None``: delete it)."""
    lines = source.splitlines()
    spans = _regions(source, begin, end)
    for first, last in reversed(spans):
        indent = lines[first][:len(lines[first]) - len(lines[first].lstrip())]
        lines[first:last + 1] = [] if stub is None else [indent + s for s in stub.splitlines()]
    return "\n".join(lines), bool(spans)


def make_exercise(solution, name: str = "solution"):
    """The exercise notebook for a solution notebook (a new object; ``solution`` is not changed)."""
    check_solution(solution, name)
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        if is_answer(cell):
            source, replaced = _replace_regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub)
            cell.source = source if replaced else stub
        if is_test(cell):
            cell.source = _replace_regions(cell.source, BEGIN_HIDDEN, END_HIDDEN, None)[0]
            cell.source = re.sub(r"\n+$", "", cell.source)
    return clean_notebook(nb)


def render(solution_path) -> str:
    """The exact text of the exercise generated from the solution at ``solution_path``."""
    path = Path(solution_path)
    nb = nbformat.read(path, as_version=4)
    return serialize(make_exercise(nb, name=path.name))


def generate(solutions_dir, exercises_dir) -> list[Path]:
    """Write ``exercises_dir`` from ``solutions_dir``; return the paths written or removed.

    Only notebooks whose text changes are written; an exercise whose solution is gone is
    removed (``exercises/`` is generated, never edited by hand)."""
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    sources = solution_paths(solutions_dir)
    if not sources:
        raise ValueError(f"no solution notebooks (*.ipynb) in {solutions_dir}")
    texts = {exercises_dir / p.name: render(p) for p in sources}  # all checked before any write
    exercises_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for target, text in texts.items():
        if not target.exists() or target.read_text() != text:
            write_atomic(nbformat.reads(text, as_version=4), target)
            changed.append(target)
    for stale in sorted(set(exercises_dir.glob("*.ipynb")) - set(texts)):
        stale.unlink()
        changed.append(stale)
    return changed


def out_of_date(solutions_dir, exercises_dir) -> list[str]:
    """Why ``exercises_dir`` differs from what ``generate`` would write ([] when in sync)."""
    solutions_dir, exercises_dir = Path(solutions_dir), Path(exercises_dir)
    problems = []
    expected = set()
    for source in solution_paths(solutions_dir):
        target = exercises_dir / source.name
        expected.add(target)
        if not target.exists():
            problems.append(f"{target} is missing")
        elif target.read_text() != render(source):
            problems.append(f"{target} differs from the exercise generated from {source}")
    problems += [f"{p} has no solution in {solutions_dir}"
                 for p in sorted(set(exercises_dir.glob("*.ipynb")) - expected)]
    return problems
