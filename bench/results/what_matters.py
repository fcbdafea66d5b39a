"""What matters, measured: the results of a one-factor-at-a-time ablation as numbers and a plot.

Input is one plain record per finished (cell, seed) job of an ablation
(:mod:`bench.designs.ablation_plan`)::

    {"factor": "optimizer", "level": "sgd", "seed": 0, "is_base": False,
     "val_accuracy": 0.861, "test_accuracy": 0.855}

The shared base cell's records have factor ``"base"``. Every level of a factor is compared with
the base on validation accuracy, seed by seed; the p-values within a factor are Holm-adjusted, and
a factor's effect is the spread between its best and worst level. Test accuracy is shown beside
the validation numbers and never used to decide anything, so the test set stays an unbiased check.

numpy, scipy and (for the plot only) matplotlib; no TensorFlow, no tracking server.
"""

from __future__ import annotations

import math
import numbers
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.results.stats import (
    EffectRange,
    PairedDiff,
    effect_range,
    fmt_interval,
    fmt_number,
    holm,
    mean_ci,
    paired_diff,
    verdict,
)

BASE = "base"  # the factor name of the shared base cell's records (as in ablation_plan.BASE)
NAN3 = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class LevelResult:
    """One level of a factor: its accuracies over seeds and how it compares with the base.

    Attributes:
        level: The level (the base row carries the base configuration's value, or ``"base"``).
        is_base: Whether this row is the shared base cell.
        n: Seeds this level finished.
        val: Mean validation accuracy with its t interval, ``(mean, low, high)``.
        test: The same for test accuracy (NaN where no job reported one).
        diff: Validation accuracy minus the base's, paired by seed; None on the base row and
            where no seed is shared with the base.
        p_holm: The paired t-test's p-value, Holm-adjusted within the factor (NaN if untested).
        verdict: ``"better by …"``, ``"worse by …"``, ``"no detectable difference …"``, or
            ``"base"``.
    """

    level: Any
    is_base: bool
    n: int
    val: tuple[float, float, float]
    test: tuple[float, float, float]
    diff: PairedDiff | None
    p_holm: float
    verdict: str


@dataclass(frozen=True)
class FactorResult:
    """A factor's levels, its effect and the settings the analysis used.

    Attributes:
        factor: The parameter varied.
        base_level: The base configuration's value of it.
        levels: One row per level, the base row included, in display order.
        effect: Best minus worst level by mean validation accuracy, over the seeds every level
            finished (optimistic, see :func:`bench.results.stats.effect_range`).
        n_seeds: Seeds that every level of the factor finished (the effect's pairs).
        conf_level: Confidence level of every interval.
        alpha: Family-wise significance level of the verdicts.
    """

    factor: str
    base_level: Any
    levels: tuple[LevelResult, ...]
    effect: EffectRange
    n_seeds: int
    conf_level: float
    alpha: float

    @property
    def detected(self) -> list[LevelResult]:
        """The levels that differ detectably from the base."""
        return [r for r in self.levels if r.verdict.startswith(("better", "worse"))]


def _label(level: Any) -> str:
    if isinstance(level, float):
        return f"{level:g}"
    if isinstance(level, (list, tuple)):
        return "/".join(_label(v) for v in level)
    return str(level)


def _hashable(level: Any) -> Any:
    return tuple(level) if isinstance(level, list) else level


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rows = list(records)
    seen = set()
    for i, r in enumerate(rows):
        missing = [k for k in ("factor", "level", "seed", "val_accuracy") if k not in r]
        if missing:
            raise ValueError(f"record {i} lacks {missing}: {dict(r)}")
        v = r["val_accuracy"]
        if not _is_number(v) or not math.isfinite(v):
            raise ValueError(f"record {i} has no val_accuracy ({v!r}); leave failed jobs out")
        if bool(r.get("is_base", False)) != (r["factor"] == BASE):
            raise ValueError(f"record {i}: is_base must be true exactly for factor '{BASE}'")
        key = (r["factor"], _hashable(r["level"]), r["seed"])
        if key in seen:
            raise ValueError(f"record {i} repeats factor, level and seed {key}")
        seen.add(key)
    return rows


def _summary(
    runs: Mapping[Any, Mapping[str, Any]], metric: str, conf: float
) -> tuple[float, float, float]:
    values = [r.get(metric) for r in runs.values()]
    values = [float(v) for v in values if _is_number(v) and math.isfinite(v)]
    return mean_ci(values, conf) if values else NAN3


def analyse(
    records: Iterable[Mapping[str, Any]],
    level: float = 0.95,
    *,
    base_levels: Mapping[str, Any] | None = None,
    alpha: float = 0.05,
) -> list[FactorResult]:
    """Compare every level of every factor with the shared base, paired by seed.

    Pairs use the seeds that both sides finished, so a failed job costs a pair, not the
    comparison. Decisions (verdicts, ranking) use validation accuracy only.

    Args:
        records: One mapping per finished job with ``factor``, ``level``, ``seed``,
            ``val_accuracy`` and optionally ``is_base`` and ``test_accuracy`` (None or missing if
            not scored). The base cell's records have factor ``"base"``.
        level: Confidence level of every interval.
        base_levels: Per factor, the base configuration's value (``Plan.base_levels``); it labels
            the base row and places it among numeric levels. Without it the row reads ``"base"``.
        alpha: Family-wise significance level for the Holm-adjusted verdicts within a factor.

    Returns:
        One :class:`FactorResult` per factor, the largest effect first (NaN effects last).

    Raises:
        ValueError: a malformed or repeated record, a NaN validation accuracy, or no base
            records.
    """
    rows = _check(records)
    base_runs = {r["seed"]: r for r in rows if r["factor"] == BASE}
    if not base_runs:
        raise ValueError(f"no records of the base cell (factor '{BASE}'); nothing to compare to")
    by_factor: dict[str, dict[Any, dict[Any, Mapping[str, Any]]]] = {}
    for r in rows:
        if r["factor"] != BASE:
            cells = by_factor.setdefault(r["factor"], {})
            cells.setdefault(_hashable(r["level"]), {})[r["seed"]] = r
    base_levels = base_levels or {}
    results = [
        _factor(name, cells, base_runs, base_levels.get(name, BASE), level, alpha)
        for name, cells in by_factor.items()
    ]
    return sorted(
        results,
        key=lambda f: (math.isnan(f.effect.diff), -_nan_to(f.effect.diff, 0.0), f.factor),
    )


def from_summary(summary: Mapping[str, Any]) -> list[FactorResult]:
    """The results of a finished ablation batch, recomputed from the records its summary keeps
    (so the text and the plot come from the same code as a fresh analysis); [] without a base."""
    recs = summary.get("records") or []
    if summary.get("error") or not any(r.get("factor") == "base" for r in recs):
        return []
    return analyse(recs, base_levels=summary.get("base_levels") or None)


def summary_text(summary: Mapping[str, Any]) -> str:
    """What ``bench.ablate`` prints for a finished ablation batch."""
    if summary.get("error"):
        return f"no analysis: {summary['error']}\n"
    return text(from_summary(summary))


def _nan_to(x: float, default: float) -> float:
    return default if math.isnan(x) else x


def _factor(
    name: str,
    cells: dict[Any, dict[Any, Mapping[str, Any]]],
    base_runs: dict[Any, Mapping[str, Any]],
    base_level: Any,
    conf: float,
    alpha: float,
) -> FactorResult:
    diffs: dict[Any, PairedDiff | None] = {}
    for lvl, runs in cells.items():
        shared = sorted(set(runs) & set(base_runs))
        diffs[lvl] = (
            paired_diff(
                [runs[s]["val_accuracy"] for s in shared],
                [base_runs[s]["val_accuracy"] for s in shared],
                conf,
            )
            if shared
            else None
        )
    tested = [lvl for lvl, d in diffs.items() if d is not None]
    adjusted = dict(zip(tested, holm([diffs[lvl].p_value for lvl in tested]), strict=True))

    rows = [
        LevelResult(
            base_level,
            True,
            len(base_runs),
            _summary(base_runs, "val_accuracy", conf),
            _summary(base_runs, "test_accuracy", conf),
            None,
            math.nan,
            "base",
        )
    ]
    for lvl, runs in cells.items():
        d = diffs[lvl]
        p = adjusted.get(lvl, math.nan)
        words = verdict(d, d.n, alpha, p_value=p) if d else "no seed shared with the base"
        rows.append(
            LevelResult(
                lvl,
                False,
                len(runs),
                _summary(runs, "val_accuracy", conf),
                _summary(runs, "test_accuracy", conf),
                d,
                p,
                words,
            )
        )
    everyone = set(base_runs).intersection(*(set(r) for r in cells.values()))
    seeds = sorted(everyone)
    if seeds:
        table = {BASE: [base_runs[s]["val_accuracy"] for s in seeds]}
        table.update({lvl: [runs[s]["val_accuracy"] for s in seeds] for lvl, runs in cells.items()})
        eff = effect_range(table, conf)
        eff = replace(
            eff,
            best=base_level if eff.best == BASE else eff.best,
            worst=base_level if eff.worst == BASE else eff.worst,
        )
    else:
        eff = EffectRange(None, None, math.nan, math.nan, math.nan)
    return FactorResult(name, base_level, _ordered(rows), eff, len(seeds), conf, alpha)


def _ordered(rows: list[LevelResult]) -> tuple[LevelResult, ...]:
    """Numeric levels in numeric order (the base among them); otherwise the base first."""
    if all(_is_number(r.level) for r in rows):
        return tuple(sorted(rows, key=lambda r: r.level))
    return tuple(rows)


# ---------------------------------------------------------------- presentation

_COLUMNS = ("level", "seeds", "val accuracy", "test accuracy", "\u0394 val (points)", "p (Holm)")


def _acc(triple: tuple[float, float, float]) -> str:
    mean, low, high = triple
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.4f}"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _row(r: LevelResult) -> list[str]:
    label = _label(r.level) + (" (base)" if r.is_base else "")
    if r.diff is None:
        delta = "reference" if r.is_base else "n/a"
    else:
        delta = f"{fmt_number(r.diff.mean)} {fmt_interval(r.diff.low, r.diff.high)}"
    p = "" if math.isnan(r.p_holm) else f"{r.p_holm:.2g}"
    return [label, str(r.n), _acc(r.val), _acc(r.test), delta, p, r.verdict]


def headline(result: FactorResult) -> str:
    """The one-line summary of a factor: its effect, then the levels that differ from the base.

    Args:
        result: One factor's analysis.

    Returns:
        E.g. ``"normalization: effect 4.1 points [3.2, 5.0] (best minmax, worst none); none
        worse by 4.0 points [3.1, 4.9]"``.
    """
    e = result.effect
    if math.isnan(e.diff):
        effect = "effect n/a (no seed finished by every level)"
    else:
        effect = (
            f"effect {fmt_number(e.diff)} points {fmt_interval(e.low, e.high)} "
            f"(best {_label(e.best)}, worst {_label(e.worst)})"
        )
    found = [f"{_label(r.level)} {r.verdict}" for r in result.detected]
    if not found:
        found = [f"no level differs detectably from the base ({_label(result.base_level)})"]
    return f"{result.factor}: {effect}; " + "; ".join(found)


def _intro(results: Sequence[FactorResult]) -> str:
    conf = round(results[0].conf_level * 100)
    alpha = results[0].alpha
    seeds = max(r.n_seeds for r in results)
    return (
        "Each factor is varied alone around the base configuration, and every cell trains with "
        f"the same seeds (up to {seeds}). Differences are validation-accuracy points, level minus "
        f"base, paired by seed, with {conf}% t intervals; a level differs from the base when its "
        f"paired t-test p-value, Holm-adjusted within the factor, is below {alpha:g}. A factor's "
        "effect is its best level minus its worst; picking both from the same runs makes that "
        "interval optimistic. Test accuracy is shown beside, never used to decide."
    )


def markdown(results: Sequence[FactorResult]) -> str:
    """The "What matters" section as Markdown: a ranked list of factors, then a table per factor.

    Args:
        results: The output of :func:`analyse`, in its order.

    Returns:
        Markdown text starting with ``## What matters``.
    """
    if not results:
        return "## What matters\n\nNo ablation results.\n"
    out = ["## What matters", "", _intro(results), ""]
    out += [f"{i}. {headline(r)}" for i, r in enumerate(results, 1)]
    header = [*_COLUMNS, "verdict"]
    for r in results:
        out += ["", f"### {r.factor} (base: {_label(r.base_level)})", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append(
            "|" + "|".join(("---:" if h in ("seeds", "p (Holm)") else "---") for h in header) + "|"
        )
        out += ["| " + " | ".join(_row(lr)) + " |" for lr in r.levels]
    return "\n".join(out) + "\n"


def text(results: Sequence[FactorResult]) -> str:
    """The "What matters" section as plain text for a terminal, columns aligned.

    Args:
        results: The output of :func:`analyse`, in its order.

    Returns:
        Text starting with ``What matters``.
    """
    if not results:
        return "What matters\n\nNo ablation results.\n"
    out = ["What matters", "", *textwrap.wrap(_intro(results), 100), ""]
    out += [f"{i:>2}. {headline(r)}" for i, r in enumerate(results, 1)]
    header = [*_COLUMNS, "verdict"]
    for r in results:
        table = [header, *(_row(lr) for lr in r.levels)]
        widths = [max(len(row[c]) for row in table) for c in range(len(header) - 1)]
        out += ["", f"{r.factor} (base: {_label(r.base_level)})"]
        for row in table:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            out.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(out) + "\n"


def html(results: Sequence[FactorResult]) -> str:
    """The "What matters" section's body as HTML (for ``report.html``): the ranked factors, then
    a table per factor, as :func:`markdown` has them.

    Args:
        results: The output of :func:`analyse`, in its order.
    """
    from bench.results import html as h

    if not results:
        return h.paragraph("No ablation results.")
    out = [h.paragraph(_intro(results))]
    out.append("<ol>" + "".join(f"<li>{h.esc(headline(r))}</li>" for r in results) + "</ol>")
    header = [*_COLUMNS, "verdict"]
    for r in results:
        out.append(f"<h3>{h.esc(r.factor)} (base: {h.esc(_label(r.base_level))})</h3>")
        out.append(h.table(header, [_row(lr) for lr in r.levels]))
    return "\n".join(out)


def forest_plot(results: Sequence[FactorResult], path: str | Path) -> Path:
    """Each level's validation-accuracy difference to the base, one panel per factor.

    Points are level minus base in accuracy points with their paired t intervals; the base sits
    at 0 as a hollow marker, a vertical line marks 0, and levels that differ detectably are
    coloured (green better, red worse). Panels share the x axis so effects compare across factors.

    Args:
        results: The output of :func:`analyse`; panels follow its order.
        path: Where to write the PNG.

    Returns:
        The path written.

    Raises:
        ValueError: no results.
    """
    # matplotlib only here: the tables above must stay cheap to import. The object-oriented
    # Figure API needs no pyplot and no global backend switch, so it is safe in any process.
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no factors to plot")
    path = Path(path)
    heights = [max(len(r.levels), 2) for r in results]
    fig = Figure(figsize=(7.5, 0.9 + 0.32 * sum(heights) + 0.45 * len(results)))
    axes = fig.subplots(len(results), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    axes = list(axes) if len(results) > 1 else [axes]
    colours = {"better": "tab:green", "worse": "tab:red"}
    for ax, r in zip(axes, results, strict=True):
        ys = list(range(len(r.levels)))[::-1]  # first row on top, like the table
        for y, lr in zip(ys, r.levels, strict=True):
            if lr.is_base:
                ax.plot([0], [y], "o", mfc="white", mec="black")
                continue
            if lr.diff is None:
                continue
            colour = colours.get(lr.verdict.split(" ", 1)[0], "tab:gray")
            mean = lr.diff.mean * 100
            if math.isnan(lr.diff.low):
                ax.plot([mean], [y], "o", color=colour)
            else:
                err = [[mean - lr.diff.low * 100], [lr.diff.high * 100 - mean]]
                ax.errorbar([mean], [y], xerr=err, fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels(
            [_label(lr.level) + (" (base)" if lr.is_base else "") for lr in r.levels]
        )
        ax.set_ylim(-0.7, len(r.levels) - 0.3)
        ax.set_title(headline(r).split(";", 1)[0], fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("validation accuracy minus base (points), paired by seed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
