"""Small-sample statistics for seed-paired comparisons (numpy and scipy only).

An ablation trains each configuration with the same few seeds, so two configurations are compared
seed by seed: the per-seed differences cancel the luck of the seed (initialisation, shuffling)
that both share. With 3 to 10 seeds a Student t interval is the honest spread; a normal one
would be too narrow.

Every function rejects NaN and infinite inputs with ``ValueError``: a NaN accuracy is a failed
job (an infinite loss a diverged one), and it should be left out by whoever collects the records,
not averaged silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

MINUS = "\u2212"  # a typographic minus: "−0.4" reads better than "-0.4" in a table
_SAME = 1e-12  # differences closer than this are float noise of one value (accuracies are k/N)


@dataclass(frozen=True)
class PairedDiff:
    """Mean of ``a - b`` over seeds with its t interval and two-sided paired t-test p-value."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int
    no_variance: bool = False  # every seed moved by the same non-zero amount: nothing to test


@dataclass(frozen=True)
class EffectRange:
    """How far apart a factor's best and worst levels are, paired by seed."""

    best: Any
    worst: Any
    diff: float
    low: float
    high: float


def _finite_1d(values: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what} is empty; at least one value is needed")
    if not np.isfinite(x).all():
        raise ValueError(
            f"{what} contains NaN or infinity: {x.tolist()}; leave failed jobs out instead"
        )
    return x


def _t_interval(mean: float, sd: float, n: int, level: float) -> tuple[float, float]:
    """``mean ± t(level, n-1) · sd/√n``; NaN bounds for n < 2, the mean itself when sd is 0."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n < 2:
        return math.nan, math.nan
    if sd == 0:
        return mean, mean
    half = stats.t.ppf(0.5 + level / 2, df=n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean with a Student t confidence interval.

    Args:
        values: One number per seed; NaN is rejected.
        level: Confidence level of the interval, between 0 and 1.

    Returns:
        ``(mean, low, high)``. With one value both bounds are NaN (no spread to estimate); when
        every value is the same the interval collapses to the mean.

    Raises:
        ValueError: empty input, NaN values, or a level outside (0, 1).
    """
    x = _finite_1d(values, "values")
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else math.nan
    low, high = _t_interval(mean, sd, x.size, level)
    return mean, low, high


def paired_diff(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDiff:
    """Mean of ``a - b`` over seeds, its t interval and a two-sided paired t-test.

    The test matches ``scipy.stats.ttest_rel(a, b)``. Where scipy would divide zero by zero or
    report an infinite statistic, that is when every per-seed difference is the same number
    (to within 1e-12), the interval is the difference itself and p is 1.0 if that difference is
    0; otherwise there is no variance to test against (two or three seeds of k/N accuracies land
    on one difference by chance), so p is NaN and ``no_variance`` is set: a p of 0 would claim
    certainty. With one seed there is no test either: p and both bounds are NaN.

    Args:
        a: Scores of the first configuration, one per seed.
        b: Scores of the second configuration for the same seeds, in the same order.
        level: Confidence level of the interval.

    Returns:
        A :class:`PairedDiff` of ``a - b``.

    Raises:
        ValueError: lengths differ, empty input, or NaN or infinite values.
    """
    x = _finite_1d(a, "a")
    y = _finite_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"a and b must be paired by seed, got {x.size} and {y.size} values")
    d = x - y
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        return PairedDiff(mean, math.nan, math.nan, math.nan, n)
    if float(np.ptp(d)) <= _SAME * max(1.0, abs(mean)):
        if abs(mean) <= _SAME:
            return PairedDiff(mean, mean, mean, 1.0, n)
        return PairedDiff(mean, mean, mean, math.nan, n, no_variance=True)
    low, high = _t_interval(mean, float(d.std(ddof=1)), n, level)
    p = float(stats.ttest_rel(x, y).pvalue)
    return PairedDiff(mean, low, high, p, n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjustment of a family of p-values.

    Sorted ascending, the i-th smallest of m p-values (i from 0) is multiplied by ``m - i``; a
    running maximum keeps the adjusted values in the same order as the raw ones, and each is
    capped at 1. This is ``statsmodels.stats.multitest.multipletests(method="holm")``. Rejecting
    where the adjusted p is below alpha controls the family-wise error rate at alpha.

    NaN p-values (comparisons that could not be tested, e.g. one seed) stay NaN and do not count
    towards m.

    Args:
        p_values: Raw p-values in any order.

    Returns:
        The adjusted p-values, in the order given.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = np.asarray(p_values, dtype=float).ravel()
    tested = ~np.isnan(p)
    if ((p[tested] < 0) | (p[tested] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    adjusted = np.full(p.shape, math.nan)
    idx = np.flatnonzero(tested)
    m = idx.size
    if m:
        order = idx[np.argsort(p[idx], kind="stable")]
        scaled = p[order] * np.arange(m, 0, -1)
        adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def effect_range(levels: Mapping[Any, Sequence[float]], level: float = 0.95) -> EffectRange:
    """The spread of a factor: best level minus worst level, paired by seed.

    The best and worst levels are picked by their means, then the interval is the paired t
    interval of their per-seed differences. Picking both from the same data that the interval is
    computed on makes it optimistic (too far from 0, too narrow): a factor that does nothing still
    shows a positive spread. Read it as a ranking aid, and the per-level tests against the base as
    the evidence.

    Args:
        levels: Scores per level, each list with one value per seed, every list in the same seed
            order.
        level: Confidence level of the interval.

    Returns:
        An :class:`EffectRange`; ``diff`` is ``mean(best) - mean(worst)`` (0 with one level).

    Raises:
        ValueError: no levels, lists of different lengths, or NaN values.
    """
    if not levels:
        raise ValueError("effect_range needs at least one level")
    scores = {k: _finite_1d(v, f"level {k!r}") for k, v in levels.items()}
    sizes = {k: v.size for k, v in scores.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"levels must be paired by seed (same number of values), got {sizes}")
    means = {k: float(v.mean()) for k, v in scores.items()}
    best = max(means, key=means.__getitem__)
    worst = min(means, key=means.__getitem__)
    d = paired_diff(scores[best], scores[worst], level)
    return EffectRange(best, worst, d.mean, d.low, d.high)


def fmt_number(x: float, in_points: bool = True) -> str:
    """A difference for people: percentage points with one decimal, or 3 significant digits.

    Args:
        x: The difference (an accuracy difference when ``in_points``).
        in_points: Multiply by 100 and show one decimal.

    Returns:
        The number with a typographic minus, ``"n/a"`` for NaN.
    """
    if math.isnan(x):
        return "n/a"
    text = f"{x * 100:.1f}" if in_points else f"{x:.3g}"
    if text.lstrip("-") in ("0.0", "0"):
        text = text.lstrip("-")  # -0.0 is noise that rounds to nothing, not a direction
    return text.replace("-", MINUS)


def fmt_interval(low: float, high: float, in_points: bool = True) -> str:
    """``"[low, high]"`` formatted like :func:`fmt_number`."""
    return f"[{fmt_number(low, in_points)}, {fmt_number(high, in_points)}]"


def verdict(
    diff: PairedDiff,
    n_seeds: int,
    alpha: float = 0.05,
    in_points: bool = True,
    p_value: float | None = None,
) -> str:
    """One phrase saying whether a level beat the base, e.g. ``"better by 0.4 points [0.1, 0.7]"``.

    A difference counts when its p-value is below ``alpha``. Pass the Holm-adjusted p-value of the
    family as ``p_value`` (see :func:`holm`); without it ``diff.p_value`` is used, which for a
    paired t-test is the same decision as the ``1 - alpha`` interval excluding 0. The interval
    shown is always the unadjusted one from ``diff``; when it excludes 0 but the adjusted p-value
    does not pass, the phrase says both ("no detectable difference ... after Holm adjustment,
    though worse alone").

    Args:
        diff: The paired difference, level minus base (positive is better for accuracy).
        n_seeds: Seeds behind the comparison, named in the "no difference" wording.
        alpha: Family-wise significance level.
        in_points: Show accuracy differences in percentage points (x100, one decimal).
        p_value: The p-value to decide with, normally Holm-adjusted; defaults to ``diff.p_value``.

    Returns:
        ``"better by …"`` or ``"worse by …"`` (size and interval of the gain or loss, so both
        positive), ``"no detectable difference with N seeds (mean [low, high])"``, or ``"no
        variance across seeds: …"`` where every seed moved by the same amount (no p-value).
    """
    p = diff.p_value if p_value is None else p_value
    unit = " points" if in_points else ""
    if diff.no_variance:
        return (
            f"no variance across seeds: {fmt_number(diff.mean, in_points)}{unit} on each of "
            f"{diff.n} seeds, no p-value"
        )
    if not math.isnan(p) and p < alpha and diff.mean != 0:
        # "worse by 1.2 [0.8, 1.6]" gives the size of the loss, so its interval is negated too
        sign = 1 if diff.mean > 0 else -1
        word = "better" if sign > 0 else "worse"
        size = fmt_number(sign * diff.mean, in_points)
        bounds = sorted((sign * diff.low, sign * diff.high))
        return f"{word} by {size}{unit} {fmt_interval(*bounds, in_points)}"
    seeds = f"{n_seeds} seed" + ("" if n_seeds == 1 else "s")
    mean = fmt_number(diff.mean, in_points)
    if (
        p_value is not None
        and diff.n >= 2
        and not math.isnan(diff.p_value)
        and diff.p_value < alpha <= p
        and diff.mean != 0
    ):
        # significant alone, not after the adjustment for the factor's other levels: say both
        word = "better" if diff.mean > 0 else "worse"
        return (
            f"no detectable difference with {seeds} after Holm adjustment (p {p:.2g}), though "
            f"{word} alone ({mean} {fmt_interval(diff.low, diff.high, in_points)})"
        )
    spread = (
        "; one seed gives no interval"
        if diff.n < 2
        else " " + fmt_interval(diff.low, diff.high, in_points)
    )
    return f"no detectable difference with {seeds} ({mean}{spread})"
