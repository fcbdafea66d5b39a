"""The job store: batches and jobs in two tables, the engine's single source of truth.

Beside a journal-file Optuna storage it is a SQLite file (``<journal>.jobs.db``); with a database
storage (PostgreSQL, MySQL, SQLite URL) it is two ``bench_*`` tables in the same database, so every
machine that reaches the study reaches its jobs. Optuna never lists them as studies.

One driver runs a batch at a time (:mod:`bench.engine.lock`). Every change to a job is still one
conditional UPDATE (compare-and-set) on its attempt's token: taking a job (``waiting`` ->
``running`` with a fresh token for that attempt), recording or releasing it (only with that
token), reaping it (only while the dead attempt's token is still on it). So a late write from an
attempt that was given up (a frozen slot, a lost node) is refused and leaves no trace. No clock
is compared across machines. Enqueuing is idempotent: a job's key is unique within its batch.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from bench.errors import BenchError, redact
from bench.records import (
    FAILED,
    RUNNING,
    WAITING,
    Batch,
    Job,
    JobResult,
    JobSpec,
)

_meta = sa.MetaData()
batches = sa.Table(
    "bench_batches",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(512), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("design", sa.String(32), nullable=False),
    sa.Column("identity", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("parent_run_id", sa.String(64)),
    sa.Column("summary", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    # False from the moment a batch is done until its MLflow mirror is complete (parent run
    # ended, no run left RUNNING); NULL: a batch done before the flag existed, left alone
    sa.Column("mirrored", sa.Boolean),
    # who drives the batch now (host, pid, since): what a second command prints while it waits
    sa.Column("driver", sa.Text),
    sa.UniqueConstraint("study", "number", name="bench_batches_study_number"),
)
jobs = sa.Table(
    "bench_jobs",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.Integer, nullable=False, index=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("owner_token", sa.String(64)),
    sa.Column("owner", sa.Text),  # where the current attempt runs (slot, host, pid)
    sa.Column("result", sa.Text),
    sa.Column("trial_number", sa.Integer),
    sa.Column("run_id", sa.String(64)),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("synced", sa.Boolean, nullable=False, default=False),
    sa.Column("seq", sa.Integer, nullable=False, default=0),
    sa.UniqueConstraint("batch_id", "key", name="bench_jobs_batch_key"),
)


def store_url(optuna_storage: str) -> str:
    """Where the jobs of an Optuna storage live: beside a journal file, or in its database."""
    if "://" in optuna_storage:
        return optuna_storage
    return f"sqlite:///{Path(optuna_storage).resolve()}.jobs.db"


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False)


class JobStore:
    """Batches and jobs of one storage; one instance per process (its engine is thread-safe)."""

    def __init__(self, optuna_storage: str):
        self.url = store_url(optuna_storage)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except (sa_exc.ArgumentError, ImportError, ValueError) as exc:
            raise BenchError(
                f"--storage {redact(self.url)}: cannot open the job store ({redact(exc)})"
            ) from None
        if self.url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._create_tables()

    def _create_tables(self) -> None:
        for attempt in range(6):
            try:
                _meta.create_all(self.engine, checkfirst=True)
                self._add_missing_columns()
                return
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError):
                # processes starting together on an empty database race to create the tables;
                # the loser sees a duplicate (or a lock) and tries again
                if attempt == 5:
                    raise
                time.sleep(0.2 + random.random() * 0.5)

    def _add_missing_columns(self) -> None:
        """Columns added since a store was created (``create_all`` never alters a table)."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns("bench_batches")}
        for name, kind in (("mirrored", "BOOLEAN"), ("driver", "TEXT")):
            if name not in have:
                with self.engine.begin() as c:
                    c.execute(sa.text(f"ALTER TABLE bench_batches ADD COLUMN {name} {kind}"))

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ batches

    def latest_batch(self, study: str, design: str, identity: str | None = None) -> Batch | None:
        q = sa.select(batches).where(batches.c.study == study, batches.c.design == design)
        if identity is not None:
            q = q.where(batches.c.identity == identity)
        with self.engine.connect() as c:
            row = c.execute(q.order_by(batches.c.number.desc()).limit(1)).first()
        return _batch(row) if row else None

    def newest_batch(self, study: str | None = None) -> Batch | None:
        """The batch opened last, of ``study`` or of any study (``bench.ui`` shows its runs)."""
        q = sa.select(batches)
        if study is not None:
            q = q.where(batches.c.study == study)
        with self.engine.connect() as c:
            row = c.execute(q.order_by(batches.c.created.desc(), batches.c.id.desc())).first()
        return _batch(row) if row else None

    def batches(self, study: str | None = None) -> list[Batch]:
        """The batches of ``study`` in order; of every study (by study, then number) if None."""
        q = sa.select(batches)
        if study is not None:
            q = q.where(batches.c.study == study)
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(batches.c.study, batches.c.number)).all()
        return [_batch(r) for r in rows]

    def get_batch(self, batch_id: int) -> Batch:
        with self.engine.connect() as c:
            row = c.execute(sa.select(batches).where(batches.c.id == batch_id)).first()
        if row is None:
            raise BenchError(f"batch {batch_id} is gone from the job store {redact(self.url)}")
        return _batch(row)

    def last_number(self, study: str) -> int:
        """The highest batch number of ``study`` (0 when it has none)."""
        with self.engine.connect() as c:
            last = c.execute(
                sa.select(sa.func.max(batches.c.number)).where(batches.c.study == study)
            ).scalar()
        return last or 0

    def create_batch(
        self, study: str, design: str, identity: str, settings: dict, after: int | None = None
    ) -> Batch | None:
        """Insert the study's batch number ``after + 1`` in state ``opening``; None when taken.

        ``after`` is the last number the caller saw *before* it decided to create: any batch a
        peer opened since then holds that number, so the insert fails and the caller looks
        again, instead of opening a second batch beside the peer's. Without it, the store's
        current last number is used.
        """
        last = self.last_number(study) if after is None else after
        try:
            with self.engine.begin() as c:
                new_id = c.execute(
                    batches.insert().values(
                        study=study,
                        number=last + 1,
                        design=design,
                        identity=identity,
                        state="opening",
                        settings=_dumps(settings),
                        created=time.time(),
                    )
                ).inserted_primary_key[0]
        except sa_exc.IntegrityError:
            return None
        return self.get_batch(new_id)

    def set_parent_run(self, batch_id: int, run_id: str) -> str:
        """Record the parent run unless a peer recorded one first; returns the one that stands."""
        with self.engine.begin() as c:
            c.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.parent_run_id.is_(None))
                .values(parent_run_id=run_id)
            )
        return self.get_batch(batch_id).parent_run_id

    def set_batch_state(self, batch_id: int, state: str, expect: str | None = None) -> bool:
        q = batches.update().where(batches.c.id == batch_id)
        if expect is not None:
            q = q.where(batches.c.state == expect)
        with self.engine.begin() as c:
            return c.execute(q.values(state=state)).rowcount == 1

    def finish_batch(self, batch_id: int, summary: dict) -> bool:
        """``running`` -> ``done`` with its summary; True for exactly one caller."""
        with self.engine.begin() as c:
            n = c.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.state == "running")
                .values(state="done", summary=_dumps(summary), mirrored=False)
            ).rowcount
        return n == 1

    def unmirrored(self, study: str) -> list[Batch]:
        """The study's done batches whose MLflow mirror a tracking outage left incomplete."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(batches)
                .where(
                    batches.c.study == study,
                    batches.c.state == "done",
                    batches.c.mirrored.is_(False),
                )
                .order_by(batches.c.number)
            ).all()
        return [_batch(r) for r in rows]

    def set_driver(self, batch_id: int, driver: dict | None) -> None:
        """Record who drives the batch (written by the lock's holder, read by waiters)."""
        with self.engine.begin() as c:
            c.execute(
                batches.update()
                .where(batches.c.id == batch_id)
                .values(driver=_dumps(driver) if driver else None)
            )

    def driver(self, batch_id: int) -> dict | None:
        with self.engine.connect() as c:
            text = c.execute(sa.select(batches.c.driver).where(batches.c.id == batch_id)).scalar()
        return _loads(text)

    def set_mirrored(self, batch_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(batches.update().where(batches.c.id == batch_id).values(mirrored=True))

    # ------------------------------------------------------------ jobs

    def add_jobs(self, batch_id: int, specs: list[JobSpec]) -> int:
        """Enqueue jobs; a key already in the batch is skipped. Returns how many were new."""
        added = 0
        with self.engine.connect() as c:
            known = set(
                c.execute(sa.select(jobs.c.key).where(jobs.c.batch_id == batch_id)).scalars()
            )
            seq = c.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.batch_id == batch_id)
            ).scalar()
        for spec in specs:
            if spec.key in known:
                continue
            try:
                with self.engine.begin() as c:
                    c.execute(
                        jobs.insert().values(
                            batch_id=batch_id,
                            key=spec.key,
                            purpose=spec.purpose,
                            spec=_dumps(spec.to_dict()),
                            state=WAITING,
                            attempts=0,
                            reason="",
                            synced=False,
                            seq=seq,
                        )
                    )
                added += 1
                seq += 1
            except sa_exc.IntegrityError:
                pass  # a peer enqueued the same key first
        return added

    def jobs(self, batch_id: int, states: tuple[str, ...] | None = None) -> list[Job]:
        q = sa.select(jobs).where(jobs.c.batch_id == batch_id)
        if states:
            q = q.where(jobs.c.state.in_(states))
        with self.engine.connect() as c:
            return [_job(r) for r in c.execute(q.order_by(jobs.c.seq, jobs.c.id)).all()]

    def get_job(self, job_id: int) -> Job:
        with self.engine.connect() as c:
            return _job(c.execute(sa.select(jobs).where(jobs.c.id == job_id)).one())

    def take(self, batch_id: int, token: str, owner: dict) -> Job | None:
        """Start the next attempt of the batch's first waiting job (compare-and-set), or None.

        Args:
            token: This attempt's token: every later write of the attempt must present it.
            owner: Where the attempt runs (slot, host, pid), for people and messages only.
        """
        for job in self.jobs(batch_id, states=(WAITING,)):
            with self.engine.begin() as c:
                n = c.execute(
                    jobs.update()
                    .where(jobs.c.id == job.id, jobs.c.state == WAITING)
                    .values(
                        state=RUNNING,
                        owner_token=token,
                        owner=_dumps(owner),
                        attempts=jobs.c.attempts + 1,
                    )
                ).rowcount
            if n == 1:
                return self.get_job(job.id)
        return None

    def _owned(self, job_id: int, token: str):
        return jobs.update().where(jobs.c.id == job_id, jobs.c.owner_token == token)

    def owns(self, job_id: int, token: str) -> bool:
        """Whether ``token``'s attempt is still the job's running attempt (checked before every
        side effect that another attempt must never see: a model logged, a version registered)."""
        with self.engine.connect() as c:
            n = c.execute(
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(jobs.c.id == job_id, jobs.c.owner_token == token, jobs.c.state == RUNNING)
            ).scalar()
        return n == 1

    def update_owned(self, job_id: int, token: str, **values: Any) -> bool:
        """Set fields of a job this worker owns (trial number, run id, sampled config)."""
        if "spec" in values:
            values["spec"] = _dumps(values["spec"].to_dict())
        with self.engine.begin() as c:
            return c.execute(self._owned(job_id, token).values(**values)).rowcount == 1

    def finish(
        self, job_id: int, token: str, state: str, result: JobResult | None, reason: str = ""
    ) -> bool:
        """Record a job's outcome (``done`` or ``failed``) if this worker still owns it."""
        with self.engine.begin() as c:
            n = c.execute(
                self._owned(job_id, token)
                .where(jobs.c.state == RUNNING)
                .values(
                    state=state,
                    result=_dumps(result.to_dict()) if result else None,
                    reason=reason,
                )
            ).rowcount
        return n == 1

    def release(self, job_id: int, token: str, reason: str) -> bool:
        """Give a job back (an interrupt, a registration outage): it waits for the next taker.

        The attempt its taking counted is given back too: ``attempts`` counts attempts that died
        (what :meth:`reap` acts on), and a job handed back alive is not one.
        """
        with self.engine.begin() as c:
            n = c.execute(
                self._owned(job_id, token)
                .where(jobs.c.state == RUNNING)
                .values(
                    state=WAITING,
                    owner_token=None,
                    reason=reason,
                    attempts=jobs.c.attempts - 1,
                )
            ).rowcount
        return n == 1

    def mark_synced(self, job_id: int, token: str | None) -> None:
        q = jobs.update().where(jobs.c.id == job_id)
        if token is not None:
            q = q.where(jobs.c.owner_token == token)
        with self.engine.begin() as c:
            c.execute(q.values(synced=True, owner_token=None))

    def reap(self, job: Job, state: str, reason: str) -> bool:
        """Take a dead attempt's job away from it: back to ``waiting``, or ``failed`` for good
        (and then synced at once: nothing of it is left to mirror but its Optuna trial and MLflow
        run, which the reaper closes).

        Only succeeds while the dead attempt's token is still on the job, so an attempt that
        recorded its result just before it died keeps it.
        """
        with self.engine.begin() as c:
            n = c.execute(
                jobs.update()
                .where(
                    jobs.c.id == job.id,
                    jobs.c.owner_token == (job.owner or {}).get("token"),
                    jobs.c.state == job.state,
                )
                .values(
                    state=state,
                    owner_token=None,
                    reason=reason,
                    **({"synced": True} if state == FAILED else {}),
                )
            ).rowcount
        return n == 1


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _batch(row) -> Batch:
    m = row._mapping
    return Batch(
        id=m["id"],
        study=m["study"],
        number=m["number"],
        design=m["design"],
        identity=m["identity"],
        state=m["state"],
        settings=_loads(m["settings"]) or {},
        parent_run_id=m["parent_run_id"],
        summary=_loads(m["summary"]),
    )


def _job(row) -> Job:
    m = row._mapping
    owner = _loads(m["owner"])
    if owner is not None:
        owner = {**owner, "token": m["owner_token"]}
    result = _loads(m["result"])
    return Job(
        id=m["id"],
        batch_id=m["batch_id"],
        spec=JobSpec.from_dict(_loads(m["spec"])),
        state=m["state"],
        attempts=m["attempts"],
        owner=owner,
        result=JobResult.from_dict(result) if result else None,
        trial_number=m["trial_number"],
        run_id=m["run_id"],
        reason=m["reason"] or "",
        synced=bool(m["synced"]),
    )
