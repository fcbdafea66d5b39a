"""The crossed design: every combination of the levels of 2 or 3 factors, the rest at the base.

A one-factor ablation (:mod:`bench.designs.ablation`) sees each factor around one base only, so
it cannot tell whether a factor's effect depends on another one (normalization may matter under
SGD and hardly under Adam). A crossed design trains every combination of the crossed factors'
levels, each with the same seeds, so every effect can be compared seed by seed under every level
of the other factors; :mod:`bench.results.interactions` reads the interaction contrasts from it.

The plan is made once by ``bench.ablate --cross`` and stored in the batch settings as plain
values, so every worker rebuilds the same jobs. One stage: one job per cell and seed, each a
fixed configuration with the full epoch budget, early stopping and no pruning (the ``ablation``
purpose, like the one-factor design's cells).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.designs._base import OpeningFacts
from bench.designs.ablation import PlannedAblation, _plain, val_accuracy
from bench.designs.ablation_plan import (
    MAX_POINTS,
    _complete_base,
    _uniform,
    _with_level,
    estimate_seconds,
    fmt_level,
    levels_for,
    unknown_factor_error,
)
from bench.errors import BenchError
from bench.records import ABLATION, CROSSED_DESIGN, DONE, FAILED, Job, JobSpec
from bench.space import PARAM_DEFAULTS, Space

MIN_CROSSED, MAX_CROSSED = 2, 3
MAX_CELLS = 100  # the default --max-cells: 5 x 5 levels fit, 5 x 5 x 5 needs the flag


@dataclass(frozen=True)
class CrossCell:
    """One combination: ``levels[i]`` is the level of the plan's ``factors[i]``."""

    levels: tuple
    config: dict = field(hash=False, compare=True)
    is_base: bool = False


@dataclass(frozen=True)
class CrossPlan:
    """The cells of a crossed design and the seeds each trains with.

    Attributes:
        factors: The crossed factors, in the order given.
        levels: Per factor, its levels in order (the base value among them where it is one).
        base_levels: Per factor, the base configuration's value: the reference level that
            effects are measured from (the first level where the base value is not a level).
        cells: Every combination, the first factor varying slowest.
        seeds: The seeds every cell trains with, so results pair by seed.
    """

    factors: tuple[str, ...]
    levels: dict[str, tuple]
    base_levels: dict[str, Any]
    cells: tuple[CrossCell, ...]
    seeds: tuple[int, ...]

    @property
    def base(self) -> CrossCell:
        """The cell at every reference level (the configuration the design is around)."""
        ref = tuple(self.base_levels[f] for f in self.factors)
        return next(c for c in self.cells if c.levels == ref)

    def jobs(self) -> Iterator[tuple[CrossCell, int]]:
        """Every (cell, seed), seed by seed: a run cut short has whole seeds first."""
        for seed in self.seeds:
            for c in self.cells:
                yield c, seed

    def job_configs(self) -> list[dict]:
        """The configuration of every job, in :meth:`jobs` order (what the estimate costs)."""
        return [c.config for c, _ in self.jobs()]

    def describe(self) -> list[str]:
        """Lines for the plan printed before anything trains."""
        sizes = " x ".join(str(len(self.levels[f])) for f in self.factors)
        n_jobs = len(self.cells) * len(self.seeds)
        seeds = ", ".join(map(str, self.seeds))
        lines = [
            f"crossed: {' x '.join(self.factors)} ({sizes} levels) = {len(self.cells)} cells, "
            f"{len(self.seeds)} seeds ({seeds}) -> {n_jobs} jobs",
            "base: " + " ".join(f"{k}={fmt_level(v)}" for k, v in self.base.config.items()),
        ]
        width = max(len(f) for f in self.factors)
        for f in self.factors:
            shown = [
                fmt_level(v) + ("*" if v == self.base_levels[f] else "") for v in self.levels[f]
            ]
            lines.append(f"  {f:<{width}}  {' | '.join(shown)}")
        lines.append("  (* = the reference level: effects are measured from it)")
        return lines

    def estimate_seconds(self, seconds_per_epoch_sample: float, max_epochs: int, **sizes) -> float:
        """Upper bound on the training time of all jobs (see ``ablation_plan.estimate_seconds``)."""
        return estimate_seconds(
            self.job_configs(), self.base.config, seconds_per_epoch_sample, max_epochs, **sizes
        )


def cross_plan(
    space: Space,
    base_config: dict,
    factors: Sequence[str],
    seeds: Sequence[int],
    n_points: int = MAX_POINTS,
    max_cells: int = MAX_CELLS,
) -> CrossPlan:
    """Plan every combination of the levels of ``factors`` around ``base_config``.

    Each factor takes the levels a one-factor ablation gives it
    (:func:`bench.designs.ablation_plan.levels_for`); every other parameter keeps its base value.

    Args:
        space: The search space the levels come from.
        base_config: The base configuration (as for :func:`bench.designs.ablation_plan.plan`).
        factors: 2 or 3 distinct parameter names.
        seeds: The seeds every cell trains with.
        n_points: Grid size for numeric factors, from 3 to 5.
        max_cells: The most cells the plan may have.

    Returns:
        The :class:`CrossPlan`.

    Raises:
        BenchError: fewer than 2 or more than 3 factors, a repeated, unknown or single-level
            factor, a bad base configuration, no seeds, or more cells than ``max_cells`` (the
            message says how many).
    """
    factors = tuple(factors)
    seeds = tuple(int(s) for s in seeds)
    if not MIN_CROSSED <= len(factors) <= MAX_CROSSED:
        raise BenchError(
            f"--cross: {len(factors)} factor(s) given ({','.join(factors)}); cross 2 or 3 "
            "factors, e.g. --cross normalization,optimizer"
        )
    if len(set(factors)) != len(factors):
        raise BenchError(f"--cross: a factor is named twice: {','.join(factors)}")
    known = tuple(PARAM_DEFAULTS)
    for f in factors:
        if f not in known:
            raise unknown_factor_error(f, known)
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds must be distinct and at least one, got {list(seeds)}")
    base_config = _complete_base(space, base_config)
    levels = {f: tuple(levels_for(f, space.params[f], base_config[f], n_points)) for f in factors}
    n_cells = 1
    for f in factors:
        n_cells *= len(levels[f])
    if n_cells > max_cells:
        sizes = " x ".join(f"{len(levels[f])} ({f})" for f in factors)
        raise BenchError(
            f"--cross {','.join(factors)}: {sizes} = {n_cells} cells x {len(seeds)} seeds = "
            f"{n_cells * len(seeds)} jobs, over the limit of {max_cells} cells; cross fewer "
            "factors, or raise --max-cells"
        )
    base_levels = {}
    for f in factors:
        value = _uniform(base_config[f])
        base_levels[f] = value if value in levels[f] else levels[f][0]
    cells = []
    for combo in itertools.product(*(levels[f] for f in factors)):
        config = base_config
        for f, level in zip(factors, combo, strict=True):
            config = _with_level(config, f, level)
        is_base = all(combo[i] == _uniform(base_config[f]) for i, f in enumerate(factors))
        cells.append(CrossCell(tuple(combo), config, is_base))
    return CrossPlan(factors, levels, base_levels, tuple(cells), seeds)


def plan_to_settings(plan: CrossPlan, train: dict) -> dict[str, Any]:
    """A plan as plain values for the batch settings (JSON), with the base's train overrides."""
    return {
        "factors": list(plan.factors),
        "levels": {f: list(v) for f, v in plan.levels.items()},
        "base_levels": dict(plan.base_levels),
        "cells": [
            {"levels": list(c.levels), "config": c.config, "is_base": c.is_base} for c in plan.cells
        ],
        "seeds": list(plan.seeds),
        "train": dict(train),
    }


def job_key(factors: Sequence[str], levels: Sequence[Any], seed: int) -> str:
    """The key of one cell x seed job, e.g. ``cross-normalization=none,optimizer=sgd-s0``."""
    cell = ",".join(f"{f}={fmt_level(v)}" for f, v in zip(factors, levels, strict=True))
    return f"cross-{cell}-s{seed}"


def records(jobs: list[Job], metric: str = "val_accuracy") -> list[dict[str, Any]]:
    """One record per completed cell x seed job (failed ones are left out, as in the ablation)::

    {"levels": {"normalization": "none", "optimizer": "sgd"}, "seed": 0,
     "val_accuracy": 0.86, "test_accuracy": 0.85}
    """
    out = []
    for j in jobs:
        val = val_accuracy(j, metric)
        if val is None:  # failed or diverged: left out
            continue
        out.append(
            {
                "levels": dict(j.spec.info["levels"]),
                "seed": j.spec.seed,
                "val_accuracy": val,
                "test_accuracy": j.result.test_accuracy,
            }
        )
    return out


class CrossedDesign(PlannedAblation):
    """Produces a crossed batch's jobs (all at once) and reads their results."""

    name = CROSSED_DESIGN

    def _base_config(self) -> dict:
        cells = self.plan["cells"]
        ref = [self.plan["base_levels"][f] for f in self.plan["factors"]]
        return next(c["config"] for c in cells if c["levels"] == ref)

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        s = self.settings
        return {
            "seeds": len(s["seeds"]),
            "cells": len(self.plan["cells"]),
            "factors": ",".join(self.plan["factors"]),
            "crossed": "true",
            "base_source": s["base_source"],
            **{f"base.{k}": fmt_level(v) for k, v in self._base_config().items()},
            **{f"base_train.{k}": v for k, v in self.plan["train"].items()},
        }

    def _tags(self, batch, facts: OpeningFacts) -> dict[str, str]:
        s = self.settings
        return {
            "base": s["base_source"],
            "factors": ",".join(self.plan["factors"]),
            "crossed": "true",
            "seeds": ",".join(map(str, s["seeds"])),
            "ablation_identity": batch.identity,
        }

    def initial_jobs(self) -> list[JobSpec]:
        """Every cell with every seed, seed by seed."""
        factors = self.plan["factors"]
        train = dict(self.plan.get("train") or {})
        return [
            JobSpec(
                key=job_key(factors, c["levels"], seed),
                purpose=ABLATION,
                seed=int(seed),
                config=c["config"],
                train=train,
                info={
                    "factor": ",".join(factors),
                    "level": ",".join(fmt_level(v) for v in c["levels"]),
                    "levels": dict(zip(factors, c["levels"], strict=True)),
                    "is_base": bool(c["is_base"]),
                },
            )
            for seed in self.plan["seeds"]
            for c in self.plan["cells"]
        ]

    def summary(self, jobs: list[Job]) -> dict[str, Any]:
        from bench.results.interactions import analyse

        mine = [j for j in jobs if j.purpose == ABLATION]
        recs = records(jobs, self.settings.get("metric", "val_accuracy"))
        out: dict[str, Any] = {
            "finished": sum(1 for j in mine if j.state == DONE),
            "failed": sum(1 for j in mine if j.state == FAILED),
            "seeds": list(self.plan["seeds"]),
            "factors_planned": list(self.plan["factors"]),
            "levels": _plain(self.plan["levels"]),
            "base_levels": _plain(self.plan["base_levels"]),
            "records": recs,
        }
        try:
            result = analyse(recs, self.plan["factors"], self.plan["levels"],
                             self.plan["base_levels"])  # fmt: skip
        except ValueError as exc:  # e.g. no seed finished every cell
            out["error"] = str(exc)
            return out
        out["headlines"] = result.headlines()
        return out
