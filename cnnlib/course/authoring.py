"""Writing lecture and solution notebooks from Python.

A notebook in ``lectures/`` or ``solutions/`` is the source of truth and may be edited in
JupyterLab like any other. These helpers exist for authors who prefer to build a notebook from a
script: they attach nbgrader-compatible metadata (``grade_id``, ``points``, ``solution``,
``locked``) and give every cell a stable id, so regenerating a notebook yields a small diff::

    from cnnlib.course import authoring as A
    cells = [A.markdown("# Exercise 02"),
             A.code("import torch"),
             A.answer("bn_forward", "def bn(x):\\n    ### BEGIN SOLUTION\\n    ...\\n    ### END SOLUTION"),
             A.graded_test("test_bn_forward", 2, "assert ...\\n### BEGIN HIDDEN TESTS\\n...")]
    A.write(A.notebook(cells), "solutions/02_batchnorm_resnet.ipynb")
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat import v4

from .notebooks import clean_notebook, write_atomic

SCHEMA_VERSION = 3


def _nbgrader(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = True,
              points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA_VERSION,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def markdown(text: str, grade_id: str | None = None):
    """A prose cell; with ``grade_id`` it is marked as locked nbgrader text."""
    cell = v4.new_markdown_cell(text.strip("\n"))
    if grade_id:
        cell.metadata["nbgrader"] = _nbgrader(grade_id)
    return cell


def code(text: str, grade_id: str | None = None):
    """An ordinary code cell; with ``grade_id`` it is locked in nbgrader's sense."""
    cell = v4.new_code_cell(text.strip("\n"))
    if grade_id:
        cell.metadata["nbgrader"] = _nbgrader(grade_id)
    return cell


def answer(grade_id: str, text: str):
    """A cell the student fills in: the answer sits between ``### BEGIN/END SOLUTION``."""
    if "### BEGIN SOLUTION" not in text or "### END SOLUTION" not in text:
        raise ValueError(f"answer cell {grade_id!r} needs ### BEGIN SOLUTION / ### END SOLUTION markers")
    cell = v4.new_code_cell(text.strip("\n"))
    cell.metadata["nbgrader"] = _nbgrader(grade_id, solution=True, locked=False)
    return cell


def graded_test(grade_id: str, points: float, text: str):
    """A locked test cell worth ``points``; hidden asserts sit between ``### BEGIN/END HIDDEN TESTS``."""
    if points <= 0:
        raise ValueError(f"graded test {grade_id!r} must be worth a positive number of points")
    cell = v4.new_code_cell(text.strip("\n"))
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=True, points=points)
    return cell


def notebook(cells, nbgrader: bool = False):
    """A Python 3 notebook with stable cell ids ``c000, c001, ...``.

    With ``nbgrader=True`` every cell without nbgrader metadata is marked locked, as nbgrader's
    "create assignment" would do for a solution notebook."""
    nb = v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(cells):
        cell.id = f"c{i:03d}"
        if nbgrader and "nbgrader" not in cell.metadata:
            cell.metadata["nbgrader"] = _nbgrader(f"cell_{i:03d}")
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def write(nb, path) -> Path:
    """Clean ``nb`` and write it atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(clean_notebook(nb), path)
    return path
