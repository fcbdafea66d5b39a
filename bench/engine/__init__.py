"""The engine: one way to run every job (search trials, baselines, re-evaluations, ablation
cells, refits) on crash-safe workers, with one tracking layout.

- :mod:`bench.engine.store`: batches and jobs, the source of truth (compare-and-set updates).
- :mod:`bench.engine.lock`: one driver per batch (a lock the OS or the database releases).
- :mod:`bench.engine.driver`: the driver's loop, progress and outcome; what the CLIs call.
- :mod:`bench.engine.slots`: where jobs run (the executor contract; local slot processes).
- :mod:`bench.engine.worker`: what a slot does with one job's attempt.
- :mod:`bench.engine.ledger`: recording, mirroring, reaping (the retry policy), ending a batch.
- :mod:`bench.engine.progress`, :mod:`bench.engine.mirror`, :mod:`bench.engine.interrupts`.
- this module: opening (or joining) a batch.

Guarantees, each proven by a kill-point test: a plain rerun finishes what a killed run left, never
waits on a dead claimant, keeps every recorded result, leaves no Optuna trial or MLflow run
RUNNING, and registers the champion once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from bench.engine.store import JobStore
from bench.errors import BenchError
from bench.faults import kill_point
from bench.records import DONE, FAILED, OPENING, RUNNING, WAITING, Batch, Job, JobSpec

log = logging.getLogger("bench")


def open_batch(
    store: JobStore,
    study: str,
    design: str,
    identity: str,
    settings: dict[str, Any],
    initial_jobs: Callable[[dict[str, Any]], list[JobSpec]],
    start_parent: Callable[[Batch], str],
    tracker,
    join_done: bool = False,
) -> tuple[Batch, bool]:
    """Join the unfinished batch of this design (and identity), or open the next one.

    Opening is a sequence of idempotent steps (batch row, parent run, jobs, ``running``), so a
    process that dies half-way leaves a batch in state ``opening`` that the next caller simply
    continues: nobody waits on a claim that its owner will never publish.

    Args:
        store: The job store.
        study: The study the batch belongs to.
        design: ``search``, ``reeval`` or ``ablation``.
        identity: Batches with the same identity are the same piece of work.
        settings: Stored with a new batch; a continued or joined batch keeps its own. Its
            ``space_text`` (the validated YAML) and ``dataset_digest`` are what every worker
            trains and checks its data against (:func:`batch_space`).
        initial_jobs: ``f(settings) -> specs`` of a new batch.
        start_parent: Creates the batch's MLflow parent run (tagged with :func:`batch_tag`);
            returns its id.
        tracker: Finds a dead opener's parent run by that tag, and deletes one that lost a race.
        join_done: Return a finished batch of the same identity instead of opening a new one.

    Returns:
        ``(batch, created)``: ``created`` is False when an existing batch was joined.

    Raises:
        BenchError: the batch to join or continue was opened on data with another digest.
    """
    for _ in range(20):
        # the study's last number first, then this design's latest batch: a batch that a peer
        # opens after the first read takes the number this caller would insert (see create_batch)
        seen = store.last_number(study)
        latest = store.latest_batch(study, design, identity if design != "search" else None)
        if latest is not None and (latest.state != DONE or join_done):
            check_same_data(latest, settings.get("dataset_digest"))
        if latest is not None and latest.state == RUNNING:
            return latest, False
        if latest is not None and latest.state == DONE and join_done:
            return latest, False
        created = latest is None or latest.state == DONE
        # a random id, so a fresh storage beside an old tracking store never adopts its runs
        fresh = {**settings, "uid": uuid.uuid4().hex[:16]}
        batch = (
            latest
            if not created
            else store.create_batch(study, design, identity, fresh, after=seen)
        )
        if batch is None:
            continue  # a peer created this number a moment ago: look again
        kill_point("open-batch")
        parent = batch.parent_run_id or next(iter(tracker.find_runs(batch_tag(batch))), None)
        if parent is None:
            mine = start_parent(batch)
            parent = store.set_parent_run(batch.id, mine)
            if parent != mine:
                tracker.delete_run(mine)
        else:
            store.set_parent_run(batch.id, parent)
        store.add_jobs(batch.id, initial_jobs(batch.settings))
        store.set_batch_state(batch.id, RUNNING, expect=OPENING)
        return store.get_batch(batch.id), created
    raise RuntimeError(f"study {study}: could not open a batch after 20 tries")


def check_same_data(batch: Batch, digest: str | None) -> None:
    """Refuse data whose digest differs from the one ``batch`` was opened on.

    Raises:
        BenchError: one line naming both digests.
    """
    stored = batch.settings.get("dataset_digest")
    if stored and digest and stored != digest:
        raise BenchError(data_mismatch(batch, digest))


def data_mismatch(batch: Batch, here: str) -> str:
    """The one line for data that differs from what a batch was opened on."""
    return (
        f"dataset {batch.settings.get('dataset')}: the data here has digest {here}, but "
        f"{batch.design} batch {batch.number} of study '{batch.study}' was opened on digest "
        f"{batch.settings.get('dataset_digest')}; give every machine the same files "
        "(--data-dir or BENCH_DATA_DIR)"
    )


def batch_space(settings: dict[str, Any]):
    """The space a batch trains: the YAML stored when it was opened, never the file at its path
    (which may be gone, moved, edited, or another file on another machine). Batches opened
    before the text was stored fall back to the path.

    Raises:
        SpaceError: the stored text (or the fallback file) is not a valid space.
    """
    from bench.space import load_space, space_from_text

    text = settings.get("space_text")
    path = str(settings.get("space") or "<batch space>")
    space = space_from_text(text, path) if text is not None else load_space(path)
    return space.with_overrides(max_epochs=settings.get("max_epochs"))


def batch_tag(batch: Batch) -> dict[str, str]:
    """The tag that marks a batch's parent run (its random id: unique across storages)."""
    return {"bench_batch": batch.settings.get("uid") or f"{batch.study}:{batch.number}"}


def counts(jobs: list[Job]) -> dict[str, int]:
    out = {WAITING: 0, RUNNING: 0, DONE: 0, FAILED: 0}
    for j in jobs:
        out[j.state] = out.get(j.state, 0) + 1
    return out
