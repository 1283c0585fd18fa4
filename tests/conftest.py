"""Test-session settings: the quick profile, a private cache, no progress bars in unit tests.

Notebooks executed by nbval inherit this environment, so they run in the quick profile too.
"""
import os
import tempfile

os.environ.setdefault("CNNLIB_PROFILE", "quick")
os.environ.setdefault("CNNLIB_CACHE", tempfile.mkdtemp(prefix="cnnlib-test-cache-"))
os.environ.setdefault("CNNLIB_OFFLINE", "1")  # tests never try to download anything

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # only this process; notebook kernels keep the inline backend

import pytest  # noqa: E402


@pytest.fixture
def quiet(monkeypatch):
    """No progress bars in unit tests."""
    monkeypatch.setenv("CNNLIB_PROGRESS", "0")


NOTEBOOK_BUDGET_S = 90  # DESIGN.md: a quick-profile notebook takes at most 90 s with an empty cache
_notebook_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Add up the time of every cell nbval runs, per notebook."""
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] = _notebook_seconds.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """One line per executed notebook: its time (cold unless an earlier notebook filled the cache)."""
    if not _notebook_seconds:
        return
    tr = terminalreporter
    tr.section(f"notebook times (quick profile, budget {NOTEBOOK_BUDGET_S} s each)")
    for path, seconds in sorted(_notebook_seconds.items()):
        flag = "" if seconds <= NOTEBOOK_BUDGET_S else "   over budget"
        tr.write_line(f"{path:45s} {seconds:6.1f} s{flag}")
    tr.write_line(f"{'all notebooks':45s} {sum(_notebook_seconds.values()):6.1f} s")
