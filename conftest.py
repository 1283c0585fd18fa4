"""Per-notebook times in the test summary, each notebook with an empty result cache of its own
(here, at the root, so that the hooks see the notebooks under lectures/ and solutions/ as well as
tests/)."""
import os
from pathlib import Path

import pytest


NOTEBOOK_BUDGET_S = 90  # DESIGN.md: a quick-profile notebook takes at most 90 s with an empty cache
_notebook_seconds: dict[str, float] = {}
_session_cache: str | None = None  # CNNLIB_CACHE as the session started, before any notebook
_notebook: Path | None = None      # the notebook whose cells are running


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before nbval starts a notebook's kernel (the setup of its first cell), point
    ``CNNLIB_CACHE`` at a new folder inside the session's cache, so that every notebook's time is
    cold even when the browser, site or fidelity tests ran the same lecture earlier."""
    global _session_cache, _notebook
    path = Path(str(item.fspath))
    if path.suffix != ".ipynb" or path == _notebook:
        return
    if _session_cache is None:
        _session_cache = os.environ.get("CNNLIB_CACHE", "")
    if _session_cache in ("", "off"):
        return
    _notebook = path
    os.environ["CNNLIB_CACHE"] = str(Path(_session_cache) / "notebooks" / f"{path.parent.name}-{path.stem}")


def pytest_runtest_logreport(report):
    """Add up the time of every cell nbval runs, per notebook."""
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] = _notebook_seconds.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """One line per executed notebook: its time with an empty cache."""
    if not _notebook_seconds:
        return
    tr = terminalreporter
    tr.section(f"notebook times (quick profile, budget {NOTEBOOK_BUDGET_S} s each)")
    for path, seconds in sorted(_notebook_seconds.items()):
        flag = "" if seconds <= NOTEBOOK_BUDGET_S else "   over budget"
        tr.write_line(f"{path:45s} {seconds:6.1f} s{flag}")
    tr.write_line(f"{'all notebooks':45s} {sum(_notebook_seconds.values()):6.1f} s")
