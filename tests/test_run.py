"""``cnn-course run``: lectures executed headlessly, cell by cell, into the result cache."""
import json
import os

import nbformat
import pytest

from cnnlib.course import cli, run

KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _lecture(folder, name, *sources):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNEL}, cells=[
        nbformat.v4.new_markdown_cell(f"# {name}")] + [nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, folder / name)


@pytest.fixture
def course(tmp_path, monkeypatch):
    (tmp_path / "lectures").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path / "cache"))
    _lecture(tmp_path / "lectures", "01_ok.ipynb",
             "import json, cnnlib\nP = cnnlib.setup(verbose=False)",
             "print(json.dumps({'profile': P.name, 'data': P.data}))\n"
             "cnnlib.cache.cached('answer', (P.name, P.data), lambda: 42)")
    _lecture(tmp_path / "lectures", "02_broken.ipynb", "x = 1", "raise ValueError('bad input')",
             "never = True")
    return tmp_path


def test_a_lecture_runs_in_the_asked_profile_on_the_asked_data_and_fills_the_cache(course, capsys):
    assert cli.main(["run", "1", "--profile", "medium", "--dataset", "digits", "--out", "done"]) == 0
    out = capsys.readouterr().out
    assert "01_ok  cell  1/2" in out and "01_ok  cell  2/2" in out  # a line per code cell
    assert "01_ok: ran in" in out
    nb = nbformat.read(course / "done" / "01_ok.ipynb", as_version=4)
    printed = nb.cells[2].outputs[0]["text"]
    assert json.loads(printed) == {"profile": "medium", "data": "digits"}
    assert nb.cells[2].outputs[1]["data"]["text/plain"] == "42"
    assert [p.name.split("-")[0] for p in (course / "cache").iterdir()] == ["answer"]
    assert "CNNLIB_PROFILE" not in os.environ or os.environ["CNNLIB_PROFILE"] != "medium"


def test_a_failing_cell_is_named_the_other_lectures_still_run_and_the_exit_code_says_so(course, capsys):
    assert cli.main(["run", "--out", "done"]) == 1  # both lectures, in order
    captured = capsys.readouterr()
    assert "cnn-course run: 02_broken.ipynb: cell 3 failed: ValueError: bad input" in captured.err
    assert "Traceback" not in captured.err
    assert "01_ok: ran in" in captured.out and "02_broken: FAILED" in captured.out
    nb = nbformat.read(course / "done" / "02_broken.ipynb", as_version=4)  # as far as it ran
    assert nb.cells[2].outputs[0]["ename"] == "ValueError" and not nb.cells[3].get("outputs")


def test_an_unknown_lecture_or_dataset_is_refused_before_anything_runs(course, capsys):
    with pytest.raises(SystemExit, match="cnn-course run: no lecture 7; the lectures are 01, 02"):
        cli.main(["run", "7"])
    with pytest.raises(SystemExit):
        cli.main(["run", "1", "--dataset", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err
    assert not (course / "runs").exists()


def test_lecture_paths_takes_numbers_and_stems_in_the_order_given(course):
    folder = course / "lectures"
    assert [p.name for p in run.lecture_paths(folder, ["02", "01_ok"])] == ["02_broken.ipynb", "01_ok.ipynb"]
    assert [p.name for p in run.lecture_paths(folder)] == ["01_ok.ipynb", "02_broken.ipynb"]
