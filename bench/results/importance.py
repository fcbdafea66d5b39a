"""Importance over the whole space, from a global design's space-filling configurations.

Two of Optuna's own evaluators are called, not re-implemented: fANOVA (the share of the variance
of a random forest's prediction over the space that each parameter's main effect explains) and
PED-ANOVA (how much the top 10 % of configurations concentrate in a part of a parameter's range;
from Optuna 5 it also sees conditional parameters such as the second layer's width). Both run
unnormalised, so a factor's number does not grow because the others shrink.

Every importance has a bootstrap interval (configurations resampled with replacement, each fit
with its own forest seed) and the number of configurations behind it. Two floors say what is
real:

- A **chance floor** per factor and evaluator: the 95th percentile of the importance the same
  evaluator gives that factor when the scores are shuffled among the configurations (a
  permutation test at 5 %: a factor with no effect gets some importance too, more for a
  conditional or many-levelled one).
- fANOVA's **seed-noise floor**: the variance that re-running one configuration with another seed
  produces (pooled over the repeated configurations), as a share of the variance between
  configurations, with the chi-square 95 % interval of that pooled variance as its band; below
  it a factor explains less than a change of seed. PED-ANOVA's numbers are not variances, so it
  has only the chance floor.

A factor is *clearly above* when it exceeds its chance floor and, for fANOVA, the seed-noise
band; *below* when it is under either floor's value; otherwise it cannot be told from them.
Scores are validation accuracies (higher is better); test accuracy is never read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import sections

BOOTSTRAPS = 50  # resamples of the configurations per evaluator
SHUFFLES = 30  # permutations of the scores per evaluator, for the chance floors
MIN_ANALYSED = 8  # finished configurations needed for any importance
MIN_SEED_DF = 2  # degrees of freedom the seed-noise floor needs
EVALUATORS = ("fanova", "ped-anova")
LABELS = {"fanova": "fANOVA", "ped-anova": "PED-ANOVA"}
VERDICTS = ("above", "unclear", "below")


def _nan(value: Any) -> Any:
    """None (how a stored summary keeps NaN) back to NaN."""
    return math.nan if value is None else value


@dataclass(frozen=True)
class Importance:
    param: str
    value: float
    low: float
    high: float
    chance_floor: float  # the 95th percentile of this factor's importance on shuffled scores
    against_floor: str  # one of VERDICTS


@dataclass(frozen=True)
class EvaluatorResult:
    """One evaluator's importances, largest first; fANOVA's seed-noise floor with its band
    (NaN for PED-ANOVA, or where too few seeds repeated)."""

    name: str
    importances: tuple[Importance, ...]
    seed_floor: float = math.nan
    seed_low: float = math.nan
    seed_high: float = math.nan


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
        def floats(cls, values: Mapping[str, Any]) -> dict[str, Any]:
            kinds = {f.name: f.type for f in fields(cls)}
            return {k: _nan(v) if kinds.get(k) == "float" else v for k, v in values.items()}

        evs = tuple(
            EvaluatorResult(**{
                **floats(EvaluatorResult, e),
                "importances": tuple(Importance(**floats(Importance, i))
                                     for i in e["importances"]),
            })
            for e in d.get("evaluators") or []
        )  # fmt: skip
        return GlobalResult(**{**floats(GlobalResult, d), "evaluators": evs})

    def headlines(self) -> list[str]:
        seeds = (
            f"{100 * self.seed_sd:.2f} between seeds of one configuration ({self.n_repeated} "
            "repeated)"
            if math.isfinite(self.seed_sd)
            else "no measure of seed noise (fewer than 2 repeated configurations finished)"
        )
        out = [
            f"{self.n_used} of {self.n_configs} configurations finished; validation accuracy "
            f"{100 * self.worst:.1f} to {100 * self.best:.1f}%, spread (sd) "
            f"{100 * self.config_sd:.2f} points between configurations against {seeds}"
        ]
        if math.isfinite(self.seed_sd) and self.config_sd <= self.seed_sd:
            out.append(
                "the configurations differ no more than seeds do: no factor can be ranked from "
                "this run (more configurations will not help; a wider space or more epochs may)"
            )
        for e in self.evaluators:
            out += _evaluator_lines(e)
        return out


def _evaluator_lines(e: EvaluatorResult) -> list[str]:
    """Which factors clear the evaluator's floors, which cannot be told from them, which fall
    below."""
    label = LABELS[e.name]
    floors = "its chance floor"
    if math.isfinite(e.seed_floor):
        floors += (f" and the seed-noise floor {_num(e.seed_floor, e.name)} "
                   f"[{_num(e.seed_low, e.name)}, {_num(e.seed_high, e.name)}]")  # fmt: skip
    groups = {v: [i for i in e.importances if i.against_floor == v] for v in VERDICTS}
    out = []
    if groups["above"]:
        shown = "; ".join(
            f"{i.param} {_num(i.value, e.name)} [{_num(i.low, e.name)}, {_num(i.high, e.name)}]"
            for i in groups["above"]
        )
        unit = " of the variance" if e.name == "fanova" else ""
        out.append(f"{label}: clearly above {floors}: {shown}{unit}")
    else:
        out.append(f"{label}: no factor is clearly above {floors}")
    if groups["unclear"]:
        names = ", ".join(i.param for i in groups["unclear"])
        out.append(f"{label}: cannot be told from the floors (more configurations or seeds "
                   f"would tell): {names}")  # fmt: skip
    chance = [i.param for i in groups["below"] if not i.value > i.chance_floor]
    seed = [i.param for i in groups["below"] if i.value > i.chance_floor]
    if chance:
        out.append(f"{label}: below its chance floor (no more than shuffled scores give): "
                   f"{', '.join(chance)}")  # fmt: skip
    if seed:
        out.append(f"{label}: below the seed-noise floor (less than re-running with another "
                   f"seed): {', '.join(seed)}")  # fmt: skip
    return out


def against_floor(value: float, chance: float, seed: float = math.nan,
                  seed_high: float = math.nan) -> str:  # fmt: skip
    """``above`` when ``value`` exceeds its chance floor and the seed-noise band's top (where
    there is one), ``below`` when it is under either floor's value, else ``unclear``."""
    if not math.isfinite(value) or not math.isfinite(chance):
        return "unclear"
    if value <= chance or (math.isfinite(seed) and value < seed):
        return "below"
    if math.isfinite(seed_high) and value <= seed_high:
        return "unclear"
    return "above"


def _num(x: float, evaluator: str) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if evaluator == "fanova" else f"{x:.3g}"


def _rows(configs: Sequence[Mapping], values: Mapping[int, float]) -> list[tuple]:
    """One ``(value, params, distributions)`` row per configuration with a value."""
    return [(v, configs[i]["params"], configs[i]["distributions"]) for i, v in values.items()]


def _evaluate(name: str, rows: list, seed: int) -> dict[str, float]:
    from bench.optuna_adapter.importance import evaluate

    return evaluate(name, rows, seed)


Floor = tuple[float, float, float, float]


def seed_floor(values: Mapping[int, Sequence[float]], between_var: float) -> Floor:
    """``(floor, low, high, pooled sd)``: the pooled within-configuration variance over the
    configurations with two or more seeds, as a share of ``between_var``, with the chi-square
    95 % interval of the pooled variance. NaN where fewer than :data:`MIN_SEED_DF` degrees of
    freedom or no seed noise at all (repeats stuck at one score say nothing of the others)."""
    from scipy import stats

    groups = [np.asarray(v, dtype=float) for v in values.values() if len(v) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if df < MIN_SEED_DF or between_var <= 0:
        return math.nan, math.nan, math.nan, math.nan
    pooled = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / df
    if pooled <= 0:
        return math.nan, math.nan, math.nan, math.nan
    low = df * pooled / stats.chi2.ppf(0.975, df)
    high = df * pooled / stats.chi2.ppf(0.025, df)
    return pooled / between_var, low / between_var, high / between_var, math.sqrt(pooled)


def analyse(
    plan: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    n_boot: int | None = None,
    n_shuffle: int | None = None,
    seed: int = 0,
) -> GlobalResult:
    """Importances with intervals and floors from a global batch's plan and records.

    Args:
        plan: The batch's stored plan (configurations with their Optuna parameters, seeds).
        records: One per finished job: ``index``, ``seed``, ``val_accuracy`` (higher is
            better).
        n_boot: Bootstrap resamples per evaluator (default :data:`BOOTSTRAPS`).
        n_shuffle: Permutations per evaluator for the chance floors (default :data:`SHUFFLES`).
        seed: Seeds resampling, shuffles and forests: the same records, the same numbers.

    Raises:
        ValueError: fewer than :data:`MIN_ANALYSED` configurations finished.
    """
    from bench.optuna_adapter.importance import quiet

    with quiet():  # no "a new study created" per resample
        return _analyse(plan, records, n_boot, n_shuffle, seed)


def _percentiles(draws: Sequence[float], q: Sequence[float]) -> list[float]:
    finite = [d for d in draws if math.isfinite(d)]  # a constant resample gives NaN, not an error
    return [float(x) for x in np.percentile(finite, q)] if finite else [math.nan] * len(q)


def _analyse(plan, records, n_boot, n_shuffle, seed) -> GlobalResult:
    n_boot = BOOTSTRAPS if n_boot is None else n_boot
    n_shuffle = SHUFFLES if n_shuffle is None else n_shuffle
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
    trials = _rows(configs, values)
    rng = np.random.default_rng(seed)
    results = []
    for name in EVALUATORS:
        point = _evaluate(name, trials, seed)
        draws: dict[str, list[float]] = {p: [] for p in point}
        for b in range(n_boot):
            sample = [trials[i] for i in rng.integers(0, len(trials), len(trials))]
            try:
                got = _evaluate(name, sample, seed + 1 + b)
            except (RuntimeError, ValueError):  # a resample in which nothing varies
                continue
            for p in point:
                draws[p].append(got.get(p, 0.0))
        null: dict[str, list[float]] = {p: [] for p in point}
        scores = list(values.values())
        for k in range(n_shuffle):
            shuffled = dict(zip(values, rng.permutation(scores), strict=True))
            got = _evaluate(name, _rows(configs, shuffled), seed + 1 + n_boot + k)
            for p in point:
                null[p].append(got.get(p, 0.0))
        seeds = (floor, f_low, f_high) if name == "fanova" else (math.nan,) * 3
        items = []
        for p, v in point.items():
            low, high = _percentiles(draws[p], [2.5, 97.5])
            (chance,) = _percentiles(null[p], [95])
            verdict = against_floor(float(v), chance, seeds[0], seeds[2])
            items.append(Importance(p, float(v), low, high, chance, verdict))
        items.sort(key=lambda i: -i.value if math.isfinite(i.value) else math.inf)
        results.append(EvaluatorResult(name, tuple(items), *seeds))
    return GlobalResult(
        n_configs=len(configs),
        n_used=len(values),
        n_repeated=sum(1 for s in by_config.values() if len(s) >= 2),
        seed_sd=seed_sd,
        config_sd=math.sqrt(between),
        best=float(y.max()),
        worst=float(y.min()),
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
        "with other seeds. Importances from Optuna's fANOVA (share of the variance over the space "
        "that a factor's main effect explains) and PED-ANOVA (how much the top 10% concentrate "
        "in part of a factor's range), unnormalised, with 95% bootstrap intervals over "
        "configurations. Each factor's chance floor is the 95th percentile of its importance on "
        "shuffled scores; fANOVA's seed-noise floor is the share of that variance re-running one "
        "configuration with another seed produces (band: its 95% interval). Validation only."
    )


HEADER = ["evaluator", "factor", "importance", "95% interval", "chance floor", "verdict"]


def rows(r: GlobalResult) -> list[list[str]]:
    out = []
    for e in r.evaluators:
        for i in e.importances:
            out.append([LABELS[e.name], i.param, _num(i.value, e.name),
                        f"[{_num(i.low, e.name)}, {_num(i.high, e.name)}]",
                        _num(i.chance_floor, e.name), i.against_floor])  # fmt: skip
        if math.isfinite(e.seed_floor):
            band = f"[{_num(e.seed_low, e.name)}, {_num(e.seed_high, e.name)}]"
            out.append([LABELS[e.name], "(seed-noise floor)", _num(e.seed_floor, e.name), band,
                        "", ""])  # fmt: skip
    return out


def text(r: GlobalResult) -> str:
    return sections.text(
        "Importance over the whole space", _intro(), r.headlines(), HEADER, rows(r)
    )


def markdown(r: GlobalResult) -> str:
    return sections.markdown(
        "Importance over the whole space", _intro(), r.headlines(), HEADER, rows(r)
    )


def html(r: GlobalResult) -> str:
    return sections.html(_intro(), r.headlines(), HEADER, rows(r))


def summary_text(summary: Mapping[str, Any]) -> str:
    """What ``bench.ablate --global`` prints when its batch completes."""
    result = from_summary(summary)
    if result is None:
        return f"no analysis: {summary.get('error') or 'no configuration finished'}\n"
    return text(result)


def importance_plot(r: GlobalResult, path: str | Path) -> Path:
    """One panel per evaluator: each factor's importance with its bootstrap interval, its chance
    floor as a red tick, and fANOVA's seed-noise floor as a line with its band shaded.

    Raises:
        ValueError: no evaluator gave an importance.
    """
    from matplotlib.figure import Figure

    evs = [e for e in r.evaluators if e.importances]
    if not evs:
        raise ValueError("no importance to plot")
    path = Path(path)
    rows_ = max(len(e.importances) for e in evs)
    fig = Figure(figsize=(5.2 * len(evs), 1.4 + 0.32 * rows_))
    axes = fig.subplots(1, len(evs))
    axes = list(axes) if len(evs) > 1 else [axes]
    colours = {"above": "tab:blue", "unclear": "lightsteelblue", "below": "tab:gray"}
    for ax, e in zip(axes, evs, strict=True):
        scale = 100.0 if e.name == "fanova" else 1.0
        ys = list(range(len(e.importances)))[::-1]
        for y, i in zip(ys, e.importances, strict=True):
            value = i.value if math.isfinite(i.value) else 0.0
            ax.barh(y, value * scale, color=colours[i.against_floor], alpha=0.8)
            if math.isfinite(i.low) and math.isfinite(i.high):
                ax.errorbar([value * scale], [y], color="black", capsize=3,
                            xerr=[[max(0.0, (value - i.low) * scale)],
                                  [max(0.0, (i.high - value) * scale)]])  # fmt: skip
            if math.isfinite(i.chance_floor):
                ax.plot([i.chance_floor * scale] * 2, [y - 0.4, y + 0.4], color="tab:red", lw=2,
                        label="chance floor" if y == ys[0] else None)  # fmt: skip
        if math.isfinite(e.seed_floor):
            if math.isfinite(e.seed_low) and math.isfinite(e.seed_high):
                ax.axvspan(e.seed_low * scale, e.seed_high * scale, color="tab:orange", alpha=0.2)
            ax.axvline(e.seed_floor * scale, color="tab:orange", lw=1, label="seed-noise floor")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels([i.param for i in e.importances])
        unit = " (% of variance)" if e.name == "fanova" else ""
        ax.set_xlabel(f"{LABELS[e.name]} importance{unit}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Importance over the whole space: {r.n_used} configurations (blue: clearly above "
                 "the floors, light: cannot be told, grey: below)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
