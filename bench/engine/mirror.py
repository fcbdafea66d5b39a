"""The MLflow mirror of a batch: the job runs' final state, and the end of a finished batch.

MLflow is a mirror of the job store. While jobs train, tracking calls go through the tracker's
circuit breaker (a dead server costs one timeout per 30 s, not one per call). The calls that end
a finished batch's mirror bypass it: skipped, they would leave the parent run, and every job run
an outage left RUNNING, RUNNING for good. A batch is done with ``mirrored`` False until they all
succeed; any later command of the study (a rerun, ``bench.register``, ``bench.reevaluate``,
``bench.ablate``, ``bench.report``) completes it with :func:`complete_mirrors`.
"""

from __future__ import annotations

import logging
from typing import Any

from bench.engine.store import JobStore
from bench.errors import BenchError
from bench.records import COMPLETED, DONE, FAILED, PRUNED, Batch, Job

log = logging.getLogger("bench")
SUMMARY_METRICS = ("test_accuracy", "selection_score", "val_test_gap")


def mirror_job_run(tracker, job: Job, metric: str | None, call=None) -> None:
    """Bring a recorded job's MLflow run up to date and end it (idempotent).

    Args:
        tracker: The process's :class:`~bench.tracking.Tracker`.
        job: A job with a result.
        metric: The space's metric (logged as ``best_<metric>``); None leaves it out.
        call: ``tracker.safe`` (default: behind the breaker) or ``tracker.now``.
    """
    r = job.result
    if not job.run_id or r is None:
        return
    call = call or tracker.safe
    final: dict[str, Any] = {
        "epochs_run": r.epochs_run,
        "train_seconds": r.train_seconds,
        "param_count": r.param_count,
    }
    if metric and r.value is not None and r.status == COMPLETED:
        final[f"best_{metric}"] = r.value
    if r.test_accuracy is not None:
        final.update({"test_accuracy": r.test_accuracy, "test_loss": r.test_loss})
    call(tracker.log_metrics, job.run_id, final, 0)
    status = {COMPLETED: "FINISHED", PRUNED: "KILLED"}.get(r.status, "FAILED")
    call(tracker.set_tags, job.run_id, {"state": r.status, "state_reason": r.reason or None})
    call(tracker.end_run, job.run_id, status)


def finish_mirror(
    store: JobStore, batch: Batch, tracker, metric: str | None, jobs: list[Job] | None = None
) -> bool:
    """End a done batch's mirror: its job runs still RUNNING, its final metrics, its parent run.

    Every call is tried whatever the breaker says; the first that fails stops the rest (the
    store is down: a later command finishes). Idempotent.

    Returns:
        True when the mirror is complete (the batch is then marked mirrored).
    """
    parent = batch.parent_run_id
    if not parent:
        store.set_mirrored(batch.id)
        return True
    jobs = store.jobs(batch.id) if jobs is None else jobs
    before = tracker.failures

    def ok() -> bool:
        return tracker.failures == before

    stale = tracker.now(tracker.find_runs, {"mlflow.parentRunId": parent}, "RUNNING")
    recorded = {j.run_id: j for j in jobs if j.run_id and j.state in (DONE, FAILED)}
    for run_id in stale or []:
        if not ok():
            return False
        if run_id in recorded:
            mirror_job_run(tracker, recorded[run_id], metric, tracker.now)
        else:  # an attempt whose worker died before recording its run on the job
            tracker.now(tracker.end_run, run_id, "FAILED")
    summary = batch.summary or {}
    metrics = {k: summary[k] for k in SUMMARY_METRICS if isinstance(summary.get(k), float)}
    if metrics and ok():
        tracker.now(tracker.log_metrics, parent, metrics)
    if ok():
        tracker.now(tracker.end_run, parent, "FINISHED")
    if not ok():
        return False
    store.set_mirrored(batch.id)
    return True


def complete_mirrors(store: JobStore, study: str, tracker) -> int:
    """Finish the mirror of the study's done batches that an outage left incomplete.

    Only batches whose parent run is in this tracker's store and experiment are touched (a
    command pointed at another tracking store leaves them for one pointed at theirs).

    Returns:
        How many batches were completed.
    """
    from bench.engine import batch_tag  # the package imports this module's importer

    done = 0
    for batch in store.unmirrored(study):
        if batch.settings.get("experiment") not in (None, tracker.experiment):
            continue
        before = tracker.failures
        found = tracker.now(tracker.find_runs, batch_tag(batch))
        if tracker.failures != before:
            return done  # the store is still down
        if batch.parent_run_id not in (found or []):
            continue  # its parent run lives in another tracking store
        if finish_mirror(store, batch, tracker, _metric(batch.settings)):
            log.info("batch %d: finished its MLflow mirror", batch.number)
            done += 1
        else:
            return done
    return done


def _metric(settings: dict[str, Any]) -> str | None:
    if settings.get("metric"):
        return settings["metric"]
    from bench.engine import batch_space

    try:
        return batch_space(settings).metric
    except BenchError:
        return None
