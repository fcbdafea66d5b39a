"""The driver of one batch: open it with its design's parent run, run workers on it, show
progress, and print its outcome. Every command that runs a batch (``bench.search``,
``bench.ablate``, ``bench.reevaluate``, ``bench.register``, ``bench.report --reevaluate``)
comes through here, so none of them imports another.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.designs import DESIGNS, Design, OpeningFacts
from bench.engine import batch_tag, counts, open_batch, run_workers
from bench.engine.mirror import complete_mirrors
from bench.engine.progress import Progress
from bench.engine.store import JobStore
from bench.engine.worker import WorkerSettings
from bench.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, redact, store_location
from bench.optuna_adapter import DEFAULT_STORAGE
from bench.records import (
    COMPLETED,
    DONE,
    FAILED,
    FINAL,
    REEVAL_DESIGN,
    RUNNING,
    SEARCH_DESIGN,
    Batch,
    BatchSettings,
    check_keys,
)
from bench.results.champion import start_note
from bench.tracking import Tracker, resolve_uri, ui_links

if TYPE_CHECKING:
    from bench.data import Dataset
    from bench.resources import WorkerPlan
    from bench.space import Space


def open_design_batch(
    store: JobStore,
    tracker: Tracker,
    design: type[Design],
    study: str,
    identity: str,
    settings: dict[str, Any],
    space: Space,
    dataset: Dataset,
    storage: str,
    join_done: bool = False,
) -> tuple[Batch, bool]:
    """Open (or join, or continue) a batch of ``design``, its parent run made from the design's
    :meth:`~bench.designs.Design.parent_run`; see :func:`bench.engine.open_batch`."""
    check_keys(settings, BatchSettings, f"{design.name} batch settings")
    maximize = space.direction == "maximize"
    facts = OpeningFacts(
        study=study,
        dataset=dataset.name,
        dataset_digest=dataset.digest,
        space_file=Path(settings["space"]).name,
        space_hash=space.search_hash,
        metric=space.metric,
        storage=store_location(storage),  # never a password
        train=dict(space.train.__dict__),
        fixed=space.fixed_values(),
        sampler=space.sampler.name,
        pruner=space.pruner.name,
    )

    def start_parent(batch: Batch) -> str:
        run = design(batch.settings, maximize).parent_run(batch, facts)
        run_id = tracker.start_parent(run.name, run.params, {**run.tags, **batch_tag(batch)})
        tracker.safe(tracker.log_space, run_id, batch.settings)
        if run.log_dataset:
            tracker.safe(tracker.log_dataset, run_id, dataset)
        return run_id

    return open_batch(
        store,
        study,
        design.name,
        identity,
        settings,
        lambda stored: design(stored, maximize).initial_jobs(),
        start_parent,
        tracker,
        join_done=join_done,
    )


@dataclass(frozen=True)
class BatchRun:
    """An open batch and how to run it (what :func:`drive` needs).

    Attributes:
        store: The job store the batch lives in.
        batch: The batch, as opened or joined.
        created: Whether this command opened it (else it joins a running one).
        tracker: Its experiment's tracking client.
        uri: The tracking URI (printed with any password masked).
        storage: The Optuna storage (printed with any password masked).
        plan: Worker processes and threads per worker.
        space: The space the batch trains.
        timeout: Start no new job after this many seconds.
        tensorboard: Write TensorBoard logs per job under this folder.
        quiet: No progress bar or progress lines.
    """

    store: JobStore
    batch: Batch
    created: bool
    tracker: Tracker
    uri: str
    storage: str
    plan: WorkerPlan
    space: Space
    timeout: float | None = None
    tensorboard: str | None = None
    quiet: bool = False


def drive(run: BatchRun, interrupts) -> int:
    """Run workers on an open batch, with progress; print the outcome. Shared by the CLIs.

    Returns:
        The command's exit code: 0 (also for a batch cut short by ``--timeout``), 1 when no job
        finished or the champion could not be registered, 130 on an interrupt.
    """
    store, batch, tracker, uri, storage = run.store, run.batch, run.tracker, run.uri, run.storage
    plan, space = run.plan, run.space
    purposes = DESIGNS[batch.design].purposes  # what progress counts and the outcome lists
    complete_mirrors(store, batch.study, tracker)  # what an outage left of earlier batches
    jobs = [j for j in store.jobs(batch.id) if j.purpose in purposes]
    done_before = counts(jobs)[DONE]
    total = len(jobs)
    if not run.created:
        tracker.safe(tracker.reopen, batch.parent_run_id)
        print(
            f"joining {batch.design} batch {batch.number} of study '{batch.study}': "
            f"{done_before}/{total} jobs already finished",
            file=sys.stderr,
        )
    print(
        f"study '{batch.study}' {batch.design} batch {batch.number}: {total} jobs on {plan.jobs} "
        f"worker(s) x {plan.threads} thread(s); storage {redact(storage)}; tracking {redact(uri)}",
        file=sys.stderr,
    )
    deadline = time.time() + run.timeout if run.timeout else None
    settings = [
        WorkerSettings(
            storage=storage,
            tracking_uri=uri,
            batch_id=batch.id,
            threads=plan.threads,
            deadline=deadline,
            tensorboard_dir=run.tensorboard,
            env=plan.per_worker_env[i] if plan.per_worker_env else {},
        )
        for i in range(plan.jobs)
    ]
    progress = Progress(
        storage, batch, purposes, space.direction == "maximize", total, enabled=not run.quiet
    )
    progress.start()
    started = time.time()
    try:
        failed_workers = run_workers(settings, interrupts)
    except KeyboardInterrupt:
        progress.stop()
        return _interrupted(store, batch, tracker, purposes, done_before)
    progress.stop()
    return print_outcome(
        store,
        batch,
        tracker,
        uri,
        storage,
        purposes,
        time.time() - started,
        failed_workers,
        deadline,
        maximize=space.direction == "maximize",
    )


def _interrupted(store, batch, tracker, purposes, done_before: int) -> int:
    c = counts([j for j in store.jobs(batch.id) if j.purpose in purposes])
    if not c[RUNNING]:
        tracker.safe(tracker.end_run, batch.parent_run_id, "KILLED")
    total = sum(c.values())
    print(
        f"interrupted: kept {c[DONE]}/{total} finished jobs of batch {batch.number} "
        f"({c[DONE] - done_before} this run); rerun the same command to resume",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def ui_command(uri: str, storage: str) -> str:
    """The ``bench.ui`` command that serves this store, with the flags it needs here."""
    flags = "" if uri == resolve_uri(None) else f" --tracking-uri {redact(uri)}"
    flags += "" if storage == DEFAULT_STORAGE else f" --storage {redact(storage)}"
    return f"python -m bench.ui{flags}"


def best_jobs_frame(jobs: list, maximize: bool, n: int = 10):
    """The outcome's table of the best ``n`` finished jobs: completed ones first (a pruned job's
    value is an early epoch's), each part best first in the metric's direction (lowest first
    for a loss), jobs without a value last."""
    import pandas as pd  # only once there is an outcome: pandas takes a second to import

    rows = []
    for j in jobs:
        r = j.result
        if j.state != DONE or r is None:
            continue
        cfg = r.config or {}
        rows.append(
            {
                "job": j.key if j.trial_number is None else f"trial {j.trial_number}",
                "state": r.status,
                "value": r.value,
                "normalization": cfg.get("normalization", ""),
                "units": "-".join(map(str, cfg.get("units") or [])),
                "dropout": (cfg.get("dropout") or [None])[0],
                "optimizer": cfg.get("optimizer", ""),
                "lr": cfg.get("learning_rate"),
                "batch": cfg.get("batch_size"),
                "epochs": r.epochs_run,
                "seconds": r.train_seconds,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_pruned"] = frame["state"] != COMPLETED
    return (
        frame.sort_values(["_pruned", "value"], ascending=[True, not maximize], na_position="last")
        .drop(columns="_pruned")
        .head(n)
    )


def print_outcome(
    store, batch, tracker, uri, storage, purposes, seconds, failed_workers, deadline, *, maximize
) -> int:
    """Print what a run of ``batch`` produced (its best jobs, the champion, links); its exit
    code. ``maximize``: whether a higher value of the space's metric is better."""
    jobs = store.jobs(batch.id)
    mine = [j for j in jobs if j.purpose in purposes]
    c = counts(mine)
    frame = best_jobs_frame(mine, maximize)
    if not frame.empty:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    record = store.get_batch(batch.id)
    total = sum(c.values())
    print(f"\nbatch {batch.number}: {c['done']}/{total} jobs finished in {seconds:.0f} s")
    failed = [j for j in mine if j.state == FAILED]
    if c[DONE] == 0 and (failed or failed_workers):
        cause = failed[-1].reason if failed else "every worker exited with an error (see above)"
        print(
            f"error: no job of batch {batch.number} finished; {len(failed)} failed, the last "
            f"with: {redact(cause)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    info = record.summary or {}
    if info.get("version"):
        members = info.get("ensemble") or []
        how = (
            f"the mean of {len(members)} configurations refit on all training images for "
            f"{info.get('refit_epochs')} epochs; alone they score "
            + ", ".join(f"{m['test_accuracy']:.4f}" for m in members if m.get("test_accuracy"))
            if len(members) > 1
            else f"refit on all training images for {info.get('refit_epochs')} epochs"
            if info.get("refit")
            else "the search run's own model"
        )
        gap = info.get("val_test_gap")
        loss = info.get("selection_metric") == "val_loss"  # the gap is then a loss minus a loss
        print(
            f"registered {record.settings['model_name']} version {info['version']} "
            f"({how}; chosen by validation {'loss ' if loss else ''}"
            f"{info.get('selection_score', float('nan')):.4f}, "
            + (f"test loss {info['test_loss']:.4f}, " if loss else "")
            + f"test accuracy {info['test_accuracy']:.4f}"
            + (
                f", val->test gap {gap:+.4f}"
                if gap is not None and loss
                else f", val->test gap {gap * 100:+.1f} points"
                if gap is not None
                else ""
            )
            + f"); champion: version {info['champion_version']}, "
            f"models:/{record.settings['model_name']}@champion"
            + ("" if info.get("promoted", True) else f" ({info.get('reason')})")
        )
        if info.get("from_start"):
            print(start_note(info["from_start"], len(members) or 1))
    final = [j for j in jobs if j.purpose in FINAL]
    registers = record.design in (SEARCH_DESIGN, REEVAL_DESIGN) and record.settings.get(
        "register", True
    )
    if record.state == DONE and registers and not info.get("version"):
        if info.get("no_champion"):
            print(f"error: no champion registered: {info['no_champion']}", file=sys.stderr)
            return EXIT_FAILURE
        if any(j.state == FAILED for j in final):
            cause = next(j.reason for j in final if j.state == FAILED)
            print(f"error: the champion was not registered: {redact(cause)}", file=sys.stderr)
            return EXIT_FAILURE
        if not final:
            print(
                "note: no job completed (all pruned or failed): nothing to register",
                file=sys.stderr,
            )
    links = ui_links(uri, tracker.experiment_id, record.settings.get("model_name"))
    print(f"runs:   {links['runs']}")
    if info.get("version"):
        print(f"model:  {links['model']}")
    if "start" in links:  # a local store: nothing serves it until `bench.ui` does
        print(f"        (start the UI first: {ui_command(uri, storage)})")
    print(f"report: python -m bench.report --study-name {batch.study}")
    if record.state != DONE:
        reason = "the --timeout passed" if deadline and time.time() >= deadline else None
        if failed_workers and not reason:
            print(
                f"error: {failed_workers} worker(s) exited with an error before the batch was "
                "complete; finished jobs are kept; rerun the same command to continue",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(
            f"batch {batch.number} is not complete ({reason or 'jobs remain'}); rerun the same "
            "command to continue",
            file=sys.stderr,
        )
    return EXIT_OK
