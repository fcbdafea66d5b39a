"""Interactions, measured: the results of a crossed design as numbers, words and a plot.

Input is one plain record per finished (cell, seed) job of a crossed design
(:mod:`bench.designs.crossed`)::

    {"levels": {"normalization": "none", "optimizer": "sgd"}, "seed": 0,
     "val_accuracy": 0.861, "test_accuracy": 0.855}

Every comparison is paired by seed over the seeds that finished every cell (a failed cell costs
that seed, not the analysis):

* **main effects**: each level of a factor against its reference level, averaged over the levels
  of the other crossed factors; Holm-adjusted within the factor;
* **simple effects**: the same comparison under each level of a second factor;
* **interaction contrasts**: for levels ``a`` (of A) and ``b`` (of B), how much more ``a`` gains
  over A's reference under ``b`` than under B's reference,
  ``(y[a,b] - y[a0,b]) - (y[a,b0] - y[a0,b0])``, with a paired t interval; Holm-adjusted over
  the pair's contrasts;
* the **omnibus** repeated-measures analysis of variance with seeds as blocks
  (``statsmodels.stats.anova.AnovaRM``): one F test per main effect and per interaction.

Decisions use validation accuracy only; test accuracy is shown beside, never used to decide.
numpy, scipy, statsmodels and (for the plot only) matplotlib; no TensorFlow.
"""

from __future__ import annotations

import itertools
import math
import textwrap
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.results.stats import (
    PairedDiff,
    fmt_interval,
    fmt_number,
    holm,
    mean_ci,
    paired_diff,
    verdict,
)

NAN3 = (math.nan, math.nan, math.nan)


def _label(level: Any) -> str:
    if isinstance(level, float):
        return f"{level:g}"
    return str(level)


@dataclass(frozen=True)
class CellResult:
    """One combination of levels: its accuracies over every seed that finished it."""

    levels: tuple
    n: int
    val: tuple[float, float, float]
    test: tuple[float, float, float]


@dataclass(frozen=True)
class Effect:
    """A level against the reference level of the same factor, paired by seed."""

    level: Any
    reference: Any
    diff: PairedDiff
    p_holm: float
    verdict: str


@dataclass(frozen=True)
class MainEffect:
    """A factor's levels against its reference, averaged over the other crossed factors."""

    factor: str
    reference: Any
    effects: tuple[Effect, ...]


@dataclass(frozen=True)
class Contrast:
    """One interaction contrast of a pair of factors (A at ``a``, B at ``b``)."""

    a: Any
    b: Any
    diff: PairedDiff
    p_holm: float


@dataclass(frozen=True)
class AnovaRow:
    """One term of the repeated-measures analysis of variance (seeds as blocks)."""

    term: str
    f: float
    df_num: float
    df_den: float
    p: float


@dataclass(frozen=True)
class PairResult:
    """Two crossed factors (a third one, if any, averaged out).

    Attributes:
        first: Factor A, whose effect is read under each level of B.
        second: Factor B.
        simple: Per level of B, A's levels against A's reference under it.
        contrasts: Every interaction contrast, A's non-reference levels by B's.
        anova: The omnibus test of the A x B interaction, or None where it could not be run.
        verdict: One sentence in words.
    """

    first: str
    second: str
    simple: dict[Any, tuple[Effect, ...]]
    contrasts: tuple[Contrast, ...]
    anova: AnovaRow | None
    verdict: str


@dataclass(frozen=True)
class CrossResult:
    """Everything the report and the command print for a crossed design."""

    factors: tuple[str, ...]
    levels: dict[str, tuple]
    base_levels: dict[str, Any]
    seeds: tuple  # the seeds that finished every cell: the pairs of every comparison
    cells: tuple[CellResult, ...]
    mains: tuple[MainEffect, ...]
    pairs: tuple[PairResult, ...]
    anova: tuple[AnovaRow, ...]
    anova_note: str
    conf_level: float
    alpha: float

    def headlines(self) -> list[str]:
        """One line per main effect, then one per pair of factors."""
        out = [_main_headline(m, len(self.seeds)) for m in self.mains]
        return out + [f"{p.first} x {p.second}: {p.verdict}" for p in self.pairs]

    def cell(self, levels: Sequence[Any]) -> CellResult:
        """The cell at these levels (one per factor, in factor order)."""
        key = tuple(levels)
        return next(c for c in self.cells if c.levels == key)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _summary(values: list[float], conf: float) -> tuple[float, float, float]:
    values = [float(v) for v in values if _finite(v)]
    return mean_ci(values, conf) if values else NAN3


def analyse(
    records: Iterable[Mapping[str, Any]],
    factors: Sequence[str],
    levels: Mapping[str, Sequence[Any]],
    base_levels: Mapping[str, Any],
    conf: float = 0.95,
    alpha: float = 0.05,
) -> CrossResult:
    """Main effects, simple effects, interaction contrasts and the omnibus test of a crossed run.

    Args:
        records: One mapping per finished job: ``levels`` (factor -> level), ``seed``,
            ``val_accuracy`` and optionally ``test_accuracy``.
        factors: The crossed factors, in plan order.
        levels: Per factor, its levels in order.
        base_levels: Per factor, the reference level.
        conf: Confidence level of every interval.
        alpha: Family-wise significance level of the Holm-adjusted verdicts.

    Returns:
        The :class:`CrossResult`.

    Raises:
        ValueError: a malformed or repeated record, a level outside the plan, or fewer than 2
            seeds that finished every cell (nothing can be paired).
    """
    factors = tuple(factors)
    levels = {f: tuple(levels[f]) for f in factors}
    index = {f: {lvl: i for i, lvl in enumerate(levels[f])} for f in factors}
    shape = tuple(len(levels[f]) for f in factors)
    by_seed: dict[Any, dict[tuple, Mapping[str, Any]]] = {}
    for i, r in enumerate(records):
        try:
            cell = tuple(index[f][r["levels"][f]] for f in factors)
        except KeyError:
            raise ValueError(f"record {i} is not a cell of {factors}: {dict(r)}") from None
        if not _finite(r.get("val_accuracy")):
            raise ValueError(f"record {i} has no finite val_accuracy; leave failed jobs out")
        runs = by_seed.setdefault(r["seed"], {})
        if cell in runs:
            raise ValueError(f"record {i} repeats cell {cell} of seed {r['seed']}")
        runs[cell] = r
    every = [tuple(c) for c in itertools.product(*(range(n) for n in shape))]
    cells = []
    for c in every:
        runs = [by_seed[s][c] for s in by_seed if c in by_seed[s]]
        cells.append(
            CellResult(
                tuple(levels[f][k] for f, k in zip(factors, c, strict=True)),
                len(runs),
                _summary([r["val_accuracy"] for r in runs], conf),
                _summary([r.get("test_accuracy") for r in runs], conf),
            )
        )
    seeds = tuple(sorted(s for s, runs in by_seed.items() if len(runs) == len(every)))
    if len(seeds) < 2:
        raise ValueError(
            f"{len(seeds)} seed(s) finished every one of the {len(every)} cells; at least 2 are "
            "needed to pair the cells and estimate the seed-to-seed spread"
        )
    y = np.empty((len(seeds), *shape))
    for i, s in enumerate(seeds):
        for c in every:
            y[(i, *c)] = by_seed[s][c]["val_accuracy"]
    ref = {f: index[f][base_levels[f]] for f in factors}
    n = len(seeds)
    mains = tuple(_main(y, k, f, levels[f], ref[f], conf, alpha, n) for k, f in enumerate(factors))
    pairs = tuple(
        _pair(y, factors, levels, ref, i, j, conf, alpha, n)
        for i, j in itertools.combinations(range(len(factors)), 2)
    )
    anova, note = _anova(y, factors, seeds)
    pairs = tuple(_with_anova(p, anova, alpha) for p in pairs)
    return CrossResult(
        factors, levels, dict(base_levels), seeds, tuple(cells), mains, pairs, anova, note,
        conf, alpha,
    )  # fmt: skip


def _effects(
    pairs: list[tuple[Any, np.ndarray, np.ndarray]],
    reference: Any,
    conf: float,
    alpha: float,
    n: int,
) -> tuple[Effect, ...]:
    diffs = [(lvl, paired_diff(a, b, conf)) for lvl, a, b in pairs]
    adjusted = holm([d.p_value for _, d in diffs])
    return tuple(
        Effect(lvl, reference, d, p, verdict(d, n, alpha, p_value=p))
        for (lvl, d), p in zip(diffs, adjusted, strict=True)
    )


def _main(y, k, factor, lvls, r, conf, alpha, n) -> MainEffect:
    other = tuple(a for a in range(1, y.ndim) if a != k + 1)
    marginal = y.mean(axis=other) if other else y  # (seeds, levels of this factor)
    pairs = [(lvls[i], marginal[:, i], marginal[:, r]) for i in range(len(lvls)) if i != r]
    return MainEffect(factor, lvls[r], _effects(pairs, lvls[r], conf, alpha, n))


def _pair(y, factors, levels, ref, i, j, conf, alpha, n) -> PairResult:
    other = tuple(a + 1 for a in range(len(factors)) if a not in (i, j))
    m = y.mean(axis=other) if other else y  # (seeds, levels of A, levels of B)
    a_f, b_f = factors[i], factors[j]
    la, lb = levels[a_f], levels[b_f]
    a0, b0 = ref[a_f], ref[b_f]
    simple = {
        lb[b]: _effects(
            [(la[a], m[:, a, b], m[:, a0, b]) for a in range(len(la)) if a != a0],
            la[a0],
            conf,
            alpha,
            n,
        )  # fmt: skip
        for b in range(len(lb))
    }
    raw = [
        (la[a], lb[b], paired_diff(m[:, a, b] - m[:, a0, b], m[:, a, b0] - m[:, a0, b0], conf))
        for a in range(len(la))
        if a != a0
        for b in range(len(lb))
        if b != b0
    ]
    adjusted = holm([d.p_value for _, _, d in raw])
    contrasts = tuple(Contrast(a, b, d, p) for (a, b, d), p in zip(raw, adjusted, strict=True))
    return PairResult(a_f, b_f, simple, contrasts, None, "")


def _anova(y: np.ndarray, factors: tuple[str, ...], seeds: tuple) -> tuple[tuple, str]:
    """statsmodels' repeated-measures ANOVA, seeds as subjects; ``((), why)`` where it fails."""
    import pandas as pd
    from statsmodels.stats.anova import AnovaRM

    rows = []
    for i, s in enumerate(seeds):
        for c in itertools.product(*(range(n) for n in y.shape[1:])):
            rows.append({"seed": str(s), **{f: f"L{k}" for f, k in zip(factors, c, strict=True)},
                         "val": float(y[(i, *c)])})  # fmt: skip
    frame = pd.DataFrame(rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a zero residual (identical seeds) divides by zero
            table = AnovaRM(frame, "val", "seed", within=list(factors)).fit().anova_table
    except Exception as exc:  # noqa: BLE001 - the paired contrasts stand without it
        return (), f"the omnibus test could not be computed ({str(exc)[:120]})"
    out = []
    for term, row in table.iterrows():
        f, p = float(row["F Value"]), float(row["Pr > F"])
        if not (math.isfinite(f) and math.isfinite(p)):
            return (), "the omnibus test is undefined: the seeds do not vary around the cell means"
        out.append(AnovaRow(str(term).replace(":", " x "), f, float(row["Num DF"]),
                            float(row["Den DF"]), p))  # fmt: skip
    return tuple(out), ""


def _with_anova(pair: PairResult, anova: tuple[AnovaRow, ...], alpha: float) -> PairResult:
    term = f"{pair.first} x {pair.second}"
    row = next((r for r in anova if r.term == term), None)
    return PairResult(
        pair.first, pair.second, pair.simple, pair.contrasts, row, _pair_verdict(pair, row, alpha)
    )


def _detected(d: PairedDiff, p: float, alpha: float = 0.05) -> bool:
    return not d.no_variance and not math.isnan(p) and p < alpha and d.mean != 0


def _pair_verdict(pair: PairResult, anova: AnovaRow | None, alpha: float = 0.05) -> str:
    """In words: where the first factor matters, where it hardly does, and the interaction."""
    # the largest detected contrast tells the most; with none detected, the nearest to it
    ranked = sorted(
        pair.contrasts,
        key=lambda c: (
            (0, -abs(c.diff.mean))
            if _detected(c.diff, c.p_holm, alpha)
            else (1, _nan(c.p_holm, 2.0), -abs(c.diff.mean))
        ),
    )
    top = ranked[0]
    b0 = _b_reference(pair)
    under = next(e for e in pair.simple[top.b] if e.level == top.a)
    at_ref = next(e for e in pair.simple[b0] if e.level == top.a)
    n = top.diff.n
    size = f"{fmt_number(top.diff.mean)} points {fmt_interval(top.diff.low, top.diff.high)}"
    omnibus = (
        f"; omnibus F({anova.df_num:g}, {anova.df_den:g}) = {anova.f:.2f}, p {anova.p:.2g}"
        if anova is not None
        else ""
    )
    head = f"{pair.first} {_label(top.a)} (vs {_label(under.reference)})"
    if _detected(top.diff, top.p_holm, alpha):
        return (
            f"{head} is {under.verdict} under {pair.second} {_label(top.b)}, but "
            f"{at_ref.verdict} under {pair.second} {_label(b0)}; interaction {size}, detected "
            f"(Holm p {top.p_holm:.2g}){omnibus}"
        )
    widths = [c.diff.high - c.diff.low for c in pair.contrasts if not math.isnan(c.diff.low)]
    floor = (
        f"; with {n} seeds, interactions smaller than about "
        f"{fmt_number(float(np.median(widths)) / 2)} points go unseen"
        if widths
        else ""
    )
    return (
        f"no detectable interaction with {n} seeds: the largest contrast, {head} under "
        f"{pair.second} {_label(top.b)} rather than {_label(b0)}, is {size}"
        + (f" (Holm p {top.p_holm:.2g})" if not math.isnan(top.p_holm) else "")
        + omnibus
        + floor
    )


def _b_reference(pair: PairResult) -> Any:
    """B's reference: the one level of B that no contrast names."""
    named = {c.b for c in pair.contrasts}
    return next(b for b in pair.simple if b not in named)


def _nan(x: float, default: float) -> float:
    return default if math.isnan(x) else x


def _main_headline(m: MainEffect, n: int) -> str:
    found = [f"{_label(e.level)} {e.verdict}" for e in m.effects if _detected(e.diff, e.p_holm)]
    if not found:
        found = [f"no level differs detectably from {_label(m.reference)} with {n} seeds"]
    return (
        f"{m.factor} (averaged over the other crossed factors, vs {_label(m.reference)}): "
        + "; ".join(found)
    )


# ---------------------------------------------------------------- re-reading a stored summary


def from_summary(summary: Mapping[str, Any], factors: Sequence[str]) -> CrossResult | None:
    """The analysis of a finished crossed batch, recomputed from its summary's records."""
    if summary.get("error") or not summary.get("records"):
        return None
    return analyse(summary["records"], factors, summary["levels"], summary["base_levels"])


def summary_text(summary: Mapping[str, Any], factors: Sequence[str]) -> str:
    """What ``bench.ablate --cross`` prints for a finished crossed batch."""
    if summary.get("error"):
        return f"no analysis: {summary['error']}\n"
    result = from_summary(summary, factors)
    return text(result) if result else "no analysis: no cell finished\n"


# ---------------------------------------------------------------- presentation


def _intro(r: CrossResult) -> str:
    conf = round(r.conf_level * 100)
    return (
        f"Every combination of {', '.join(r.factors)} trained with the same seeds; "
        f"{len(r.seeds)} seeds finished every cell and pair every comparison. Differences are "
        f"validation-accuracy points with {conf}% paired t intervals, Holm-adjusted within "
        "each family; an interaction contrast is how much more a level gains over its reference "
        "under one level of the other factor than under that factor's reference. The omnibus "
        "test is a repeated-measures analysis of variance with seeds as blocks. Test accuracy is "
        "shown beside, never used to decide."
    )


def _acc(triple: tuple[float, float, float]) -> str:
    mean, low, high = triple
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {(high - low) / 2:.4f}"


def _delta(d: PairedDiff) -> str:
    return f"{fmt_number(d.mean)} {fmt_interval(d.low, d.high)}"


def tables(r: CrossResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """The result as ``(title, header, rows)`` tables, in reading order."""
    out = []
    a, b = r.factors[0], r.factors[1]
    rest = r.factors[2:]
    for fixed in itertools.product(*(r.levels[f] for f in rest)):
        where = "".join(f", {f} {_label(v)}" for f, v in zip(rest, fixed, strict=True))
        rows = []
        for la in r.levels[a]:
            row = [_label(la)]
            for lb in r.levels[b]:
                c = r.cell((la, lb, *fixed))
                row.append(_acc(c.val) + ("" if c.n == len(r.seeds) else f" ({c.n} seeds)"))
            rows.append(row)
        header = [f"{a} \\ {b}", *(_label(v) for v in r.levels[b])]
        out.append(
            (f"Validation accuracy per cell (mean ± half the 95% interval{where})", header, rows)
        )
    main_rows = [
        [m.factor, f"{_label(e.level)} vs {_label(e.reference)}", _delta(e.diff),
         "" if math.isnan(e.p_holm) else f"{e.p_holm:.2g}", e.verdict]
        for m in r.mains
        for e in m.effects
    ]  # fmt: skip
    out.append(
        ("Main effects (averaged over the other crossed factors; points)",
         ["factor", "level", "Δ val", "p (Holm)", "verdict"], main_rows)
    )  # fmt: skip
    for p in r.pairs:
        b0 = _b_reference(p)
        non_ref = [lvl for lvl in r.levels[p.second] if lvl != b0]
        rows = []
        for e in p.simple[b0]:
            row = [f"{_label(e.level)} vs {_label(e.reference)}"]
            for lb in r.levels[p.second]:
                se = next(x for x in p.simple[lb] if x.level == e.level)
                row.append(_delta(se.diff))
            rows.append(row)
        out.append(
            (f"Effect of {p.first} under each {p.second} (points)",
             [p.first, *(f"{p.second} {_label(v)}" for v in r.levels[p.second])], rows)
        )  # fmt: skip
        rows = []
        for e in p.simple[b0]:
            row = [f"{_label(e.level)} vs {_label(e.reference)}"]
            for lb in non_ref:
                c = next(x for x in p.contrasts if x.a == e.level and x.b == lb)
                p_txt = "" if math.isnan(c.p_holm) else f", p {c.p_holm:.2g}"
                row.append(_delta(c.diff) + p_txt)
            rows.append(row)
        out.append(
            (f"Interaction contrasts {p.first} x {p.second} (points, Holm-adjusted p)",
             [p.first, *(f"{_label(v)} vs {_label(b0)}" for v in non_ref)], rows)
        )  # fmt: skip
    if r.anova:
        out.append(
            ("Omnibus: repeated-measures ANOVA, seeds as blocks",
             ["term", "F", "df", "p"],
             [[a.term, f"{a.f:.2f}", f"{a.df_num:g}, {a.df_den:g}", f"{a.p:.2g}"]
              for a in r.anova])
        )  # fmt: skip
    return out


def text(r: CrossResult) -> str:
    """The crossed result as plain text for a terminal."""
    out = ["Interactions", "", *textwrap.wrap(_intro(r), 100), ""]
    out += [f"{i:>2}. {line}" for i, line in enumerate(r.headlines(), 1)]
    if r.anova_note:
        out.append(f"note: {r.anova_note}")
    for title, header, rows in tables(r):
        table = [header, *rows]
        widths = [max(len(row[c]) for row in table) for c in range(len(header))]
        out += ["", title]
        for row in table:
            out.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )
    return "\n".join(out) + "\n"


def markdown(r: CrossResult) -> str:
    """The crossed result as Markdown, starting with ``## Interactions``."""
    out = ["## Interactions", "", _intro(r), ""]
    out += [f"{i}. {line}" for i, line in enumerate(r.headlines(), 1)]
    if r.anova_note:
        out += ["", f"Note: {r.anova_note}."]
    for title, header, rows in tables(r):
        out += ["", f"### {title}", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "|".join("---" for _ in header) + "|")
        out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def html(r: CrossResult) -> str:
    """The crossed result's body as HTML for ``report.html``."""
    from bench.results import html as h

    out = [h.paragraph(_intro(r))]
    out.append("<ol>" + "".join(f"<li>{h.esc(line)}</li>" for line in r.headlines()) + "</ol>")
    if r.anova_note:
        out.append(h.paragraph(f"Note: {r.anova_note}."))
    for title, header, rows in tables(r):
        out.append(f"<h3>{h.esc(title)}</h3>")
        out.append(h.table(header, rows))
    return "\n".join(out)


def interaction_plot(r: CrossResult, path: str | Path) -> Path:
    """Mean validation accuracy per cell: the first factor along x, one line per level of the
    second, error bars the cells' 95% t intervals; one panel per level of a third factor.

    Parallel lines mean no interaction; lines that converge, diverge or cross show one.

    Args:
        r: The output of :func:`analyse`.
        path: Where to write the PNG.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    a, b = r.factors[0], r.factors[1]
    rest = r.factors[2:]
    panels = list(itertools.product(*(r.levels[f] for f in rest))) or [()]
    fig = Figure(figsize=(4.2 * len(panels) + 1.5, 4.0))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    xs = np.arange(len(r.levels[a]))
    for ax, fixed in zip(axes, panels, strict=True):
        for k, lb in enumerate(r.levels[b]):
            cells = [r.cell((la, lb, *fixed)) for la in r.levels[a]]
            means = np.array([c.val[0] for c in cells]) * 100
            lows = np.array([c.val[1] for c in cells]) * 100
            highs = np.array([c.val[2] for c in cells]) * 100
            err = np.vstack([np.nan_to_num(means - lows), np.nan_to_num(highs - means)])
            offset = (k - (len(r.levels[b]) - 1) / 2) * 0.06  # keep the error bars apart
            ax.errorbar(xs + offset, means, yerr=err, marker="o", capsize=3,
                        label=f"{b} {_label(lb)}")  # fmt: skip
        ax.set_xticks(xs)
        ax.set_xticklabels([_label(v) for v in r.levels[a]], rotation=20)
        ax.set_xlabel(a)
        ax.grid(alpha=0.3)
        if fixed:
            ax.set_title(", ".join(f"{f} {_label(v)}" for f, v in zip(rest, fixed, strict=True)),
                         fontsize=9)  # fmt: skip
    axes[0].set_ylabel("validation accuracy (%), 95% interval per cell")
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{a} x {b}: parallel lines mean no interaction", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
