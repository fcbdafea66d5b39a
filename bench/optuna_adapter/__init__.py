"""Optuna behind one adapter: the only package that imports Optuna.

Only Optuna's public API is used: ``create_study``/``load_study``, ``Study.ask``/``tell``,
``add_trial`` with ``create_trial``, ``enqueue_trial``, ``get_trials``, the samplers, pruners and
storages. The engine's own job queue decides *what* runs and *how many*; Optuna samples
configurations and judges intermediate values. A search job asks for a fresh trial; the only
WAITING trials are a space's starting configurations (``study.enqueue``), queued once per study
and each handed to exactly one ``ask()`` (Optuna pops a waiting trial atomically). A
configuration that must be trained again (its worker died) is trained outside Optuna and added
back with ``add_trial`` as a finished trial.

The rest of bench never sees Optuna's types: a running trial is a :class:`LiveTrial`, and reads
come back as :class:`TrialView` records.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, redact
from bench.lazy import lazy
from bench.records import STUDY_SPACE, TRIAL_JOB
from bench.space._types import SCORING_TRAIN_FIELDS

if TYPE_CHECKING:
    import optuna

    from bench.space import Space
else:
    optuna = lazy("optuna")  # this package is the only Optuna importer; it loads on first use

log = logging.getLogger("bench")
DEFAULT_STORAGE = "optuna-studies.log"  # a JournalStorage file: safe for many local processes


def _quiet() -> None:
    """Optuna logs every trial at INFO through its own handler; bench reports progress itself."""

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.logging.disable_default_handler()


def is_journal(url: str) -> bool:
    return "://" not in url


def make_storage(url: str | None):
    """Open an Optuna storage: a journal file path, or any RDB URL.

    Raises:
        BenchError: a malformed URL, a missing driver, an unreachable database, an unwritable path,
            a journal file that cannot be read.
    """
    journal = optuna.storages.journal

    _quiet()
    url = url or DEFAULT_STORAGE
    shown = redact(url)
    if is_journal(url):
        path = Path(url)
        folder = path.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise BenchError(f"--storage {shown}: folder {folder} is missing or not writable")
        try:
            storage = journal.JournalStorage(
                journal.JournalFileBackend(
                    str(path), lock_obj=journal.JournalFileOpenLock(str(path))
                )
            )
            # the journal is replayed lazily; read it now so a corrupt line is reported here
            optuna.get_all_study_summaries(storage, include_best_trial=False)
            return storage
        except OSError as exc:
            raise BenchError(
                f"--storage {shown}: cannot open the journal ({exc.strerror})"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:  # a torn line, or one missing fields
            raise BenchError(
                f"--storage {shown}: the journal file {path.resolve()} is corrupt "
                f"({_first_line(exc)}); keep a copy, then cut it after its last complete "
                "line, or start a new file with --storage"
            ) from None
    import sqlalchemy.exc

    try:
        for attempt in range(6):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # workers starting together on an empty database race to create Optuna's
                # tables; the loser sees a duplicate and simply tries again
                if attempt == 5:
                    raise
                time.sleep(0.3 + random.random())
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise BenchError(
            f"--storage {shown}: malformed storage URL ({redact(_first_line(exc))}); "
            "expected e.g. postgresql://user@host:5432/db or a journal file path"
        ) from None
    except ImportError as exc:
        raise BenchError(
            f"--storage {shown}: database driver missing ({_first_line(exc)}); "
            "install it, e.g. pip install 'psycopg[binary]' for PostgreSQL"
        ) from None
    except RuntimeError as exc:  # Optuna's schema-version check
        if "alembic" in str(exc).lower() or "schema" in str(exc).lower():
            raise BenchError(
                f"--storage {shown}: this database holds another program's tables (its schema "
                "version is not Optuna's; MLflow keeps its own there too); give the Optuna "
                "storage its own database, e.g. .../bench_optuna"
            ) from None
        raise
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DBAPIError) as exc:
        raise BenchError(
            f"--storage {shown}: cannot connect to the database "
            f"({redact(_first_line(exc.orig or exc))})"
        ) from None
    except optuna.exceptions.StorageInternalError as exc:
        raise BenchError(f"--storage {shown}: storage error ({redact(_first_line(exc))})") from None


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc)).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def make_sampler(space: Space, seed: int | None):

    s = space.sampler
    seed = s.seed if seed is None else seed
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # unset: Optuna's own default (Optuna 4.5 takes no None for it, Optuna 5 does)
    extra = {} if s.gamma is None else {"gamma": _Gamma(s.gamma)}
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=s.multivariate,
        group=s.multivariate,
        n_startup_trials=s.n_startup_trials,
        constant_liar=True,
        **extra,
    )


@dataclass(frozen=True)
class _Gamma:
    """TPE's split: the best ``fraction`` of the finished trials (at least 1, at most 25) are
    modelled as good. A class, not a lambda: a sampler holding it still pickles, as Optuna's
    samplers do (its own default is a plain function)."""

    fraction: float

    def __call__(self, n: int) -> int:
        return max(1, min(math.ceil(self.fraction * n), 25))


def make_pruner(space: Space):

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
    name: str,
    storage_url: str | None,
    space: Space,
    seed: int | None = None,
    allow_space_change: bool = False,
    record_space: bool = True,
    recorded_split: Callable[[], dict | None] | None = None,
) -> optuna.Study:
    """Create or load the study and check it was made for this search space.

    Args:
        record_space: Check and record the space's hash on the study (the search command);
            workers and ablations only load the study and leave the record alone.
        recorded_split: For a study recorded before the validation split was part of the hash:
            returns the split its batches were scored on (``validation_size``, ``cv_folds``),
            or None where nothing recorded it. Its record is upgraded only when that split is
            this space's; otherwise the study is refused as a changed space would be.

    Raises:
        BenchError: the study exists with another direction or search space (unless allowed).
    """

    study = optuna.create_study(
        study_name=name,
        storage=make_storage(storage_url),
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
    if not record_space:
        return study
    known = study.user_attrs.get(STUDY_SPACE)
    if known is None:
        study.set_user_attr(STUDY_SPACE, space.search_hash)
    elif known == space.legacy_search_hash and known != space.search_hash:
        # recorded before the split was in the hash: the same space, scored on which split?
        split = {k: getattr(space.train, k) for k in SCORING_TRAIN_FIELDS}
        old = recorded_split() if recorded_split is not None and study.trials else split
        if old != split and not allow_space_change:
            said = (
                "nothing recorded which split it was scored on"
                if old is None
                else "it was scored on " + ", ".join(f"{k} {v}" for k, v in old.items())
            )
            raise BenchError(
                f"--space {space.path}: study '{name}' was recorded before its validation split "
                f"was part of the space's hash and {said}, this file scores on "
                + ", ".join(f"{k} {v}" for k, v in split.items())
                + "; use another --study-name, or --allow-space-change if the splits are the "
                "same or to mix them knowingly"
            )
        study.set_user_attr(STUDY_SPACE, space.search_hash)
    elif known != space.search_hash:
        if not allow_space_change:
            raise BenchError(
                f"--space {space.path}: study '{name}' was created with a different "
                f"search space (hash {known}, this file {space.search_hash}); use "
                "another --study-name, or --allow-space-change to mix them knowingly"
            )
        study.set_user_attr(STUDY_SPACE, space.search_hash)
    return study


def load_study(name: str, storage_url: str | None) -> optuna.Study:
    """Load an existing study.

    Raises:
        BenchError: no such study in the storage.
    """

    try:
        return optuna.load_study(study_name=name, storage=make_storage(storage_url))
    except KeyError:
        raise BenchError(
            f"--study-name {name}: no such study in {redact(storage_url or DEFAULT_STORAGE)}; "
            f"its studies: {', '.join(study_names(storage_url)) or 'none'}"
        ) from None


def study_names(storage_url: str | None) -> list[str]:
    """Names of the studies in a storage (what optuna-dashboard lists)."""

    return [s.study_name for s in optuna.get_all_study_summaries(make_storage(storage_url))]


def study_attrs(study: optuna.Study) -> dict[str, Any]:
    return dict(study.user_attrs)


def set_study_attr(study: optuna.Study, key: str, value: Any) -> None:
    study.set_user_attr(key, value)


# ---------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialView:
    """A read-only trial, in bench's terms."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    intermediate: dict[int, float] = field(default_factory=dict)
    datetime_start: Any = None
    datetime_complete: Any = None


def trials(study: optuna.Study, states: tuple[str, ...] | None = None) -> list[TrialView]:
    TrialState = optuna.trial.TrialState

    wanted = tuple(TrialState[s] for s in states) if states else None
    return [
        TrialView(
            t.number,
            t.state.name,
            t.value,
            dict(t.params),
            dict(t.user_attrs),
            dict(t.intermediate_values),
            t.datetime_start,
            t.datetime_complete,
        )
        for t in study.get_trials(deepcopy=False, states=wanted)
    ]


class LiveTrial:
    """A trial this worker is running: sampling, intermediate values, pruning, attributes."""

    def __init__(self, study: optuna.Study, trial: optuna.trial.Trial):
        self._study = study
        self._trial = trial
        self.number = trial.number
        self.lost = False  # finished by a peer that reaped this worker's job

    def suggest(self, space: Space) -> dict[str, Any]:
        from bench.space import suggest

        return suggest(self._trial, space)

    # A trial is finished behind its worker's back only when a peer reaped the job (its lease
    # ran out): the job is no longer this worker's, so training stops and nothing raises.
    def report(self, value: float, step: int) -> None:

        try:
            self._trial.report(value, step)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.lost = True

    def should_prune(self) -> bool:
        if self.lost:
            return True
        return self._trial.should_prune()

    def set_attrs(self, attrs: dict[str, Any]) -> None:

        try:
            for k, v in attrs.items():
                self._trial.set_user_attr(k, v)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.lost = True

    def params(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sampled parameters and their distributions (to add the same trial again)."""
        return dict(self._trial.params), dict(self._trial.distributions)


def enqueue(study: optuna.Study, starts: tuple[dict, ...] | list[dict]) -> int:
    """Queue the space's starting configurations (``study.enqueue``) once per study.

    The next ``ask`` calls take them in order (any worker, any machine); the sampler then goes on
    from their results. A configuration already queued or tried in this study, in any state, is
    not queued again, so a rerun or a later batch adds nothing.

    Returns:
        How many were queued now.
    """
    before = len(study.get_trials(deepcopy=False))
    for params in starts:
        study.enqueue_trial(dict(params), skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def ask(study: optuna.Study, space: Space, seed: int) -> LiveTrial:
    """A fresh trial, sampled with a sampler seeded for this job.

    Re-seeding per job means parallel workers never draw the same "random" configuration, and a
    job's draw depends only on its seed and the history it sees.
    """
    study.sampler = make_sampler(space, seed)
    return LiveTrial(study, study.ask())


def tell(study: optuna.Study, number: int, state: str, value: float | None = None) -> bool:
    """Finish a trial by number; False when it was already finished (by a reaper, say)."""
    TrialState = optuna.trial.TrialState

    try:
        if state == "COMPLETE":
            study.tell(number, value)
        else:
            study.tell(number, state=TrialState[state])
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
        return False


def trial_state(study: optuna.Study, number: int) -> str | None:
    """A trial's state by number (None when there is no such trial)."""
    try:
        return study.trials[number].state.name
    except IndexError:
        return None


def trial_params(study: optuna.Study, number: int) -> tuple[dict, dict] | None:
    """Parameters and distributions of a trial (None if it has none)."""
    try:
        t = study.trials[number]
    except IndexError:
        return None
    return (dict(t.params), dict(t.distributions)) if t.params else None


def add_finished(
    study: optuna.Study,
    state: str,
    value: float | None,
    params: dict | None,
    distributions: dict | None,
    user_attrs: dict[str, Any],
    intermediate: dict[int, float] | None = None,
) -> int:
    """Add a trial trained outside Optuna (a baseline, a retried configuration); its number."""
    TrialState, create_trial = optuna.trial.TrialState, optuna.trial.create_trial

    study.add_trial(
        create_trial(
            state=TrialState[state],
            value=value if state == "COMPLETE" else None,
            params=params or {},
            distributions=distributions or {},
            user_attrs=user_attrs,
            intermediate_values=intermediate or {},
        )
    )
    job = user_attrs.get(TRIAL_JOB)
    for t in reversed(study.get_trials(deepcopy=False)):
        if job is not None and t.user_attrs.get(TRIAL_JOB) == job:
            return t.number
    return -1


# ---------------------------------------------------------------- analysis (bench.report)


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def direction(study: optuna.Study) -> str:
    return study.direction.name.lower()


def metric_name(study: optuna.Study) -> str:
    """The validation metric a study's values are: accuracy when it maximizes, else loss."""
    return "val_accuracy" if study.direction.name == "MAXIMIZE" else "val_loss"
