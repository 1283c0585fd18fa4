"""Keeping notebooks clean in git.

A stored notebook has no outputs and no execution counts, so diffs show only what an author
changed. The exception is a code cell containing ``# NBVAL_CHECK_OUTPUT``: its deterministic
output (a parameter count, a FLOP table) is stored, with execution count 1, so that
``pytest --nbval-lax`` compares it with a fresh run.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
CHECKED_COUNT = 1
KEEP_CELL_METADATA = ("nbgrader", "tags", "editable", "deletable")
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def is_checked(cell) -> bool:
    """Whether a code cell's output is verified by nbval (and therefore stored)."""
    return cell.cell_type == "code" and CHECK_MARK in cell.source


def clean_notebook(nb):
    """Return ``nb`` without outputs, execution counts and volatile metadata (in place)."""
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            # nbval treats a cell without an execution count as never run and refuses stored
            # outputs there, so checked cells keep a constant count (stable diffs), others none.
            count = CHECKED_COUNT if is_checked(cell) else None
            cell.execution_count = count
            if count is None:
                cell.outputs = []
            for out in cell.outputs:
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = count
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NOTEBOOK_METADATA}
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    return nb


def serialize(nb) -> str:
    """The exact text ``nbformat.write`` puts in a file."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def is_clean(nb) -> bool:
    """Whether ``nb`` is already clean (cleaning it would change nothing)."""
    before = serialize(nb)
    return serialize(clean_notebook(nbformat.reads(before, as_version=4))) == before


def write_atomic(nb, path: Path) -> None:
    """Write ``nb`` to a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(serialize(nb))
    os.replace(tmp, path)


def execute(nb, cwd: Path, timeout: int = 600):
    """Run every cell of ``nb`` in a fresh kernel in the quick profile (for refreshing checked outputs)."""
    from nbclient import NotebookClient

    os.environ.setdefault("CNNLIB_PROFILE", "quick")
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def notebook_paths(paths) -> list[Path]:
    """Expand files and folders into the sorted list of ``.ipynb`` files (checkpoints skipped)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [q for q in sorted(p.rglob("*.ipynb")) if ".ipynb_checkpoints" not in q.parts]
        elif p.suffix == ".ipynb":
            found.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither a notebook nor a folder")
    return found


def clean(paths, run: bool = False) -> list[Path]:
    """Clean notebooks in place (after executing them if ``run``); return the ones that changed."""
    changed = []
    for path in notebook_paths(paths):
        text = path.read_text()
        nb = nbformat.reads(text, as_version=4)
        if run:
            execute(nb, path.parent)
        clean_notebook(nb)
        if serialize(nb) != text:
            write_atomic(nb, path)
            changed.append(path)
    return changed
