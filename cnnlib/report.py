"""Tables for notebooks — above all the "paper vs. this run" table every lecture ends with.

A ``Table`` renders as HTML in JupyterLab and as aligned plain text elsewhere (``print``,
nbval's text comparison), so the same object serves the reader and the test.
"""
from __future__ import annotations

import html
from typing import Any, Sequence


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
