"""What matters, factor by factor: what each design that ran says about each factor, side by side.

Each design answers a different question: the one-factor ablation how much a factor moves the
score around one configuration, the crossed design whether its effect depends on another factor,
the path which changes from a reference to a target carried the gain, the global design how much
of the spread over the whole space a factor explains. This module reads the latest finished batch
of each from its stored summary (nothing is recomputed) and lists, per factor, one entry per
design that measured it, so a reader sees which evidence supports a claim and where the designs
disagree. Every statement comes from validation scores; test accuracy is only reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.records import (
    ABLATION_DESIGN,
    CROSSED_DESIGN,
    DONE,
    GLOBAL_DESIGN,
    PATH_DESIGN,
    Batch,
)

DESIGNS = {
    ABLATION_DESIGN: "one-factor ablation",
    CROSSED_DESIGN: "crossed",
    PATH_DESIGN: "path",
    GLOBAL_DESIGN: "whole space",
}
ORDER = ("normalization", "optimizer", "n_layers", "units", "dropout", "l2", "learning_rate",
         "lr_schedule", "batch_size", "activation")  # fmt: skip


@dataclass(frozen=True)
class Evidence:
    """One design's statement about one factor."""

    factor: str
    design: str  # a key of DESIGNS
    batch: int
    says: str


def _factor_of(param: str) -> str:
    """``units_1`` -> ``units``: a per-layer parameter belongs to its factor."""
    base, _, layer = param.rpartition("_")
    return base if layer.isdigit() and base in ORDER else param


def _ablation(batch: Batch) -> list[Evidence]:
    out = []
    for line in (batch.summary or {}).get("headlines") or []:
        factor, sep, says = line.partition(": ")
        if sep:
            out.append(Evidence(factor, ABLATION_DESIGN, batch.number, says))
    return out


def _crossed(batch: Batch) -> list[Evidence]:
    out = []
    for line in (batch.summary or {}).get("headlines") or []:
        head, sep, says = line.partition(": ")
        if not sep:
            continue
        if " x " in head and " (" not in head:  # an interaction: "a x b: verdict"
            pair = head.split(" x ")
            for f in pair:
                others = " x ".join(p for p in pair if p != f)
                out.append(Evidence(f, CROSSED_DESIGN, batch.number,
                                    f"interaction with {others}: {says}"))  # fmt: skip
        else:  # a main effect: "a (averaged over the other crossed factors, vs x): ..."
            factor, _, how = head.partition(" (")
            out.append(Evidence(factor, CROSSED_DESIGN, batch.number,
                                f"main effect ({how} {says}" if how else says))  # fmt: skip
    return out


def _path(batch: Batch) -> list[Evidence]:
    out = []
    for line in (batch.summary or {}).get("headlines") or []:
        if line.startswith("step "):
            step, _, rest = line.partition(": ")
            param, _, says = rest.partition(": ")
            out.append(Evidence(param, PATH_DESIGN, batch.number, f"{step}: {says}"))
        elif line.startswith("leave-one-out "):
            param, _, says = line.removeprefix("leave-one-out ").partition(": ")
            says = says.removeprefix("putting it back costs: ")
            out.append(Evidence(param, PATH_DESIGN, batch.number,
                                f"the target against the target without it: {says}"))  # fmt: skip
    return out


def _global(batch: Batch) -> list[Evidence]:
    from bench.results.importance import LABELS, from_summary

    result = from_summary(batch.summary or {})
    if result is None:
        return []
    where = {"above": "clearly above", "below": "below", "unclear": "not clearly above"}
    out = []
    for e in result.evaluators:
        floors = "its floors" if e.name == "fanova" else "its chance floor"
        for i in e.importances:
            name = "" if i.param == _factor_of(i.param) else f" ({i.param})"
            out.append(Evidence(
                _factor_of(i.param), GLOBAL_DESIGN, batch.number,
                f"{LABELS[e.name]}{name} {_num(i.value, e.name)} [{_num(i.low, e.name)}, "
                f"{_num(i.high, e.name)}], {where[i.against_floor]} {floors}",
            ))  # fmt: skip
    return out


def _num(x: float, evaluator: str) -> str:
    from bench.results.importance import _num as fmt

    return fmt(x, evaluator)


READERS = {ABLATION_DESIGN: _ablation, CROSSED_DESIGN: _crossed, PATH_DESIGN: _path,
           GLOBAL_DESIGN: _global}  # fmt: skip


def evidence(batches: Sequence[Batch]) -> list[Evidence]:
    """Every statement of the latest finished batch of each design, by factor then design."""
    out: list[Evidence] = []
    for design, read in READERS.items():
        done = [b for b in batches if b.design == design and b.state == DONE]
        if done:
            out += read(done[-1])
    designs = list(DESIGNS)

    def key(e: Evidence) -> tuple:
        rank = ORDER.index(e.factor) if e.factor in ORDER else len(ORDER)
        return rank, e.factor, designs.index(e.design)

    return sorted(out, key=key)  # stable: each design's own order within a factor


INTRO = (
    "Each design that ran, on each factor it measured: the one-factor ablation (around one "
    "configuration), the crossed design (does the effect depend on another factor), the path "
    "(which changes carried the gain from a reference to a target) and the whole-space "
    "importances (share of the spread over the space). Validation scores decide every line; "
    "test accuracy is only reported."
)
HEADER = ["factor", "design", "what it says"]


def rows(items: Sequence[Evidence]) -> list[list[str]]:
    out, last = [], None
    for e in items:
        out.append([e.factor if e.factor != last else "", f"{DESIGNS[e.design]} (batch "
                    f"{e.batch})", e.says])  # fmt: skip
        last = e.factor
    return out


def text(items: Sequence[Evidence]) -> str:
    import textwrap

    out = [*textwrap.wrap(INTRO, 100), ""]
    last = None
    for e in items:
        if e.factor != last:
            out.append(f"{e.factor}:")
            last = e.factor
        out.append(f"  [{DESIGNS[e.design]}] {e.says}")
    return "\n".join(out) + "\n"


def markdown(items: Sequence[Evidence]) -> str:
    out = [INTRO, "", "| " + " | ".join(HEADER) + " |", "|---|---|---|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows(items)]
    return "\n".join(out) + "\n"


def html(items: Sequence[Evidence]) -> str:
    from bench.results import html as h

    return "\n".join([h.paragraph(INTRO), h.table(HEADER, rows(items))])


def as_plain(items: Sequence[Evidence]) -> list[dict[str, Any]]:
    return [e.__dict__.copy() for e in items]


# ---------------------------------------------------------------- across datasets


def _dataset(batch: Batch) -> str:
    return str((batch.settings or {}).get("dataset") or batch.study)


def across_datasets(
    batches: Sequence[Batch], study: str | None = None
) -> tuple[list[str], list[list[str]]] | None:
    """Each factor's effect on each dataset where the same design ran on two or more (one of
    them ``study``'s, when given): the one-factor effect (best minus worst level, paired
    interval) and the whole-space fANOVA importance (bootstrap interval), from the latest
    finished batch per dataset and design. ``(header, rows)``, or None where no design ran on
    two datasets. A batch whose summary cannot be read is left out, not fatal."""
    from bench.results import what_matters as wm
    from bench.results.importance import from_summary as importance_of
    from bench.results.stats import fmt_interval, fmt_number

    cells: dict[tuple[str, str], dict[str, str]] = {}  # (factor, design) -> dataset -> text
    datasets: list[str] = []
    for design in (ABLATION_DESIGN, GLOBAL_DESIGN):
        latest: dict[str, Batch] = {}
        for b in sorted(batches, key=lambda b: b.id):  # ids grow: the newest batch wins
            if b.design == design and b.state == DONE:
                latest[_dataset(b)] = b
        if len(latest) < 2 or (study is not None and all(b.study != study
                                                           for b in latest.values())):  # fmt: skip
            continue
        for name, b in latest.items():
            summary = b.summary or {}
            try:
                found = wm.from_summary(summary) if design == ABLATION_DESIGN else \
                    importance_of(summary)  # fmt: skip
            except (ValueError, KeyError, TypeError):  # an unreadable or older summary
                continue
            if name not in datasets:
                datasets.append(name)
            if design == ABLATION_DESIGN:
                for r in found:
                    e = r.effect
                    said = "n/a" if math.isnan(e.diff) else (
                        f"{fmt_number(e.diff)} points {fmt_interval(e.low, e.high)} "
                        f"({r.n_seeds} seeds)"
                    )  # fmt: skip
                    cells.setdefault((r.factor, "effect"), {})[name] = said
                continue
            for ev in found.evaluators if found else ():
                if ev.name != "fanova":
                    continue
                for i in ev.importances:
                    cells.setdefault((i.param, "fANOVA"), {})[name] = (
                        f"{_num(i.value, 'fanova')} [{_num(i.low, 'fanova')}, "
                        f"{_num(i.high, 'fanova')}] ({i.against_floor} its floors)"
                    )
    if not cells:
        return None

    def key(item: tuple[str, str]) -> tuple:
        factor = _factor_of(item[0])
        rank = ORDER.index(factor) if factor in ORDER else len(ORDER)
        return rank, item[0], item[1] != "effect"

    header = ["factor", "measure", *datasets]
    rows = [[f, "one-factor effect" if m == "effect" else "fANOVA importance",
             *(cells[(f, m)].get(d, "") for d in datasets)]
            for f, m in sorted(cells, key=key)]  # fmt: skip
    return header, rows


ACROSS_INTRO = (
    "The same design on several datasets, each around its own base (the one-factor effect: best "
    "minus worst level, paired 95% interval over seeds) or over its own space (fANOVA: share of "
    "the variance between configurations, 95% bootstrap interval, against the seed-noise floor). "
    "Validation scores; a blank cell is a factor that design did not vary on that dataset."
)
