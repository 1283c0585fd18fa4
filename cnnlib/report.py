"""Tables for notebooks — above all the "paper vs. this run" table every lecture ends with —
and the verdicts that go in them.

A ``Table`` renders as HTML in JupyterLab and as aligned plain text elsewhere (``print``,
nbval's text comparison), so the same object serves the reader and the test.

A quick run measures error rates on a few hundred test images, so two networks' errors differ by
chance by a point or more. ``rate_difference`` gives a difference with its standard error and
``verdict`` reads it against a paper's claim: only a difference beyond two standard errors
counts.

Every "paper vs. this run" table goes through ``scored``, which records its rows on the
*fidelity scoreboard*: ``bench/fidelity.py`` runs the lectures and counts, per lecture and
profile, how many of the papers' claims this course reproduces.
"""
from __future__ import annotations

import html
import json
import math
import os
import statistics
from typing import Any, Sequence

AGREES, CONTRADICTS, NOISE, NO_RESULT = "✓ agrees", "✗ contradicts", "within noise", "no result (diverged)"


def rate_difference(a: float, n_a: int, b: float, n_b: int) -> tuple[float, float]:
    """``b − a`` for two rates (error rates or accuracies, as fractions) measured on ``n_a`` and
    ``n_b`` independent samples, and the standard error of that difference,
    √(a(1−a)/n_a + b(1−b)/n_b) (the binomial standard errors added in quadrature)."""
    for rate in (a, b):
        if not 0 <= rate <= 1:
            raise ValueError(f"rates are fractions in [0, 1], got {rate} (a percentage?)")
    if n_a < 1 or n_b < 1:
        raise ValueError(f"each rate needs at least one sample, got n_a={n_a}, n_b={n_b}")
    return b - a, math.sqrt(a * (1 - a) / n_a + b * (1 - b) / n_b)


def difference_verdict(gap: float, se: float, expect: int) -> str:
    """Read a measured difference ``gap`` (± standard error ``se``) against a paper's direction
    ``expect`` (+1: the paper says the difference is positive, −1: negative): ``"✓ agrees"`` or
    ``"✗ contradicts"`` beyond two standard errors, else ``"within noise"``; NaN: no result."""
    if expect not in (1, -1):
        raise ValueError(f"expect is +1 (b higher than a) or -1 (b lower), got {expect}")
    if math.isnan(gap) or math.isnan(se):
        return NO_RESULT
    if abs(gap) <= 2 * se:
        return NOISE
    return AGREES if gap * expect > 0 else CONTRADICTS


def mean_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``mean(b) − mean(a)`` for two independent samples (e.g. curvatures along random directions,
    accuracies over seeds) and its standard error √(s_a²/n_a + s_b²/n_b)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a standard error needs at least two values per sample, got {len(a)} and {len(b)}")
    return (statistics.mean(b) - statistics.mean(a),
            math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b)))


def verdict(a: float, n_a: int, b: float, n_b: int, expect: int) -> str:
    """Does this run's rate ``b`` differ from ``a`` the way a paper says (``expect`` +1: ``b`` is
    higher, −1: ``b`` is lower)? ``"✓ agrees"`` or ``"✗ contradicts"`` when the difference is
    beyond two standard errors (``rate_difference``), else ``"within noise"``; a NaN rate (a run
    that diverged) gives ``"no result (diverged)"``."""
    if expect not in (1, -1):
        raise ValueError(f"expect is +1 (b higher than a) or -1 (b lower), got {expect}")
    if math.isnan(a) or math.isnan(b):
        return NO_RESULT
    return difference_verdict(*rate_difference(a, n_a, b, n_b), expect)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):  # thousands separators, but years and small counts stay plain
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


class Table:
    """Rows of values under named columns; ``title`` and ``note`` (e.g. the profile) around it."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[Any]] = (),
                 title: str | None = None, note: str | None = None):
        self.columns = list(columns)
        self.rows = [list(r) for r in rows]
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"row {r} has {len(r)} values for {len(self.columns)} columns")
        self.title, self.note = title, note

    def add(self, *row: Any) -> "Table":
        if len(row) != len(self.columns):
            raise ValueError(f"row {row} has {len(row)} values for {len(self.columns)} columns")
        self.rows.append(list(row))
        return self

    def column(self, name: str) -> list:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def __str__(self) -> str:
        cells = [self.columns] + [[_fmt(v) for v in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.title:
            lines.insert(0, self.title)
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>"
                       for r in self.rows)
        title = f"<caption><b>{html.escape(self.title)}</b></caption>" if self.title else ""
        note = f"<p><i>{html.escape(self.note)}</i></p>" if self.note else ""
        return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


# --------------------------------------------------------------------------------------------
# The fidelity scoreboard
# --------------------------------------------------------------------------------------------

SCOREBOARD_ENV = "CNNLIB_SCOREBOARD"  # a JSON-lines file every scored row is appended to
OUTCOMES = ("agrees", "within noise", "contradicts", "no result")
scoreboard: list[dict] = []           # this process's rows, in the order they were scored


def outcome(verdict_text: str) -> str:
    """The class of a verdict cell: ``agrees`` (✓…), ``contradicts`` (✗…), ``within noise``,
    or ``no result`` (a diverged run, or a row with no verdict)."""
    text = str(verdict_text or "")
    if text.startswith("✓"):
        return "agrees"
    if text.startswith("✗"):
        return "contradicts"
    return "within noise" if "noise" in text else "no result"


def scored(table: Table, *, headline: str) -> Table:
    """Record every row of a "paper vs. this run" table on the fidelity scoreboard; return it.

    The table's first column names the claim; it needs a column starting with ``paper``, one
    starting with ``this run`` and one named ``verdict``. ``headline`` is the claim the lecture
    is about (the one ``bench/fidelity.py`` counts per lecture); it must be one of the rows.
    Rows go to ``report.scoreboard`` and, when ``$CNNLIB_SCOREBOARD`` names a file, are appended
    to it as JSON lines together with the profile and dataset."""
    from . import profile

    def col(prefix):
        found = [i for i, c in enumerate(table.columns) if c.lower().startswith(prefix)]
        if not found:
            raise ValueError(f"a scored table needs a column starting with {prefix!r}; it has {table.columns}")
        return found[0]

    paper, run, verdict_col = col("paper"), col("this run"), col("verdict")
    claims = [str(r[0]) for r in table.rows]
    if headline not in claims:
        raise ValueError(f"headline {headline!r} is not a claim of this table; its claims are {claims}")
    prof = profile.current()
    rows = [dict(claim=str(r[0]), paper=_fmt(r[paper]), measured=_fmt(r[run]), verdict=str(r[verdict_col]),
                 outcome=outcome(r[verdict_col]), headline=str(r[0]) == headline, profile=prof.name,
                 data=prof.data) for r in table.rows]
    scoreboard.extend(rows)
    path = os.environ.get(SCOREBOARD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return table
