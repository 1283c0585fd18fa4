"""The grader against a hostile class: every kind of attack in issue 15 costs its own
submission's points (0, or ``tampered``) and nothing else; honest classmates graded beside the
attackers keep full marks; nothing outside a submission's sandbox changes.

The attacks are the kinds that fooled the grader before the sandbox and the negative canaries:
hooks that silence failing tests, objects equal to everything, an oracle that reads the test
line, reading the solution, writing outside the sandbox, killing classmates' kernels, daemons
that outlive the kernel, deep folders, memory hogs and a (bounded) fork bomb.
"""
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from cnnlib.course import canary, grade, sandbox
from test_grade import TOY, _by_student, _submission, _toy_solution, _write

pytestmark = pytest.mark.skipif(bool(sandbox.sandbox_problem()), reason=sandbox.sandbox_problem() or "")

ROOT = Path(__file__).resolve().parents[1]
MARK = "cnn-course-hostile-marker"


def _answers(attack):
    """A submission whose first answer cell holds the attack and whose other two are empty
    (``pass``), so that whatever the attack defines stays defined."""
    return {"double": attack, "square": "pass", "cube": "pass"}


STUB = "def double(x):\n    raise NotImplementedError\n"


def _attacks(victim_file: Path, outside: Path) -> dict:
    return {
        "transformer": STUB + (
            "def _silence(lines):\n"
            "    return ['pass\\n'] if any('assert' in l for l in lines) else lines\n"
            "get_ipython().input_transformers_post.append(_silence)"),
        "ast": STUB + (
            "import ast\n"
            "class _NoAssert(ast.NodeTransformer):\n"
            "    def visit_Assert(self, node):\n"
            "        return ast.Pass()\n"
            "get_ipython().ast_transformers.append(_NoAssert())"),
        "hook": STUB + (
            "def _clear(result):\n"
            "    result.error_in_exec = None\n"
            "get_ipython().events.register('post_run_cell', _clear)"),
        "everything": ("class Anything(int):\n"
                       "    def __eq__(self, other):\n        return True\n"
                       "    __hash__ = int.__hash__\n"
                       "def double(x):\n    return Anything(0)\n"
                       "square = cube = double"),
        "oracle": ("import inspect, re\n"
                   "def _oracle(*args):\n"
                   "    frame = inspect.currentframe().f_back\n"
                   "    line = inspect.getframeinfo(frame).code_context or ['']\n"
                   "    text = ''.join(line)\n"
                   "    m = re.search(r'==\\s*(.+?)(,|$)', text)\n"
                   "    return eval(m.group(1), frame.f_globals, frame.f_locals)\n"
                   "double = square = cube = _oracle"),
        "reader": STUB + (
            "import cnnlib, glob, json, os\n"
            "repo = os.path.dirname(os.path.dirname(cnnlib.__file__))\n"
            f"patterns = [repo + '/solutions/*.ipynb', '/proc/*/cwd/solutions/*.ipynb', '/proc/*/cwd/*.ipynb',\n"
            f"            {str(victim_file.parent.parent)!r} + '/*/*42_toy*.ipynb']\n"
            "found = [p for pattern in patterns for p in glob.glob(pattern) if '42_toy' in p]\n"
            "for path in found:\n"
            "    try:\n"
            "        nb = json.load(open(path))\n"
            "    except Exception:\n"
            "        continue\n"
            "    for c in nb['cells']:\n"
            "        if 'BEGIN SOLUTION' in ''.join(c['source']):\n"
            "            try:\n"
            "                exec(''.join(c['source']))\n"
            "            except Exception:\n"
            "                pass\n"
            "for name in ('double', 'square', 'cube'):\n"
            "    assert name in globals(), found\n"),
        "vandal": STUB + (
            "import cnnlib, os, pathlib\n"
            f"targets = [pathlib.Path(cnnlib.__file__), pathlib.Path({str(victim_file)!r}),\n"
            f"           pathlib.Path({str(outside)!r})]\n"
            "for t in targets:\n"
            "    try:\n"
            "        t.write_text('# owned')\n"
            "    except OSError:\n"
            "        pass\n"
            "startup = pathlib.Path.home() / '.ipython/profile_default/startup'\n"
            "startup.mkdir(parents=True, exist_ok=True)\n"
            "(startup / '00-owned.py').write_text('double = lambda x: 2 * x')"),
        "killer": STUB + (
            "import os, signal\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit() and int(pid) != os.getpid():\n"
            "        try:\n"
            "            os.kill(int(pid), signal.SIGKILL)\n"
            "        except OSError:\n"
            "            pass"),
        "daemon": STUB + (
            "import os, subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(1)', {MARK!r}],\n"
            "                 start_new_session=True)"),
        "nester": STUB + (
            "import os\n"
            "path = os.getcwd()\n"
            "for _ in range(3000):\n"
            "    path = os.path.join(path, 'd')\n"
            "    os.mkdir(path)"),
        "hog": STUB + "hog = bytearray(64 << 30)",
        "forker": STUB + (
            "import os, time\n"
            "for _ in range(40):\n"
            "    if os.fork() == 0:\n"
            "        os.setsid()\n"
            f"        os.execv('/bin/sleep', ['sleep', '600', {MARK!r}])"),
    }


HONEST = ("alice", "bob")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    sol = _toy_solution()
    solutions = root / "solutions"
    _write(sol, solutions / f"{TOY}.ipynb")
    subs = root / "submissions"
    outside = root / "outside.txt"
    outside.write_text("untouched")
    victim = subs / f"alice_{TOY}.ipynb"
    for name in HONEST:
        _write(sol, subs / f"{name}_{TOY}.ipynb")
    attacks = _attacks(victim, outside)
    for name, code in attacks.items():
        _write(_submission(sol, answers=_answers(code)), subs / f"{name}_{TOY}.ipynb")
    protected = [p for p in [*solutions.iterdir(), *subs.iterdir(), outside, *(ROOT / "cnnlib").rglob("*.py")]]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in protected}
    out = root / "grades" / "grades.csv"
    results = grade.grade([subs], out, solutions_dir=solutions, jobs=2, cell_timeout=15, total_timeout=120,
                          sandbox=True)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in protected}
    survivors = subprocess.run(["pgrep", "-f", MARK], capture_output=True, text=True).stdout.split()
    return dict(rows=_by_student(grade.read_csv(out)), results=results, attacks=attacks,
                changed=[p for p in protected if before[p] != after[p]], survivors=survivors)


def _points(rows, student):
    return sum(r.points for r in rows[student].values())


def test_honest_students_graded_beside_attackers_keep_full_marks(hostile):
    for name in HONEST:
        assert {r.status for r in hostile["rows"][name].values()} == {"passed"}, hostile["rows"][name]
        assert _points(hostile["rows"], name) == 6


@pytest.mark.parametrize("attack", ["transformer", "ast", "hook", "everything", "oracle"])
def test_forged_outcomes_are_tampered(hostile, attack):
    rows = hostile["rows"][attack]
    assert {r.status for r in rows.values()} == {"tampered"}, rows
    assert _points(hostile["rows"], attack) == 0
    assert all("tampered" in n or "canary" in n or "tampering" in n for n in
               [next(r for r in hostile["results"] if r.student == attack).notes[-1]])


@pytest.mark.parametrize("attack", ["reader", "vandal", "killer", "daemon", "nester", "hog", "forker"])
def test_every_other_attack_scores_zero(hostile, attack):
    assert _points(hostile["rows"], attack) == 0, hostile["rows"][attack]


def test_nothing_outside_the_sandboxes_changed_and_no_process_survived(hostile):
    assert hostile["changed"] == []
    assert hostile["survivors"] == []
    assert not (Path.home() / ".ipython/profile_default/startup/00-owned.py").exists()


def test_a_blank_submission_graded_after_the_vandal_still_scores_zero(hostile, tmp_path):
    # the vandal planted an IPython startup file in its own HOME: gone with its sandbox
    sol = _toy_solution()
    _write(sol, tmp_path / "solutions" / f"{TOY}.ipynb")
    from cnnlib.course import exercises
    _write(exercises.make_exercise(sol), tmp_path / "subs" / f"carol_{TOY}.ipynb")
    [res] = grade.grade([tmp_path / "subs"], tmp_path / "g.csv", solutions_dir=tmp_path / "solutions", jobs=1,
                        cell_timeout=15, total_timeout=60, sandbox=True)
    assert res.points == 0


def test_twins_of_a_test_fail_on_a_correct_answer_and_pass_on_a_forged_one():
    src = "assert double(2) == 4\nfor x in (1, 3):\n    assert double(x) == 2 * x, x"
    negated, perturbed = canary.twins(src, seed=0)
    env = {"double": lambda x: 2 * x}
    for twin in (negated, perturbed):
        with pytest.raises(AssertionError):
            exec(twin, dict(env))

    class Anything:
        def __eq__(self, other):
            return True
    exec(perturbed, {"double": lambda x: Anything()})  # passes: that is what flags the kernel
    assert "2 * x" not in perturbed.split("\n")[-1] or "_shift_" in perturbed
    assert canary.twins(src, seed=0) == canary.twins(src, seed=0) != canary.twins(src, seed=1)


@pytest.mark.skipif(bool(sandbox.sandbox_problem()), reason="bubblewrap cannot sandbox here")
def test_a_course_under_tmp_stays_visible_inside_the_sandbox(tmp_path, monkeypatch):
    """The sandbox's private /tmp must not hide a course (or its environment) cloned under /tmp:
    a clone in /tmp graded every cell as an error before the order of the mounts was fixed."""
    package = tmp_path / "clone" / "cnnlib"
    package.mkdir(parents=True)
    (package / "marker.txt").write_text("visible")
    box = tmp_path / "box"
    (box / "work").mkdir(parents=True)
    (box / "run").mkdir()
    monkeypatch.setattr(sandbox, "_package_folder", lambda: str(package))
    command = sandbox.kernel_command(box, sandbox.Limits(), sandbox=True)
    command = command[:command.index("--") + 1] + ["/bin/cat", str(package / "marker.txt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "visible", done.stderr
