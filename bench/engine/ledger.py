"""The ledger of one batch: the job store is the record, Optuna and MLflow its mirrors.

Everything that writes down what happened to a job lives here, so the slot that trained it and
the driver that recovers after it share one copy: mirroring a recorded result into Optuna and
MLflow (:meth:`Ledger.sync`), taking a dead attempt's job back (:meth:`Ledger.reap`, with the
retry policy), failing Optuna trials nobody will finish, and ending the batch. No TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Any

from bench import optuna_adapter as opt
from bench.engine.mirror import finish_mirror, mirror_job_run
from bench.engine.store import JobStore
from bench.records import (
    BASELINE,
    COMPLETED,
    DONE,
    FAILED,
    PRUNED,
    RUNNING,
    SEARCH,
    SEARCH_DESIGN,
    TRIAL_BASELINE,
    TRIAL_BATCH,
    TRIAL_BEST_EPOCH,
    TRIAL_CONFIG,
    TRIAL_EPOCHS,
    TRIAL_HISTORY,
    TRIAL_JOB,
    TRIAL_MODEL,
    TRIAL_PARAM_COUNT,
    TRIAL_REASON,
    TRIAL_RUN,
    TRIAL_SEED,
    TRIAL_TEST_ACCURACY,
    TRIAL_TRAIN_FLOPS,
    TRIAL_TRAIN_SECONDS,
    WAITING,
    Batch,
    BatchSummary,
    Job,
    JobResult,
    check_keys,
)

log = logging.getLogger("bench")
# The retry policy, in one place: a job whose attempt died this often fails for good (and the
# design may replace it, up to the batch's max_failures).
MAX_ATTEMPTS = 3


class Ledger:
    """Records and mirrors the jobs of one batch.

    Args:
        store: The job store.
        batch: The batch.
        study: Its Optuna study (:func:`bench.optuna_adapter.open_study`).
        tracker: Its experiment's :class:`~bench.tracking.Tracker`.
        metric: The space's metric.
    """

    def __init__(self, store: JobStore, batch: Batch, study, tracker, metric: str):
        self.store, self.batch, self.study, self.tracker = store, batch, study, tracker
        self.metric = metric

    # ------------------------------------------------------------ recording

    def sync(self, job: Job, token: str | None = None) -> None:
        """Bring Optuna and MLflow up to date with a recorded job (idempotent).

        Args:
            token: The attempt that recorded it (None: the driver, finishing a dead slot's sync).
        """
        r = job.result
        if job.purpose in (SEARCH, BASELINE) and r is not None:
            state = {COMPLETED: "COMPLETE", PRUNED: "PRUNED"}.get(r.status, "FAIL")
            value = r.value if state == "COMPLETE" else None
            if job.trial_number is not None and job.spec.purpose == SEARCH:
                if opt.trial_state(self.study, job.trial_number) == "RUNNING":
                    opt.tell(self.study, job.trial_number, state, value)
                elif opt.trial_state(self.study, job.trial_number) == "FAIL" and state != "FAIL":
                    self._add_trial(job, state, value)  # failed while finishing: add it back
            elif state != "FAIL":
                self._add_trial(job, state, value)
        mirror_job_run(self.tracker, job, self.metric)
        self.store.mark_synced(job.id, token)

    def _add_trial(self, job: Job, state: str, value: float | None) -> None:
        ref = [self.batch.id, job.id]
        # only a finished trial says it was added already (a sync that died after adding it): a
        # RUNNING one is an earlier attempt's orphan, which fail_orphan_trials fails later
        if any(
            t.user_attrs.get(TRIAL_JOB) == ref
            for t in opt.trials(self.study, ("COMPLETE", "PRUNED"))
        ):
            return
        params = None
        if job.trial_number is not None:
            params = opt.trial_params(self.study, job.trial_number)
        opt.add_finished(
            self.study,
            state,
            value,
            params[0] if params else None,
            params[1] if params else None,
            {TRIAL_JOB: ref, TRIAL_BATCH: self.batch.number, **trial_attrs(job, job.result)},
        )

    # ------------------------------------------------------------ recovery

    def recover(self) -> None:
        """What a driver does before it hands out work: it holds the batch's lock, so no attempt
        of this batch is alive. Every running job is reaped, every recorded but unmirrored result
        is mirrored, and Optuna trials nobody will finish are failed."""
        for job in self.store.jobs(self.batch.id, states=(RUNNING, DONE, FAILED)):
            if job.state == RUNNING:
                self.reap(job, "its driver stopped while it ran")
            elif not job.synced:
                self.sync(job)
        self.fail_orphan_trials(asking=False)

    def after_death(self, job_id: int, token: str, why: str) -> None:
        """An attempt's slot died (or its node was lost): reap the job if that attempt still
        holds it, or finish mirroring what it recorded just before it died."""
        job = self.store.get_job(job_id)
        if job.state == RUNNING and (job.owner or {}).get("token") == token:
            self.reap(job, why)
        elif job.state in (DONE, FAILED) and not job.synced:
            self.sync(job)

    def reap(self, job: Job, why: str) -> bool:
        """Take a dead attempt's job back: waiting again, or failed for good after
        :data:`MAX_ATTEMPTS` (its trial failed, its runs closed FAILED). False when the attempt
        recorded its result first."""
        final = job.attempts >= MAX_ATTEMPTS
        where = job.owner or {}
        reason = f"{why} (slot {where.get('slot', '?')} on {where.get('host', '?')})"
        if final:
            reason += f"; {job.attempts} attempts, not retried again"
        if not self.store.reap(job, FAILED if final else WAITING, reason):
            return False
        log.warning("job %s: %s", job.key, reason)
        if job.trial_number is not None:
            opt.tell(self.study, job.trial_number, "FAIL")
        self.close_runs(job, reason)
        return True

    def close_runs(self, job: Job, reason: str) -> None:
        """End the MLflow runs a dead attempt left RUNNING (FAILED, with the reason)."""
        ids = set(self.tracker.safe(self.tracker.find_runs, job_tags(job), "RUNNING") or [])
        if job.run_id:
            ids.add(job.run_id)
        for run_id in ids:
            self.tracker.safe(self.tracker.set_tags, run_id, {"state_reason": reason})
            self.tracker.safe(self.tracker.end_run, run_id, "FAILED")

    def fail_orphan_trials(self, asking: bool) -> None:
        """Fail the Optuna trials of this batch that no running attempt will finish.

        Args:
            asking: Whether a slot may be between asking Optuna for a trial and writing the
                job reference on it. A trial without a reference is failed only when none is
                (only search batches ask, and one search batch runs per study at a time).
        """
        jobs = {j.id: j for j in self.store.jobs(self.batch.id)}
        for t in opt.trials(self.study, ("RUNNING",)):
            ref = t.user_attrs.get(TRIAL_JOB)
            if ref is None:
                if not asking and self.batch.design == SEARCH_DESIGN:
                    opt.tell(self.study, t.number, "FAIL")
                continue
            batch_id, job_id = ref
            if batch_id != self.batch.id or job_id not in jobs:
                continue
            job = jobs[job_id]
            if job.state == RUNNING and job.trial_number in (None, t.number):
                continue  # its attempt is alive (a dead one is reaped, which fails the trial)
            if job.trial_number != t.number or job.state != DONE:
                opt.tell(self.study, t.number, "FAIL")

    # ------------------------------------------------------------ the end

    def finish_batch(self, design, jobs: list[Job]) -> None:
        """Mark the batch done with its design's summary, then end its MLflow mirror (job runs
        an outage left RUNNING, final metrics, the parent run) whatever the tracker's breaker
        says; what still fails leaves the batch unmirrored for the next command
        (:mod:`bench.engine.mirror`)."""
        self.fail_orphan_trials(asking=False)
        summary = design.summary(jobs)
        check_keys(summary, BatchSummary, f"{self.batch.design} batch summary")
        if self.store.finish_batch(self.batch.id, summary):
            done = self.store.get_batch(self.batch.id)
            finish_mirror(self.store, done, self.tracker, self.metric, jobs)


def job_tags(job: Job) -> dict[str, Any]:
    """The tags that tie an MLflow run to its job (how a dead attempt's runs are found)."""
    return {"bench_job": f"{job.batch_id}:{job.id}", "purpose": job.purpose, "job_key": job.key}


def trial_attrs(job: Job, r: JobResult) -> dict[str, Any]:
    """The user attributes a finished job's Optuna trial carries."""
    attrs = {
        TRIAL_CONFIG: r.config,
        TRIAL_SEED: job.spec.seed,
        TRIAL_EPOCHS: r.epochs_run,
        TRIAL_BEST_EPOCH: r.best_epoch,
        TRIAL_TRAIN_SECONDS: r.train_seconds,
        TRIAL_PARAM_COUNT: r.param_count,
        TRIAL_TRAIN_FLOPS: r.train_flops,
        TRIAL_HISTORY: r.history,
    }
    if job.run_id:
        attrs[TRIAL_RUN] = job.run_id
    if r.model_uri:
        attrs[TRIAL_MODEL] = r.model_uri
    if r.reason:
        attrs[TRIAL_REASON] = r.reason
    baseline = job.spec.info.get("baseline")
    if baseline:
        attrs[TRIAL_BASELINE] = baseline
        if r.test_accuracy is not None:
            attrs[TRIAL_TEST_ACCURACY] = r.test_accuracy
    return attrs
