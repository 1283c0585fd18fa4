"""Blocks are graded by what they compute: exercise 05's MBConv with the right shapes and parameter
counts but the wrong function (issue 15: ReLU for SiLU, a Hardtanh gate, SE added instead of
multiplied, no 1/(1−p) rescaling) or the course's own block handed in loses test_mbconv's points,
and only those."""
import copy
from pathlib import Path

import nbformat
import pytest

from cnnlib.course import exercises, grade

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "05_efficientnet.ipynb"

WRONG = {  # student: (text in the solution's MBConv cell, what replaces it)
    "relu": ("nn.SiLU()", "nn.ReLU()"),
    "hardtanh": ("nn.Sigmoid()", "nn.Hardtanh(0, 1)"),
    "added": ("h * self.se(h)", "h + self.se(h)"),
    "unscaled": ("out * keep / (1 - self.drop_prob)", "out * keep"),
}
BORROWED = {
    "subclass": "class MBConv(E.MBConv):\n    pass",
    "wrapper": ("class MBConv(nn.Module):\n"
                "    def __init__(self, *args, **kwargs):\n"
                "        super().__init__()\n"
                "        self.inner = E.MBConv(*args, **kwargs)\n"
                "    def forward(self, x):\n"
                "        return self.inner(x)"),
}


def _with_mbconv(nb, source):
    nb = copy.deepcopy(nb)
    [cell] = [c for c in nb.cells if exercises.grade_id(c) == "mbconv"]
    cell.source = source
    return nb


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocks")
    sol = nbformat.read(SOLUTION, as_version=4)
    [cell] = [c for c in sol.cells if exercises.grade_id(c) == "mbconv"]
    for student, (old, new) in WRONG.items():
        assert old in cell.source, f"the solution's MBConv no longer contains {old!r}"
        nbformat.write(_with_mbconv(sol, cell.source.replace(old, new)), folder / f"{student}_05_efficientnet.ipynb")
    for student, source in BORROWED.items():
        nbformat.write(_with_mbconv(sol, source), folder / f"{student}_05_efficientnet.ipynb")
    grade.grade([folder], folder / "grades.csv", solutions_dir=ROOT / "solutions", jobs=2, cell_timeout=120)
    out = {}
    for r in grade.read_csv(folder / "grades.csv"):
        out.setdefault(r.student, {})[r.grade_id] = r
    return out


@pytest.mark.slow
@pytest.mark.parametrize("student", sorted(WRONG) + sorted(BORROWED))
def test_a_block_that_computes_the_wrong_function_loses_only_its_points(rows, student):
    mine = rows[student]
    assert mine["test_mbconv"].status == "failed" and mine["test_mbconv"].points == 0, mine["test_mbconv"]
    others = {gid: r.status for gid, r in mine.items() if gid != "test_mbconv"}
    assert set(others.values()) == {"passed"}, others


@pytest.mark.slow
def test_the_failure_says_what_is_wrong(rows):
    assert "values differ" in rows["relu"]["test_mbconv"].message
    for student in BORROWED:
        assert "calls the course's reference implementation" in rows[student]["test_mbconv"].message
    unscaled = rows["unscaled"]["test_mbconv"].message
    assert "Tensor-likes are not close" in unscaled or "assert_close" in unscaled, unscaled
