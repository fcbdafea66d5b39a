"""A slot's worker: runs one job of a batch at a time, as its driver hands them out.

A slot keeps TensorFlow, the dataset and its splits loaded between jobs. For each job the driver
starts an attempt (a fresh token on the job in the store) and the slot runs it: configure (a
search job asks Optuna for its trial), train with per-epoch tracking and pruning, record the
result, mirror it (:class:`~bench.engine.ledger.Ledger`). Every write and every side effect that
another attempt must never see (the result, a model logged, a version registered, the alias) is
fenced by the attempt's token: once the driver has given the attempt up, they are refused.

What differs between purposes is one row of :data:`RUNNERS`: the steps (training, or the final
stage's averaging and registering in :mod:`bench.engine.registering`), whether the test set is
scored, whether the sampler proposes the configuration, whether the model is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bench import data
from bench import optuna_adapter as opt
from bench.engine.interrupts import Interrupts
from bench.engine.ledger import Ledger, job_tags, trial_attrs
from bench.engine.registering import (
    identity,
    is_member,
    register_refit,
    run_ensemble,
    run_register,
)
from bench.engine.store import JobStore
from bench.errors import BenchError, redact
from bench.faults import kill_point
from bench.records import (
    ABLATION,
    ALL,
    BASELINE,
    COMPLETED,
    DONE,
    ENSEMBLE,
    FAILED,
    FINAL,
    REEVAL,
    REFIT,
    REGISTER,
    RUNNING,
    SEARCH,
    TRIAL_BATCH,
    TRIAL_JOB,
    TRIAL_REASON,
    Job,
    JobResult,
    is_ensemble,
)
from bench.space import flat_config
from bench.tracking import Tracker
from bench.training import (
    configure_threads,
    evaluate,
    train,
)

log = logging.getLogger("bench")


@dataclass(frozen=True)
class WorkerSettings:
    """What a slot needs; plain values so it crosses process (and machine) boundaries."""

    storage: str
    tracking_uri: str
    batch_id: int
    threads: int | None = None
    tensorboard_dir: str | None = None


class Worker:
    """Runs jobs of one batch; create once per slot (data, stores, tracker are reused)."""

    def __init__(self, settings: WorkerSettings, interrupts: Interrupts | None = None):
        # bench.engine imports this module at its top: a top-level import here would be a cycle
        from bench.engine import batch_space, data_mismatch

        configure_threads(settings.threads)
        self.settings = settings
        self.interrupts = interrupts or Interrupts()
        self.store = JobStore(settings.storage)
        self.batch = self.store.get_batch(settings.batch_id)
        s = self.batch.settings
        self.space = batch_space(s)  # the copy stored with the batch, not the opener's path
        self.dataset = data.load_dataset(s["dataset"], s.get("data_dir"))
        if s.get("dataset_digest") and self.dataset.digest != s["dataset_digest"]:
            raise BenchError(data_mismatch(self.batch, self.dataset.digest))  # before any take
        self.study = opt.open_study(
            self.batch.study, settings.storage, self.space, s["seed"], record_space=False
        )
        self.tracker = Tracker(settings.tracking_uri, s["experiment"])
        self.ledger = Ledger(self.store, self.batch, self.study, self.tracker, self.space.metric)
        self.token = ""  # the running attempt's
        self._splits: dict[Any, Any] = {}

    def run_one(self, job_id: int, token: str) -> None:
        """Run the attempt ``token`` of job ``job_id`` (started by the driver) to its record.

        Raises KeyboardInterrupt when interrupted (the job is then released, not counted as a
        death), RuntimeError when the champion's registration failed (the job is released).
        """
        self.token = token
        job = self.store.get_job(job_id)
        if job.state != RUNNING or (job.owner or {}).get("token") != token:
            return  # given up before it started here
        with self.interrupts.cooperative():
            self.run_job(job)

    # ------------------------------------------------------------ one job

    def _split(self, job: Job):

        spec = self._train_spec(job)
        if job.spec.split == ALL:
            key = ALL
            if key not in self._splits:
                self._splits[key] = data.full_split(self.dataset)
        else:
            key = (spec.validation_size, int(self.batch.settings["seed"]))
            if key not in self._splits:
                self._splits[key] = data.validation_split(self.dataset, *key)
        return self._splits[key]

    def _train_spec(self, job: Job):
        overrides = {k: v for k, v in job.spec.train.items() if k != "schedule_epochs"}
        return replace(self.space.train, **overrides)

    def run_job(self, job: Job) -> None:
        """Run ``job`` through its purpose's runner (:data:`RUNNERS`)."""
        # a previous attempt (died, interrupted or stopped by an outage) may have registered
        again = job.attempts > 1 or job.run_id is not None
        if job.purpose in FINAL and again and not is_member(job):
            # a refit or an ensemble whose worker died after registering: the registered model
            # is the result
            version = self.tracker.safe(
                self.tracker.find_version, self.batch.settings["model_name"], identity(self, job)
            )
            if version is not None:
                return run_register(self, job, version.source)
        runner = RUNNERS[ENSEMBLE if is_ensemble(job.spec) else job.purpose]
        runner.steps(self, job, runner)

    def train(self, job: Job, runner: Runner) -> None:
        """The steps of every training purpose: configure, start its run, train with per-epoch
        tracking (and pruning, for the sampler's trials), record."""
        live, config = self._configure(job, runner)
        spec = self._train_spec(job)
        if live is None:  # min_epochs keeps a pruned trial from dodging a rung; nothing else
            spec = replace(spec, min_epochs=0)
        params = {
            **flat_config(config),
            **_train_params(spec),
            "seed": job.spec.seed,
            "dataset": self.dataset.name,
            "purpose": job.purpose,
            "split": job.spec.split,
            **{k: v for k, v in job.spec.info.items() if k in ("factor", "level", "source")},
        }
        tags = {
            **job_tags(job),
            "study_name": self.batch.study,
            "space_hash": self.space.search_hash,
            "dataset_digest": self.dataset.digest,
            "trial_number": live.number if live else job.trial_number,
            "baseline": (job.spec.info.get("baseline") or {}).get("name"),
            "refit": "true" if job.purpose == REFIT else None,
            "refit_epochs": spec.max_epochs if job.purpose == REFIT else None,
        }
        name = f"trial-{live.number}" if live else job.key
        run_id = self.tracker.safe(
            self.tracker.start_child, self.batch.parent_run_id, name, params, tags
        )
        kill_point("start-run")
        if run_id:
            self.store.update_owned(job.id, self.token, run_id=run_id)
            job = replace(job, run_id=run_id)
        failures = self.tracker.failures

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            # queued, sent in the background; once one fails, this job's other epochs are not
            if run_id is not None and self.tracker.failures == failures:
                self.tracker.log_metrics_later(run_id, metrics, epoch)
            if epoch == 1:
                kill_point("train" if runner.asks_sampler else "reeval")
            value = metrics.get(self.space.metric)
            if live is not None and value is not None:
                live.report(value, epoch)
                return live.should_prune()
            return False

        try:
            result = self._fit(job, config, spec, on_epoch)
        except KeyboardInterrupt:
            with self.interrupts.critical():
                self.tracker.flush()  # its epochs land before its run is ended
                self.store.release(job.id, self.token, "interrupted by the user (SIGINT/SIGTERM)")
                if live:
                    opt.tell(self.study, live.number, "FAIL")
                if run_id:
                    self.tracker.safe(self.tracker.end_run, run_id, "KILLED")
            raise
        except Exception as exc:  # noqa: BLE001 - a failing configuration fails alone
            lines = redact(exc).strip().splitlines()
            reason = redact(f"{type(exc).__name__}: {lines[0] if lines else ''}", limit=300)
            log.warning("job %s failed: %s", job.key, reason)
            with self.interrupts.critical():
                self.tracker.flush()
                if live:
                    live.set_attrs({TRIAL_REASON: reason})
                failed = JobResult(FAILED, None, 0, 0, 0.0, 0, 0.0, config, reason=reason)
                if self.store.finish(job.id, self.token, FAILED, failed, reason):
                    # its replacement comes from design.next_jobs
                    self.ledger.sync(self.store.get_job(job.id), self.token)
                elif live:
                    opt.tell(self.study, live.number, "FAIL")
            return
        with self.interrupts.critical():
            self.tracker.flush()  # every epoch is in the run before its result is recorded
            self._record(job, runner, live, result, config)

    def _fit(self, job: Job, config: dict, spec, on_epoch):
        """Train the job; with ``train.cv_folds: K`` score it as the mean over K folds.

        The hook (tracking, pruning) sees the first fold's epochs; the other folds run only when
        the first completed. The returned model is the first fold's.
        """

        def fit(split, hook):
            return train(
                config,
                spec,
                split,
                self.dataset.n_classes,
                job.spec.seed,
                hook,
                metric=self.space.metric,
                tensorboard_dir=self._tb_dir(job),
                schedule_epochs=job.spec.train.get("schedule_epochs"),
                on_batch=self.interrupts.check,
            )

        if spec.cv_folds <= 1 or job.spec.split == ALL:
            return fit(self._split(job), on_epoch)
        key = ("folds", spec.cv_folds, int(self.batch.settings["seed"]))
        if key not in self._splits:
            self._splits[key] = data.fold_splits(self.dataset, spec.cv_folds, key[2])
        folds = self._splits[key]
        first = fit(folds[0], on_epoch)
        if first.status != COMPLETED:
            return first
        rest = [fit(f, None) for f in folds[1:]]
        runs = [first, *rest]
        bad = [r for r in rest if r.status != COMPLETED]
        if bad:
            return bad[0]
        first.history[f"cv_{self.space.metric}"] = [r.value for r in runs]
        first.value = sum(r.value for r in runs) / len(runs)
        first.train_seconds = sum(r.train_seconds for r in runs)
        first.samples_trained = sum(r.samples_trained for r in runs)
        first.best_epoch = sorted(r.best_epoch for r in runs)[(len(runs) - 1) // 2]
        return first

    def _configure(self, job: Job, runner: Runner):
        """The job's configuration; a first-attempt search job asks Optuna for a fresh trial."""
        if not runner.asks_sampler:
            return None, job.spec.config
        if job.spec.config is not None:
            return None, job.spec.config  # its first worker died: train the same again
        live = opt.ask(self.study, self.space, job.spec.seed)
        live.set_attrs({TRIAL_JOB: [self.batch.id, job.id], TRIAL_BATCH: self.batch.number})
        kill_point("take")
        self.store.update_owned(job.id, self.token, trial_number=live.number)
        config = live.suggest(self.space)
        self.store.update_owned(job.id, self.token, spec=replace(job.spec, config=config))
        return live, config

    def still_owns(self, job: Job, live=None) -> bool:
        """Whether this attempt still holds ``job``; when it does not (the slot was frozen or
        cut off long enough for its driver to give the attempt up and start another), drop the
        attempt before any side effect: nothing lands in another attempt's run, nothing is
        registered, no alias moves."""
        if self.store.owns(job.id, self.token):
            return True
        log.warning(
            "job %s: this attempt was given up by the driver (the slot was stopped or cut off) "
            "and the job was handed to another; this attempt's work is dropped",
            job.key,
        )
        if live is not None:
            opt.tell(self.study, live.number, "FAIL")
        return False

    def _record(self, job: Job, runner: Runner, live, result, config: dict) -> None:
        if not self.still_owns(job, live):
            return
        job = self.store.get_job(job.id)
        status = result.status
        out = JobResult(
            status=status,
            value=None if result.value != result.value else result.value,  # NaN -> None
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            train_seconds=round(result.train_seconds, 3),
            param_count=result.param_count,
            train_flops=result.training_flops,
            config=config,
            # a diverged run's history holds NaN/inf, which JSON (the job store) cannot hold
            history={
                k: [round(v, 6) if math.isfinite(v) else None for v in vals]
                for k, vals in result.history.items()
            },
            reason=result.reason,
        )
        if status == COMPLETED and runner.test_scored:
            out.test_loss, out.test_accuracy = evaluate(result.model, self.dataset)
        if status == COMPLETED and job.run_id and runner.keeps_model(self, out):
            info = self.tracker.safe(
                self.tracker.log_model,
                job.run_id,
                result.model,
                self.dataset.image_shape,
                self.dataset.n_classes,
            )
            out.model_uri = info.model_uri if info is not None else None
        if status == COMPLETED and runner.then and not runner.then(self, job, live, result, out):
            return  # given up by the driver meanwhile
        kill_point("record")
        if live:
            live.set_attrs(trial_attrs(job, out))
        if not self.store.finish(job.id, self.token, DONE, out):
            log.warning("job %s: another worker took it over; this result is dropped", job.key)
            if live:
                opt.tell(self.study, live.number, "FAIL")
            return
        kill_point("sync")
        self.ledger.sync(self.store.get_job(job.id), self.token)

    def best_so_far(self, out: JobResult) -> bool:
        """Whether ``out`` is the best result of this batch so far (without a refit, the search
        run's own model may be registered: it is logged when it may be)."""
        if self.batch.settings.get("refit", True):
            return False
        sign = 1.0 if self.space.direction == "maximize" else -1.0
        mine = [  # the best of this batch so far: only this batch's models can be registered
            j.result.value
            for j in self.store.jobs(self.batch.id, states=(DONE,))
            if j.purpose in (SEARCH, BASELINE) and j.result and j.result.value is not None
        ]
        return not mine or sign * out.value >= max(sign * v for v in mine)

    def _tb_dir(self, job: Job) -> str | None:
        root = self.settings.tensorboard_dir
        return f"{root}/{_safe(self.batch.study)}/{job.key}" if root else None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "study"


def _train_params(t) -> dict[str, Any]:
    return {
        "max_epochs": t.max_epochs,
        "patience": t.patience,
        "min_delta": t.min_delta,
        "early_stop_decaying": t.early_stop_decaying,
        "smooth_epochs": t.smooth_epochs,
        "min_epochs": t.min_epochs,
        "validation_size": t.validation_size,
        "steps_per_execution": t.steps_per_execution,
        "jit_compile": t.jit_compile,
    }


def _never(worker: Worker, out: JobResult) -> bool:
    return False


def _always(worker: Worker, out: JobResult) -> bool:
    return True


@dataclass(frozen=True)
class Runner:
    """What a slot does with the jobs of one purpose. A new purpose is one row of
    :data:`RUNNERS` (and the design that makes its jobs), not a branch in the worker."""

    steps: Callable[[Worker, Job, Runner], None]
    # its model's test accuracy is measured: reported, never used to choose
    test_scored: bool = True
    # a first attempt asks Optuna for its configuration and is pruned by the study's pruner
    asks_sampler: bool = False
    # whether a completed attempt's model is logged to its run
    keeps_model: Callable[[Worker, JobResult], bool] = _never
    # after training, before the result is recorded; False when the attempt was given up
    then: Callable[[Worker, Job, Any, Any, JobResult], bool] | None = None


RUNNERS: dict[str, Runner] = {
    SEARCH: Runner(
        Worker.train, test_scored=False, asks_sampler=True, keeps_model=Worker.best_so_far
    ),
    BASELINE: Runner(Worker.train, keeps_model=Worker.best_so_far),
    REEVAL: Runner(Worker.train),
    ABLATION: Runner(Worker.train),
    REFIT: Runner(Worker.train, keeps_model=_always, then=register_refit),
    REGISTER: Runner(lambda w, job, _: run_register(w, job, job.spec.info["model_uri"])),
    ENSEMBLE: Runner(lambda w, job, _: run_ensemble(w, job)),
}
