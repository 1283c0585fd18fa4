"""Course-structure tests: notebooks are clean, complete and consistent with each other."""
import re
from pathlib import Path

import nbformat
import pytest

from cnnlib.course import notebooks

ROOT = Path(__file__).resolve().parents[1]
LECTURES = sorted((ROOT / "lectures").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
ALL = LECTURES + SOLUTIONS + sorted((ROOT / "exercises").glob("*.ipynb"))


def _read(path):
    return nbformat.read(path, as_version=4)


def _ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


def test_there_are_lectures_and_each_has_a_solution():
    assert LECTURES, "no lecture notebooks found"
    assert [p.name for p in SOLUTIONS] == [p.name for p in LECTURES[:len(SOLUTIONS)]]
    numbers = [int(p.name[:2]) for p in LECTURES]
    assert numbers == list(range(1, len(numbers) + 1)), f"lectures are not numbered 01, 02, ...: {numbers}"


@pytest.mark.parametrize("path", ALL, ids=_ids(ALL))
def test_notebook_is_stored_clean(path):
    nb = _read(path)
    assert notebooks.is_clean(nb), f"{path.name} has outputs or execution counts: run `make notebooks`"
    for cell in nb.cells:
        if notebooks.is_checked(cell):
            assert cell.outputs, f"{path.name}: a '# NBVAL_CHECK_OUTPUT' cell has no stored output " \
                                 f"(run `cnn-course clean --run {path.relative_to(ROOT)}`)"


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS, ids=_ids(LECTURES + SOLUTIONS))
def test_notebook_starts_with_one_setup_call(path):
    code = [c.source for c in _read(path).cells if c.cell_type == "code"]
    assert "cnnlib.setup(" in code[0], f"{path.name}: the first code cell must call cnnlib.setup()"
    assert sum("cnnlib.setup(" in c for c in code) == 1


@pytest.mark.parametrize("path", LECTURES, ids=_ids(LECTURES))
def test_lecture_reads_like_a_chapter(path):
    text = "\n".join(c.source for c in _read(path).cells if c.cell_type == "markdown")
    for heading in ("Learning goals", "Paper vs. this run", "Quiz", "Further reading"):
        assert re.search(heading, text, re.I), f"{path.name} has no '{heading}' section"
    code = "\n".join(c.source for c in _read(path).cells if c.cell_type == "code")
    assert re.search(r"P\.choose\(\s*quick=.*\bmedium=.*\bfull=", code, re.S), \
        f"{path.name} must state its scale with P.choose(quick=..., medium=..., full=...)"
    assert "scored(" in code, f"{path.name}: its 'paper vs. this run' table must go through report.scored(...)"


def test_clean_strips_outputs_but_keeps_checked_ones(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(1)", execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", text="1\n")]),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n2", execution_count=4,
                                  outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                                  execution_count=4)]),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                 "widgets": {"state": {}}})
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert not notebooks.is_clean(_read(path))
    assert notebooks.clean([tmp_path]) == [path]
    cleaned = _read(path)
    assert notebooks.is_clean(cleaned) and "widgets" not in cleaned.metadata
    assert cleaned.cells[0].outputs == [] and cleaned.cells[0].execution_count is None
    assert cleaned.cells[1].outputs[0]["data"]["text/plain"] == "2"
    assert cleaned.cells[1].execution_count == 1  # nbval ignores outputs of "unrun" cells
    assert notebooks.clean([path]) == []  # idempotent


def test_authoring_builds_clean_nbgrader_notebooks(tmp_path):
    from cnnlib.course import authoring as A

    nb = A.notebook([A.markdown("# T"), A.code("import cnnlib"),
                     A.answer("f", "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
                     A.graded_test("test_f", 2, "assert f() == 1")], nbgrader=True)
    path = A.write(nb, tmp_path / "x.ipynb")
    cells = _read(path).cells
    assert [c.id for c in cells] == ["c000", "c001", "c002", "c003"]
    meta = [c.metadata["nbgrader"] for c in cells]
    assert meta[2]["solution"] and not meta[2]["locked"]
    assert meta[3]["grade"] and meta[3]["points"] == 2 and meta[3]["locked"]
    assert all(m["locked"] for i, m in enumerate(meta) if i != 2)
    with pytest.raises(ValueError, match="BEGIN SOLUTION"):
        A.answer("g", "def g(): return 1")
    with pytest.raises(ValueError, match="positive"):
        A.graded_test("t", 0, "assert True")
