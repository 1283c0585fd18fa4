"""Lectures executed headlessly: ``cnn-course run 04 --profile full``.

An instructor runs the full profile once on a GPU box, without JupyterLab: each lecture is
executed top to bottom by nbclient in a fresh kernel (over IPC, no TCP port), one line printed
per code cell as it finishes, the executed notebook written to ``--out``, and every trained
model and result left in the result cache — from which ``cnn-course cache export`` packs them
for a class. A failing cell names the lecture, the cell and the error; the run goes on with the
next lecture and exits non-zero at the end. The course website and the fidelity scoreboard
execute their lectures through the same ``execute``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Mapping

import nbformat


class LectureError(RuntimeError):
    """A lecture failed: ``str(err)`` names the notebook, the cell and the error, ``notebook``
    holds it as far as it ran (the failing cell with its traceback)."""

    def __init__(self, message: str, notebook=None):
        super().__init__(message)
        self.notebook = notebook


def lecture_paths(folder: Path, numbers=()) -> list[Path]:
    """The lectures in ``folder`` by number ("4", "04") or stem ("04_nas"), in the order given;
    all of them (``NN_*.ipynb``, sorted) if none are. An unknown one lists the known ones."""
    known = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not numbers:
        return known
    paths, unknown = [], []
    for n in numbers:
        match = [p for p in known if p.stem == n or p.stem[:2] == str(n).zfill(2)]
        paths += match
        unknown += [] if match else [str(n)]
    if unknown:
        raise LectureError(f"no lecture {', '.join(unknown)}; the lectures are "
                           f"{', '.join(p.stem[:2] for p in known)}")
    return paths


@contextmanager
def _environment(env: Mapping[str, str]):
    """``os.environ`` updated with ``env`` (the kernel inherits it), restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: Path, *, env: Mapping[str, str] | None = None, timeout: float | None = 600,
            progress: Callable[[int, int, float], None] | None = None) -> nbformat.NotebookNode:
    """``path`` run top to bottom in a fresh kernel started in its folder, with ``env`` added to
    the kernel's environment (e.g. ``CNNLIB_PROFILE``); ``timeout`` is per cell (``None``: no
    limit). ``progress(done, total, seconds)`` is called after each code cell. Returns the
    executed notebook; a failing cell (or a timeout, a dead kernel) raises ``LectureError``."""
    from jupyter_client import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    started = [time.perf_counter()]

    def cell_started(cell, cell_index, **_):
        started[0] = time.perf_counter()

    def cell_done(cell, cell_index, **_):
        if progress is not None:
            progress(code.index(cell_index) + 1, len(code), time.perf_counter() - started[0])

    sockets = tempfile.mkdtemp(prefix="cnn-course-kernel-")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "kernel"))
    client = NotebookClient(nb, km=km, timeout=timeout, on_cell_execute=cell_started,
                            on_cell_executed=cell_done,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        with _environment(dict(env or {})):
            client.execute()
    except CellExecutionError as err:
        index = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and
                      any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        where = f"cell {index + 1}" if index is not None else "a cell"
        raise LectureError(f"{path.name}: {where} failed: {err.ename}: {err.evalue}".strip(),
                           nb) from None
    except Exception as err:  # a timeout, a dead kernel
        raise LectureError(f"{path.name}: {type(err).__name__}: {err}", nb) from None
    finally:
        if km.has_kernel:  # a client given its manager leaves the kernel running
            km.shutdown_kernel(now=True)
        shutil.rmtree(sockets, ignore_errors=True)
    return nb


def run(paths: list[Path], out: Path, *, profile: str | None = None, dataset: str | None = None,
        timeout: float | None = None, echo: Callable[[str], None] = print) -> list[str]:
    """Execute each lecture in ``paths`` (in ``profile`` on ``dataset``; default: the automatic
    choice), printing a line per code cell and writing the executed notebook to ``out``.
    Returns the failures' messages (empty: all ran)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in (("CNNLIB_PROFILE", profile), ("CNNLIB_DATASET", dataset)) if v}
    failures = []
    for path in paths:
        start = time.perf_counter()

        def progress(done, total, seconds, name=path.stem):
            echo(f"{name}  cell {done:>2}/{total}  {seconds:7.1f} s   "
                 f"({time.perf_counter() - start:.0f} s in all)")

        try:
            nb = execute(path, env=env, timeout=timeout, progress=progress)
            status = f"ran in {time.perf_counter() - start:.0f} s"
        except LectureError as err:
            nb, status = err.notebook, f"FAILED: {err}"
            failures.append(str(err))
        if nb is not None:
            nbformat.write(nb, out / path.name)
        echo(f"{path.stem}: {status} → {out / path.name}")
    return failures
