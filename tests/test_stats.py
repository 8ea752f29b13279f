"""Means with t intervals and paired differences: against scipy, against closed forms, and with one seed."""
from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from sase.train.stats import Estimate, mean_ci, paired_difference, verdict

TOP1 = [0.912, 0.9305, 0.918, 0.9251, 0.909]
REFERENCE = [0.901, 0.9222, 0.915, 0.9102, 0.9045]


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy_t_interval(level):
    e = mean_ci(TOP1, level)
    low, high = scipy_stats.t.interval(level, len(TOP1) - 1, loc=statistics.fmean(TOP1), scale=scipy_stats.sem(TOP1))
    assert (e.low, e.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert e.mean == pytest.approx(statistics.fmean(TOP1)) and e.std == pytest.approx(statistics.stdev(TOP1))
    assert e.n == 5 and e.level == level and e.half_width == pytest.approx((high - low) / 2)


@pytest.mark.parametrize("values, t_quantile", [
    ([0.0, 2.0], math.tan(math.pi * 0.475)),  # 1 dof: t is Cauchy, quantile tan(π (p - 1/2)) at p = 0.975
    ([1.0, 2.0, 4.0], 0.95 / math.sqrt(2 * 0.975 * 0.025)),  # 2 dof: quantile (2p - 1) / √(2p(1 - p))
])
def test_mean_ci_matches_closed_form_quantiles(values, t_quantile):
    """Independent of scipy: the t quantiles of 1 and 2 degrees of freedom have closed forms."""
    mean, std = sum(values) / len(values), math.sqrt(sum((v - sum(values) / len(values)) ** 2 for v in values)
                                                     / (len(values) - 1))
    half = t_quantile * std / math.sqrt(len(values))
    e = mean_ci(values)
    assert e.low == pytest.approx(mean - half) and e.high == pytest.approx(mean + half)
    assert t_quantile > 4.3  # far wider than the normal 1.96: few seeds, wide intervals


def test_paired_difference_matches_scipy_ttest_rel():
    d = paired_difference(TOP1, REFERENCE)
    ci = scipy_stats.ttest_rel(TOP1, REFERENCE).confidence_interval(0.95)
    assert d.mean == pytest.approx(statistics.fmean(TOP1) - statistics.fmean(REFERENCE))
    assert (d.low, d.high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    # pairing removes what the runs of a seed share: the paired interval is narrower than either mean's
    assert d.half_width < mean_ci(TOP1).half_width and d.half_width < mean_ci(REFERENCE).half_width
    assert verdict(d) == "clearly better" and verdict(paired_difference(REFERENCE, TOP1)) == "clearly worse"


def test_a_difference_whose_interval_holds_zero_is_within_the_noise():
    d = paired_difference([0.83, 0.86, 0.85], [0.80, 0.82, 0.84])  # +3, +4, +1 points: mean > 0, interval across 0
    assert d.mean > 0 and d.low < 0 < d.high and verdict(d) == "within the noise"


def test_one_seed_gives_no_spread_and_no_interval():
    e = mean_ci([0.9])
    assert e == Estimate(0.9, 1, None, None, None, 0.95) and not e.has_interval and e.half_width is None
    d = paired_difference([0.9], [0.8])
    assert d.mean == pytest.approx(0.1) and d.low is None and verdict(d) == "one seed: no interval"


def test_equal_values_give_a_zero_width_interval():
    e = mean_ci([0.5, 0.5, 0.5])
    assert e.std == 0 and e.low == e.high == 0.5


@pytest.mark.parametrize("call, message", [
    (lambda: mean_ci([]), "no value"),
    (lambda: mean_ci([1.0, 2.0], level=1.0), "confidence level"),
    (lambda: paired_difference([1.0, 2.0], [1.0]), "pairs"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
