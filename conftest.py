"""Per-notebook times in the test summary (here, at the root, so that the hooks see the notebooks
under lectures/ and solutions/ as well as tests/)."""


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
