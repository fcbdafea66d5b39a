"""Importance over the whole space, from a global design's space-filling configurations.

Two of Optuna's own evaluators are called, not re-implemented: fANOVA (the share of the variance
between configurations that each parameter's main effect explains, from a random forest) and
PED-ANOVA (how much the top 10 % of configurations concentrate in a part of a parameter's range;
it handles conditional parameters such as the second layer's width). Both are run unnormalised,
so a factor's number does not grow because the others shrink.

Every importance has a bootstrap interval (configurations resampled with replacement, each fit
with its own forest seed) and the number of configurations behind it. Each evaluator has a floor:

- fANOVA's is the **seed-noise floor**: the variance that re-running one configuration with
  another seed produces (pooled over the repeated configurations), as a share of the variance
  between configurations; a factor below it explains less than a change of seed. Its band is
  the chi-square 95 % interval of that pooled variance.
- PED-ANOVA's is a **chance floor**: the 95th percentile of the importances it gives when the
  scores are shuffled among the configurations (its numbers are not variances, so a seed's
  variance has no place on its scale).

Decisions and rankings use validation scores; test accuracy is never read here.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BOOTSTRAPS = 50  # resamples of the configurations per evaluator
SHUFFLES = 50  # permutations of the scores for PED-ANOVA's chance floor
MIN_ANALYSED = 8  # finished configurations needed for any importance
EVALUATORS = ("fanova", "ped-anova")
LABELS = {"fanova": "fANOVA", "ped-anova": "PED-ANOVA"}


@dataclass(frozen=True)
class Importance:
    param: str
    value: float
    low: float
    high: float
    against_floor: str  # "above", "below" or "unclear" (its interval overlaps the floor's band)


@dataclass(frozen=True)
class EvaluatorResult:
    """One evaluator's importances, largest first, and its floor with its band."""

    name: str
    importances: tuple[Importance, ...]
    floor: float
    floor_low: float
    floor_high: float
    floor_kind: str  # "seed noise" or "chance"


@dataclass(frozen=True)
class GlobalResult:
    n_configs: int  # planned
    n_used: int  # finished with a finite validation score at the first seed
    n_repeated: int  # configurations with two or more finished seeds
    seed_sd: float  # pooled within-configuration standard deviation (accuracy)
    config_sd: float  # standard deviation between configurations (accuracy)
    best: float
    worst: float
    evaluators: tuple[EvaluatorResult, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> GlobalResult:
        evs = tuple(
            EvaluatorResult(
                **{
                    **e,
                    "importances": tuple(Importance(**i) for i in e["importances"]),
                    **{
                        k: (math.nan if e[k] is None else e[k])
                        for k in ("floor", "floor_low", "floor_high")
                    },
                }  # fmt: skip
            )
            for e in d.get("evaluators") or []
        )
        return GlobalResult(**{**d, "evaluators": evs})

    def headlines(self) -> list[str]:
        out = [
            f"{self.n_used} of {self.n_configs} configurations finished; validation accuracy "
            f"{100 * self.worst:.1f} to {100 * self.best:.1f}%, spread (sd) "
            f"{100 * self.config_sd:.2f} points between configurations against "
            f"{100 * self.seed_sd:.2f} between seeds of one configuration "
            f"({self.n_repeated} repeated)"
        ]
        if self.config_sd <= self.seed_sd:
            out.append(
                "the configurations differ no more than seeds do: no factor can be ranked from "
                "this run (more configurations will not help; a wider space or more epochs may)"
            )
        for e in self.evaluators:
            out += _evaluator_lines(e)
        return out


def _evaluator_lines(e: EvaluatorResult) -> list[str]:
    """Which factors clear the evaluator's floor, which cannot be told from it, which fall below."""
    label, floor = LABELS[e.name], f"{e.floor_kind} floor {_num(e.floor, e.name)}"
    floor += f" [{_num(e.floor_low, e.name)}, {_num(e.floor_high, e.name)}]"
    groups = {v: [i for i in e.importances if i.against_floor == v] for v in VERDICTS}
    out = []
    if groups["above"]:
        shown = "; ".join(
            f"{i.param} {_num(i.value, e.name)} [{_num(i.low, e.name)}, {_num(i.high, e.name)}]"
            for i in groups["above"]
        )
        unit = " of the variance" if e.name == "fanova" else ""
        out.append(f"{label}: clearly above the {floor}: {shown}{unit}")
    else:
        out.append(f"{label}: no factor is clearly above the {floor}")
    if groups["unclear"]:
        names = ", ".join(i.param for i in groups["unclear"])
        out.append(f"{label}: cannot be told from the floor (intervals overlap; more "
                   f"configurations would tell): {names}")  # fmt: skip
    if groups["below"]:
        what = ("explains less than re-running with another seed" if e.name == "fanova"
                else "is indistinguishable from shuffled scores")  # fmt: skip
        names = ", ".join(i.param for i in groups["below"])
        out.append(f"{label}: below the floor (each {what}): {names}")
    return out


VERDICTS = ("above", "unclear", "below")


def against_floor(value: float, low: float, high: float, e_low: float, e_high: float,
                  floor: float) -> str:  # fmt: skip
    """``above`` when the importance's interval lies above the floor's band, ``below`` when
    its value lies under the floor, else ``unclear``; ``unclear`` where there is no floor."""
    if not all(math.isfinite(x) for x in (floor, e_low, e_high)):
        return "unclear"
    if math.isfinite(low) and low > e_high:
        return "above"
    if value < floor:
        return "below"
    return "unclear"


def _num(x: float, evaluator: str) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if evaluator == "fanova" else f"{x:.3g}"


def _study(trials: list, maximize: bool):
    import optuna

    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    study.add_trials(trials)
    return study


def _evaluate(name: str, trials: list, maximize: bool, seed: int) -> dict[str, float]:
    import optuna

    if name == "fanova":
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    else:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(
            _study(trials, maximize), evaluator=evaluator, normalize=False
        )


def _trials(configs: Sequence[Mapping], values: Mapping[int, float]) -> list:
    import optuna

    out = []
    for i, v in values.items():
        c = configs[i]
        dists = {
            k: optuna.distributions.json_to_distribution(d) for k, d in c["distributions"].items()
        }
        out.append(optuna.trial.create_trial(value=v, params=dict(c["params"]),
                                             distributions=dists))  # fmt: skip
    return out


Floor = tuple[float, float, float, float]


def seed_floor(values: Mapping[int, Sequence[float]], between_var: float) -> Floor:
    """``(floor, low, high, pooled sd)``: the pooled within-configuration variance over the
    configurations with two or more seeds, as a share of ``between_var``, with the chi-square
    95 % interval of the pooled variance. NaN where no configuration has two seeds."""
    from scipy import stats

    groups = [np.asarray(v, dtype=float) for v in values.values() if len(v) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if df == 0 or between_var <= 0:
        return math.nan, math.nan, math.nan, math.nan
    pooled = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / df
    low = df * pooled / stats.chi2.ppf(0.975, df)
    high = df * pooled / stats.chi2.ppf(0.025, df)
    return pooled / between_var, low / between_var, high / between_var, math.sqrt(pooled)


def analyse(
    plan: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    maximize: bool = True,
    n_boot: int = BOOTSTRAPS,
    n_shuffle: int = SHUFFLES,
    seed: int = 0,
) -> GlobalResult:
    """Importances with intervals and floors from a global batch's plan and records.

    Args:
        plan: The batch's stored plan (configurations with their Optuna parameters, seeds).
        records: One per finished job: ``index``, ``seed``, ``val_accuracy``.
        maximize: Whether higher validation scores are better.
        n_boot: Bootstrap resamples per evaluator.
        n_shuffle: Permutations for PED-ANOVA's chance floor.
        seed: Seeds resampling, shuffles and forests: the same records, the same numbers.

    Raises:
        ValueError: fewer than :data:`MIN_ANALYSED` configurations finished.
    """
    logging.getLogger("optuna").setLevel(logging.ERROR)
    configs, first = plan["configs"], plan["seeds"][0]
    by_config: dict[int, dict[int, float]] = {}
    for r in records:
        v = r["val_accuracy"]
        if isinstance(v, (int, float)) and math.isfinite(v):
            by_config.setdefault(int(r["index"]), {})[int(r["seed"])] = float(v)
    values = {i: s[first] for i, s in sorted(by_config.items()) if first in s}
    if len(values) < MIN_ANALYSED:
        raise ValueError(
            f"only {len(values)} of {len(configs)} configurations finished; importances need "
            f"at least {MIN_ANALYSED}"
        )
    y = np.array(list(values.values()))
    between = float(y.var(ddof=1))
    floor, f_low, f_high, seed_sd = seed_floor(
        {i: list(s.values()) for i, s in by_config.items()}, between
    )
    trials = _trials(configs, values)
    rng = np.random.default_rng(seed)
    results = []
    for name in EVALUATORS:
        point = _evaluate(name, trials, maximize, seed)
        draws: dict[str, list[float]] = {p: [] for p in point}
        for b in range(n_boot):
            sample = [trials[i] for i in rng.integers(0, len(trials), len(trials))]
            try:
                got = _evaluate(name, sample, maximize, seed + 1 + b)
            except (RuntimeError, ValueError):  # a resample in which nothing varies
                continue
            for p in point:
                draws[p].append(got.get(p, 0.0))
        if name == "fanova":
            fl, lo, hi, kind = floor, f_low, f_high, "seed-noise"
        else:
            null = []
            scores = list(values.values())
            for _ in range(n_shuffle):
                shuffled = dict(zip(values, rng.permutation(scores), strict=True))
                null += list(_evaluate(name, _trials(configs, shuffled), maximize, seed).values())
            if null:
                fl, lo, hi = (float(x) for x in np.percentile(null, [95, 90, 99]))
            else:
                fl = lo = hi = math.nan
            kind = "chance"
        items = []
        for p, v in point.items():
            low, high = np.percentile(draws[p], [2.5, 97.5]) if draws[p] else (math.nan, math.nan)
            verdict = against_floor(float(v), float(low), float(high), lo, hi, fl)
            items.append(Importance(p, float(v), float(low), float(high), verdict))
        items.sort(key=lambda i: -i.value)
        results.append(EvaluatorResult(name, tuple(items), fl, lo, hi, kind))
    return GlobalResult(
        n_configs=len(configs),
        n_used=len(values),
        n_repeated=sum(1 for s in by_config.values() if len(s) >= 2),
        seed_sd=seed_sd,
        config_sd=math.sqrt(between),
        best=float(y.max() if maximize else y.min()),
        worst=float(y.min() if maximize else y.max()),
        evaluators=tuple(results),
    )


def from_summary(summary: Mapping[str, Any]) -> GlobalResult | None:
    if summary.get("error") or not summary.get("analysis"):
        return None
    return GlobalResult.from_dict(summary["analysis"])


def _intro() -> str:
    return (
        "Configurations spread over the whole space (a scrambled Sobol sequence), each trained "
        "once with the search's epoch budget and early stopping, no pruning; a few trained again "
        "with other seeds. Importances from Optuna's fANOVA (share of the variance between "
        "configurations a factor's main effect explains) and PED-ANOVA (how much the top 10% "
        "concentrate in part of a factor's range), unnormalised, with 95% bootstrap intervals "
        "over configurations. fANOVA's floor is seed noise: below it a factor explains less than "
        "re-running with another seed (band: its 95% interval). PED-ANOVA's is chance: its 95th "
        "percentile on shuffled scores (band: 90th to 99th). Validation scores only."
    )


HEADER = ["evaluator", "factor", "importance", "95% interval", "against the floor"]


def rows(r: GlobalResult) -> list[list[str]]:
    out = []
    for e in r.evaluators:
        for i in e.importances:
            out.append([LABELS[e.name], i.param, _num(i.value, e.name),
                        f"[{_num(i.low, e.name)}, {_num(i.high, e.name)}]",
                        i.against_floor])  # fmt: skip
        band = f"[{_num(e.floor_low, e.name)}, {_num(e.floor_high, e.name)}]"
        out.append([LABELS[e.name], f"({e.floor_kind} floor)", _num(e.floor, e.name), band, ""])
    return out


def text(r: GlobalResult) -> str:
    import textwrap

    out = ["Importance over the whole space", "", *textwrap.wrap(_intro(), 100), ""]
    out += [f"{i:>2}. {line}" for i, line in enumerate(r.headlines(), 1)]
    table = [HEADER, *rows(r)]
    widths = [max(len(row[c]) for row in table) for c in range(len(HEADER))]
    out.append("")
    for row in table:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"


def markdown(r: GlobalResult) -> str:
    out = ["## Importance over the whole space", "", _intro(), ""]
    out += [f"{i}. {line}" for i, line in enumerate(r.headlines(), 1)]
    out += ["", "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows(r)]
    return "\n".join(out) + "\n"


def html(r: GlobalResult) -> str:
    from bench.results import html as h

    items = "".join(f"<li>{h.esc(line)}</li>" for line in r.headlines())
    return "\n".join([h.paragraph(_intro()), f"<ol>{items}</ol>", h.table(HEADER, rows(r))])


def summary_text(summary: Mapping[str, Any]) -> str:
    """What ``bench.ablate --global`` prints when its batch completes."""
    result = from_summary(summary)
    if result is None:
        return f"no analysis: {summary.get('error') or 'no configuration finished'}\n"
    return text(result)


def importance_plot(r: GlobalResult, path: str | Path) -> Path:
    """One panel per evaluator: each factor's importance with its bootstrap interval, and the
    floor drawn as a shaded band (its interval) with a line at its value.

    Raises:
        ValueError: no evaluator gave an importance.
    """
    from matplotlib.figure import Figure

    evs = [e for e in r.evaluators if e.importances]
    if not evs:
        raise ValueError("no importance to plot")
    path = Path(path)
    rows_ = max(len(e.importances) for e in evs)
    fig = Figure(figsize=(5.2 * len(evs), 1.2 + 0.32 * rows_))
    axes = fig.subplots(1, len(evs))
    axes = list(axes) if len(evs) > 1 else [axes]
    for ax, e in zip(axes, evs, strict=True):
        scale = 100.0 if e.name == "fanova" else 1.0
        ys = list(range(len(e.importances)))[::-1]
        for y, i in zip(ys, e.importances, strict=True):
            colour = {"above": "tab:blue", "unclear": "lightsteelblue"}.get(
                i.against_floor, "tab:gray"
            )
            ax.barh(y, i.value * scale, color=colour, alpha=0.8)
            if math.isfinite(i.low):
                ax.errorbar([i.value * scale], [y], color="black", capsize=3,
                            xerr=[[max(0.0, (i.value - i.low) * scale)],
                                  [max(0.0, (i.high - i.value) * scale)]])  # fmt: skip
        if math.isfinite(e.floor):
            if math.isfinite(e.floor_low) and math.isfinite(e.floor_high):
                ax.axvspan(e.floor_low * scale, e.floor_high * scale, color="tab:red", alpha=0.15)
            ax.axvline(e.floor * scale, color="tab:red", lw=1, label=f"{e.floor_kind} floor")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels([i.param for i in e.importances])
        unit = " (% of variance)" if e.name == "fanova" else ""
        ax.set_xlabel(f"{LABELS[e.name]} importance{unit}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Importance over the whole space: {r.n_used} configurations (blue: above the "
                 "floor's band, light: overlapping it, grey: below)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
