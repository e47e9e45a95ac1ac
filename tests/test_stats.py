import math

import pytest

from diamusic.stats import Estimate, mean_ci, paired_difference, winner


def test_mean_ci_against_a_hand_computation():
    # values 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    e = mean_ci([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.n == 3
    assert e.low == pytest.approx(2 - 2.484138, abs=1e-6) and e.high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert e.format(2) == "2.00 ± 2.48"
    # two values 0.5, 1.5: s = 0.7071068, t_{0.975, 1} = 12.706205, half-width 6.353102
    assert mean_ci([0.5, 1.5]).half_width == pytest.approx(6.353102, abs=1e-6)


def test_one_value_has_no_interval_and_nan_is_dropped():
    single = mean_ci([3.0])
    assert single.mean == 3.0 and math.isnan(single.low) and not single.excludes_zero()
    assert single.format() == "3.000"
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2
    assert mean_ci([]).format() == "-"


def test_paired_difference_uses_pairs_not_two_means():
    # a beats b by exactly 0.1 on every seed although seeds vary a lot: the paired interval is tight
    a, b = [1.0, 2.0, 3.0], [1.1, 2.1, 3.1]
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(-0.1) and d.half_width == pytest.approx(0.0, abs=1e-12)
    assert d.excludes_zero()
    # differences -0.1, 0.1, -0.3: mean -0.1, s = 0.2, half-width 4.302653 * 0.2 / sqrt(3) = 0.496828
    d = paired_difference([1.0, 2.1, 2.7], [1.1, 2.0, 3.0])
    assert d.mean == pytest.approx(-0.1) and d.half_width == pytest.approx(0.496828, abs=1e-6)
    assert not d.excludes_zero()
    with pytest.raises(ValueError, match="equal counts"):
        paired_difference([1.0], [1.0, 2.0])


def test_winner_only_where_the_interval_excludes_zero():
    lower = Estimate(-0.1, -0.15, -0.05, 3)  # name - reference < 0 for sure
    assert winner(lower, "musicgen", "dia", lower_is_better=True) == "musicgen"
    assert winner(lower, "musicgen", "dia", lower_is_better=False) == "dia"
    higher = Estimate(0.1, 0.05, 0.15, 3)
    assert winner(higher, "musicgen", "dia", lower_is_better=True) == "dia"
    assert winner(Estimate(-0.1, -0.3, 0.1, 3), "musicgen", "dia", lower_is_better=True) is None
    assert winner(Estimate(-0.1, math.nan, math.nan, 1), "musicgen", "dia", lower_is_better=True) is None
