"""The ablation path, measured: each step's gain and the cumulative gain from the reference to
the target, the leave-one-out check beside it, in words, a table and a waterfall plot.

Input is a path batch's summary (:class:`bench.designs.path.PathDesign`): its records (one per
finished cell x seed, each with ``path`` = reference | target | loo | step, and ``param`` and
``step`` where they apply) and the path it took. Every difference is paired by seed over the
seeds both cells finished; the step p-values are Holm-adjusted over the path. Validation decides;
test accuracy is never read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import sections
from bench.results.stats import PairedDiff, fmt_interval, fmt_number, holm, paired_diff, verdict


@dataclass(frozen=True)
class Step:
    """One move of the path: ``param`` set to the target's value."""

    param: str
    step: int
    gain: PairedDiff | None  # this configuration minus the previous one
    cumulative: PairedDiff | None  # this configuration minus the reference
    p_holm: float
    verdict: str


@dataclass(frozen=True)
class LeaveOneOut:
    """The target minus the target with ``param`` put back to the reference's value."""

    param: str
    diff: PairedDiff | None
    verdict: str


@dataclass(frozen=True)
class PathResult:
    steps: tuple[Step, ...]
    loo: tuple[LeaveOneOut, ...]
    total: PairedDiff | None

    def headlines(self) -> list[str]:
        """The total, then one line per step, then the leave-one-out check."""
        out = []
        if self.total is not None:
            out.append(
                f"path total: target minus reference {fmt_number(self.total.mean)} points "
                f"{fmt_interval(self.total.low, self.total.high)} over {self.total.n} seeds"
            )
        for s in self.steps:
            share = ""
            if s.gain is not None and self.total is not None and abs(self.total.mean) > 1e-12:
                share = f", {100 * s.gain.mean / self.total.mean:.0f}% of the total"
            out.append(f"step {s.step}: {s.param}: {s.verdict}{share}")
        for lo in self.loo:
            out.append(f"leave-one-out {lo.param}: putting it back costs: {lo.verdict}")
        return out


def _values(records: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[Any, float]]:
    """(path, param, step) -> seed -> validation value."""
    cells: dict[tuple, dict[Any, float]] = {}
    for r in records:
        v = r.get("val_accuracy")
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"a path record has no finite val_accuracy: {dict(r)}")
        key = (r["path"], r.get("param"), r.get("step"))
        cells.setdefault(key, {})[r["seed"]] = float(v)
    return cells


def _diff(a: dict | None, b: dict | None) -> PairedDiff | None:
    if not a or not b:
        return None
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return paired_diff([a[s] for s in seeds], [b[s] for s in seeds])


def _words(d: PairedDiff | None, p: float | None = None) -> str:
    if d is None:
        return "not measured (a cell failed every seed it shares)"
    said = verdict(d, d.n, p_value=p)
    return said + (" (within noise)" if said.startswith("no detectable") else "")


def analyse(summary: Mapping[str, Any], params: Sequence[str]) -> PathResult:
    """Steps, cumulative gains and the leave-one-out check of a path batch's summary.

    Raises:
        ValueError: no reference or no target record (nothing to measure from or to).
    """
    cells = _values(summary.get("records") or [])
    ref = cells.get(("reference", None, None))
    tgt = cells.get(("target", None, None))
    if not ref or not tgt:
        raise ValueError("the reference or the target finished no seed; the path has no ends")
    path = summary.get("path") or []
    configs = [ref]
    for i, move in enumerate(path):
        last = i == len(path) - 1
        configs.append(tgt if last else cells.get(("step", move["param"], move["step"])))
    gains = [_diff(configs[i + 1], configs[i]) for i in range(len(path))]
    tested = [i for i, g in enumerate(gains) if g is not None]
    adjusted = dict(zip(tested, holm([gains[i].p_value for i in tested]), strict=True))
    steps = tuple(
        Step(
            move["param"],
            move["step"],
            gains[i],
            _diff(configs[i + 1], ref),
            adjusted.get(i, math.nan),
            _words(gains[i], adjusted.get(i)),
        )
        for i, move in enumerate(path)
    )
    loo = tuple(
        LeaveOneOut(p, d, _words(d))
        for p in params
        if len(params) > 1
        for d in [_diff(tgt, cells.get(("loo", p, None)))]
    )
    return PathResult(steps, loo, _diff(tgt, ref))


def from_summary(summary: Mapping[str, Any], params: Sequence[str]) -> PathResult | None:
    if summary.get("error") or not summary.get("records"):
        return None
    return analyse(summary, params)


def _intro() -> str:
    return (
        "From the reference to the target, the parameters that differ are moved one at a time; "
        "each step keeps the move with the best mean validation score over the seeds (a greedy "
        "path, decided on validation only). A step's gain is its configuration minus the "
        "previous one, paired by seed, with a 95% t interval and a p-value Holm-adjusted over "
        "the path. Leave-one-out puts one parameter back to the reference's value in the target."
    )


def _delta(d: PairedDiff | None) -> str:
    return "n/a" if d is None else f"{fmt_number(d.mean)} {fmt_interval(d.low, d.high)}"


def rows(r: PathResult) -> list[list[str]]:
    """The table: one row per step, then one per leave-one-out cell."""
    out = []
    for s in r.steps:
        gain, cum = _delta(s.gain), _delta(s.cumulative)
        out.append([f"step {s.step}", s.param, gain, cum, s.verdict])
    for lo in r.loo:
        d = lo.diff
        out.append(["leave one out", lo.param, _delta(d), "", lo.verdict])
    return out


HEADER = ["", "parameter", "Δ val (points)", "cumulative", "verdict"]


def text(r: PathResult) -> str:
    return sections.text("Ablation path", _intro(), r.headlines(), HEADER, rows(r))


def markdown(r: PathResult) -> str:
    return sections.markdown("Ablation path", _intro(), r.headlines(), HEADER, rows(r))


def html(r: PathResult) -> str:
    return sections.html(_intro(), r.headlines(), HEADER, rows(r))


def waterfall_plot(r: PathResult, path: str | Path) -> Path:
    """Each step's gain as a floating bar from the cumulative gain before it, its paired interval
    as an error bar, and the total at the end; steps within noise in grey.

    Raises:
        ValueError: no step was measured.
    """
    from matplotlib.figure import Figure

    steps = [s for s in r.steps if s.gain is not None]
    if not steps:
        raise ValueError("no step of the path was measured")
    path = Path(path)
    fig = Figure(figsize=(1.2 * len(steps) + 3, 4.2))
    ax = fig.subplots()
    level = 0.0
    for i, s in enumerate(steps):
        gain = s.gain.mean * 100
        noise = s.verdict.endswith("(within noise)")
        colour = "tab:gray" if noise else ("tab:green" if gain >= 0 else "tab:red")
        ax.bar(i, gain, bottom=level, color=colour, alpha=0.8)
        if not math.isnan(s.gain.low):
            top = level + gain
            ax.errorbar([i], [top], yerr=[[gain - s.gain.low * 100], [s.gain.high * 100 - gain]],
                        color="black", capsize=3)  # fmt: skip
        level += gain
    if r.total is not None:
        ax.bar(len(steps), r.total.mean * 100, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(steps) + 1))
    ax.set_xticklabels([s.param for s in steps] + ["total"], rotation=25)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("validation accuracy gained (points)")
    ax.set_title(
        "From the reference to the target, one parameter per step (grey: within noise)",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
