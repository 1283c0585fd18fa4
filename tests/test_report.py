"""Verdicts for the "paper vs. this run" tables."""
import math

import pytest

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
