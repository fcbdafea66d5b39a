"""The search design and its selection stages: search -> (re-evaluate top k) -> refit -> register.

Stage 1 trains the batch's search jobs (configurations the sampler proposes) and its baseline
jobs. When none is left, stage 2 (optional, ``--reeval-top-k``) re-trains the best distinct
configurations with fresh seeds, so the choice rests on a mean instead of one lucky draw. Stage 3
chooses the best ``ensemble`` (default 2 from the CLIs) distinct configurations by validation
score only and refits each on every training image for the epoch count its validation runs found
best (like scikit-learn's ``refit=True``); with one choice the refit is registered, with several
a last job averages their probabilities into one model and registers that. ``--no-refit``
registers the best search run's own model instead. The test set is read only to report.

A re-evaluation batch (``bench.reevaluate``, ``bench.report --finalize``) is the same design
starting at stage 2. Every stage's jobs have deterministic keys, so any worker may compute the
next stage; the job store keeps each key once.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from bench.designs._base import Design, OpeningFacts
from bench.records import (
    ALL,
    BASELINE,
    COMPLETED,
    DONE,
    ENSEMBLE,
    FAILED,
    FINAL,
    REEVAL,
    REEVAL_DESIGN,
    REFIT,
    REGISTER,
    SEARCH,
    SEARCH_DESIGN,
    Job,
    JobSpec,
)

REEVAL_SEED0 = 1_000_000  # re-evaluation seeds: disjoint from the search's (seed + job index)
REFIT_TRIES = 3  # configurations refit in turn when a refit diverges: a few, not the whole list


@dataclass(frozen=True)
class Choice:
    """The configuration chosen by validation score, and what the refit needs of it."""

    source: str  # the key of the job whose configuration was chosen
    config: dict
    train: dict  # the source job's train overrides (a baseline's own budget)
    seed: int
    score: float  # its validation score: the mean over re-evaluation seeds when there are any
    best_epoch: int  # epochs its validation runs found best (0-based; median over seeds)
    n_runs: int
    model_uri: str | None
    how: str = "one search run"  # what ``score`` measures (the champion rule compares like)


def _config_key(spec: JobSpec, config: dict) -> str:
    return json.dumps([config, spec.train], sort_keys=True)


class SearchDesign(Design):
    """Produces a search batch's jobs, stage by stage, and reads their results."""

    name = SEARCH_DESIGN
    purposes = (SEARCH, BASELINE)
    run_label = "batch"
    role = "study"
    _log_dataset = True

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        s = self.settings
        return {
            "n_trials": s["n_trials"],
            "sampler": facts.sampler,
            "pruner": facts.pruner,
            "seed": s["seed"],
            "refit": s["refit"],
            "ensemble": s["ensemble"],
            "reeval_top_k": s["reeval_top_k"],
            **{f"fixed.{k}": v for k, v in facts.fixed.items()},
        }

    # ------------------------------------------------------------ stage 1

    def initial_jobs(self) -> list[JobSpec]:
        """Baseline jobs first (they count as trials), then search jobs up to ``n_trials``."""
        baselines = self.settings.get("baselines") or []
        n_trials = int(self.settings["n_trials"])
        seed = int(self.settings["seed"])
        specs = [
            JobSpec(
                key=f"baseline-{b['name']}",
                purpose=BASELINE,
                seed=seed + i,
                config=b["config"],
                train=b["train"],
                info={"baseline": b},
            )
            for i, b in enumerate(baselines)
        ]
        specs += [
            JobSpec(key=f"search-{i:04d}", purpose=SEARCH, seed=seed + i)
            for i in range(len(specs), max(n_trials, len(specs)))
        ]
        return specs

    def replacements(self, jobs: list[Job]) -> list[JobSpec]:
        """A failed search job (its configuration raised, or its worker died too often) is
        replaced by a fresh one, up to ``max_failures``: the batch keeps its trial count.

        Computed from the stored jobs alone (deterministic keys), so a worker that died between
        failing a job and replacing it leaves nothing the next one does not redo.
        """
        failed = sorted(
            (j for j in jobs if j.purpose == SEARCH and j.state == FAILED), key=lambda j: j.id
        )
        keys = {j.key for j in jobs}
        allowed = failed[: int(self.settings.get("max_failures", 10))]
        return [
            JobSpec(key=f"{j.key}+", purpose=SEARCH, seed=j.spec.seed + 100_000)
            for j in allowed
            if f"{j.key}+" not in keys
        ]

    # ------------------------------------------------------------ stages 2 and 3

    def _scored(self, jobs: list[Job], purposes: tuple[str, ...]) -> list[Job]:
        return [
            j
            for j in jobs
            if j.purpose in purposes
            and j.state == DONE
            and j.result is not None
            and j.result.status == COMPLETED
            and j.result.value is not None
        ]

    def candidates(self, jobs: list[Job], k: int) -> list[Job]:
        """The best ``k`` completed jobs with distinct configurations (ties: earlier first)."""
        done = self._scored(jobs, (SEARCH, BASELINE))
        done.sort(key=lambda j: (-self.sign * j.result.value, j.id))
        picked, seen = [], set()
        for j in done:
            key = _config_key(j.spec, j.result.config)
            if key not in seen:
                seen.add(key)
                picked.append(j)
        return picked[:k]

    def reeval_jobs(self, sources: list[Job]) -> list[JobSpec]:
        """``reeval_seeds`` fresh-seed jobs per source (sources from several batches are named
        by batch too, since job keys repeat across batches)."""
        seeds = [REEVAL_SEED0 + i for i in range(int(self.settings.get("reeval_seeds", 0)))]
        several = len({src.batch_id for src in sources}) > 1

        def name(src: Job) -> str:
            return f"b{src.batch_id}.{src.key}" if several else src.key

        return [
            JobSpec(
                key=f"reeval-{name(src)}-s{seed}",
                purpose=REEVAL,
                seed=seed,
                config=src.result.config,
                train=src.spec.train,
                info={"source": name(src), "source_value": src.result.value},
            )
            for src in sources
            for seed in seeds
        ]

    def choices(self, jobs: list[Job], k: int) -> list[Choice]:
        """The best ``k`` distinct configurations, by validation score only.

        With re-evaluation runs the score is each configuration's mean over its seeds; without,
        its search (or baseline) run's own score.
        """
        reevals = [j for j in jobs if j.purpose == REEVAL and j.state in (DONE, FAILED)]
        if reevals:
            completed = set(map(id, self._scored(jobs, (REEVAL,))))
            groups: dict[str, list[Job]] = {}
            for j in reevals:
                groups.setdefault(j.spec.info["source"], []).append(j)
            # a seed that diverged or failed is a failure of its configuration, not a seed to
            # leave out: a configuration is ranked only when every one of its seeds completed
            groups = {s: g for s, g in groups.items() if all(id(j) in completed for j in g)}
            order = {j.key: j.id for j in jobs}

            def mean(src: str) -> float:
                return statistics.fmean(j.result.value for j in groups[src])

            ranked = sorted(groups, key=lambda s: (-self.sign * mean(s), order.get(s, 0)))
            out = []
            for src in ranked[:k]:
                runs = groups[src]
                first = runs[0]
                out.append(
                    Choice(
                        source=src,
                        config=first.result.config,
                        train=first.spec.train,
                        seed=first.spec.seed,
                        score=mean(src),
                        best_epoch=int(statistics.median_low([r.result.best_epoch for r in runs])),
                        n_runs=len(runs),
                        model_uri=None,
                        how=f"mean over {len(runs)} re-evaluation seeds",
                    )
                )
            return out
        return [
            Choice(
                j.key,
                j.result.config,
                j.spec.train,
                j.spec.seed,
                j.result.value,
                j.result.best_epoch,
                1,
                j.result.model_uri,
            )
            for j in self.candidates(jobs, k)
        ]

    def _refit_job(self, choice: Choice, max_epochs: int, key: str, info: dict) -> JobSpec:
        budget = int(choice.train.get("max_epochs", max_epochs))
        return JobSpec(
            key=key,
            purpose=REFIT,
            seed=choice.seed,
            config=choice.config,
            # the epochs its validation run found best, on the schedule that run followed
            train={**choice.train, "max_epochs": choice.best_epoch + 1, "schedule_epochs": budget},
            split=ALL,
            info=info,
        )

    def _member_jobs(self, picked: list[Choice], max_epochs: int) -> list[JobSpec]:
        """One refit job per ensemble member: ``refit``, ``refit-1``, ... (none for one choice)."""
        if len(picked) < 2:
            return []
        return [
            self._refit_job(
                c, max_epochs, f"refit-{i}" if i else "refit", {**self._info(c), "member": i}
            )
            for i, c in enumerate(picked)
        ]

    def _info(self, choice: Choice) -> dict[str, Any]:
        return {
            "source": choice.source,
            "selection_score": choice.score,
            "n_runs": choice.n_runs,
            "best_epoch": choice.best_epoch,
            "selection": choice.how,
            "from_start": choice.config in self._starts(),
        }

    def _starts(self) -> list[dict]:
        """The configurations the space enqueues as its start (chosen by hand, not proposed by
        the sampler): a champion member that is one of them is said to be so."""
        if not hasattr(self, "_start_configs"):
            from bench.errors import SpaceError
            from bench.space import space_from_text, start_configs

            text = self.settings.get("space_text")
            try:
                space = space_from_text(text, str(self.settings.get("space"))) if text else None
                self._start_configs = start_configs(space) if space else []
            except SpaceError:
                self._start_configs = []
        return self._start_configs

    def _ensemble_job(self, refits: list[Job]) -> list[JobSpec]:
        """Stage 4 of an ensemble: one job that averages the refit members and registers them.

        Members that failed are left out (the rest still make a champion); with none left there
        is nothing to register. The ensemble's selection score is the members' mean validation
        score: it stands for the ensemble in the champion rule without claiming the best one's.
        """
        members = sorted(
            (
                j
                for j in refits
                if j.state == DONE and j.result and j.result.status == COMPLETED
                if j.result.model_uri
            ),
            key=lambda j: j.spec.info.get("member", 0),
        )
        if not members:
            return []
        scores = [float(j.spec.info["selection_score"]) for j in members]
        how = members[0].spec.info.get("selection", "one search run")
        info = {
            "source": "+".join(j.spec.info["source"] for j in members),
            "selection_score": statistics.fmean(scores),
            "selection": how if len(members) == 1 else f"mean of {len(members)} members' ({how})",
            "n_runs": sum(int(j.spec.info.get("n_runs", 1)) for j in members),
            "refit_epochs": "+".join(str(j.result.epochs_run) for j in members),
            "members": [
                {
                    "job": j.key,
                    "source": j.spec.info["source"],
                    "model_uri": j.result.model_uri,
                    "selection_score": j.spec.info["selection_score"],
                    "refit_epochs": j.result.epochs_run,
                    "test_accuracy": j.result.test_accuracy,
                    "from_start": bool(j.spec.info.get("from_start")),
                }
                for j in members
            ],
        }
        if len(members) == 1:  # the others failed: register the one member's own model
            info["model_uri"] = members[0].result.model_uri
        purpose = ENSEMBLE if len(members) > 1 else REGISTER
        return [JobSpec(key="ensemble", purpose=purpose, seed=members[0].spec.seed, info=info)]

    def _fallback_refit(self, jobs: list[Job], refits: list[Job], max_epochs: int) -> list[JobSpec]:
        """After a single refit that diverged or failed, the next choice is refit instead
        (``refit.1``, ``refit.2``; up to ``refit_tries`` configurations in all); [] once one
        completed or the tries are spent (the summary then says why there is no champion)."""
        if any(_completed(j) for j in refits):
            return []
        tries = int(self.settings.get("refit_tries", REFIT_TRIES))
        if len(refits) >= tries:
            return []
        tried = {j.spec.info.get("source") for j in refits}
        for choice in self.choices(jobs, tries):
            if choice.source not in tried:
                info = {**self._info(choice), "fallback_from": sorted(tried)}
                return [self._refit_job(choice, max_epochs, f"refit.{len(refits)}", info)]
        return []

    def next_jobs(self, jobs: list[Job], max_epochs: int) -> list[JobSpec]:
        """The next stage's jobs once nothing waits or runs; [] when the batch is complete."""
        again = self.replacements(jobs)
        if again:
            return again
        if not self.settings.get("register", True):
            return []
        if any(j.purpose in (REGISTER, ENSEMBLE) for j in jobs):
            return []
        refit = self.settings.get("refit", True)
        size = int(self.settings.get("ensemble", 1)) if refit else 1
        refits = [j for j in jobs if j.purpose == REFIT]
        if refits:
            if all(j.spec.info.get("member") is None for j in refits):
                return self._fallback_refit(jobs, refits, max_epochs)
            # members are enqueued one by one: a crash between two leaves some out, and the
            # (deterministic) choice says which
            have = {j.key for j in refits}
            wanted = self._member_jobs(self.choices(jobs, size), max_epochs)
            missing = [spec for spec in wanted if spec.key not in have]
            return missing or self._ensemble_job(refits)
        k = int(self.settings.get("reeval_top_k", 0))
        if k and self.settings.get("reeval_seeds") and not any(j.purpose == REEVAL for j in jobs):
            sources = self.candidates(jobs, k)
            if sources:
                return self.reeval_jobs(sources)
        picked = self.choices(jobs, size)
        if not picked:
            return []
        if len(picked) > 1:
            # an ensemble: each member refit (in parallel, one per free worker), then averaged
            return self._member_jobs(picked, max_epochs)
        choice = picked[0]
        if refit or choice.model_uri is None:
            # a re-evaluated choice has no single model of its own, and a search run whose
            # model could not be logged has none either: both are refit
            return [self._refit_job(choice, max_epochs, "refit", self._info(choice))]
        return [
            JobSpec(
                key="register",
                purpose=REGISTER,
                seed=choice.seed,
                config=choice.config,
                info={**self._info(choice), "model_uri": choice.model_uri},
            )
        ]

    # ------------------------------------------------------------ outcome

    def summary(self, jobs: list[Job]) -> dict[str, Any]:
        searched = [j for j in jobs if j.purpose in (SEARCH, BASELINE)]
        out: dict[str, Any] = {
            "finished": sum(1 for j in searched if j.state == DONE),
            "failed": sum(1 for j in searched if j.state == FAILED),
        }
        best = self.candidates(jobs, 1)
        if best:
            out["best_job"] = best[0].key
            out["best_value"] = best[0].result.value
            out["best_trial"] = best[0].trial_number
        groups: dict[str, list[Job]] = {}  # each source's completed seeds
        failed_seeds: dict[str, int] = {}
        for j in self._scored(jobs, (REEVAL,)):
            groups.setdefault(j.spec.info["source"], []).append(j)
        for j in jobs:
            if j.purpose == REEVAL and j.state in (DONE, FAILED) and not _completed(j):
                failed_seeds[j.spec.info["source"]] = failed_seeds.get(j.spec.info["source"], 0) + 1
                groups.setdefault(j.spec.info["source"], [])  # every seed may have failed
        if groups:
            rows = []
            for src, runs in groups.items():
                # a source whose every seed failed has no mean: None, never a crash (the last
                # worker writes this summary; raising here left the batch running for good)
                val = _mean_ci([r.result.value for r in runs])
                test = _mean_ci(
                    [r.result.test_accuracy for r in runs if r.result.test_accuracy is not None]
                )
                rows.append(
                    {
                        "source": src,
                        "seeds": len(runs),
                        "failed_seeds": failed_seeds.get(src, 0),
                        "val_mean": val[0],
                        "val_ci": val[1],
                        "test_mean": test[0],
                        "test_ci": test[1],
                    }
                )
            out["reeval"] = rows
            # what the rows are ranked by (a registered champion restates it below)
            out["selection_direction"] = "maximize" if self.maximize else "minimize"
        final = [
            j
            for j in jobs
            if j.purpose in FINAL and j.state == DONE
            if j.result and j.result.registered
        ]
        if final:
            job, r = final[0], final[0].result
            members = job.spec.info.get("members")
            out.update(r.registered)
            out["test_accuracy"] = r.test_accuracy
            out["test_loss"] = r.test_loss
            out["refit"] = job.purpose == REFIT or bool(members)
            out["refit_epochs"] = r.epochs_run if job.purpose == REFIT else None
            if members:
                out["refit_epochs"] = job.spec.info["refit_epochs"]
                out["ensemble"] = [
                    {k: m.get(k) for k in ("source", "selection_score", "test_accuracy",
                                           "from_start")}
                    for m in members
                ]  # fmt: skip
                starts = [m["source"] for m in members if m.get("from_start")]
            else:
                starts = [job.spec.info["source"]] if job.spec.info.get("from_start") else []
            if starts:
                out["from_start"] = starts
            out["source"] = job.spec.info.get("source")
            score = job.spec.info.get("selection_score")
            out["selection_score"] = score
            # validation minus test in the selection metric's own terms: a loss minus a loss
            metric = r.registered.get("selection_metric") or "val_accuracy"
            test = r.test_loss if metric == "val_loss" else r.test_accuracy
            if score is not None and test is not None:
                out["val_test_gap"] = score - test
        elif self.settings.get("register", True):
            reason = self._no_champion(jobs)
            if reason:
                out["no_champion"] = reason
        return out

    def _no_champion(self, jobs: list[Job]) -> str | None:
        """Why a batch that was to register a champion chose none; None when nothing says why
        (no job completed at all: the search's own failures are reported first)."""
        refits = [j for j in jobs if j.purpose == REFIT and j.state in (DONE, FAILED)]

        def outcome(j: Job) -> str:
            what = j.result.status if j.result and j.state == DONE else FAILED
            return f"{j.spec.info.get('source')} {what}"

        members = [j for j in refits if j.spec.info.get("member") is not None]
        if members and not any(_completed(j) for j in members):
            return (
                "every ensemble member's refit did not complete ("
                + ", ".join(map(outcome, members))
                + "); nothing to average or register"
            )
        singles = [j for j in refits if j.spec.info.get("member") is None]
        if singles and not any(_completed(j) for j in singles):
            return (
                f"no refit completed ({', '.join(map(outcome, singles))}); tried {len(singles)} "
                "configuration(s) in order of validation score"
            )
        reevals = [j for j in jobs if j.purpose == REEVAL and j.state in (DONE, FAILED)]
        if reevals and not refits and not self.choices(jobs, 1):
            return (
                "every re-evaluated configuration failed on at least one seed (a diverged or "
                "failed seed fails its configuration); nothing to refit"
            )
        return None


class ReevalDesign(SearchDesign):
    """A search batch's stages 2 and 3 on configurations a finished search found.

    Opened by ``bench.reevaluate`` (and ``bench.report --reevaluate``) with the re-evaluation
    jobs already planned in its settings (``reeval_jobs``: made by :meth:`reeval_jobs` from the
    search batches' best jobs), so every worker rebuilds the same jobs without the sources.
    """

    name = REEVAL_DESIGN
    purposes = (REEVAL,)
    run_label = "reeval"
    _log_dataset = False

    def initial_jobs(self) -> list[JobSpec]:
        return [JobSpec.from_dict(d) for d in self.settings.get("reeval_jobs") or []]

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        s = self.settings
        return {
            "top_k": s["reeval_top_k"],
            "seeds": s["reeval_seeds"],
            "sources": ",".join(s.get("sources") or []),
        }


def _completed(job: Job) -> bool:
    return job.state == DONE and job.result is not None and job.result.status == COMPLETED


def _mean_ci(values: list[float]) -> tuple[float | None, list[float] | None]:
    """The mean and its 95% t-interval as stored in a summary; (None, None) without a value."""
    if not values:
        return None, None
    from bench.results.stats import mean_ci

    mean, low, high = mean_ci(values)
    return mean, [low, high]


def reeval_order(rows: list[dict], maximize: bool) -> list[dict]:
    """A summary's re-evaluation rows, best first, the way :meth:`SearchDesign.choices` ranks.

    Configurations whose every seed completed come before any that failed a seed (those are
    never chosen, however well their surviving seeds scored); within each part, by mean
    validation score in the metric's direction (lowest first for a loss), a row without a mean
    last; ties keep the summary's order.
    """
    sign = 1.0 if maximize else -1.0

    def key(row: dict) -> tuple[bool, bool, float]:
        mean = row.get("val_mean")
        missing = mean is None or mean != mean  # None, or NaN
        return bool(row.get("failed_seeds")), missing, 0.0 if missing else -sign * mean

    return sorted(rows, key=key)
