import math

import pytest

from diamusic.stats import effect_size, holm, mean_ci, paired_difference, paired_p


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
    assert single.mean == 3.0 and math.isnan(single.low) and math.isnan(single.half_width)
    assert single.format() == "3.000"
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2
    assert mean_ci([]).format() == "-"


def test_paired_difference_uses_pairs_not_two_means():
    # a beats b by exactly 0.1 on every seed although seeds vary a lot: the paired interval is tight
    a, b = [1.0, 2.0, 3.0], [1.1, 2.1, 3.1]
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(-0.1) and d.half_width == pytest.approx(0.0, abs=1e-12)
    assert d.low < 0 and d.high < 0
    # differences -0.1, 0.1, -0.3: mean -0.1, s = 0.2, half-width 4.302653 * 0.2 / sqrt(3) = 0.496828
    d = paired_difference([1.0, 2.1, 2.7], [1.1, 2.0, 3.0])
    assert d.mean == pytest.approx(-0.1) and d.half_width == pytest.approx(0.496828, abs=1e-6)
    assert d.low < 0 < d.high
    with pytest.raises(ValueError, match="equal counts"):
        paired_difference([1.0], [1.0, 2.0])


def test_paired_t_test_against_a_hand_computation():
    # differences -0.1, 0.1, -0.3: t = -0.1 / (0.2 / sqrt 3) = -0.866025; with 2 degrees of freedom the
    # two-sided p has a closed form, 1 - |t| / sqrt(t^2 + 2) = 0.477767
    assert paired_p([1.0, 2.1, 2.7], [1.1, 2.0, 3.0]) == pytest.approx(0.477767, abs=1e-6)
    # no test: the same difference in every pair (a zero-width interval), or one pair
    assert math.isnan(paired_p([1.0, 2.0, 3.0], [1.1, 2.1, 3.1])) and math.isnan(paired_p([1.0], [2.0]))


def test_holm_against_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, made monotone: 0.06 for the last
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, math.nan, 0.2])  # a nan is no test: the family has 2 members
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.2)
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_effect_size_is_the_difference_over_the_seed_to_seed_spread():
    # a: variance 0.743333, b: 0.903333 -> spread sqrt(0.823333) = 0.907377; mean difference -0.1
    assert effect_size([1.0, 2.1, 2.7], [1.1, 2.0, 3.0]) == pytest.approx(-0.1 / 0.907377, abs=1e-6)
    assert math.isnan(effect_size([1.0, 1.0], [2.0, 2.0]))  # no spread: no scale to measure it in
