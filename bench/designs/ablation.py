"""The ablation design: a controlled one-factor-at-a-time comparison, as jobs for the engine.

The plan (:mod:`bench.designs.ablation_plan`) is made once by ``bench.ablate`` and stored in the
batch settings as plain values, so every worker rebuilds the same jobs from it: one job per cell
and seed, each training a fixed configuration for the full epoch budget with early stopping and
no pruning. There is one stage only; the summary is the paired analysis of
:mod:`bench.results.what_matters`, as plain values for the batch record.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from bench.designs._base import Design, OpeningFacts
from bench.designs.ablation_plan import BASE, Plan, fmt_level
from bench.records import ABLATION, ABLATION_DESIGN, COMPLETED, DONE, FAILED, Job, JobSpec


def plan_to_settings(plan: Plan, train: dict) -> dict[str, Any]:
    """A plan as plain values for the batch settings (JSON), with the base's train overrides."""
    return {
        "cells": [
            {"factor": c.factor, "level": c.level, "config": c.config, "is_base": c.is_base}
            for c in plan.cells
        ],
        "seeds": list(plan.seeds),
        "levels": {f: list(v) for f, v in plan.levels.items()},
        "base_levels": dict(plan.base_levels),
        "train": dict(train),
    }


def job_key(factor: str, level: Any, seed: int) -> str:
    """The deterministic key of one cell x seed job."""
    if factor == BASE:
        return f"cell-base-s{seed}"
    return f"cell-{factor}={fmt_level(level)}-s{seed}"


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and NaN made JSON-safe (NaN -> None)."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def val_accuracy(job: Job, metric: str = "val_accuracy") -> float | None:
    """A finished ablation cell's validation accuracy: its value where the space's metric is
    accuracy, else the history's at the kept epoch; None for a job that failed or diverged."""
    r = job.result
    if job.purpose != ABLATION or job.state != DONE or r is None or r.status != COMPLETED:
        return None
    val = r.value if metric == "val_accuracy" else None
    if val is None:
        history = (r.history or {}).get("val_accuracy") or []
        if 0 <= r.best_epoch < len(history):
            val = history[r.best_epoch]
    if not isinstance(val, (int, float)) or math.isnan(val):
        return None
    return float(val)


def records(jobs: list[Job], metric: str = "val_accuracy") -> list[dict[str, Any]]:
    """One what_matters record per completed ablation job (failed ones are left out)."""
    out = []
    for j in jobs:
        val = val_accuracy(j, metric)
        if val is None:
            continue
        r, info = j.result, j.spec.info
        out.append(
            {
                "factor": info["factor"],
                "level": info["level"],
                "seed": j.spec.seed,
                "is_base": bool(info.get("is_base")),
                "val_accuracy": float(val),
                "test_accuracy": r.test_accuracy,
            }
        )
    return out


class PlannedAblation(Design):
    """A design whose whole plan is stored in its settings (``settings["plan"]``) and whose
    cells are ``ablation`` jobs: the one-factor, crossed, path and global designs."""

    purposes = (ABLATION,)
    role = "ablation"  # the UI lists them all with the ablations

    def __init__(self, settings: dict[str, Any], maximize: bool = True):
        super().__init__(settings, maximize)
        self.plan = settings["plan"]


class AblationDesign(PlannedAblation):
    """Produces an ablation batch's jobs (all at once) and reads their results."""

    name = ABLATION_DESIGN

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        s, base = self.settings, self.plan["cells"][0]["config"]
        return {
            "seeds": len(s["seeds"]),
            "cells": len(self.plan["cells"]),
            "factors": ",".join(s["factors"]),
            "base_source": s["base_source"],
            **{f"base.{k}": fmt_level(v) for k, v in base.items()},
            **{f"base_train.{k}": v for k, v in self.plan["train"].items()},
        }

    def _tags(self, batch, facts: OpeningFacts) -> dict[str, str]:
        s = self.settings
        return {
            "base": s["base_source"],
            "base_config": json.dumps(self.plan["cells"][0]["config"], sort_keys=True)[:4000],
            "factors": ",".join(s["factors"]),
            "seeds": ",".join(map(str, s["seeds"])),
            "ablation_identity": batch.identity,
        }

    def initial_jobs(self) -> list[JobSpec]:
        """Every cell with every seed, seed by seed (a run cut short has whole seeds first)."""
        train = dict(self.plan.get("train") or {})
        return [
            JobSpec(
                key=job_key(c["factor"], c["level"], seed),
                purpose=ABLATION,
                seed=int(seed),
                config=c["config"],
                train=train,
                info={"factor": c["factor"], "level": c["level"], "is_base": bool(c["is_base"])},
            )
            for seed in self.plan["seeds"]
            for c in self.plan["cells"]
        ]

    def analyse(self, jobs: list[Job]):
        """The :func:`bench.results.what_matters.analyse` results of the finished jobs."""
        from bench.results.what_matters import analyse

        recs = records(jobs, self.settings.get("metric", "val_accuracy"))
        return analyse(recs, base_levels=self.plan.get("base_levels")), recs

    def summary(self, jobs: list[Job]) -> dict[str, Any]:
        from bench.results.what_matters import headline

        mine = [j for j in jobs if j.purpose == ABLATION]
        out: dict[str, Any] = {
            "finished": sum(1 for j in mine if j.state == DONE),
            "failed": sum(1 for j in mine if j.state == FAILED),
            "seeds": list(self.plan["seeds"]),
            "factors_planned": list(self.plan["levels"]),
            "base_levels": _plain(self.plan.get("base_levels") or {}),
        }
        try:
            results, recs = self.analyse(jobs)
        except ValueError as exc:  # e.g. every base job failed: nothing to compare to
            out["error"] = str(exc)
            out["records"] = records(jobs, self.settings.get("metric", "val_accuracy"))
            return out
        out["records"] = recs
        out["factors"] = _plain(results)
        out["headlines"] = [headline(r) for r in results]
        return out
