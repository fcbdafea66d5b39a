"""The ablation path: which of the changes from a reference configuration to a target carry the
gain (Fawcett & Hoos 2016), as stages of jobs for the engine.

From the reference (say a tutorial's network) to the target (say the search's champion), the
parameters that differ are moved one at a time. Stage 0 trains the reference, the target and the
cheaper leave-one-out check (the target with each parameter put back to the reference's value).
Each later stage tries moving every parameter not moved yet, from the configuration the path has
reached, and keeps the move with the best mean validation score over the seeds; the last
parameter left is the target itself, so the path ends there without another stage. Every cell
trains with the same seeds, the same epoch budget and early stopping, no pruning.

The path is greedy and decided on validation scores only; :mod:`bench.results.path` reads each
step's gain and the cumulative gain with paired intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.designs._base import OpeningFacts
from bench.designs.ablation import PlannedAblation, _plain, val_accuracy
from bench.designs.ablation_plan import ConfigCell, _complete_base, estimate_seconds, fmt_level
from bench.errors import BenchError
from bench.records import ABLATION, COMPLETED, DONE, FAILED, PATH_DESIGN, Job, JobSpec
from bench.space import PARAM_DEFAULTS, PER_LAYER_OK, Space

REFERENCE, TARGET, LOO, STEP = "reference", "target", "loo", "step"


def _resize(values: list, n: int) -> list:
    """A per-layer list cut to ``n`` layers, or grown by repeating its last layer."""
    return (list(values) + [values[-1]] * n)[:n]


def move(config: dict, target: dict, param: str) -> dict:
    """``config`` with ``param`` set to the target's value, per-layer lists kept ``n_layers`` long.

    Moving ``n_layers`` resizes the per-layer lists that still hold the reference's values (a
    layer added repeats the last one); moving a per-layer parameter takes the target's values
    for as many layers as the configuration has.
    """
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in config.items()}
    if param == "n_layers":
        out["n_layers"] = target["n_layers"]
        for key in PER_LAYER_OK:
            out[key] = _resize(out[key], out["n_layers"])
    elif param in PER_LAYER_OK:
        out[param] = _resize(target[param], out["n_layers"])
    else:
        out[param] = target[param]
    return out


def differing(reference: dict, target: dict) -> list[str]:
    """The parameters whose values differ, in the order of :data:`bench.space.PARAM_DEFAULTS`.

    A per-layer parameter differs when the target's layers differ from the reference's cut or
    grown to the target's depth (``relu`` in every layer is the same at any depth).
    """
    n = target["n_layers"]
    return [
        p
        for p in PARAM_DEFAULTS
        if (_resize(reference[p], n) if p in PER_LAYER_OK else reference[p]) != target[p]
    ]


@dataclass(frozen=True)
class PathPlan:
    """A path's plan: what ``bench.ablate --path`` prints, estimates and stores.

    Attributes:
        reference: The configuration the path starts from, complete.
        target: The configuration it ends at.
        params: The parameters that differ, in :data:`bench.space.PARAM_DEFAULTS` order.
        seeds: The seeds every cell trains with.
    """

    reference: dict
    target: dict
    params: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def factors(self) -> tuple[str, ...]:
        return self.params

    @property
    def base(self) -> ConfigCell:
        """The configuration costs are measured against (the target)."""
        return ConfigCell(self.target)

    @property
    def cells(self) -> list[ConfigCell]:
        """Every cell the path may train, at most: stage 0, then each step's candidates."""
        d = len(self.params)
        first = [ConfigCell(self.reference), ConfigCell(self.target)]
        if d > 1:
            first += [ConfigCell(move(self.target, self.reference, p)) for p in self.params]
        steps = [ConfigCell(self.target) for k in range(1, d) for _ in range(d - k + 1)]
        return first + steps

    def job_configs(self) -> list[dict]:
        """Every job the path may train, at most (what the estimate costs)."""
        return [c.config for c in self.cells for _ in self.seeds]

    def describe(self) -> list[str]:
        d, n_cells = len(self.params), len(self.cells)
        ref = " ".join(f"{p}={fmt_level(self.reference[p])}" for p in self.params)
        tgt = " ".join(f"{p}={fmt_level(self.target[p])}" for p in self.params)
        return [
            f"path: {d} parameter(s) differ ({', '.join(self.params)}); at most {n_cells} cells "
            f"x {len(self.seeds)} seeds = {n_cells * len(self.seeds)} jobs over {max(1, d - 1)} "
            "stage(s): the reference, the target and leave-one-out first, then one stage per step",
            f"  from: {ref}",
            f"  to:   {tgt}",
        ]

    def estimate_seconds(self, seconds_per_epoch_sample: float, max_epochs: int, **sizes) -> float:
        """Upper bound on the training time of all jobs (see ``ablation_plan.estimate_seconds``)."""
        return estimate_seconds(
            self.job_configs(), self.target, seconds_per_epoch_sample, max_epochs, **sizes
        )


def path_plan(space: Space, reference: dict, target: dict, seeds: Sequence[int]) -> PathPlan:
    """The plan of a path from ``reference`` to ``target``.

    Raises:
        BenchError: a bad configuration, repeated seeds, or a reference equal to the target.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds must be distinct and at least one, got {seeds}")
    ref = _complete_base(space, reference)
    tgt = _complete_base(space, target)
    params = differing(ref, tgt)
    if not params:
        raise BenchError(
            "--path: the reference and the target are the same configuration; nothing to "
            "ablate (give another --from or --to)"
        )
    return PathPlan(ref, tgt, tuple(params), tuple(seeds))


def plan_to_settings(plan: PathPlan, train: dict) -> dict[str, Any]:
    """A plan as plain values for the batch settings, with the train overrides every cell uses."""
    return {
        "reference": plan.reference,
        "target": plan.target,
        "params": list(plan.params),
        "seeds": list(plan.seeds),
        "train": dict(train),
    }


def _key(kind: str, seed: int, step: int = 0, param: str = "") -> str:
    if kind in (REFERENCE, TARGET):
        return f"path-{kind}-s{seed}"
    if kind == LOO:
        return f"path-loo-{param}-s{seed}"
    return f"path-step{step}-{param}-s{seed}"


def _mean_val(jobs: list[Job]) -> float | None:
    """Mean validation value over the jobs' completed seeds; None if a seed did not complete
    (a configuration that fails a seed is not chosen)."""
    values = []
    for j in jobs:
        r = j.result
        if j.state != DONE or r is None or r.status != COMPLETED or r.value is None:
            return None
        values.append(r.value)
    return sum(values) / len(values) if values else None


class PathDesign(PlannedAblation):
    """Produces a path batch's stages and reads where the path went."""

    name = PATH_DESIGN

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        s = self.settings
        return {
            "seeds": len(s["seeds"]),
            "path_params": ",".join(self.plan["params"]),
            "from": s["from_source"],
            "to": s["to_source"],
            **{f"from.{k}": fmt_level(v) for k, v in self.plan["reference"].items()},
            **{f"to.{k}": fmt_level(v) for k, v in self.plan["target"].items()},
        }

    def _tags(self, batch, facts: OpeningFacts) -> dict[str, str]:
        s = self.settings
        return {
            "from": s["from_source"],
            "to": s["to_source"],
            "path_params": ",".join(self.plan["params"]),
            "seeds": ",".join(map(str, s["seeds"])),
            "ablation_identity": batch.identity,
        }

    def _spec(self, kind: str, config: dict, seed: int, step: int = 0, param: str = "") -> JobSpec:
        info: dict[str, Any] = {"factor": "path", "level": kind, "path": kind}
        if kind == LOO:
            info.update(level=f"loo:{param}", param=param)
        elif kind == STEP:
            info.update(level=f"step{step}:{param}", param=param, step=step)
        return JobSpec(
            key=_key(kind, seed, step, param),
            purpose=ABLATION,
            seed=int(seed),
            config=config,
            train=dict(self.plan.get("train") or {}),
            info=info,
        )

    def initial_jobs(self) -> list[JobSpec]:
        """The reference, the target and the leave-one-out cells, then step 1's candidates."""
        p = self.plan
        ref, tgt = p["reference"], p["target"]
        specs = []
        for seed in p["seeds"]:
            specs.append(self._spec(REFERENCE, ref, seed))
            specs.append(self._spec(TARGET, tgt, seed))
            if len(p["params"]) > 1:  # with one parameter, leaving it out is the reference
                for param in p["params"]:
                    specs.append(self._spec(LOO, move(tgt, ref, param), seed, param=param))
        return specs + self._candidates(1, ref, p["params"])

    def _candidates(self, step: int, current: dict, remaining: list[str]) -> list[JobSpec]:
        if len(remaining) <= 1:  # the last move lands on the target: trained already
            return []
        return [
            self._spec(STEP, move(current, self.plan["target"], param), seed, step, param)
            for seed in self.plan["seeds"]
            for param in remaining
        ]

    def walk(self, jobs: list[Job]) -> tuple[list[tuple[str, int]], dict, list[str], str]:
        """Where the path stands: the moves chosen so far as ``(param, step)``, the
        configuration reached, the parameters left, and what comes next: ``"complete"`` (one
        parameter or none left: the target ends the path), ``"next"`` (the next step's jobs are
        to be made), ``"running"`` (a step's jobs are not all finished) or ``"stuck"`` (every
        move of a step failed a seed: the path cannot go on)."""
        p = self.plan
        by_key = {j.key: j for j in jobs}
        current, remaining, chosen = p["reference"], list(p["params"]), []
        step = 1
        while len(remaining) > 1:
            runs = {q: [by_key.get(_key(STEP, s, step, q)) for s in p["seeds"]] for q in remaining}
            if all(r is None for rs in runs.values() for r in rs):
                return chosen, current, remaining, "next"
            if any(r is None or r.state not in (DONE, FAILED) for rs in runs.values() for r in rs):
                return chosen, current, remaining, "running"
            scores = {q: _mean_val(rs) for q, rs in runs.items()}
            ranked = [q for q in remaining if scores[q] is not None]
            if not ranked:  # every move failed a seed
                return chosen, current, remaining, "stuck"
            best = max(ranked, key=lambda q: (self.sign * scores[q], -remaining.index(q)))
            chosen.append((best, step))
            current = move(current, p["target"], best)
            remaining.remove(best)
            step += 1
        return chosen, current, remaining, "complete"

    def next_jobs(self, jobs: list[Job], max_epochs: int) -> list[JobSpec]:
        chosen, current, remaining, where = self.walk(jobs)
        if where != "next":
            return []
        return self._candidates(len(chosen) + 1, current, remaining)

    def summary(self, jobs: list[Job]) -> dict[str, Any]:
        from bench.results.path import analyse

        chosen, _, remaining, where = self.walk(jobs)
        mine = [j for j in jobs if j.purpose == ABLATION]
        records = []
        for j in mine:
            val = val_accuracy(j, self.settings.get("metric", "val_accuracy"))
            if val is None:
                continue
            records.append(
                {**{k: v for k, v in j.spec.info.items() if k in ("path", "param", "step")},
                 "seed": j.spec.seed, "val_accuracy": val, "test_accuracy": j.result.test_accuracy}
            )  # fmt: skip
        out: dict[str, Any] = {
            "finished": sum(1 for j in mine if j.state == DONE),
            "failed": sum(1 for j in mine if j.state == FAILED),
            "seeds": list(self.plan["seeds"]),
            "records": records,
            "path": [{"param": q, "step": s} for q, s in chosen]
            + [{"param": q, "step": len(chosen) + 1} for q in remaining],
        }
        if where == "stuck":
            out["error"] = (
                f"every move of step {len(chosen) + 1} failed a seed; the path stops after "
                f"{len(chosen)} step(s)"
            )
            return out
        try:
            result = analyse(out, self.plan["params"])
        except ValueError as exc:
            out["error"] = str(exc)
            return out
        out["headlines"] = _plain(result.headlines())
        return out
