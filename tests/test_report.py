"""Verdicts for the "paper vs. this run" tables."""
import json
import math

import pytest

from cnnlib import report as R
from cnnlib.report import AGREES, CONTRADICTS, NO_RESULT, NOISE, rate_difference, verdict


def test_rate_difference_is_the_binomial_standard_error_of_a_difference():
    gap, se = rate_difference(0.10, 400, 0.20, 100)
    assert gap == pytest.approx(0.10)
    assert se == pytest.approx(math.sqrt(0.1 * 0.9 / 400 + 0.2 * 0.8 / 100))


def test_verdict_needs_two_standard_errors_in_the_papers_direction():
    n = 360
    _, se = rate_difference(0.05, n, 0.05, n)
    assert verdict(0.05, n, 0.05 + 1.9 * se, n, expect=+1) == NOISE
    assert verdict(0.05, n, 0.12, n, expect=+1) == AGREES
    assert verdict(0.05, n, 0.12, n, expect=-1) == CONTRADICTS
    assert verdict(0.12, n, 0.05, n, expect=-1) == AGREES
    assert verdict(0.05, n, float("nan"), n, expect=+1) == NO_RESULT


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="fractions in \\[0, 1\\].*percentage"):
        rate_difference(5.0, 100, 0.1, 100)
    with pytest.raises(ValueError, match="at least one sample"):
        rate_difference(0.1, 0, 0.1, 100)
    with pytest.raises(ValueError, match="expect is \\+1"):
        verdict(0.1, 100, 0.2, 100, expect=0)


def test_difference_verdict_and_mean_difference():
    gap, se = R.mean_difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert gap == 3.0 and se == pytest.approx(math.sqrt(1 / 3 + 1 / 3))
    assert R.difference_verdict(gap, se, expect=+1) == R.AGREES
    assert R.difference_verdict(gap, se, expect=-1) == R.CONTRADICTS
    assert R.difference_verdict(2 * se, se, expect=+1) == R.NOISE  # exactly two s.e. is not beyond
    assert R.difference_verdict(float("nan"), se, expect=+1) == R.NO_RESULT
    with pytest.raises(ValueError, match="at least two values"):
        R.mean_difference([1.0], [2.0, 3.0])


def test_scored_records_every_row_and_marks_the_headline(tmp_path, monkeypatch):
    board = tmp_path / "board.jsonl"
    monkeypatch.setenv(R.SCOREBOARD_ENV, str(board))
    monkeypatch.setattr(R, "scoreboard", [])
    table = R.Table(["claim", "paper (2016)", "this run (digits)", "verdict"], [
        ("deeper is better", "6.97%", "5.0% vs 7.5%", R.AGREES),
        ("BN trains faster", "14× fewer steps", 2.5, R.NOISE),
        ("stochastic depth helps", "5.25%", "9%", "✗ contradicts (2.1 s.e.)"),
        ("size", "0.27M", "0.27M", "—")])
    assert R.scored(table, headline="deeper is better") is table
    rows = [json.loads(line) for line in board.read_text(encoding="utf-8").splitlines()]
    assert rows == R.scoreboard and len(rows) == 4
    assert [r["outcome"] for r in rows] == ["agrees", "within noise", "contradicts", "no result"]
    assert [r["headline"] for r in rows] == [True, False, False, False]
    assert rows[1] == dict(claim="BN trains faster", paper="14× fewer steps", measured="2.5", verdict=R.NOISE,
                           outcome="within noise", headline=False, profile="quick", data="digits")
    R.scored(table, headline="size")
    assert len(board.read_text(encoding="utf-8").splitlines()) == 8  # appended, not overwritten


def test_scored_refuses_a_table_it_cannot_read():
    table = R.Table(["claim", "paper", "this run", "verdict"], [("a", 1, 2, R.AGREES)])
    with pytest.raises(ValueError, match="headline 'b' is not a claim of this table; its claims are \\['a'\\]"):
        R.scored(table, headline="b")
    with pytest.raises(ValueError, match="needs a column starting with 'verdict'"):
        R.scored(R.Table(["claim", "paper", "this run"], [("a", 1, 2)]), headline="a")
