"""``make gpu-check`` (bench/gpu_check.py) in its tiny mode: the same code paths on the CPU, so
the script a GPU session runs once cannot rot between sessions. Its numbers are not checked
(machines are noisy); its structure and its correctness checks are."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tiny_check_runs_every_part_and_writes_one_report(gpu_check, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path / "warm"))  # the check must use its own, cold
    out = tmp_path / "gpu-check.md"
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    report = out.read_text()
    assert report.count("**") == 6  # three tables, each with its title
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in report.splitlines() if line.startswith("| ") and not line.startswith("| network")}
    assert float(rows["ResNet-8"][1].replace(",", "")) > 0  # cnnlib.fit images/s
    assert rows["ResNet-8"][3].endswith("×")
    for name in ("vmap", "loop", "reference"):  # the three agree on the loss surface
        assert float(rows[name][2]) < 1e-4, rows[name]
    lecture = rows["01_evolution"]
    assert lecture[0] == "ran" and int(lecture[2]) == 4  # Lecture 01 trains four networks
    assert lecture[4] == "8" and re.fullmatch(r"\d+ min", lecture[5])  # quick: 8 epochs, extrapolated
    assert not (tmp_path / "warm").exists()


def test_epochs_are_read_from_the_profiles_branch(gpu_check):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "cfg = P.choose(quick=dict(epochs=3), medium=dict(epochs=10, lr=0.1), full=dict(epochs=40))")])
    assert [gpu_check._epochs(nb, p) for p in ("quick", "medium", "full")] == [3, 10, 40]
    assert gpu_check._epochs(nbformat.v4.new_notebook(), "full") is None
