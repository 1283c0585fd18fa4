"""bench/fidelity.py: the lectures' "paper vs. this run" verdicts collected into one scoreboard."""
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKEST = "08"  # one real lecture, in the quick profile (its cache is shared with the nbval run)


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity", ROOT / "bench" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_lectures_verdicts_are_collected(fidelity, tmp_path, capsys):
    assert fidelity.main(["--profile", "quick", "--lectures", QUICKEST, "--out", str(tmp_path)]) == 0
    assert os.environ["CNNLIB_PROFILE"] == "quick" and "CNNLIB_SCOREBOARD" not in os.environ
    report = (tmp_path / "fidelity-quick.md").read_text(encoding="utf-8")
    rows = [line for line in report.splitlines() if line.startswith(f"| {QUICKEST}_")]
    verdict_rows = [r for r in rows if r.count("|") == 6]
    assert len(verdict_rows) >= 3, report                      # every row of the lecture's scored table
    assert sum("(headline)" in r for r in verdict_rows) == 1     # exactly one headline claim
    (summary,) = [r for r in rows if r.count("|") == 8]          # one count line for the lecture
    counts = [int(c) for c in summary.split("|")[3:7]]
    assert sum(counts) == len(verdict_rows)
    assert "lectures." in report and (tmp_path / "fidelity-quick" / f"{Path(summary.split('|')[1].strip()).name}.ipynb").exists()


def test_a_failing_lecture_is_named_and_fails_the_run(fidelity, tmp_path, monkeypatch, capsys):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import cnnlib\nP = cnnlib.setup(seed=0)"),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")])
    nbformat.write(nb, tmp_path / "99_broken.ipynb")
    monkeypatch.setattr(fidelity, "LECTURES", tmp_path)
    assert fidelity.main(["--profile", "quick", "--lectures", "99", "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "99_broken" in out and "FAILED: 99_broken.ipynb: cell 2 failed: ValueError: broken on purpose" in out


def test_an_unknown_lecture_lists_the_known_ones(fidelity):
    with pytest.raises(SystemExit, match="no lecture 42; the lectures are 01, 02, "):
        fidelity.main(["--lectures", "42"])
