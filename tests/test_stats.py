"""bench.results.stats against scipy on fixed numbers, Holm by hand, and the verdict wording."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from bench.results.stats import (
    EffectRange,
    PairedDiff,
    effect_range,
    holm,
    mean_ci,
    paired_diff,
    verdict,
)

A = [0.881, 0.874, 0.879, 0.886, 0.870]
B = [0.875, 0.872, 0.870, 0.880, 0.869]


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_is_scipys_t_interval(level):
    mean, low, high = mean_ci(A, level)
    want = stats.t.interval(level, df=len(A) - 1, loc=sum(A) / len(A), scale=stats.sem(A))
    assert mean == pytest.approx(sum(A) / len(A))
    assert (low, high) == pytest.approx(want)


def test_mean_ci_edge_cases():
    mean, low, high = mean_ci([0.9])
    assert mean == 0.9 and math.isnan(low) and math.isnan(high)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([0.9, math.nan])
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="level"):
        mean_ci(A, level=95)


def test_paired_diff_is_scipys_ttest_rel():
    d = paired_diff(A, B)
    ref = stats.ttest_rel(A, B)
    ci = ref.confidence_interval(0.95)
    assert d.n == 5
    assert d.mean == pytest.approx(sum(a - b for a, b in zip(A, B, strict=True)) / 5)
    assert d.p_value == pytest.approx(ref.pvalue)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    # the order of a and b flips the sign and mirrors the interval, not the p-value
    r = paired_diff(B, A)
    assert (r.mean, r.low, r.high) == pytest.approx((-d.mean, -d.high, -d.low))
    assert r.p_value == pytest.approx(d.p_value)


def test_paired_diff_edge_cases():
    one = paired_diff([0.9], [0.8])
    assert one.mean == pytest.approx(0.1) and one.n == 1
    assert all(math.isnan(x) for x in (one.low, one.high, one.p_value))
    # every seed moved by the same amount: a definite answer where scipy has 0/0 or infinity
    # every seed moved by the same non-zero amount: no variance to test against, so no p-value
    # (scipy divides by zero; a p of 0 would claim certainty from two or three seeds)
    same = paired_diff([0.90, 0.85, 0.80], [0.88, 0.83, 0.78])
    assert math.isnan(same.p_value) and same.no_variance
    assert same.low == same.mean == same.high == pytest.approx(0.02)
    zero = paired_diff([0.9, 0.8], [0.9, 0.8])
    assert (zero.mean, zero.low, zero.high, zero.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="paired"):
        paired_diff([0.9, 0.8], [0.9])
    with pytest.raises(ValueError, match="NaN"):
        paired_diff([0.9, math.nan], [0.9, 0.8])


def test_holm_on_a_hand_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, monotone in the raw order
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([0.3, 0.5]) == pytest.approx([0.6, 0.6])
    assert holm([0.02]) == [0.02]
    assert holm([]) == []


def test_holm_leaves_untested_comparisons_out_of_the_family():
    adjusted = holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_effect_range_pairs_best_and_worst_by_seed():
    levels = {"adam": A, "sgd": [a - 0.03 for a in A], "rmsprop": B}
    r = effect_range(levels)
    assert isinstance(r, EffectRange)
    assert (r.best, r.worst) == ("adam", "sgd")
    assert (r.diff, r.low, r.high) == pytest.approx((0.03, 0.03, 0.03))
    r2 = effect_range({"x": A, "y": B})
    ci = stats.ttest_rel(A, B).confidence_interval(0.95)
    assert (r2.best, r2.worst) == ("x", "y")
    assert (r2.low, r2.high) == pytest.approx((ci.low, ci.high))
    with pytest.raises(ValueError, match="paired"):
        effect_range({"x": A, "y": B[:3]})
    with pytest.raises(ValueError):
        effect_range({})


def test_verdict_wording():
    better = PairedDiff(0.004, 0.001, 0.007, 0.01, 3)
    assert verdict(better, 3) == "better by 0.4 points [0.1, 0.7]"
    worse = PairedDiff(-0.012, -0.016, -0.008, 0.001, 3)
    assert verdict(worse, 3) == "worse by 1.2 points [0.8, 1.6]"
    none = PairedDiff(-0.001, -0.005, 0.003, 0.4, 3)
    assert verdict(none, 3) == "no detectable difference with 3 seeds (\u22120.1 [\u22120.5, 0.3])"
    assert verdict(better, 3, in_points=False) == "better by 0.004 [0.001, 0.007]"


def test_verdict_decides_with_the_adjusted_p_value():
    d = PairedDiff(0.004, 0.0005, 0.0075, 0.03, 3)
    assert verdict(d, 3).startswith("better by 0.4 points")
    assert verdict(d, 3, p_value=0.09).startswith("no detectable difference with 3 seeds")
    assert verdict(d, 3, alpha=0.01).startswith("no detectable difference")


def test_verdict_with_one_seed_or_identical_differences():
    one = paired_diff([0.9], [0.899])
    assert (
        verdict(one, 1) == "no detectable difference with 1 seed (0.1; one seed gives no interval)"
    )
    same = paired_diff([0.90, 0.85], [0.88, 0.83])
    assert verdict(same, 2) == "no variance across seeds: 2.0 points on each of 2 seeds, no p-value"
    down = paired_diff([0.90, 0.85, 0.80], [0.91, 0.86, 0.81])
    assert verdict(down, 3, p_value=math.nan) == (
        "no variance across seeds: \u22121.0 points on each of 3 seeds, no p-value"
    )


def test_verdict_names_a_difference_that_holm_adjustment_takes_away():
    # the unadjusted interval excludes 0 (p 0.02), the family's adjusted p (0.06) does not pass
    diff = PairedDiff(mean=-0.033, low=-0.049, high=-0.016, p_value=0.02, n=3)
    text = verdict(diff, 3, p_value=0.06)
    assert text.startswith("no detectable difference with 3 seeds after Holm adjustment")
    assert "worse alone" in text and "[−4.9, −1.6]" in text
    # without an adjusted p-value the unadjusted one decides
    assert verdict(diff, 3).startswith("worse by 3.3 points")


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_infinities_are_rejected_like_nan(bad):
    with pytest.raises(ValueError, match="NaN or infinity"):
        mean_ci([0.9, bad])
    with pytest.raises(ValueError, match="NaN or infinity"):
        paired_diff([0.9, 0.8], [bad, 0.8])
    with pytest.raises(ValueError, match="NaN or infinity"):
        effect_range({"x": [0.9, 0.8], "y": [0.9, bad]})


def test_no_variance_reaches_the_what_matters_report():
    from bench.results.what_matters import analyse, markdown, text

    def rec(factor, level, shift, seed):
        return {
            "factor": factor,
            "level": level,
            "seed": seed,
            "is_base": factor == "base",
            "val_accuracy": (0.88, 0.85, 0.87)[seed] + shift,
        }

    records = [rec("base", "base", 0.0, s) for s in range(3)]
    records += [rec("optimizer", "sgd", -0.02, s) for s in range(3)]
    [result] = analyse(records, base_levels={"optimizer": "adam"})
    row = next(r for r in result.levels if r.level == "sgd")
    assert math.isnan(row.p_holm) and not result.detected  # not claimed as a detected difference
    assert row.verdict.startswith("no variance across seeds")
    for out in (text([result]), markdown([result])):
        assert "no variance across seeds: \u22122.0 points on each of 3 seeds, no p-value" in out
    with pytest.raises(ValueError, match="no val_accuracy"):
        analyse([*records, {**rec("optimizer", "momentum", 0.0, 0), "val_accuracy": math.inf}])
