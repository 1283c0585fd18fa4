"""Grading submitted exercise notebooks: ``cnn-course grade SUBMISSION... --out grades.csv``.

Each submission runs in its own fresh IPython kernel (through nbclient) in a private temporary
folder, with ``CNNLIB_PROFILE=quick``. Several submissions run at once, one kernel each (``jobs``,
default one per CPU core; unless ``OMP_NUM_THREADS`` is set, each kernel gets cores/jobs threads).

What runs. The grader never trusts a submission's locked cells: it walks the submission's code
cells in order and runs

- answer cells (nbgrader ``solution``) as the student wrote them,
- the solution's version of every locked cell and graded test cell, hidden tests included,
  matched by ``grade_id`` (a test cell the student edited is replaced, one the student deleted is
  put back where it stands in the solution, one the student duplicated runs once),
- cells the student added, as written.

Scores. A graded test cell scores its points when it runs without an exception, else 0 with
the first line of the error (and the test line that raised it, hidden tests included). One row
per graded cell goes to the CSV, with a status: ``passed``; ``failed`` (an exception);
``timeout``; ``died`` (the kernel died); ``invalid`` (not a readable notebook, a notebook of no
known exercise, or a second file for the same student and exercise: one row per graded cell of
the exercise, or a single row when the exercise is unknown); ``error`` (the grader's or the
machine's fault, e.g. no kernel would start). Whatever one submission does, the batch goes on.

Time limits and broken kernels. Every cell has ``cell_timeout`` seconds and the submission as a
whole ``total_timeout`` seconds (kernel start-up included).

- A cell that runs too long is interrupted (KeyboardInterrupt) and the kernel goes on with
  the next cell, its state intact.
- If the kernel does not answer within a few seconds of the interrupt (the code ignores
  Ctrl-C), or the kernel dies (``os._exit``, a crash, out of memory), a fresh kernel starts and
  the cells that ran before are run again, minus every cell that timed out or killed a kernel,
  then grading goes on with the next cell. So the offending cell costs its own points (or, for
  an answer cell, the points of the tests that need it), never the rest of the notebook.
- If that replay itself fails, or the total time runs out, the tests not yet run score 0 with
  status ``died`` or ``timeout`` and a message that says so.

``SystemExit`` (``sys.exit()``) does not end an IPython kernel: it is an ordinary error. ``exit()``
and ``quit()`` do end it, and are treated like a kernel death.
The grader isolates submissions from one another and from the batch, not from your machine:
student code runs with your permissions, so grade untrusted work inside a container.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import hashlib
import json
import io
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from . import canary
from . import exercises as ex
from .sandbox import Limits, kernel_command, kernel_env, sandbox_problem

CELL_TIMEOUT = 60      # seconds per cell
TOTAL_TIMEOUT = 600    # seconds per submission, kernel start-up and restarts included
INTERRUPT_GRACE = 5    # seconds a kernel has to answer again after an interrupt
STARTUP_TIMEOUT = 60   # seconds for a kernel to come up
KERNEL_NAME = "python3"
STATUSES = ("passed", "failed", "timeout", "died", "tampered", "invalid", "error")
COLUMNS = ("student", "exercise", "grade_id", "points", "max_points", "status", "message")
MESSAGE_LENGTH = 240

_log = logging.getLogger(__name__)  # nbclient's complaints about timeouts are ours to report
_log.addHandler(logging.NullHandler())
_log.propagate = False


@dataclass(frozen=True)
class Row:
    """One graded cell of one submission: a line of the CSV."""
    student: str
    exercise: str
    grade_id: str
    points: float
    max_points: float
    status: str
    message: str = ""


@dataclass
class Result:
    """Everything the grader learnt about one submission."""
    path: Path
    student: str
    exercise: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def points(self) -> float:
        return sum(r.points for r in self.rows)

    @property
    def max_points(self) -> float:
        return sum(r.max_points for r in self.rows)


@dataclass(frozen=True)
class Exercise:
    """What the grader needs from a solution notebook."""
    name: str
    cells: tuple  # the solution's code cells that carry a grade_id, in order
    notebook: object = field(default=None, repr=False, compare=False)  # the solution, for the canary probe

    @property
    def tests(self) -> list:
        return [c for c in self.cells if ex.is_test(c)]


@dataclass(frozen=True)
class Step:
    """A code cell to run: ``kind`` is "test", "answer", "locked", "student" or "check" (the
    grader's own: the interpreter-hook baseline and check)."""
    kind: str
    source: str
    label: str
    grade_id: str | None = None
    points: float = 0
    twins: tuple = ()   # negative canaries (canary.py): sources a correct answer must fail


@dataclass(frozen=True)
class Submission:
    path: Path
    student: str
    exercise: str                                  # "" when unknown
    problem: str = ""                              # why it cannot be graded ("" when it can)
    notebook: object = field(default=None, repr=False, compare=False)  # as read, once


# ---------------------------------------------------------------------------- reading inputs

def load_exercises(solutions_dir) -> dict[str, Exercise]:
    """The gradable exercises of a course, by name; a broken solution notebook is an error."""
    found = {}
    for path in ex.solution_paths(solutions_dir):
        nb = nbformat.read(path, as_version=4)
        ex.check_solution(nb, path.name)
        cells = tuple(c for c in nb.cells if c.cell_type == "code" and ex.grade_id(c))
        found[ex.exercise_name(path)] = Exercise(ex.exercise_name(path), cells, nb)
    if not found:
        raise ValueError(f"no solution notebooks (*.ipynb) in {solutions_dir}: nothing to grade against")
    return found


MAX_NOTEBOOK_BYTES = 32 << 20   # a submission larger than this is not read
MAX_DEPTH = 8                   # folders below a submission argument that are searched


def _walk(folder: Path) -> list[Path]:
    """``*.ipynb`` entries below ``folder``, sorted: symlinked folders are not followed, nor
    folders deeper than MAX_DEPTH or checkpoints (a non-regular entry is returned, and refused
    by ``_read_notebook``)."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirs if d != ".ipynb_checkpoints")
        found += [Path(root) / n for n in names if n.endswith(".ipynb")]
    return sorted(found)


_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x1f\x7f-\x9f]")


def _plain(text: str) -> str:
    """``text`` without terminal escapes and control characters (newlines become spaces)."""
    return " ".join(_CONTROL.sub(" ", text).split())


def _read_notebook(path: Path):
    """The submission as a notebook, or a ValueError saying why it is not one: only a regular
    file (not a symlink, FIFO or device) of at most MAX_NOTEBOOK_BYTES is opened."""
    try:
        info = path.lstat()
    except OSError as err:
        raise ValueError(f"cannot read the file: {_first_line(err)}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise ValueError(f"not graded: {kind} (hand in the notebook itself)")
    if info.st_size > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"not graded: {info.st_size / 2**20:.0f} MiB is more than the "
                         f"{MAX_NOTEBOOK_BYTES >> 20} MiB a notebook may have")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_NOTEBOOK_BYTES + 1)
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        cells = nb["cells"]
        if not isinstance(cells, list):
            raise ValueError("'cells' is not a list")
        for cell in cells:
            if not isinstance(cell.get("source"), str) or not isinstance(cell.get("cell_type"), str):
                raise ValueError("a cell has no source or no cell_type")
    except Exception as err:  # anything a broken file can raise: JSON, encoding, schema, ...
        raise ValueError(f"not a readable notebook: {_first_line(err)}") from None
    return nb


def _graded_ids(nb) -> set[str]:
    return {ex.grade_id(c) for c in nb.cells if ex.grade_id(c)}


def _match_exercise(path: Path, below: list[str], exercises: dict[str, Exercise], nb) -> str:
    """The exercise a submission belongs to: named in its file name, else in a folder name
    between the argument and the file, else the only exercise whose answer and test cells
    share grade ids with it; "" when none fits."""
    names = sorted(exercises, key=len, reverse=True)
    for text in [path.stem, *below]:
        for name in names:
            if name in text:
                return name
    if nb is None:
        return ""
    ids = _graded_ids(nb)
    overlap = {name: len(ids & {ex.grade_id(c) for c in e.cells if not _is_locked(c)})
               for name, e in exercises.items()}
    best = max(overlap.values())
    winners = [n for n, k in overlap.items() if k == best]
    return winners[0] if best > 0 and len(winners) == 1 else ""


def _student_id(path: Path, below: list[str], exercise: str, folder: str = "") -> str:
    """The nearest folder between the argument and the file (``alice/01_evolution.ipynb``), else
    the file name without the exercise name (``alice_01_evolution.ipynb``), else the folder given
    as the argument (``cnn-course grade student1/`` with ``student1/01_evolution.ipynb``); a
    folder named after the exercise does not count (``01_evolution/alice.ipynb``)."""
    for text in [*below, path.stem, folder]:
        rest = (text.replace(exercise, "") if exercise else text).strip(" _-.")
        if rest:
            return rest
    return path.stem


def find_submissions(paths, exercises: dict[str, Exercise], student: str | None = None) -> list[Submission]:
    """Expand files and folders into submissions, each with its student id and exercise.

    Folders are searched recursively for ``*.ipynb`` (checkpoints skipped); a file named
    explicitly is graded whatever its name. Two files for the same student and exercise are
    both ``invalid`` (which one counts is the instructor's call)."""
    files = []
    for arg in map(Path, paths):
        if arg.is_dir() and not arg.is_symlink():
            for p in _walk(arg):
                files.append((p, [q.name for q in p.relative_to(arg).parents if q.name], arg.resolve().name))
        elif arg.exists() or arg.is_symlink():
            files.append((arg, [], ""))
        else:
            raise FileNotFoundError(f"no such file or folder: {arg}")
    if student is not None and len(files) != 1:
        raise ValueError(f"--student names one student but {len(files)} submissions were given")

    subs, seen_paths = [], set()
    for path, below, folder in files:
        if path.resolve() in seen_paths:
            continue
        seen_paths.add(path.resolve())
        try:
            nb, problem = _read_notebook(path), ""
        except ValueError as err:
            nb, problem = None, str(err)
        below = [_plain(b) for b in below]
        exercise = _match_exercise(path, below, exercises, nb)
        who = _plain(student or _student_id(path, below, exercise, _plain(folder)))
        if not problem and not exercise:
            problem = (f"unknown exercise: neither the name {path.name!r} nor its graded cells match "
                       f"a solution ({', '.join(sorted(exercises))})")
        subs.append(Submission(path, who, exercise, problem, None if problem else nb))
    return _flag_duplicates(subs)


def _flag_duplicates(subs: list[Submission]) -> list[Submission]:
    """Two gradable files for one student and exercise: neither is graded (which one counts is
    the instructor's call)."""
    groups = {}
    for s in subs:
        if not s.problem:
            groups.setdefault((s.student, s.exercise), []).append(s.path.name)
    out = []
    for s in subs:
        names = groups.get((s.student, s.exercise), [])
        if not s.problem and len(names) > 1:
            s = Submission(s.path, s.student, s.exercise,
                           f"duplicate: {s.student} handed in {len(names)} files for {s.exercise} "
                           f"({', '.join(names)}); keep one, or grade each with --student")
        out.append(s)
    return out


# ---------------------------------------------------------------------------- what to run

def _is_locked(cell) -> bool:
    return not ex.is_answer(cell) and not ex.is_test(cell)


def plan(exercise: Exercise, nb) -> list[Step]:
    """The code cells to run for a submission, in order (see the module docstring)."""
    by_id = {ex.grade_id(c): (i, c) for i, c in enumerate(exercise.cells)}
    steps: list[tuple[int | None, Step]] = []  # (index of the solution cell or None, step)
    used = set()
    for n, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        gid = ex.grade_id(cell)
        if gid in by_id:
            index, sol = by_id[gid]
            if ex.is_answer(sol):
                steps.append((index, Step("answer", cell.source, gid)))
                continue
            if gid not in used:
                used.add(gid)
                steps.append((index, _solution_step(sol)))
            continue
        steps.append((None, Step("student", cell.source, f"added cell {n + 1}")))
    for index, sol in enumerate(exercise.cells):  # deleted locked and test cells go back in
        if ex.is_answer(sol) or ex.grade_id(sol) in used:
            continue
        at = next((k for k, (i, _) in enumerate(steps) if i is not None and i > index), len(steps))
        steps.insert(at, (index, _solution_step(sol)))
    return [s for _, s in steps]


def guard(steps: list[Step], twins: dict[str, tuple], hooks: tuple[str, str] | None) -> list[Step]:
    """``steps`` with the integrity checks: the hook baseline first and a hook check before every
    test (``hooks``: canary.hook_cells(), or None), and each test's ``twins``."""
    out = [Step("check", hooks[0], "grader: hook baseline")] if hooks else []
    for step in steps:
        if step.kind == "test":
            if hooks:
                out.append(Step("check", hooks[1], f"grader: hook check before {step.grade_id}"))
            step = dataclasses.replace(step, twins=tuple(twins.get(step.grade_id, ())))
        out.append(step)
    return out


def _solution_step(cell) -> Step:
    gid = ex.grade_id(cell)
    if ex.is_test(cell):
        return Step("test", cell.source, gid, gid, ex.nbgrader(cell)["points"])
    return Step("locked", cell.source, gid)


# ---------------------------------------------------------------------------- running a kernel

@dataclass(frozen=True)
class Outcome:
    """How one cell ended: "ok", "error", "timeout" or "died" (``ename`` "exit()" when the cell
    asked the kernel to quit)."""
    state: str
    ename: str = ""
    evalue: str = ""
    traceback: tuple = ()


class _QuietClient(NotebookClient):
    """nbclient without stored outputs: only the execute reply matters to the grader, and a
    cell that prints in a loop must not fill the grader's memory."""

    def output(self, outs, msg, display_id, cell_index):
        return None


class _Kernel:
    """One IPython kernel driven cell by cell through nbclient, in its own sandbox (see
    ``sandbox.py``): its connection file and Unix sockets in a fresh folder under ``box/run``,
    working folder ``box/work``."""

    def __init__(self, box: Path, env: dict, limits: Limits, sandboxed: bool):
        self.box, self.env, self.limits, self.sandboxed = box, env, limits, sandboxed
        self.km = self.client = None
        self._reply = None

    async def start(self) -> None:
        run = Path(tempfile.mkdtemp(prefix="k", dir=self.box / "run"))
        self.km = AsyncKernelManager(transport="ipc", ip=str(run / "socket"),
                                     connection_file=str(run / "connection.json"))
        self.km._kernel_spec = KernelSpec(
            argv=kernel_command(self.box, self.limits, sandbox=self.sandboxed), language="python",
            display_name="submission", interrupt_mode="message" if self.sandboxed else "signal")
        await self.km.start_kernel(env=self.env, cwd=str(self.box / "work"),
                                   stdout=subprocess.DEVNULL, stderr=None if os.environ.get("CNN_COURSE_DEBUG") else subprocess.DEVNULL)
        self.client = _QuietClient(nbformat.v4.new_notebook(), km=self.km, allow_errors=True,
                                  startup_timeout=STARTUP_TIMEOUT, log=_log,
                                  on_cell_executed=self._on_executed)
        await self.client.async_start_new_kernel_client()

    def _on_executed(self, cell, cell_index, execute_reply):
        self._reply = execute_reply

    async def run(self, source: str, timeout: float) -> Outcome:
        if not source.strip():
            return Outcome("ok")
        cell = nbformat.v4.new_code_cell(source)
        self.client.nb.cells[:] = [cell]
        self.client.timeout = max(1, int(timeout))
        self._reply = None
        try:
            await self.client.async_execute_cell(cell, 0)
        except CellTimeoutError:
            return Outcome("timeout")
        except DeadKernelError:
            # nbclient turns a cancellation (the grader stopping) into DeadKernelError: undo that
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 0)():
                raise asyncio.CancelledError from None
            return Outcome("died")
        content = (self._reply or {}).get("content", {})
        if any(p.get("source") == "ask_exit" and not p.get("keepkernel")
               for p in content.get("payload", ()) if isinstance(p, dict)):
            return Outcome("died", "exit()")  # exit()/quit(): the kernel stops 0.1 s after replying
        if content.get("status") == "ok":
            return Outcome("ok")
        return Outcome("error", str(content.get("ename", "error")), str(content.get("evalue", "")),
                       tuple(content.get("traceback", ())))

    async def interrupt(self, grace: float) -> bool:
        """Interrupt the running cell; True if the kernel answers again within ``grace`` s."""
        try:
            await self.km.interrupt_kernel()
        except Exception:  # the kernel is gone
            return False
        return (await self.run("pass", grace)).state == "ok"

    async def stop(self) -> None:
        try:
            if self.client is not None and self.client.kc is not None:
                self.client.kc.stop_channels()
            if self.km is not None:
                await self.km.shutdown_kernel(now=True)
        except Exception:  # already gone: nothing to clean up
            pass
        self.km = self.client = None


def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_message(outcome: Outcome, source: str) -> str:
    """``AssertionError: (3, 1) (line 4: assert f(3) == 1)``: the error's first line and the
    cell line that raised it."""
    first = outcome.evalue.strip().splitlines()[0] if outcome.evalue.strip() else ""
    message = f"{outcome.ename}: {first}" if first else outcome.ename
    frames = _ANSI.sub("", "\n".join(outcome.traceback))
    m = re.search(r"Cell In\[\d+\], line (\d+)", frames)
    lines = source.splitlines()
    if m and 0 < int(m.group(1)) <= len(lines):
        message += f" (line {m.group(1)}: {lines[int(m.group(1)) - 1].strip()})"
    return _short(message)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LENGTH else text[:MESSAGE_LENGTH - 1] + "…"


@dataclass(frozen=True)
class Isolation:
    """How each kernel is kept apart: in a bubblewrap sandbox (``sandboxed``) or, where that is not
    available, only under the resource ``limits``; ``threads`` per kernel."""
    sandboxed: bool
    limits: Limits = Limits()
    threads: int = 1

    def env(self, box: Path) -> dict:
        if self.sandboxed:  # the kernel's own /tmp, HOME inside it
            return kernel_env("/tmp/home", "/tmp", threads=self.threads)
        return kernel_env(str(box / "home"), str(box / "tmp"), threads=self.threads)


@contextlib.contextmanager
def _box():
    """A private folder for one submission (work, run, home, tmp), removed afterwards however
    deep or strange what the student left in it."""
    box = Path(tempfile.mkdtemp(prefix="cnn-course-grade-"))
    try:
        for sub in ("work", "run", "home", "tmp"):
            (box / sub).mkdir()
        yield box
    finally:
        _remove(box)


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except (OSError, RecursionError):  # e.g. thousands of nested folders: rm has no recursion limit
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=120, check=False,
                       stdout=subprocess.DEVNULL, stderr=None if os.environ.get("CNN_COURSE_DEBUG") else subprocess.DEVNULL)


async def run_steps(steps: list[Step], *, box: Path, isolation: Isolation, cell_timeout: float,
                    total_timeout: float, probe: dict | None = None
                    ) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Run ``steps`` in a kernel under the time limits; return ``{grade_id: (status, message)}``
    for the test steps and notes about timeouts and restarts.

    After a test passes, its twins run: one that does not fail means the kernel accepts wrong
    assertions, and a "check" step that fails names what it saw; either ends the run with every
    test ``tampered``. With ``probe`` (a dict, for the reference solution) nothing is flagged:
    ``probe[grade_id]`` gets each twin's outcome state and ``probe["check"]`` the checks' states."""
    deadline = time.monotonic() + total_timeout
    results, notes = {}, []
    tampered = ""
    bad: set[int] = set()  # steps that timed out or killed a kernel: never run again
    kernel = None

    def remaining() -> float:
        return deadline - time.monotonic()

    def finish(status: str, message: str, start: int) -> None:
        for s in steps[start:]:
            if s.kind == "test" and s.grade_id not in results:
                results[s.grade_id] = (status, message)

    async def fresh_kernel(upto: int) -> tuple[str, str]:
        """Start a kernel and replay steps[:upto] minus the bad ones; ("", "") or (status, why not)."""
        nonlocal kernel
        if kernel is not None:
            await kernel.stop()
        kernel = _Kernel(box, isolation.env(box), isolation.limits, isolation.sandboxed)
        if remaining() <= 0:
            return "timeout", "the time limit ran out before a fresh kernel could start"
        try:
            await asyncio.wait_for(kernel.start(), timeout=min(STARTUP_TIMEOUT, remaining()))
        except asyncio.TimeoutError:
            if remaining() <= 0:
                return "timeout", "the time limit ran out while a fresh kernel was starting"
            return "error", f"a {KERNEL_NAME} kernel did not start within {STARTUP_TIMEOUT} s"
        except Exception as err:
            return "error", f"could not start a {KERNEL_NAME} kernel: {type(err).__name__}: {_first_line(err)}"
        for j in range(upto):
            if j in bad:
                continue
            if remaining() <= 0:
                return "timeout", "the time limit ran out while re-running earlier cells after a restart"
            outcome = await kernel.run(steps[j].source, min(cell_timeout, remaining()))
            if outcome.state in ("timeout", "died"):
                what = "timed out" if outcome.state == "timeout" else "killed the kernel"
                return "died", f"{steps[j].label} {what} when re-run after a restart"
        return "", ""

    try:
        need_kernel = True
        for i, step in enumerate(steps):
            if need_kernel:
                status, problem = await fresh_kernel(i)
                if problem:
                    finish(status, f"not run: {problem}", i)
                    notes.append(problem)
                    break
                need_kernel = False
            if remaining() <= 0:
                finish("timeout", f"not run: the submission's {total_timeout:g} s time limit ran out", i)
                notes.append(f"the {total_timeout:g} s limit for the whole submission ran out")
                break
            per_cell = cell_timeout <= remaining()
            outcome = await kernel.run(step.source, min(cell_timeout, remaining()))
            if outcome.state == "timeout":
                bad.add(i)
                recovered = await kernel.interrupt(min(INTERRUPT_GRACE, max(1.0, remaining())))
                how = "interrupted" if recovered else "did not stop when interrupted; kernel restarted"
                limit = (f"the {cell_timeout:g} s time limit per cell" if per_cell
                         else f"the submission's {total_timeout:g} s time limit")
                notes.append(f"{step.label} ran past {limit}: {how}")
                need_kernel = not recovered
                message = f"ran past {limit} ({how})"
            elif outcome.state == "died":
                bad.add(i)
                how = "ended the kernel with exit()" if outcome.ename == "exit()" else "killed the kernel"
                notes.append(f"{step.label} {how}; restarted it and re-ran the cells before")
                need_kernel = True
                message = ("this cell ended the kernel with exit() or quit()" if outcome.ename == "exit()"
                           else "the kernel died running this cell (os._exit, a crash or out of memory)")
            elif outcome.state == "error":
                message = _error_message(outcome, step.source)
            else:
                message = ""
            if step.kind == "check":
                if probe is not None:
                    probe.setdefault("check", []).append(outcome.state)
                elif outcome.state != "ok":
                    seen = message if outcome.ename == "RuntimeError" and "tampering" in message else \
                        f"the grader's interpreter check did not complete ({outcome.state}: {message})"
                    tampered = f"{step.label}: {seen}"
                    break
            if step.kind == "test":
                status = {"ok": "passed", "error": "failed"}.get(outcome.state, outcome.state)
                results[step.grade_id] = (status, message)
                if status == "passed" and step.twins:
                    states = []
                    for twin in step.twins:
                        states.append((await kernel.run(twin, min(cell_timeout, max(1.0, remaining())))).state)
                        if states[-1] != "error" and (probe is None or states[-1] == "died"):
                            break
                    if probe is not None:
                        probe[step.grade_id] = states
                        need_kernel = need_kernel or "died" in states or "timeout" in states
                    elif states[-1] != "error":
                        tampered = (f"after {step.grade_id} passed, a test built to fail on a correct answer "
                                    f"(negative canary {len(states)} of {len(step.twins)}) did not fail "
                                    f"({states[-1]}): the kernel accepts wrong assertions")
                        break
    finally:
        if kernel is not None:
            await kernel.stop()
    if tampered:
        notes.append(f"tampered: {tampered}")
        results = {s.grade_id: ("tampered", _short(tampered)) for s in steps if s.kind == "test"}
    return results, notes


# ---------------------------------------------------------------------------- grading

class GradingWarning(UserWarning):
    """Something the instructor should know about a batch (it is graded anyway)."""


class SandboxWarning(GradingWarning):
    """Grading without the bubblewrap sandbox: only resource limits protect the machine."""


def isolation(jobs: int, sandbox: bool | None = None, limits: Limits = Limits()) -> Isolation:
    """The isolation for a batch: ``sandbox=None`` sandboxes where bubblewrap works and warns
    once where it does not; ``True`` requires it; ``False`` grades with limits only."""
    threads = max(1, _cores() // max(1, jobs))
    problem = sandbox_problem() if sandbox is not False else ""
    if problem and sandbox:
        raise RuntimeError(f"cannot sandbox the kernels: {problem}")
    if problem:
        warnings.warn(f"grading WITHOUT a sandbox ({problem}): student code can read and write what "
                      f"you can; only resource limits apply. Grade untrusted work in a container.",
                      SandboxWarning, stacklevel=3)
    return Isolation(sandboxed=sandbox is not False and not problem, limits=limits, threads=threads)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _rows(sub: Submission, exercise: Exercise | None, outcomes: dict, status="", message="") -> list[Row]:
    if exercise is None:
        return [Row(sub.student, sub.exercise, "", 0, 0, status, message)]
    rows = []
    for cell in exercise.tests:
        gid, points = ex.grade_id(cell), ex.nbgrader(cell)["points"]
        st, msg = outcomes.get(gid, (status, message))
        rows.append(Row(sub.student, sub.exercise, gid, points if st == "passed" else 0, points, st, msg))
    return rows


@dataclass(frozen=True)
class Guard:
    """An exercise's integrity checks for one batch: each test's twins that the reference
    solution fails, and the hook cells (None where the reference itself trips the check)."""
    twins: dict
    hooks: tuple | None


NO_GUARD = Guard({}, None)


async def probe(exercise: Exercise, isolation: Isolation, *, cell_timeout: float = CELL_TIMEOUT,
                total_timeout: float = TOTAL_TIMEOUT, seed: int | None = None) -> tuple[Guard, list[str]]:
    """Draw the twins of every test (random per batch), run them on the reference solution and
    keep those it fails; return the guard and notes for the instructor."""
    twins = {ex.grade_id(c): tuple(canary.twins(c.source, seed)) for c in exercise.tests}
    hooks = canary.hook_cells(seed)
    states: dict = {}
    with _box() as box:
        results, _ = await run_steps(guard(plan(exercise, exercise.notebook), twins, hooks), box=box,
                                     isolation=isolation, cell_timeout=cell_timeout,
                                     total_timeout=total_timeout, probe=states)
    notes = [f"{exercise.name}: the solution does not pass {gid} ({st}: {msg}); no canaries for it"
             for gid, (st, msg) in results.items() if st != "passed"]
    useful = {gid: tuple(t for t, st in zip(twins[gid], states.get(gid, ())) if st == "error")
              for gid in twins if results.get(gid, ("",))[0] == "passed"}
    hooks_ok = bool(states.get("check")) and all(st == "ok" for st in states["check"])
    if not hooks_ok:
        notes.append(f"{exercise.name}: the solution trips the interpreter-hook check; grading without it")
    return Guard(useful, hooks if hooks_ok else None), notes


async def grade_submission(sub: Submission, exercises: dict[str, Exercise], *, isolation: Isolation,
                           cell_timeout: float = CELL_TIMEOUT, total_timeout: float = TOTAL_TIMEOUT,
                           checks: Guard = NO_GUARD) -> Result:
    """Grade one submission; never raises for anything the submission does."""
    start = time.monotonic()
    exercise = exercises.get(sub.exercise)
    if sub.problem:
        return Result(sub.path, sub.student, sub.exercise, _rows(sub, exercise, {}, "invalid", _short(sub.problem)),
                      [sub.problem])
    try:
        steps = guard(plan(exercise, sub.notebook), checks.twins, checks.hooks)
        with _box() as box:
            outcomes, notes = await run_steps(steps, box=box, isolation=isolation, cell_timeout=cell_timeout,
                                              total_timeout=total_timeout)
        rows = _rows(sub, exercise, outcomes, "error", "not run: grading stopped early")
    except Exception as err:  # a fault of the grader or the machine: this submission only
        notes = [f"grader error: {type(err).__name__}: {_first_line(err)}"]
        rows = _rows(sub, exercise, {}, "error", _short(notes[0]))
    return Result(sub.path, sub.student, sub.exercise, rows, notes, time.monotonic() - start)


async def grade_all(subs: list[Submission], exercises: dict[str, Exercise], *, jobs: int,
                    isolation: Isolation, cell_timeout: float = CELL_TIMEOUT,
                    total_timeout: float = TOTAL_TIMEOUT, on_result=None) -> list[Result]:
    """Grade submissions ``jobs`` at a time (one kernel each); results in input order. Each
    exercise's canaries are first probed on its reference solution (``probe``)."""
    gate = asyncio.Semaphore(jobs)
    used = sorted({s.exercise for s in subs if not s.problem and s.exercise in exercises})

    async def probed(name):
        async with gate:
            return await probe(exercises[name], isolation, cell_timeout=cell_timeout, total_timeout=total_timeout)

    guards = dict(zip(used, await asyncio.gather(*(probed(n) for n in used))))
    for name, (_, notes) in guards.items():
        for note in notes:
            warnings.warn(note, GradingWarning, stacklevel=2)

    async def one(sub):
        async with gate:
            g = guards.get(sub.exercise, (NO_GUARD, []))[0]
            result = await grade_submission(sub, exercises, isolation=isolation, cell_timeout=cell_timeout,
                                            total_timeout=total_timeout, checks=g)
        if on_result:
            on_result(sub, result)
        return result

    return list(await asyncio.gather(*(one(s) for s in subs)))


def grade(paths, out="grades.csv", *, solutions_dir, student: str | None = None, jobs: int | None = None,
          cell_timeout: float = CELL_TIMEOUT, total_timeout: float = TOTAL_TIMEOUT,
          sandbox: bool | None = None, limits: Limits = Limits(), progress=None) -> list[Result]:
    """Grade submissions into ``out`` (CSV) and the summary beside it (``.md``); return the results.
    ``sandbox``: see ``isolation``."""
    if cell_timeout <= 0 or total_timeout <= 0:
        raise ValueError("time limits must be positive numbers of seconds")
    if summary_path(out) == Path(out):
        raise ValueError(f"--out {out}: the CSV needs a name other than its .md summary (e.g. grades.csv)")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    exercises = load_exercises(solutions_dir)
    subs = find_submissions(paths, exercises, student)
    if not subs:
        raise ValueError(f"no submissions (*.ipynb) found in {', '.join(map(str, paths))}")
    journal = Journal(journal_path(out))
    done = journal.load(subs)             # graded by an earlier, interrupted run of this batch
    todo = [s for s in subs if journal.key(s) not in done]
    jobs = max(1, min(jobs or _cores(), max(1, len(todo))))

    def record(sub: Submission, result: Result) -> None:
        done[journal.key(sub)] = result
        journal.append(sub, result)
        if progress:
            progress(result)

    def report(interrupted: bool) -> list[Result]:
        results = [done.get(journal.key(s)) or _not_graded(s, exercises.get(s.exercise)) for s in subs]
        write_csv(results, out, exercises)
        write_summary(results, summary_path(out), exercises, cell_timeout=cell_timeout,
                      total_timeout=total_timeout, interrupted=interrupted)
        return results

    coro = grade_all(todo, exercises, jobs=jobs, isolation=isolation(jobs, sandbox, limits),
                     cell_timeout=cell_timeout, total_timeout=total_timeout, on_result=record)
    try:
        with _terminate_as_interrupt():
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(coro)
            else:  # called from a notebook, whose loop is already running
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, coro).result()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what is graded, say how to go on
        report(interrupted=True)
        raise
    results = report(interrupted=False)
    journal.remove()
    return results


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM ends grading like Ctrl-C does (the finished submissions are kept)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _not_graded(sub: Submission, exercise: Exercise | None) -> Result:
    why = "not graded: the grader was interrupted (run the same command again to resume)"
    return Result(sub.path, sub.student, sub.exercise, _rows(sub, exercise, {}, "error", why), [why])


def journal_path(csv_path) -> Path:
    p = Path(csv_path)
    return p.with_name(f".{p.name}.journal")


class Journal:
    """An append-only record of finished submissions beside the CSV, one JSON line each, flushed
    to disk as each submission finishes: a batch killed half-way resumes where it stopped (a file
    is regraded if its content changed). Removed when the batch completes."""

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def key(sub: Submission) -> tuple[str, str]:
        try:
            digest = hashlib.sha256(sub.path.read_bytes()).hexdigest() if not sub.problem else sub.problem
        except OSError:
            digest = ""
        return str(sub.path), digest

    def load(self, subs: list[Submission]) -> dict:
        wanted = {self.key(s): s for s in subs}
        done = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return done
        for line in lines:
            try:
                d = json.loads(line)
                key = (d["path"], d["digest"])
                if key in wanted:
                    done[key] = Result(Path(d["path"]), d["student"], d["exercise"],
                                       [Row(**r) for r in d["rows"]], list(d["notes"]), float(d["seconds"]))
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash
                continue
        return done

    def append(self, sub: Submission, result: Result) -> None:
        path, digest = self.key(sub)
        line = json.dumps(dict(path=path, digest=digest, student=result.student, exercise=result.exercise,
                               rows=[dataclasses.asdict(r) for r in result.rows], notes=result.notes,
                               seconds=result.seconds))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # e.g. a full disk: grading goes on, only resuming is lost
            warnings.warn(f"could not record {path} in {self.path}: {err}", GradingWarning, stacklevel=2)

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------- reports

def summary_path(csv_path) -> Path:
    return Path(csv_path).with_suffix(".md")


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _sorted_rows(results: list[Result], exercises: dict[str, Exercise]) -> list[Row]:
    order = {(name, ex.grade_id(c)): i for name, e in exercises.items() for i, c in enumerate(e.tests)}
    rows = [r for res in results for r in res.rows]
    return sorted(rows, key=lambda r: (r.student, r.exercise, order.get((r.exercise, r.grade_id), -1)))


def _num(x: float) -> str:
    return f"{x:g}"


def write_csv(results: list[Result], path, exercises: dict[str, Exercise]) -> Path:
    """One row per student × exercise × graded cell, sorted; written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in _sorted_rows(results, exercises):
        writer.writerow([_csv_cell(r.student), _csv_cell(r.exercise), _csv_cell(r.grade_id), _num(r.points),
                         _num(r.max_points), r.status, _csv_cell(r.message)])
    _write_text_atomic(Path(path), buf.getvalue())
    return Path(path)


def read_csv(path) -> list[Row]:
    """The rows of a grades CSV written by ``write_csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        return [Row(d["student"], d["exercise"], d["grade_id"], float(d["points"]), float(d["max_points"]),
                    d["status"], d["message"]) for d in csv.DictReader(f)]


def _cell(text: str) -> str:
    """Text for a Markdown table cell or heading: one line, no HTML, Markdown's marks escaped."""
    return re.sub(r"([\\`*{}\[\]<>#|~])", r"\\\1", _plain(text))


def _csv_cell(text: str) -> str:
    """One line, and never a spreadsheet formula (a leading =, +, -, @ gets a quote)."""
    text = _plain(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def write_summary(results: list[Result], path, exercises: dict[str, Exercise], *,
                  cell_timeout: float = CELL_TIMEOUT, total_timeout: float = TOTAL_TIMEOUT,
                  interrupted: bool = False) -> Path:
    """A readable report: totals per student and exercise, then each student's cells."""
    results = sorted(results, key=lambda r: (r.student, r.exercise))
    names = sorted({r.exercise for r in results}, key=lambda n: (n == "", n))  # unknown last
    lines = ["# Grades", "",
             f"{len(results)} submission(s), graded with `cnn-course grade` (limits: {cell_timeout:g} s "
             f"per cell, {total_timeout:g} s per submission). Statuses: {', '.join(STATUSES)}.", "",
             *(["**Interrupted**: the submissions marked `error` were not graded; run the same command "
                "again to grade them (the others are kept).", ""] if interrupted else []),
             "| student | " + " | ".join(n or "(unknown)" for n in names) + " | total |",
             "|---|" + "---|" * (len(names) + 1)]
    for student in sorted({r.student for r in results}):
        mine = [r for r in results if r.student == student]
        cells = []
        for name in names:
            got = [r for r in mine if r.exercise == name]
            cells.append(" + ".join(f"{_num(r.points)} / {_num(r.max_points)}" for r in got) or "—")
        most = sum(max(r.max_points for r in mine if r.exercise == n) for n in {r.exercise for r in mine})
        total = f"{_num(sum(r.points for r in mine))} / {_num(most)}"  # a duplicate hand-in counts once
        lines.append(f"| {_cell(student)} | " + " | ".join(cells) + f" | {total} |")
    for student in sorted({r.student for r in results}):
        lines += ["", f"## {_cell(student)}"]
        for res in (r for r in results if r.student == student):
            lines += ["", f"### {_cell(res.exercise) or '(unknown exercise)'}: {_num(res.points)} / "
                          f"{_num(res.max_points)}", "", f"File: {_cell(str(res.path))} ({res.seconds:.1f} s)", ""]
            lines += [f"- {_cell(note)}" for note in res.notes] + ([""] if res.notes else [])
            lines += ["| cell | points | status | message |", "|---|---|---|---|"]
            lines += [f"| {_cell(r.grade_id) or '—'} | {_num(r.points)} / {_num(r.max_points)} | {r.status} | "
                      f"{_cell(r.message)} |" for r in res.rows]
    _write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return Path(path)
