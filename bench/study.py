"""Optuna side of a search: storage, study, batches of trial slots, claims and stale trials.

A *batch* is one ``bench.search`` invocation's budget: ``--trials N`` enqueues N WAITING trial
slots tagged with the batch number, and workers (processes or machines) pop them atomically
(Optuna's WAITING -> RUNNING transition is a compare-and-set in every storage). So ``--trials 6``
with 3 workers gives exactly 6 finished trials, a crashed worker's trial is re-enqueued (retry),
and rerunning after an interrupt resumes the unfinished batch. Things that must happen once per
batch (opening it, registering its champion) are *claimed* by creating a uniquely named marker
study, which every Optuna storage does atomically.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, redact

if TYPE_CHECKING:
    import optuna

    from bench.space import Space

log = logging.getLogger("bench")
DEFAULT_STORAGE = "optuna-studies.log"  # a JournalStorage file: safe for many local processes
BATCH_ATTR = "bench.batch"
SPACE_ATTR = "bench.space_hash"
SLOT_ATTR = "bench.batch_id"
OWNER_ATTR = "bench.owner"
REASON_ATTR = "bench.reason"
BASELINE_ATTR = "bench.baseline"  # on a slot: a fixed configuration to run instead of sampling
CLAIM_SEP = "~claim~"
MAX_RETRY = 3  # a configuration whose worker died is retried at most this often
HEARTBEAT_INTERVAL = int(os.environ.get("BENCH_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("BENCH_GRACE_PERIOD", "60"))


def is_journal(url: str) -> bool:
    return "://" not in url


def make_storage(url: str | None) -> optuna.storages.BaseStorage:
    """Open an Optuna storage: a journal file path, or any RDB URL (heartbeat enabled).

    Raises:
        BenchError: a malformed URL, a missing driver, an unreachable database, an unwritable path.
    """
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    url = url or DEFAULT_STORAGE
    shown = redact(url)
    if is_journal(url):
        path = Path(url)
        folder = path.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise BenchError(f"--storage {shown}: folder {folder} is missing or not writable")
        try:
            return JournalStorage(
                JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            )
        except OSError as exc:
            raise BenchError(
                f"--storage {shown}: cannot open the journal ({exc.strerror})"
            ) from None
    import sqlalchemy.exc

    try:
        for attempt in range(6):
            try:
                return RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=GRACE_PERIOD,
                    heartbeat_stale_trial_callback=retry,
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # workers starting together on an empty database race to create Optuna's
                # tables; the loser sees a duplicate and simply tries again
                if attempt == 5:
                    raise
                time.sleep(0.3 + random.random())
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise BenchError(
            f"--storage {shown}: malformed storage URL ({_first_line(exc)}); "
            "expected e.g. postgresql://user@host:5432/db or a journal file path"
        ) from None
    except ImportError as exc:
        raise BenchError(
            f"--storage {shown}: database driver missing ({_first_line(exc)}); "
            "install it, e.g. pip install 'psycopg[binary]' for PostgreSQL"
        ) from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DBAPIError) as exc:
        raise BenchError(
            f"--storage {shown}: cannot connect to the database "
            f"({redact(_first_line(exc.orig or exc))})"
        ) from None
    except optuna.exceptions.StorageInternalError as exc:
        raise BenchError(f"--storage {shown}: storage error ({redact(_first_line(exc))})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def make_sampler(space: Space, seed: int | None):
    import optuna

    s = space.sampler
    seed = s.seed if seed is None else seed
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=s.multivariate,
        group=s.multivariate,
        n_startup_trials=s.n_startup_trials,
        constant_liar=True,
    )


def make_pruner(space: Space):
    import optuna

    p = space.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=space.train.max_epochs,
            reduction_factor=p.reduction_factor,
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(
    name: str, storage, space: Space, seed: int | None = None, allow_space_change: bool = False
) -> optuna.Study:
    """Create or load the study and check it was made for this search space.

    Raises:
        BenchError: the study exists with another search space (unless allowed).
    """
    import optuna

    if CLAIM_SEP in name:
        raise BenchError(f"--study-name {name!r}: must not contain {CLAIM_SEP!r}")
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=space.direction,
        sampler=make_sampler(space, seed),
        pruner=make_pruner(space),
        load_if_exists=True,
    )
    if study.direction.name.lower() != space.direction:
        raise BenchError(
            f"--study-name {name}: the study {study.direction.name.lower()}s, but "
            f"{space.path} {space.direction}s {space.metric}; use another study name"
        )
    known = study.user_attrs.get(SPACE_ATTR)
    if known is None:
        study.set_user_attr(SPACE_ATTR, space.search_hash)
    elif known != space.search_hash:
        if not allow_space_change:
            raise BenchError(
                f"--space {space.path}: study '{name}' was created with a different "
                f"search space (hash {known}, this file {space.search_hash}); use "
                "another --study-name, or --allow-space-change to mix them knowingly"
            )
        study.set_user_attr(SPACE_ATTR, space.search_hash)
    return study


def claim(study: optuna.Study, key: str) -> bool:
    """Atomically claim ``key`` for this study: True for exactly one caller, ever."""
    import optuna

    try:
        study._storage.create_new_study(
            [optuna.study.StudyDirection.MINIMIZE], f"{study.study_name}{CLAIM_SEP}{key}"
        )
        return True
    except optuna.exceptions.DuplicatedStudyError:
        return False


# ---------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    id: int
    parent_run_id: str
    trials: int
    state: str  # running | done
    summary: dict | None = None  # champion registration outcome, once finalized
    meta: dict | None = None  # how it was started (space, dataset, names): no secrets
    created: bool = False  # this process opened it (rather than joined it)

    def record(self, **changes: Any) -> dict:
        data = {
            "id": self.id,
            "parent_run_id": self.parent_run_id,
            "trials": self.trials,
            "state": self.state,
            "summary": self.summary,
            "meta": self.meta,
        }
        data.update(changes)
        return data


def current_batch(study: optuna.Study) -> Batch | None:
    data = study.user_attrs.get(BATCH_ATTR)
    return Batch(**data) if data else None


def open_batch(
    study: optuna.Study,
    n_trials: int,
    start_parent,
    first: list[dict] | None = None,
    wait_seconds: float = 120.0,
    meta: dict | None = None,
) -> Batch:
    """Join the study's running batch, or open a new one with ``n_trials`` slots.

    Args:
        study: The study.
        n_trials: Slots of a new batch (ignored when joining).
        start_parent: ``f(batch_id) -> run_id``, called only by the process that opens the batch.
        first: Baseline payloads (:meth:`bench.space.Baseline.payload`) to enqueue before the
            free slots; they count as slots.
        wait_seconds: How long a process that lost the race waits for the winner to publish.
    """
    batch = current_batch(study)
    if batch and batch.state == "running":
        return batch
    new_id = batch.id + 1 if batch else 1
    if claim(study, f"batch-{new_id}"):
        parent = start_parent(new_id)
        first = first or []
        for payload in first:
            study.enqueue_trial({}, user_attrs={SLOT_ATTR: new_id, BASELINE_ATTR: payload})
        for _ in range(max(0, n_trials - len(first))):
            study.enqueue_trial({}, user_attrs={SLOT_ATTR: new_id})
        opened = Batch(
            new_id, parent, max(n_trials, len(first)), "running", meta=meta, created=True
        )
        study.set_user_attr(BATCH_ATTR, opened.record())
        return opened
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        batch = current_batch(study)  # user_attrs are read through the storage each time
        if batch and batch.id >= new_id:
            return batch
    raise BenchError(
        f"study {study.study_name}: another worker claimed batch {new_id} but did not "
        "publish it; rerun to join or open the next batch"
    )


def close_batch(study: optuna.Study, batch: Batch, summary: dict, done: bool) -> None:
    """Record the finalization outcome; ``done`` closes the batch (no slot left to resume)."""
    study.set_user_attr(
        BATCH_ATTR, batch.record(state="done" if done else "running", summary=summary)
    )


def batch_trials(study: optuna.Study, batch_id: int, states=None) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get(SLOT_ATTR) == batch_id
    ]


def pop_slot(
    study: optuna.Study, batch_id: int, seed: int | None = None, space: Space | None = None
) -> optuna.trial.Trial | None:
    """Take one WAITING slot of the batch (atomic across workers), or None when none is left.

    With ``seed`` and ``space``, the sampler is re-seeded with ``seed + trial number`` first:
    parallel workers then never draw the same "random" configuration, and a trial's draw
    depends only on the seed, its number and the history it sees.
    """
    import optuna
    from optuna.trial import TrialState

    for t in batch_trials(study, batch_id, states=(TrialState.WAITING,)):
        try:
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                if space is not None and seed is not None:
                    study.sampler = make_sampler(space, seed + t.number)
                trial = optuna.trial.Trial(study, t._trial_id)
                trial.set_user_attr(OWNER_ATTR, owner_record(t.number))
                return trial
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def add_slot(study: optuna.Study, batch_id: int) -> None:
    """Replace a slot lost to a failing configuration with a fresh one."""
    study.enqueue_trial({}, user_attrs={SLOT_ATTR: batch_id})


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Re-enqueue a trial's configuration (a crashed or interrupted worker's), bounded.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback`` (same ``failed_trial``/``retry_history``
    system attrs), but the new slot carries only the batch and baseline attrs, not the failed
    run's reason, owner or MLflow run id.
    """
    import optuna
    from optuna.trial import TrialState

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        log.warning("trial %d failed %d times; not retrying it again", trial.number, len(history))
        return
    keep = {k: v for k, v in trial.user_attrs.items() if k in (SLOT_ATTR, BASELINE_ATTR)}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=keep,
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )


# ---------------------------------------------------------------- stale trials


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None when gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def owner_record(number: int) -> dict:
    pid = os.getpid()
    return {"number": number, "host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}


def _owner_dead(trial: optuna.trial.FrozenTrial) -> bool:
    owner = trial.user_attrs.get(OWNER_ATTR)
    if (
        not owner
        or owner.get("number") != trial.number
        or owner.get("host") != socket.gethostname()
    ):
        return False
    return _proc_start(owner["pid"]) != owner.get("start")


def reap_stale(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail trials whose worker died and re-enqueue their configurations.

    Two detectors: a dead process on this host (exact and immediate), and the storage's heartbeat
    (RDB storages; catches dead machines after the grace period).

    Returns:
        The trials this call marked failed (their MLflow runs still need closing).
    """
    import optuna
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    reaped: list[int] = []
    optuna.storages.fail_stale_trials(study)  # heartbeat storages; calls retry() for each
    reaped += [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number in running
    ]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _owner_dead(t):
            continue
        owner = t.user_attrs[OWNER_ATTR]
        try:  # the reason first: a finished trial's attributes can no longer change
            study._storage.set_trial_user_attr(
                t._trial_id, REASON_ATTR, f"worker process {owner['pid']} died"
            )
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # a peer reaped it first
        retry(study, study._storage.get_trial(t._trial_id))
        reaped.append(t.number)
    return [t for t in study.get_trials(deepcopy=False) if t.number in reaped]


def heartbeat(study: optuna.Study, trial_id: int) -> None:
    """Record one heartbeat for a running trial (RDB storages)."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)
