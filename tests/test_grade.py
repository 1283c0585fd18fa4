"""The grader: fair scores, hidden tests from the solution, and a batch that no submission can sink.

Most tests grade a tiny synthetic exercise (no torch import in its kernels, so each submission
takes a couple of seconds); the full-marks / zero-marks invariants also run on the real
exercises of the course.
"""
import asyncio
import copy
import csv
import hashlib
from pathlib import Path

import nbformat
import pytest

from cnnlib.course import authoring as A
from cnnlib.course import cli, exercises, grade

ROOT = Path(__file__).resolve().parents[1]
TOY = "42_toy"
CELL_TIMEOUT = 4  # generous for cells that take milliseconds, short for the ones that hang


def _toy_solution():
    return A.notebook([
        A.markdown("# Toy exercise 42"),
        A.code("import os\nassert os.environ['CNNLIB_PROFILE'] == 'quick'\nBASE = 10", grade_id="setup"),
        A.answer("double", "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
        A.graded_test("test_double", 2, "assert double(2) == 4, double(2)\n### BEGIN HIDDEN TESTS\n"
                                        "assert double(BASE) == 20\n### END HIDDEN TESTS"),
        A.answer("square", "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION"),
        A.graded_test("test_square", 3, "assert square(3) == 9\n### BEGIN HIDDEN TESTS\n"
                                        "assert square(BASE) == 100\n### END HIDDEN TESTS"),
        A.answer("cube", "def cube(x):\n    ### BEGIN SOLUTION\n    return x ** 3\n    ### END SOLUTION"),
        A.graded_test("test_cube", 1, "assert cube(2) == 8\n### BEGIN HIDDEN TESTS\n"
                                      "assert cube(BASE) == 1000\n### END HIDDEN TESTS"),
    ])


def _submission(base, answers=(), edit=(), drop=(), add_after=(), duplicate=()):
    """A copy of ``base`` as a student might hand it in: answers written, cells edited,
    deleted, added after a given cell, or copied."""
    nb = copy.deepcopy(base)
    answers, edit, add_after = dict(answers), dict(edit), dict(add_after)
    cells = []
    for cell in nb.cells:
        gid = exercises.grade_id(cell)
        if gid in drop:
            continue
        cell.source = answers.get(gid, edit.get(gid, cell.source))
        cells.append(cell)
        if gid in add_after:
            cells.append(nbformat.v4.new_code_cell(add_after[gid]))
        if gid in duplicate:
            cells.append(copy.deepcopy(cell))
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell.id = f"s{i:03d}"
    return nb


def _write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _by_student(rows):
    out = {}
    for r in rows:
        out.setdefault(r.student, {})[r.grade_id] = r
    return out


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    A.write(_toy_solution(), root / "solutions" / f"{TOY}.ipynb")
    return root


@pytest.fixture(scope="module")
def batch(course):
    """One batch of well-behaved, broken and hostile submissions, graded two at a time."""
    sol = _toy_solution()
    exe = exercises.make_exercise(sol)
    subs = course / "submissions"
    hang_in_test = "def square(x):\n    while True:\n        pass"
    stubborn = ("import signal\ndef double(x):\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "    while True:\n        pass")
    notebooks = {
        "full": sol,
        "blank": exe,
        "loop": _submission(sol, answers={"square": hang_in_test}),
        "stubborn": _submission(sol, answers={"double": stubborn, "cube": "def cube(x):\n    return x ** 3 + OFFSET"},
                                add_after={"double": "OFFSET = 0"}),
        "killer": _submission(sol, answers={"square": "import os\ndef square(x):\n    os._exit(1)"}),
        "suicide": _submission(sol, answers={"square": "def square(x):\n    return x * x\nimport os\nos._exit(0)"}),
        "quitter": _submission(sol, answers={"double": "def double(x):\n    raise SystemExit(1)",
                                             "square": "def square(x):\n    return x * x\nraise SystemExit('bye')"},
                               add_after={"double": "exit()"}),
        "cheater": _submission(sol, edit={"setup": "BASE = 1", "test_double": "pass"},
                               answers={"double": "def double(x):\n    return x + 2",
                                        "square": "def square(x):\n    return mul(x, x)"},
                               add_after={"square": "def mul(a, b):\n    return a * b"},
                               drop={"test_square"}, duplicate={"test_cube"}),
    }
    for student, nb in notebooks.items():
        _write(nb, subs / f"{student}_{TOY}.ipynb")
    (subs / f"broken_{TOY}.ipynb").write_text('{"cells": [{"cell_type": "code", "sour')
    (subs / f"shapeless_{TOY}.ipynb").write_text('{"cells": 5, "nbformat": 4, "nbformat_minor": 5, "metadata": {}}')
    other = A.notebook([A.answer("f", "### BEGIN SOLUTION\nf = 1\n### END SOLUTION"),
                        A.graded_test("test_f", 1, "assert f == 1")])
    _write(other, subs / "stranger_99_other.ipynb")
    hashes = {p: _sha(p) for p in subs.iterdir()}
    out = course / "grades" / "grades.csv"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CNNLIB_PROFILE", "full")  # kernels must run in the quick profile regardless
        results = grade.grade([subs], out, solutions_dir=course / "solutions", jobs=2,
                              cell_timeout=CELL_TIMEOUT, total_timeout=120)
    return dict(results=results, rows=_by_student(grade.read_csv(out)), out=out, hashes=hashes)


def _statuses(rows, student):
    return {gid: r.status for gid, r in rows[student].items()}


def test_solution_scores_full_marks(batch):
    # the hidden tests need BASE from the setup cell, which asserts the quick profile
    assert _statuses(batch["rows"], "full") == dict.fromkeys(["test_double", "test_square", "test_cube"], "passed")
    assert sum(r.points for r in batch["rows"]["full"].values()) == 6


def test_untouched_exercise_scores_zero_and_the_grader_finishes(batch):
    rows = batch["rows"]["blank"]
    assert {r.status for r in rows.values()} == {"failed"}
    assert sum(r.points for r in rows.values()) == 0
    assert all(r.message.startswith("NotImplementedError") for r in rows.values())
    assert rows["test_double"].message.endswith("(line 1: assert double(2) == 4, double(2))")


def test_an_infinite_loop_times_out_and_the_other_cells_are_graded(batch):
    rows = batch["rows"]["loop"]
    assert _statuses(batch["rows"], "loop") == {"test_double": "passed", "test_square": "timeout",
                                                "test_cube": "passed"}
    assert rows["test_square"].message == f"ran past the {CELL_TIMEOUT} s time limit per cell (interrupted)"
    assert sum(r.points for r in rows.values()) == 3


def test_a_loop_that_ignores_interrupts_gets_a_fresh_kernel_with_the_earlier_cells_rerun(batch):
    # test_square and test_cube need BASE (locked setup cell) and OFFSET (a cell the student
    # added): both must have been re-run in the new kernel.
    assert _statuses(batch["rows"], "stubborn") == {"test_double": "timeout", "test_square": "passed",
                                                    "test_cube": "passed"}
    assert "kernel restarted" in batch["rows"]["stubborn"]["test_double"].message


def test_os_exit_inside_a_tested_function_costs_only_that_test(batch):
    assert _statuses(batch["rows"], "killer") == {"test_double": "passed", "test_square": "died",
                                                  "test_cube": "passed"}
    assert "kernel died" in batch["rows"]["killer"]["test_square"].message


def test_os_exit_in_an_answer_cell_is_not_rerun_after_the_restart(batch):
    rows = batch["rows"]["suicide"]
    assert _statuses(batch["rows"], "suicide") == {"test_double": "passed", "test_square": "failed",
                                                   "test_cube": "passed"}
    assert rows["test_square"].message.startswith("NameError: name 'square' is not defined")
    [result] = [r for r in batch["results"] if r.student == "suicide"]
    assert any("killed the kernel" in note for note in result.notes)


def test_system_exit_is_an_ordinary_error_and_exit_restarts_the_kernel(batch):
    rows = batch["rows"]["quitter"]
    assert _statuses(batch["rows"], "quitter") == {"test_double": "failed", "test_square": "passed",
                                                   "test_cube": "passed"}
    assert rows["test_double"].message.startswith("SystemExit: 1")
    [result] = [r for r in batch["results"] if r.student == "quitter"]
    assert any("added cell 3 ended the kernel with exit()" in note for note in result.notes)


def test_edited_deleted_and_copied_tests_are_graded_from_the_solution(batch):
    rows = batch["rows"]["cheater"]
    assert _statuses(batch["rows"], "cheater") == {"test_double": "failed", "test_square": "passed",
                                                   "test_cube": "passed"}
    # the visible test was replaced by `pass`: the solution's hidden test catches x + 2,
    # with the solution's BASE = 10, not the student's BASE = 1
    assert rows["test_double"].message == "AssertionError (line 3: assert double(BASE) == 20)"
    # the deleted test ran after the cell the student added below the answer (mul)
    assert rows["test_square"].points == 3


def test_files_that_are_not_notebooks_are_invalid_and_the_batch_goes_on(batch):
    for student in ("broken", "shapeless"):
        rows = batch["rows"][student]
        assert set(rows) == {"test_double", "test_square", "test_cube"}
        assert {r.status for r in rows.values()} == {"invalid"}
        assert all(r.message.startswith("not a readable notebook") for r in rows.values())
        assert sum(r.max_points for r in rows.values()) == 6


def test_a_notebook_for_an_unknown_exercise_is_invalid(batch):
    [row] = batch["rows"]["stranger_99_other"].values()
    assert (row.exercise, row.grade_id, row.points, row.max_points, row.status) == ("", "", 0, 0, "invalid")
    assert row.message.startswith("unknown exercise")


def test_submissions_are_never_modified(batch):
    assert {p: _sha(p) for p in batch["hashes"]} == batch["hashes"]


def test_csv_has_one_row_per_graded_cell_and_a_summary_beside_it(batch):
    with open(batch["out"], newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == grade.COLUMNS
    assert len(table) == 1 + 10 * 3 + 1  # header, ten gradable or broken files, one unknown exercise
    keys = [(r[0], r[1]) for r in table[1:]]
    assert keys == sorted(keys)
    assert {r[5] for r in table[1:]} <= set(grade.STATUSES)
    summary = grade.summary_path(batch["out"]).read_text()
    assert "| full | 6 / 6 |" in summary and "## cheater" in summary
    assert "\n### 42_toy: 3 / 6\n" in summary  # loop
    assert not [p for p in batch["out"].parent.iterdir() if p.name.startswith(".")], "temporary files left"


def test_the_csv_is_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "grades.csv"
    out.write_text("old grades\n")
    row = grade.Row("ann", TOY, "test_double", 2, 2, "passed")
    result = grade.Result(Path("ann.ipynb"), "ann", TOY, [row])

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(grade.os, "replace", crash)
    with pytest.raises(OSError):
        grade.write_csv([result], out, {})
    assert out.read_text() == "old grades\n"
    monkeypatch.undo()
    grade.write_csv([result], out, {})
    assert grade.read_csv(out) == [row]


def test_the_total_time_limit_stops_a_slow_submission(course, tmp_path):
    slow = "import time\ntime.sleep(3)\n"
    nb = _submission(_toy_solution(), answers={"double": slow + "def double(x):\n    return 2 * x",
                                   "square": slow + "def square(x):\n    return x * x",
                                   "cube": slow + "def cube(x):\n    return x ** 3"})
    path = _write(nb, tmp_path / f"slow_{TOY}.ipynb")
    [result] = grade.grade([path], tmp_path / "g.csv", solutions_dir=course / "solutions",
                           cell_timeout=30, total_timeout=6)
    last = result.rows[-1]
    assert (last.grade_id, last.status, last.points) == ("test_cube", "timeout", 0)
    assert "6 s" in last.message
    assert any("6 s" in note for note in result.notes)


@pytest.mark.slow
def test_twenty_submissions_grade_in_parallel_without_mixing_results(course, tmp_path):
    sol = _toy_solution()
    for k in range(20):  # odd students get a wrong double() that returns their own number
        answer = f"STUDENT = {k}\ndef double(x):\n    return 2 * x if STUDENT % 2 == 0 else STUDENT"
        _write(_submission(sol, answers={"double": answer}), tmp_path / "in" / f"s{k:02d}_{TOY}.ipynb")
    results = grade.grade([tmp_path / "in"], tmp_path / "g.csv", solutions_dir=course / "solutions",
                          jobs=4, cell_timeout=20)
    rows = _by_student(grade.read_csv(tmp_path / "g.csv"))
    assert sorted(rows) == [f"s{k:02d}" for k in range(20)] and len(results) == 20
    for k in range(20):
        got = rows[f"s{k:02d}"]
        assert got["test_square"].status == got["test_cube"].status == "passed"
        if k % 2 == 0:
            assert got["test_double"].status == "passed"
        else:
            assert got["test_double"].message.startswith(f"AssertionError: {k} "), got["test_double"]


def test_jobs_submissions_are_graded_at_once(monkeypatch):
    running, peak = 0, 0

    async def fake_grade(sub, exercises, **kw):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return grade.Result(sub.path, sub.student, sub.exercise, [])

    monkeypatch.setattr(grade, "grade_submission", fake_grade)
    subs = [grade.Submission(Path(f"{k}.ipynb"), str(k), TOY) for k in range(7)]
    results = asyncio.run(grade.grade_all(subs, {}, jobs=3, isolation=grade.Isolation(sandboxed=False)))
    assert [r.student for r in results] == [str(k) for k in range(7)] and peak == 3


# ---- the course's real exercises: solutions score full marks, untouched exercises zero

SOLUTIONS = exercises.solution_paths(ROOT / "solutions")


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory):
    subs = tmp_path_factory.mktemp("real")
    for path in SOLUTIONS:
        (subs / f"solution_{path.name}").write_bytes(path.read_bytes())
        if (ROOT / "exercises" / path.name).exists():  # else test_exercises.py says "make exercises"
            (subs / f"exercise_{path.name}").write_bytes((ROOT / "exercises" / path.name).read_bytes())
    grade.grade([subs], subs / "grades.csv", solutions_dir=ROOT / "solutions", jobs=2, cell_timeout=120)
    rows = {}
    for r in grade.read_csv(subs / "grades.csv"):
        rows.setdefault((r.student, r.exercise), []).append(r)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_every_solution_scores_full_marks(real_batch, solution):
    rows = real_batch["solution", solution.stem]
    bad = [(r.grade_id, r.status, r.message) for r in rows if r.status != "passed"]
    assert not bad and sum(r.points for r in rows) == sum(r.max_points for r in rows) > 0, bad


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_every_untouched_exercise_scores_zero(real_batch, solution):
    rows = real_batch.get(("exercise", solution.stem))
    assert rows, f"exercises/{solution.name} is missing: run `make exercises`"
    assert sum(r.points for r in rows) == 0
    assert {r.status for r in rows} == {"failed"}, [(r.grade_id, r.status, r.message) for r in rows]


# ---- unit tests: what runs, and who handed in what (no kernels)

def _exercise():
    sol = _toy_solution()
    cells = tuple(c for c in sol.cells if c.cell_type == "code" and exercises.grade_id(c))
    return grade.Exercise(TOY, cells)


def test_plan_takes_answers_from_the_student_and_everything_else_from_the_solution():
    sol = _toy_solution()
    nb = _submission(sol, edit={"setup": "BASE = 1", "test_double": "pass"},
                     answers={"double": "def double(x):\n    return 0"},
                     add_after={"square": "HELPER = 1"}, drop={"test_square", "setup"}, duplicate={"test_cube"})
    steps = grade.plan(_exercise(), nb)
    assert [(s.kind, s.label) for s in steps] == [
        ("locked", "setup"), ("answer", "double"), ("test", "test_double"), ("answer", "square"),
        ("student", "added cell 4"), ("test", "test_square"), ("answer", "cube"), ("test", "test_cube")]
    by_label = {s.label: s for s in steps}
    assert by_label["setup"].source.endswith("BASE = 10")
    assert "### BEGIN HIDDEN TESTS" in by_label["test_double"].source
    assert by_label["double"].source == "def double(x):\n    return 0"
    assert by_label["test_square"].points == 3


def test_student_and_exercise_come_from_the_file_and_folder_names(tmp_path):
    sol = _toy_solution()
    exs = {TOY: _exercise()}
    paths = [tmp_path / f"ann_{TOY}.ipynb", tmp_path / "bob" / f"{TOY}.ipynb",
             tmp_path / TOY / "cid.ipynb", tmp_path / "dee.ipynb", tmp_path / "bob" / f"{TOY} (1).ipynb"]
    for p in paths:
        _write(sol, p)
    subs = {s.path: s for s in grade.find_submissions([tmp_path], exs)}
    assert [(subs[p].student, subs[p].exercise) for p in paths] == \
        [("ann", TOY), ("bob", TOY), ("cid", TOY), ("dee", TOY), ("bob", TOY)]  # dee: by its grade ids
    assert [bool(subs[p].problem) for p in paths] == [False, True, False, False, True]
    assert "bob handed in 2 files" in subs[paths[4]].problem


def test_student_flag_names_one_submission_only(tmp_path):
    exs = {TOY: _exercise()}
    one = _write(_toy_solution(), tmp_path / "x.ipynb")
    assert grade.find_submissions([one], exs, student="zoe")[0].student == "zoe"
    _write(_toy_solution(), tmp_path / "y.ipynb")
    with pytest.raises(ValueError, match="--student"):
        grade.find_submissions([tmp_path], exs, student="zoe")
    with pytest.raises(FileNotFoundError):
        grade.find_submissions([tmp_path / "missing.ipynb"], exs)


def test_cli_grade_writes_csv_and_summary(course, tmp_path, capsys):
    (tmp_path / f"eve_{TOY}.ipynb").write_text("not json at all")
    out = tmp_path / "g.csv"
    assert cli.main(["grade", str(tmp_path / f"eve_{TOY}.ipynb"), "--out", str(out),
                     "--solutions", str(course / "solutions")]) == 0
    assert {r.status for r in grade.read_csv(out)} == {"invalid"}
    assert (tmp_path / "g.md").exists() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["grade", str(tmp_path / "nobody.ipynb"), "--solutions", str(course / "solutions")])
