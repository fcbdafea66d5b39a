"""The driver of one batch: open it with its design's parent run, take its lock, hand its jobs
to slots, record what they end with, show progress, and print its outcome. Every command that runs
a batch (``bench.search``, ``bench.ablate``, ``bench.reevaluate``, ``bench.register``,
``bench.report --reevaluate``) comes through here, so none of them imports another.

One driver per batch (:mod:`bench.engine.lock`): it alone asks the design for the next stage,
starts attempts (a fresh token per attempt), reaps the attempts whose slot died, and finishes the
batch. A second command on a batch that is being driven says who drives it and waits, then prints
the outcome; if the driver dies, the waiter takes the lock and continues the batch.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import optuna_adapter as opt
from bench.designs import DESIGNS, Design, OpeningFacts, make_design
from bench.engine import batch_tag, counts, open_batch
from bench.engine.interrupts import Interrupts
from bench.engine.ledger import Ledger
from bench.engine.lock import BatchLock, driver_words
from bench.engine.mirror import complete_mirrors
from bench.engine.progress import Progress
from bench.engine.slots import Executor, LocalExecutor
from bench.engine.store import JobStore
from bench.engine.worker import WorkerSettings
from bench.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BenchError,
    redact,
    store_location,
)
from bench.optuna_adapter import DEFAULT_STORAGE
from bench.records import (
    COMPLETED,
    DONE,
    FAILED,
    FINAL,
    REEVAL_DESIGN,
    RUNNING,
    SEARCH_DESIGN,
    WAITING,
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
    """Drive an open batch to its end (or wait for the command that drives it), with progress;
    print the outcome. Shared by the CLIs.

    Returns:
        The command's exit code: 0 (also for a batch cut short by ``--timeout``), 1 when no job
        finished or the champion could not be registered, 130 on an interrupt.
    """
    store, batch, tracker, uri, storage = run.store, run.batch, run.tracker, run.uri, run.storage
    maximize = run.space.direction == "maximize"
    purposes = DESIGNS[batch.design].purposes  # what progress counts and the outcome lists
    complete_mirrors(store, batch.study, tracker)  # what an outage left of earlier batches
    jobs = [j for j in store.jobs(batch.id) if j.purpose in purposes]
    done_before = counts(jobs)[DONE]
    total = len(jobs)
    if not run.created:
        print(
            f"joining {batch.design} batch {batch.number} of study '{batch.study}': "
            f"{done_before}/{total} jobs already finished",
            file=sys.stderr,
        )
    started = time.time()
    lock = BatchLock(store, batch.id)
    try:
        if not _take_lock(lock, store, batch, interrupts):
            # the driver finished it while this command waited: its outcome is the answer
            return print_outcome(
                store, batch, tracker, uri, storage, purposes, time.time() - started, 0, None,
                maximize=maximize,
            )  # fmt: skip
        return _drive_locked(run, interrupts, purposes, done_before, total)
    except KeyboardInterrupt:
        return _interrupted(store, batch, tracker, purposes, done_before)
    finally:
        lock.release()


def _take_lock(lock: BatchLock, store: JobStore, batch: Batch, interrupts) -> bool:
    """Hold ``batch``'s lock; while another command holds it, say who and wait. False when the
    batch was finished by that command meanwhile (nothing left to drive)."""
    told = False
    while not lock.try_acquire():
        if not told:
            print(
                f"{batch.design} batch {batch.number} of study '{batch.study}' is being driven "
                f"by {driver_words(store.driver(batch.id))}; waiting for it to finish",
                file=sys.stderr,
            )
            told = True
        interrupts.wait(1.0)
    if store.get_batch(batch.id).state == DONE:
        return False
    if told:
        print(
            f"the command driving batch {batch.number} stopped before it finished; "
            "continuing it here",
            file=sys.stderr,
        )
    return True


def _drive_locked(run: BatchRun, interrupts, purposes, done_before: int, total: int) -> int:
    store, batch, tracker, uri, storage = run.store, run.batch, run.tracker, run.uri, run.storage
    plan, space = run.plan, run.space
    maximize = space.direction == "maximize"
    if batch.parent_run_id:
        tracker.safe(tracker.reopen, batch.parent_run_id)
    print(
        f"study '{batch.study}' {batch.design} batch {batch.number}: {total} jobs on "
        f"{plan.describe()}; storage {redact(storage)}; tracking {redact(uri)}",
        file=sys.stderr,
    )
    ledger = recovered_ledger(store, batch, space, tracker, storage, interrupts)
    deadline = time.time() + run.timeout if run.timeout else None
    settings = WorkerSettings(
        storage=storage,
        tracking_uri=uri,
        batch_id=batch.id,
        threads=plan.threads,
        tensorboard_dir=run.tensorboard,
    )
    executor: Executor
    if plan.executor == "ray":
        from bench.engine.ray_slots import RayExecutor

        executor = RayExecutor(settings, plan.jobs or None, plan.ray_address, plan.gpus_per_slot)
    else:
        executor = LocalExecutor(settings, plan.jobs, list(plan.per_worker_env), interrupts)
    progress = Progress(storage, batch, purposes, maximize, total, enabled=not run.quiet)
    started = time.time()
    progress.start()
    try:
        with interrupts.cooperative():
            failed_slots = run_batch(
                store, batch, make_design(batch, space), space.train.max_epochs, ledger,
                executor, interrupts, deadline,
            )  # fmt: skip
    finally:
        progress.stop()
    return print_outcome(
        store, batch, tracker, uri, storage, purposes, time.time() - started, failed_slots,
        deadline, maximize=maximize,
    )  # fmt: skip


def drive_here(settings: WorkerSettings, interrupts=None) -> int:
    """Drive an open batch in this process with one slot: no progress, no printed outcome.

    For programs that embed bench (and tests); the CLIs use :func:`drive`.

    Returns:
        How many slots refused more work (0 or 1).

    Raises:
        BenchError: another command drives the batch right now.
    """
    from bench.engine import batch_space

    interrupts = interrupts or Interrupts()
    store = JobStore(settings.storage)
    batch = store.get_batch(settings.batch_id)
    space = batch_space(batch.settings)
    tracker = Tracker(settings.tracking_uri, batch.settings["experiment"])
    with BatchLock(store, batch.id) as lock:
        if not lock.try_acquire():
            raise BenchError(
                f"batch {batch.number} of study '{batch.study}' is being driven by "
                f"{driver_words(store.driver(batch.id))}"
            )
        ledger = recovered_ledger(store, batch, space, tracker, settings.storage, interrupts)
        with interrupts.cooperative():
            return run_batch(
                store, batch, make_design(batch, space), space.train.max_epochs, ledger,
                LocalExecutor(settings, 1, [], interrupts), interrupts,
            )  # fmt: skip


def recovered_ledger(
    store: JobStore, batch: Batch, space: Space, tracker, storage: str, interrupts
) -> Ledger:
    """The batch's ledger, after :func:`recover`: what the holder of its lock does first (no
    attempt of the batch is alive then)."""
    study = opt.open_study(batch.study, storage, space, batch.settings["seed"], record_space=False)
    ledger = Ledger(store, batch, study, tracker, space.metric)
    recover(ledger, interrupts)
    return ledger


def recover(ledger: Ledger, interrupts, tries: int = 5) -> None:
    """:meth:`Ledger.recover`, retried through database blips (a restarting server, a dropped
    connection) instead of ending the command on the first."""
    import sqlalchemy.exc as sa_exc

    for attempt in range(tries):
        try:
            ledger.recover()
            return
        except sa_exc.OperationalError as exc:
            if attempt == tries - 1:
                raise
            print(f"recovering the batch failed ({redact(exc, 200)}); retrying", file=sys.stderr)
            interrupts.wait(1.0 + attempt)


def run_batch(
    store: JobStore,
    batch: Batch,
    design: Design,
    max_epochs: int,
    ledger: Ledger,
    executor: Executor,
    interrupts,
    deadline: float | None = None,
) -> int:
    """The driver's loop: hand waiting jobs to free slots, handle the attempts that end, ask the
    design for the next stage when nothing waits or runs, finish the batch.

    The caller holds the batch's lock. Stops when the batch is done, when ``deadline`` passes
    (running attempts finish first), or when every slot refused more work.

    Returns:
        How many slots refused more work (the outcome says so; 0 on a clean run).
    """
    executor.start()
    where = executor.describe()
    if where:
        print(f"slots: {where}", file=sys.stderr)
    free = list(range(executor.slots))
    running: dict[int, tuple[int, str]] = {}
    retired = 0
    try:
        while True:
            interrupts.check()
            late = deadline is not None and time.time() >= deadline
            while free and not late:
                token = uuid.uuid4().hex
                job = store.take(batch.id, token, executor.where(free[0]))
                if job is None:
                    break
                slot = free.pop(0)
                running[slot] = (job.id, token)
                executor.submit(slot, job.id, token)
            if running or executor.starting:
                for ended in executor.wait(0.5):
                    running.pop(ended.slot, None)
                    if ended.job_id is None and not ended.error:  # a replacement is ready
                        free.append(ended.slot)
                        continue
                    if ended.died and ended.job_id is not None:
                        ledger.after_death(ended.job_id, ended.token, ended.died)
                    if ended.error:
                        retired += 1
                        print(f"error: slot {ended.slot}: {redact(ended.error)}", file=sys.stderr)
                    elif not ended.gone:
                        free.append(ended.slot)
                continue
            if late or not free:
                return retired  # the --timeout passed, or no slot is left to run anything
            jobs = store.jobs(batch.id)
            if any(j.state == WAITING for j in jobs):
                continue  # (a free slot takes it next round)
            specs = design.next_jobs(jobs, max_epochs)
            if specs:
                store.add_jobs(batch.id, specs)
                continue
            ledger.finish_batch(design, jobs)
            return retired
    except KeyboardInterrupt:
        executor.stop(grace=60)  # a slot recording a result finishes it first
        raise
    finally:
        executor.stop(grace=30)


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
                f"error: {failed_workers} slot(s) stopped with an error before the batch was "
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
