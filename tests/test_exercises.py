"""Exercises are generated from solutions: stubs for answers, no hidden tests, always in sync."""
from pathlib import Path

import nbformat
import pytest

from cnnlib.course import authoring as A
from cnnlib.course import cli, exercises, notebooks

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = exercises.solution_paths(ROOT / "solutions")


def _toy_solution():
    why = A.markdown("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", grade_id="why")
    why.metadata["nbgrader"].update(solution=True, locked=False)  # a written answer
    whole = A.code("answer = 42", grade_id="whole_cell")  # an answer cell without markers
    whole.metadata["nbgrader"].update(solution=True, locked=False)
    return A.notebook([
        A.markdown("# Toy exercise"),
        A.code("import math", grade_id="setup"),
        A.answer("area", "def area(r):\n    ### BEGIN SOLUTION\n    return math.pi * r ** 2\n    ### END SOLUTION"),
        A.graded_test("test_area", 2, "assert area(0) == 0\n### BEGIN HIDDEN TESTS\n"
                                      "assert abs(area(1) - math.pi) < 1e-12\n### END HIDDEN TESTS"),
        A.answer("two_regions", "x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\n"
                                "z = 3\nif z:\n    ### BEGIN SOLUTION\n    w = 4\n    ### END SOLUTION"),
        whole,
        why,
        A.graded_test("test_hidden_only", 1, "### BEGIN HIDDEN TESTS\nassert answer == 42\n### END HIDDEN TESTS"),
    ])


def test_answers_become_stubs_and_hidden_tests_disappear():
    sol = _toy_solution()
    before = nbformat.writes(sol)
    exe = exercises.make_exercise(sol)
    src = [c.source for c in exe.cells]
    assert src[2] == "def area(r):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert src[3] == "assert area(0) == 0"
    assert src[4] == ("x = 1\n# YOUR CODE HERE\nraise NotImplementedError()\nz = 3\nif z:\n"
                      "    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert src[5] == exercises.CODE_STUB  # a solution cell without markers is replaced whole
    assert src[6] == "Why?\nYOUR ANSWER HERE"
    assert src[7] == ""
    assert nbformat.writes(sol) == before, "make_exercise must not change the solution"
    assert [c.id for c in exe.cells] == [c.id for c in sol.cells]
    assert [c.metadata for c in exe.cells] == [c.metadata for c in sol.cells]


def test_exercise_is_clean_even_when_the_solution_was_run():
    sol = _toy_solution()
    sol.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    sol.cells[1].execution_count = 7
    exe = exercises.make_exercise(sol)
    assert notebooks.is_clean(exe) and exe.cells[1].outputs == []


@pytest.mark.parametrize("change, rule", [
    (lambda nb: nb.cells[2].metadata["nbgrader"].update(solution=False), "outside an answer cell"),
    (lambda nb: nb.cells[3].metadata["nbgrader"].update(grade=False), "outside a graded test cell"),
    (lambda nb: setattr(nb.cells[2], "source", "### BEGIN SOLUTION\nx = 1"), "never closed"),
    (lambda nb: setattr(nb.cells[2], "source", "x = 1\n### END SOLUTION"), "without a"),
    (lambda nb: setattr(nb.cells[2], "source", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"),
     "twice"),
    (lambda nb: nb.cells[3].metadata["nbgrader"].update(grade_id="area"), "used twice"),
    (lambda nb: nb.cells[3].metadata["nbgrader"].pop("points"), "positive number of points"),
    (lambda nb: nb.cells[3].metadata["nbgrader"].update(points=0), "positive number of points"),
    (lambda nb: nb.cells[3].metadata["nbgrader"].update(solution=True), "manually graded"),
    (lambda nb: nb.cells[0].metadata.update(nbgrader={"task": True, "grade_id": "t", "points": 1}),
     "task cells"),
    (lambda nb: nb.cells[1].metadata["nbgrader"].update(grade_id=""), "non-empty grade_id"),
    (lambda nb: setattr(nb.cells[2], "source", "# NBVAL_CHECK_OUTPUT\n" + nb.cells[2].source), "give the answer"),
    (lambda nb: nb.cells.__delitem__(slice(3, None)), "at least one graded test"),
])
def test_broken_solutions_are_refused_with_the_rule(change, rule):
    nb = _toy_solution()
    change(nb)
    with pytest.raises(ValueError, match=rule):
        exercises.make_exercise(nb, "toy.ipynb")


def test_generate_is_idempotent_and_removes_stale_exercises(tmp_path):
    sols, exes = tmp_path / "solutions", tmp_path / "exercises"
    A.write(_toy_solution(), sols / "01_toy.ipynb")
    A.write(_toy_solution(), sols / "02_toy.ipynb")
    exes.mkdir()
    (exes / "07_gone.ipynb").write_text("{}")
    changed = exercises.generate(sols, exes)
    assert sorted(p.name for p in changed) == ["01_toy.ipynb", "02_toy.ipynb", "07_gone.ipynb"]
    assert sorted(p.name for p in exes.iterdir()) == ["01_toy.ipynb", "02_toy.ipynb"]
    stamp = (exes / "01_toy.ipynb").stat().st_mtime_ns
    assert exercises.generate(sols, exes) == []
    assert (exes / "01_toy.ipynb").stat().st_mtime_ns == stamp, "an unchanged exercise must not be rewritten"
    assert exercises.out_of_date(sols, exes) == []
    (exes / "01_toy.ipynb").write_text((exes / "01_toy.ipynb").read_text().replace("YOUR CODE", "MY CODE"))
    (sols / "02_toy.ipynb").unlink()
    problems = exercises.out_of_date(sols, exes)
    assert len(problems) == 2 and "differs" in problems[0] and "no solution" in problems[1]


def test_generate_writes_nothing_when_one_solution_is_broken(tmp_path):
    sols, exes = tmp_path / "solutions", tmp_path / "exercises"
    A.write(_toy_solution(), sols / "01_toy.ipynb")
    broken = _toy_solution()
    broken.cells[2].source = "### BEGIN SOLUTION"
    A.write(broken, sols / "02_broken.ipynb")
    with pytest.raises(ValueError, match="02_broken.ipynb"):
        exercises.generate(sols, exes)
    assert not exes.exists()


def test_cli_exercises_command(tmp_path, capsys):
    sols, exes = tmp_path / "solutions", tmp_path / "exercises"
    A.write(_toy_solution(), sols / "01_toy.ipynb")
    assert cli.main(["exercises", "--solutions", str(sols), "--out", str(exes)]) == 0
    assert "1 exercise notebook(s) changed" in capsys.readouterr().out
    assert cli.main(["exercises", "--solutions", str(sols), "--out", str(exes)]) == 0
    assert "0 exercise notebook(s) changed" in capsys.readouterr().out


def test_cli_clean_command_still_works(tmp_path):
    nb = _toy_solution()
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert cli.main(["clean", str(tmp_path / "n.ipynb")]) == 0
    assert notebooks.is_clean(nbformat.read(tmp_path / "n.ipynb", as_version=4))


# ---- the course's own exercises (parametrized over whatever solutions/ holds)

def test_there_is_an_exercise_for_every_solution_and_no_other():
    problems = exercises.out_of_date(ROOT / "solutions", ROOT / "exercises")
    assert not [p for p in problems if "missing" in p or "no solution" in p], \
        "exercises/ does not match solutions/: run `make exercises`\n" + "\n".join(problems)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_exercise_is_in_sync_with_its_solution(solution):
    target = ROOT / "exercises" / solution.name
    assert target.exists(), f"exercises/{solution.name} is missing: run `make exercises`"
    assert target.read_text() == exercises.render(solution), \
        f"exercises/{solution.name} is out of date with solutions/{solution.name}: run `make exercises`"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_exercise_gives_nothing_away(solution):
    sol = nbformat.read(solution, as_version=4)
    exe = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
    text = "\n".join(c.source for c in exe.cells)
    for marker in (exercises.BEGIN_SOLUTION, exercises.BEGIN_HIDDEN, exercises.END_HIDDEN):
        assert marker not in text
    for s, e in zip(sol.cells, exe.cells):
        if exercises.is_answer(s) and s.cell_type == "code":
            assert "raise NotImplementedError()" in e.source
        if exercises.is_test(s):
            hidden, visible = False, []
            for line in s.source.splitlines():
                hidden |= line.strip().startswith(exercises.BEGIN_HIDDEN)
                if not hidden:
                    visible.append(line)
                hidden &= not line.strip().startswith(exercises.END_HIDDEN)
            visible = "\n".join(visible).rstrip("\n")
            assert e.source == visible, f"{solution.name}: the visible tests of {exercises.grade_id(s)} changed"


# The reference implementations the tasks forbid: the tests may import them, the setup may not.
FORBIDDEN_IN_SETUP = {"06_dilated_deformable.ipynb": ("deform_conv2d",), "10_mode_connectivity.ipynb": ("connectivity",)}


@pytest.mark.parametrize("name", sorted(FORBIDDEN_IN_SETUP))
def test_the_locked_setup_does_not_hand_out_the_reference(name):
    cells = nbformat.read(ROOT / "solutions" / name, as_version=4).cells
    setup = next(c for c in cells if c.cell_type == "code" and "cnnlib.setup(" in c.source)
    for forbidden in FORBIDDEN_IN_SETUP[name]:
        assert forbidden not in setup.source, f"{name}: the setup cell imports {forbidden}, which the task forbids"
