"""The full-profile dry run (bench/full_profile_dry_run.py): the lectures' full branch on CPU.

CI runs only Lecture 01 through it (about 15 s); `make dry-run-full` runs all ten."""
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run():
    spec = importlib.util.spec_from_file_location("full_profile_dry_run",
                                                  ROOT / "bench" / "full_profile_dry_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lecture_01_runs_in_the_full_profile_on_cifar_shaped_data(dry_run, capsys):
    assert dry_run.main(["01_evolution"]) == 0, capsys.readouterr().out
    assert os.environ["CNNLIB_PROFILE"] == "quick", "the dry run must give the environment back"
    nb = nbformat.read(dry_run.OUT / "01_evolution.ipynb", as_version=4)
    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "profile=full" in printed and "data=cifar10" in printed
    assert "dry run, shrunk cfg: {'subset': None, 'epochs': 1" in printed


def test_a_failing_cell_fails_the_dry_run(dry_run, tmp_path, monkeypatch, capsys):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import cnnlib\nP = cnnlib.setup(seed=0)\n"
                                  "cfg = P.choose(quick=dict(epochs=9), medium=dict(epochs=20), full=dict(epochs=30))"),
        nbformat.v4.new_code_cell("assert cfg['epochs'] == 1, cfg\nraise ValueError('only in full')")])
    nbformat.write(nb, tmp_path / "99_broken.ipynb")
    monkeypatch.setattr(dry_run, "LECTURES", tmp_path)
    monkeypatch.setattr(dry_run, "OUT", tmp_path / "out")
    monkeypatch.setattr(dry_run, "ROOT", tmp_path)
    assert dry_run.main(["99_broken"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "ValueError: only in full" in out and "0/1 lectures ran" in out


def test_warnings_count_as_problems_and_progress_bars_do_not(dry_run):
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="epoch 1: 100%|██████| 8/8 [Warning?]\n"),
        nbformat.v4.new_output("stream", name="stderr",
                               text="x.py:1: RuntimeWarning: divide by zero encountered in log\n")]
    found = dry_run.problems(nbformat.v4.new_notebook(cells=[cell]))
    assert found == ["cell 0: x.py:1: RuntimeWarning: divide by zero encountered in log"]


def test_an_unknown_lecture_lists_the_known_ones(dry_run):
    with pytest.raises(SystemExit, match="no lecture 42_nope; the lectures are 01, 02, "):
        dry_run.main(["42_nope"])
