"""One read side: which study, which of its batches and jobs, which champion, read without writing.

Every command that starts from what a study already holds (``bench.ablate`` around its champion,
``bench.report``, the estimates of how long a job takes) asks here, so "which champion?" has one
answer: the configuration the latest search batch registered (its best member, for an averaged
champion), else the best completed job, else the best completed Optuna trial.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from bench import optuna_adapter as opt
from bench.designs.ablation_plan import dense_macs
from bench.engine.store import JobStore, store_url
from bench.errors import BenchError
from bench.records import (
    BASELINE,
    COMPLETED,
    DONE,
    REEVAL,
    REEVAL_DESIGN,
    SEARCH,
    SEARCH_DESIGN,
    TRIAL_BASELINE,
    TRIAL_CONFIG,
    Batch,
    Job,
)

# Measured here: one 55,000-image epoch of a 784-300-100-10 MLP takes about 1.2 s on 2 cores.
REFERENCE_UNITS = [300, 100]
REFERENCE_EPOCH_SECONDS = 1.2
REFERENCE_TRAIN = 55_000


def store_exists(storage: str) -> bool:
    url = store_url(storage)
    if not url.startswith("sqlite:///"):
        return True  # a database server: the job store lives in it
    return Path(url.removeprefix("sqlite:///")).is_file()


def storage_exists(storage: str) -> bool:
    if opt.is_journal(storage):
        return Path(storage).is_file()
    if storage.startswith("sqlite:///"):
        return Path(storage.removeprefix("sqlite:///")).is_file()
    return True


def job_store(storage: str) -> JobStore | None:
    """The storage's job store, or None when it has none (a reader never creates one)."""
    return JobStore(storage) if store_exists(storage) else None


class StudyView:
    """What a study already holds, read without writing: its search batches, jobs and trials."""

    def __init__(self, storage: str, name: str | None):
        self.storage = storage
        self.names = opt.study_names(storage) if storage_exists(storage) else []
        self.name = name
        self.store = None
        if store_exists(storage) and storage_exists(storage):
            self.store = JobStore(storage)

    @property
    def exists(self) -> bool:
        return self.name in self.names

    def search_batch(self) -> Batch | None:
        if self.store is None or not self.exists:
            return None
        return self.store.latest_batch(self.name, SEARCH_DESIGN)

    def jobs(self, purposes: tuple[str, ...] = (SEARCH, BASELINE, REEVAL)) -> list[Job]:
        if self.store is None or not self.exists:
            return []
        out = []
        for b in self.store.batches(self.name):
            if b.design in (SEARCH_DESIGN, REEVAL_DESIGN):
                out += [j for j in self.store.jobs(b.id) if j.purpose in purposes]
        return out

    def study(self):
        return opt.load_study(self.name, self.storage)


def _train_of(job) -> dict:
    return {k: v for k, v in (job.spec.train or {}).items() if k != "schedule_epochs"}


def champion_config(view: StudyView, maximize: bool) -> tuple[dict, dict, str]:
    """The study's champion configuration: its latest search's chosen source, else its best."""
    batch = view.search_batch()
    jobs = view.jobs()
    summary = (batch.summary or {}) if batch is not None else {}
    source = summary.get("source")
    members = summary.get("ensemble") or []
    label = "champion"
    if members:  # an averaged champion: ablate around its best member (by validation)
        source, label = members[0]["source"], f"best of the {len(members)} averaged champions"
    if source and batch is not None:
        for j in view.store.jobs(batch.id):
            if j.key == source and j.result is not None:
                return (
                    j.result.config,
                    _train_of(j),
                    f"{label} of search batch {batch.number} ({source})",
                )
    done = [
        j
        for j in jobs
        if j.purpose in (SEARCH, BASELINE)
        and j.state == DONE
        and j.result
        and j.result.status == COMPLETED
        and j.result.value is not None
    ]
    if done:
        sign = 1 if maximize else -1
        best = max(done, key=lambda j: (sign * j.result.value, -j.id))
        name = f"trial {best.trial_number}" if best.trial_number is not None else best.key
        return best.result.config, _train_of(best), f"best completed {name}"
    trials = [
        t
        for t in opt.trials(view.study(), ("COMPLETE",))
        if t.user_attrs.get(TRIAL_CONFIG) and t.value is not None
    ]
    if not trials:
        raise BenchError(
            f"study '{view.name}' has no completed trial to take a base "
            "configuration from; give --base-config FILE or run bench.search first"
        )
    sign = 1 if maximize else -1
    best = max(trials, key=lambda t: (sign * t.value, -t.number))
    train = (best.user_attrs.get(TRIAL_BASELINE) or {}).get("train") or {}
    return best.user_attrs[TRIAL_CONFIG], dict(train), f"best completed trial {best.number}"


def trial_config(
    view: StudyView, number: int, flag: str = "--base-trial"
) -> tuple[dict, dict, str]:
    found = [t for t in opt.trials(view.study()) if t.number == number]
    if not found:
        raise BenchError(f"{flag} {number}: study '{view.name}' has no trial {number}")
    t = found[0]
    if t.state != "COMPLETE" or not t.user_attrs.get(TRIAL_CONFIG):
        raise BenchError(
            f"{flag} {number}: the trial did not complete ({t.state.lower()}); "
            "choose a completed trial"
        )
    train = (t.user_attrs.get(TRIAL_BASELINE) or {}).get("train") or {}
    return t.user_attrs[TRIAL_CONFIG], dict(train), f"trial {number}"


def seconds_per_mac(view: StudyView, n_train: int) -> tuple[float, str]:
    """Seconds per epoch, training sample and forward multiply-accumulate, measured if possible.

    From the study's finished jobs (``train_seconds / epochs_run / n_train / dense_macs``, the
    median), else the constant measured on this project's 2-core machine.
    """
    rates = []
    for j in view.jobs():
        r = j.result
        if r is None or not r.epochs_run or not r.train_seconds or not r.config:
            continue
        try:
            rates.append(r.train_seconds / r.epochs_run / n_train / dense_macs(r.config))
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    if len(rates) >= 1:
        return statistics.median(rates), f"calibrated on {len(rates)} finished job(s)"
    ref = dense_macs({"units": REFERENCE_UNITS})
    return REFERENCE_EPOCH_SECONDS / REFERENCE_TRAIN / ref, "a 2-core CPU reference"


def expected_epoch_share(
    view: StudyView, budget: int, patience: int | None = None, decaying: bool = False
) -> tuple[float, str]:
    """The share of the epoch budget a job is expected to use before early stopping ends it.

    The median over the study's completed (not pruned) jobs of epochs run / their budget. With
    none to learn from, a prior: a decaying learning rate trains to its schedule's end (the
    full budget); a constant one stops ``patience`` epochs after its best epoch, put at a quarter
    of the budget (measured here: 2x256 Adam nets, patience 5, budget 20 stopped after 6 to 13
    epochs, benchmarks/RESULTS.md). Without ``patience``, the full budget.
    """
    shares = []
    for j in view.jobs():
        r = j.result
        if r is None or r.status != COMPLETED or not r.epochs_run:
            continue
        own = int((j.spec.train or {}).get("max_epochs") or budget)
        shares.append(min(1.0, r.epochs_run / max(1, own)))
    if not shares:
        if patience is None or decaying:
            why = "a decaying learning rate trains to its end" if decaying else "full budget"
            return 1.0, f"no finished job here to learn the stopping epoch from: {why}"
        epochs = min(budget, patience + 1 + math.ceil(budget / 4))
        return epochs / budget, (
            f"no finished job here: early stopping assumed after ~{epochs} epochs "
            f"(patience {patience} after a best epoch at a quarter of the budget)"
        )
    share = statistics.median(shares)
    return share, f"early stopping after ~{share * budget:.0f} epochs, as in {len(shares)} runs"
