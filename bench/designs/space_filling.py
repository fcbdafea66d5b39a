"""The global design: importance over the whole space, from a space-filling set of configurations.

A one-factor ablation and a crossed design look around one base; the search's own trials crowd
where the sampler liked it. This design spreads N configurations over the whole space with a
scrambled Sobol sequence (Optuna's ``QMCSampler``), trains each once with the search's epoch
budget, early stopping and no pruning, and trains a few of them again with other seeds, so the
report can say how much of the spread between configurations re-running with another seed alone
produces (the noise floor). :mod:`bench.results.importance` reads the importances with Optuna's
own evaluators (PED-ANOVA and fANOVA) and bootstrap intervals.

The configurations are drawn once, when ``bench.ablate --global N`` opens the batch, and stored in
its settings with the Optuna parameters and distributions they were drawn from, so every worker
rebuilds the same jobs and the analysis needs no sampler. Per-layer widths are drawn for the
deepest network in every configuration (the sequence fills a fixed box) and kept only for the
layers a configuration has: the importances see them as conditional parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.designs._base import OpeningFacts
from bench.designs.ablation import PlannedAblation, _plain, val_accuracy
from bench.designs.ablation_plan import ConfigCell, estimate_seconds, fmt_level
from bench.errors import BenchError
from bench.records import ABLATION, DONE, FAILED, GLOBAL_DESIGN, Job, JobSpec
from bench.space import (
    FixedParam,
    Space,
)

MIN_CONFIGS = 8  # fewer cannot rank 9 factors, let alone put an interval on it
MAX_CONFIGS = 1024


def repeated_indices(n: int) -> list[int]:
    """Which configurations train with every seed, for the noise floor: about one in 16, at
    least 2, spread evenly over the sequence (so not all from its random first point)."""
    k = max(2, round(n / 16))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


@dataclass(frozen=True)
class GlobalPlan:
    """The configurations of a global design and the seeds they train with.

    Attributes:
        configs: Each configuration drawn: ``{"config", "params", "distributions"}`` where
            ``params`` and ``distributions`` are the Optuna parameters it uses (JSON).
        repeated: Indices of the configurations that train with every seed.
        seeds: ``seeds[0]`` trains every configuration; the rest only the repeated ones.
        qmc_seed: The seed of the scrambled sequence.
    """

    configs: tuple[dict, ...]
    repeated: tuple[int, ...]
    seeds: tuple[int, ...]
    qmc_seed: int

    @property
    def factors(self) -> tuple[str, ...]:
        names: list[str] = []
        for c in self.configs:
            names += [p for p in c["params"] if p not in names]
        return tuple(names)

    @property
    def base(self) -> ConfigCell:
        """The configuration costs are measured against (the first one)."""
        return ConfigCell(self.configs[0]["config"])

    @property
    def cells(self) -> list[ConfigCell]:
        return [ConfigCell(c["config"]) for c in self.configs]

    def jobs(self) -> list[tuple[int, int]]:
        """Every (configuration index, seed): the first seed for all, then the repeats."""
        first = [(i, self.seeds[0]) for i in range(len(self.configs))]
        return first + [(i, s) for s in self.seeds[1:] for i in self.repeated]

    def job_configs(self) -> list[dict]:
        """The configuration of every job, in :meth:`jobs` order (what the estimate costs)."""
        return [self.configs[i]["config"] for i, _ in self.jobs()]

    @property
    def n_jobs(self) -> int:
        return len(self.jobs())

    def describe(self) -> list[str]:
        n, r = len(self.configs), len(self.repeated)
        return [
            f"global: {n} configurations from a scrambled Sobol sequence (seed {self.qmc_seed}) "
            f"over {len(self.factors)} parameters, seed {self.seeds[0]}; {r} of them also with "
            f"seed(s) {', '.join(map(str, self.seeds[1:]))} for the noise floor -> "
            f"{self.n_jobs} jobs",
            "  first: " + " ".join(f"{k}={fmt_level(v)}" for k, v in self.base.config.items()),
        ]

    def estimate_seconds(self, seconds_per_epoch_sample: float, max_epochs: int, **sizes) -> float:
        """Upper bound on the training time of all jobs (see ``ablation_plan.estimate_seconds``)."""
        return estimate_seconds(
            self.job_configs(), self.base.config, seconds_per_epoch_sample, max_epochs, **sizes
        )


def global_plan(space: Space, n: int, seeds: Sequence[int], qmc_seed: int = 0) -> GlobalPlan:
    """``n`` configurations spread over ``space``, with the seeds they train with.

    Raises:
        BenchError: fewer than :data:`MIN_CONFIGS`, a space that searches nothing, or bad seeds.
    """
    from bench.optuna_adapter.importance import qmc_draws

    if not MIN_CONFIGS <= n <= MAX_CONFIGS:
        raise BenchError(
            f"--global {n}: needs {MIN_CONFIGS} to {MAX_CONFIGS} configurations (importance "
            f"over fewer than {MIN_CONFIGS} is noise); e.g. --global 64"
        )
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise BenchError(f"--global: seeds must be distinct and at least 2, got {seeds}")
    searched = {k: p for k, p in space.params.items() if not isinstance(p, FixedParam)}
    if not searched:
        raise BenchError(f"{space.path}: the space searches no parameter; nothing to rank")
    configs = qmc_draws(space, n, qmc_seed)
    return GlobalPlan(tuple(configs), tuple(repeated_indices(n)), tuple(seeds), qmc_seed)


def plan_to_settings(plan: GlobalPlan, train: dict) -> dict[str, Any]:
    return {
        "configs": list(plan.configs),
        "repeated": list(plan.repeated),
        "seeds": list(plan.seeds),
        "qmc_seed": plan.qmc_seed,
        "train": dict(train),
    }


def job_key(index: int, seed: int) -> str:
    return f"global-c{index}-s{seed}"


class GlobalDesign(PlannedAblation):
    """Produces a global batch's jobs (all at once) and reads their results."""

    name = GLOBAL_DESIGN

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        p = self.plan
        return {
            "configurations": len(p["configs"]),
            "repeated": len(p["repeated"]),
            "seeds": len(p["seeds"]),
            "qmc_seed": p["qmc_seed"],
            "sampler": "QMC (scrambled Sobol)",
        }

    def _tags(self, batch, facts: OpeningFacts) -> dict[str, str]:
        return {
            "global": str(len(self.plan["configs"])),
            "seeds": ",".join(map(str, self.plan["seeds"])),
            "ablation_identity": batch.identity,
        }

    def initial_jobs(self) -> list[JobSpec]:
        p = self.plan
        plan = GlobalPlan(tuple(p["configs"]), tuple(p["repeated"]), tuple(p["seeds"]),
                          p["qmc_seed"])  # fmt: skip
        train = dict(p.get("train") or {})
        return [
            JobSpec(
                key=job_key(i, seed),
                purpose=ABLATION,
                seed=int(seed),
                config=p["configs"][i]["config"],
                train=train,
                info={"factor": "global", "level": f"c{i}", "config_index": i},
            )
            for i, seed in plan.jobs()
        ]

    def summary(self, jobs: list[Job]) -> dict[str, Any]:
        from bench.results.importance import analyse

        mine = [j for j in jobs if j.purpose == ABLATION]
        metric = self.settings.get("metric", "val_accuracy")
        records = []
        for j in mine:
            val = val_accuracy(j, metric)
            if val is not None:
                index, test = j.spec.info["config_index"], j.result.test_accuracy
                records.append(
                    {
                        "index": index,
                        "seed": j.spec.seed,
                        "val_accuracy": val,
                        "test_accuracy": test,
                    }
                )
        out: dict[str, Any] = {
            "finished": sum(1 for j in mine if j.state == DONE),
            "failed": sum(1 for j in mine if j.state == FAILED),
            "diverged": sum(1 for j in mine if j.state == DONE and val_accuracy(j, metric) is None),
            "seeds": list(self.plan["seeds"]),
            "records": records,
        }
        try:
            result = analyse(self.plan, records)  # validation accuracy: higher is better
        except ValueError as exc:
            out["error"] = str(exc)
            return out
        out["analysis"] = _plain(result.as_dict())
        out["headlines"] = result.headlines()
        return out
