"""The grader's input and output under attack: files that are not notebooks, names that inject
formulas or headings, interrupted batches that must keep (and resume) what was graded.

Most tests here run no kernel (a fake ``grade_submission`` stands in where grading is needed);
one end-to-end test stops a real ``cnn-course grade`` with SIGTERM.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlib.course import authoring as A
from cnnlib.course import grade

TOY = "42_toy"


def _solution():
    return A.notebook([
        A.answer("double", "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
        A.graded_test("test_double", 2, "assert double(2) == 4\n### BEGIN HIDDEN TESTS\n"
                                        "assert double(5) == 10\n### END HIDDEN TESTS"),
    ])


@pytest.fixture()
def course(tmp_path):
    A.write(_solution(), tmp_path / "solutions" / f"{TOY}.ipynb")
    return tmp_path


def _exercises(course):
    return grade.load_exercises(course / "solutions")


def _write(path, nb=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    A.write(nb or _solution(), path)
    return path


# ---------------------------------------------------------------- what counts as a submission

def test_symlinks_fifos_and_oversized_files_are_refused_without_being_opened(course, tmp_path):
    subs = tmp_path / "in"
    target = _write(tmp_path / "elsewhere" / f"real_{TOY}.ipynb")
    subs.mkdir()
    (subs / f"linked_{TOY}.ipynb").symlink_to(target)
    (subs / f"zero_{TOY}.ipynb").symlink_to("/dev/zero")
    os.mkfifo(subs / f"fifo_{TOY}.ipynb")  # opening it for reading would block forever
    with open(subs / f"huge_{TOY}.ipynb", "wb") as f:  # sparse: no disk used
        f.truncate(grade.MAX_NOTEBOOK_BYTES + 1)
    (subs / "folder_link").symlink_to(target.parent, target_is_directory=True)
    found = {s.student: s for s in grade.find_submissions([subs], _exercises(course))}
    assert sorted(found) == ["fifo", "huge", "linked", "zero"]  # the symlinked folder is not entered
    assert found["linked"].problem == found["zero"].problem == \
        "not graded: a symbolic link (hand in the notebook itself)"
    assert found["fifo"].problem == "not graded: not a regular file (hand in the notebook itself)"
    assert found["huge"].problem == "not graded: 32 MiB is more than the 32 MiB a notebook may have"
    assert all(s.notebook is None and s.exercise == TOY for s in found.values())


def test_folders_deeper_than_the_limit_are_not_searched(course, tmp_path):
    deep = tmp_path / "in"
    for k in range(grade.MAX_DEPTH + 3):
        deep = deep / f"d{k}"
    _write(deep / f"deep_{TOY}.ipynb")
    _write(tmp_path / "in" / "d0" / f"near_{TOY}.ipynb")
    assert [s.student for s in grade.find_submissions([tmp_path / "in"], _exercises(course))] == ["d0"]


def test_a_students_folder_given_as_the_argument_names_the_student(course, tmp_path):
    _write(tmp_path / "student1" / f"{TOY}.ipynb")
    [sub] = grade.find_submissions([tmp_path / "student1"], _exercises(course))
    assert (sub.student, sub.exercise, sub.problem) == ("student1", TOY, "")


def test_control_characters_in_names_are_removed(course, tmp_path):
    _write(tmp_path / "in" / f"ann\x1b[2J\nbob_{TOY}.ipynb")
    [sub] = grade.find_submissions([tmp_path / "in"], _exercises(course))
    assert sub.student == "ann bob"


# ---------------------------------------------------------------- what the reports let through

def _result(student, status="passed", message="", points=2.0, path=None):
    row = grade.Row(student, TOY, "test_double", points, 2.0, status, message)
    return grade.Result(Path(path or f"{student}.ipynb"), student, TOY, [row])


def test_the_csv_never_holds_a_spreadsheet_formula(tmp_path):
    out = tmp_path / "g.csv"
    grade.write_csv([_result("=HYPERLINK(\"http://x\")", "failed", "+cmd|' /C calc'!A0", 0),
                     _result("@SUM(A1)", "failed", "-1+1", 0), _result("ann", message="a = b")], out, {})
    with open(out, newline="") as f:
        cells = [c for row in list(csv.reader(f))[1:] for c in (row[0], row[6])]
    assert cells == ["'=HYPERLINK(\"http://x\")", "'+cmd|' /C calc'!A0", "'@SUM(A1)", "'-1+1", "ann", "a = b"]
    assert not [c for c in cells if c[:1] in "=+-@"]


def test_names_and_messages_cannot_add_markdown_structure(tmp_path):
    out = tmp_path / "g.md"
    evil = "eve\n# 10 / 10 for everyone\n| x | y |"
    grade.write_summary([_result(evil, "failed", "boom\n## injected <script>alert(1)</script>", 0,
                                 path=f"/in/{evil}.ipynb")], out, {})
    lines = out.read_text().splitlines()
    headings = [line for line in lines if line.startswith("#")]
    assert headings == ["# Grades", r"## eve \# 10 / 10 for everyone \| x \| y \|", "### 42_toy: 0 / 2"]
    assert "<script>" not in out.read_text()
    table_rows = [line for line in lines if line.startswith("| ")]
    assert all(line.count(" | ") == table_rows[0].count(" | ") for line in table_rows[:2])


def test_a_duplicate_hand_in_counts_its_points_once_in_the_total(tmp_path):
    out = tmp_path / "g.md"
    dup = "duplicate: ann handed in 2 files"
    grade.write_summary([_result("ann", "invalid", dup, 0, "a.ipynb"), _result("ann", "invalid", dup, 0, "b.ipynb"),
                         _result("bob")], out, {})
    text = out.read_text()
    assert "| ann | 0 / 2 + 0 / 2 | 0 / 2 |" in text
    assert "| bob | 2 / 2 | 2 / 2 |" in text


# ---------------------------------------------------------------- interrupted batches

def _fake_grader(monkeypatch, calls, stop_at=None):
    """grade_submission replaced: records who it grades, passes everyone, and raises
    KeyboardInterrupt (as Ctrl-C would) when it reaches ``stop_at``."""
    async def fake(sub, exercises, **kw):
        if sub.student == stop_at:
            raise KeyboardInterrupt
        calls.append(sub.student)
        return _result(sub.student, path=sub.path)

    monkeypatch.setattr(grade, "grade_submission", fake)
    monkeypatch.setattr(grade, "isolation", lambda *a, **k: grade.Isolation(sandboxed=False))


def test_an_interrupted_batch_keeps_the_finished_rows_and_resumes_where_it_stopped(course, tmp_path, monkeypatch):
    subs = [_write(tmp_path / "in" / f"{s}_{TOY}.ipynb") for s in ("ann", "bob", "cid")]
    out = tmp_path / "g.csv"
    calls = []
    _fake_grader(monkeypatch, calls, stop_at="cid")
    with pytest.raises(KeyboardInterrupt):
        grade.grade([tmp_path / "in"], out, solutions_dir=course / "solutions", jobs=1)
    assert calls == ["ann", "bob"]
    rows = {r.student: r for r in grade.read_csv(out)}
    assert [rows[s].status for s in ("ann", "bob", "cid")] == ["passed", "passed", "error"]
    assert rows["cid"].message.startswith("not graded: the grader was interrupted")
    assert "**Interrupted**" in grade.summary_path(out).read_text()
    journal = grade.journal_path(out)
    assert [json.loads(line)["student"] for line in journal.read_text().splitlines()] == ["ann", "bob"]

    # bob edits his notebook before the rerun: only he and the ungraded cid are graded again
    _write(subs[1], A.notebook([*_solution().cells, A.markdown("edited")]))
    calls.clear()
    _fake_grader(monkeypatch, calls)
    grade.grade([tmp_path / "in"], out, solutions_dir=course / "solutions", jobs=1)
    assert calls == ["bob", "cid"]
    assert {r.student: r.status for r in grade.read_csv(out)} == dict.fromkeys(["ann", "bob", "cid"], "passed")
    assert "Interrupted" not in grade.summary_path(out).read_text()
    assert not journal.exists()


def test_a_journal_line_cut_short_by_a_crash_is_ignored(course, tmp_path, monkeypatch):
    _write(tmp_path / "in" / f"ann_{TOY}.ipynb")
    out = tmp_path / "g.csv"
    grade.journal_path(out).write_text('{"path": "' + str(tmp_path / "in"))  # killed mid-write
    calls = []
    _fake_grader(monkeypatch, calls)
    grade.grade([tmp_path / "in"], out, solutions_dir=course / "solutions", jobs=1)
    assert calls == ["ann"]


def test_sigterm_stops_cnn_course_grade_with_the_finished_submissions_written(course, tmp_path):
    _write(tmp_path / "in" / f"ann_{TOY}.ipynb")
    slow = _solution()
    slow.cells[0].source = "import time\ntime.sleep(600)\ndef double(x):\n    return 2 * x"
    _write(tmp_path / "in" / f"zed_{TOY}.ipynb", slow)
    out = tmp_path / "g.csv"
    env = dict(os.environ, CNNLIB_PROFILE="quick")
    proc = subprocess.Popen([sys.executable, "-m", "cnnlib.course.cli", "grade", str(tmp_path / "in"),
                             "--out", str(out), "--solutions", str(course / "solutions"), "--jobs", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = grade.journal_path(out)
    deadline = time.monotonic() + 120
    while not journal.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert journal.exists(), proc.communicate()
    time.sleep(2)  # zed's kernel is now sleeping in its answer cell
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr
    rows = {r.student: r for r in grade.read_csv(out)}
    assert (rows["ann"].status, rows["zed"].status) == ("passed", "error"), (rows, stderr)
    # the next run resumes from the journal, which holds ann only (zed's cut-off run is not a result)
    assert [json.loads(line)["student"] for line in journal.read_text().splitlines()] == ["ann"]


# ---------------------------------------------------------------- without a sandbox

def test_without_bubblewrap_the_grader_warns_or_refuses(monkeypatch):
    monkeypatch.setattr(grade, "sandbox_problem", lambda: "bubblewrap is not installed")
    with pytest.warns(grade.SandboxWarning, match="WITHOUT a sandbox .bubblewrap is not installed"):
        assert grade.isolation(1).sandboxed is False
    with pytest.raises(RuntimeError, match="cannot sandbox the kernels: bubblewrap is not installed"):
        grade.isolation(1, sandbox=True)
    assert grade.isolation(1, sandbox=False).sandboxed is False
