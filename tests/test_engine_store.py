"""Unit: the job store's compare-and-set rules per attempt, the batch lock, and continuing an
opening batch.

No TensorFlow, no Optuna, no MLflow: a temporary SQLite file per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import pytest

from bench.engine import open_batch
from bench.engine.lock import BatchLock
from bench.engine.store import JobStore, store_url
from bench.records import DONE, FAILED, RUNNING, WAITING, JobResult, JobSpec
from tests.conftest import cli_env


@pytest.fixture
def store(tmp_path):
    s = JobStore(str(tmp_path / "journal.log"))
    yield s
    s.dispose()


def _batch(store, study="s", design="search", identity="search"):
    b = store.create_batch(study, design, identity, {"seed": 0})
    assert b is not None and b.state == "opening"
    return b


def _specs(n, prefix="search"):
    return [JobSpec(key=f"{prefix}-{i:04d}", purpose="search", seed=i) for i in range(n)]


def _owner(slot=0):
    return uuid.uuid4().hex, {"slot": slot, "host": "here", "pid": os.getpid()}


def _result(value=0.9):
    return JobResult("completed", value, 1, 2, 0.5, 100, 1.0, {"units": [8]})


def test_store_lives_beside_a_journal_or_inside_a_database(tmp_path):
    assert store_url(str(tmp_path / "j.log")) == f"sqlite:///{tmp_path}/j.log.jobs.db"
    url = "postgresql://u@h:5432/db"
    assert store_url(url) == url


def test_add_jobs_is_idempotent_by_key_and_keeps_order(store):
    b = _batch(store)
    assert store.add_jobs(b.id, _specs(3)) == 3
    assert store.add_jobs(b.id, _specs(3)) == 0
    assert store.add_jobs(b.id, _specs(5)) == 2
    jobs = store.jobs(b.id)
    assert [j.key for j in jobs] == [f"search-{i:04d}" for i in range(5)]
    assert {j.state for j in jobs} == {WAITING}
    assert jobs[0].spec == _specs(1)[0]  # the spec round-trips through the store


def test_add_jobs_from_two_stores_at_once_inserts_each_key_once(tmp_path):
    path = str(tmp_path / "journal.log")
    a, b = JobStore(path), JobStore(path)
    batch = _batch(a)
    specs = _specs(20)
    added = []
    threads = [threading.Thread(target=lambda s=s: added.append(s.add_jobs(batch.id, specs)))
               for s in (a, b)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(added) == 20
    assert sorted(j.key for j in a.jobs(batch.id)) == sorted(s.key for s in specs)


def test_take_is_exclusive_across_stores_and_threads(tmp_path):
    path = str(tmp_path / "journal.log")
    stores = [JobStore(path) for _ in range(4)]
    batch = _batch(stores[0])
    stores[0].add_jobs(batch.id, _specs(24))
    taken: list[tuple[int, str]] = []
    lock = threading.Lock()

    def worker(s: JobStore):
        token, owner = _owner()
        while (job := s.take(batch.id, token, owner)) is not None:
            assert job.state == RUNNING and job.owner["token"] == token
            with lock:
                taken.append((job.id, token))

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for i, _ in taken]
    assert len(ids) == 24 and len(set(ids)) == 24  # every job once, none twice
    jobs = stores[0].jobs(batch.id)
    assert all(j.state == RUNNING and j.attempts == 1 for j in jobs)
    for job_id, token in taken:
        assert stores[0].get_job(job_id).owner["token"] == token


def test_take_returns_none_when_nothing_waits(store):
    b = _batch(store)
    token, owner = _owner()
    assert store.take(b.id, token, owner) is None


def test_finish_release_and_owns_only_for_the_attempts_token(store):
    b = _batch(store)
    store.add_jobs(b.id, _specs(2))
    mine, me = _owner()
    other, _ = _owner()
    job = store.take(b.id, mine, me)

    assert not store.owns(job.id, other)
    assert store.owns(job.id, mine)
    assert not store.update_owned(job.id, other, trial_number=7)
    assert store.update_owned(job.id, mine, trial_number=3)
    assert store.get_job(job.id).trial_number == 3

    assert not store.finish(job.id, other, DONE, _result())
    assert not store.release(job.id, other, "not mine")
    assert store.get_job(job.id).state == RUNNING

    assert store.finish(job.id, mine, DONE, _result(0.8))
    done = store.get_job(job.id)
    assert done.state == DONE and done.result == _result(0.8)
    assert not store.finish(job.id, mine, FAILED, None)  # finished once
    assert not store.owns(job.id, mine)  # a recorded attempt holds nothing any more
    assert not store.release(job.id, mine, "too late")

    second = store.take(b.id, mine, me)
    assert store.release(second.id, mine, "interrupted")
    again = store.get_job(second.id)
    assert again.state == WAITING and again.owner["token"] is None and again.reason == "interrupted"
    assert store.take(b.id, other, me).id == second.id  # it is taken again
    assert store.get_job(second.id).attempts == 1  # a release is not a death (see below)


def test_reap_only_while_the_dead_owners_token_is_on_the_job(store):
    b = _batch(store)
    store.add_jobs(b.id, _specs(1))
    dead, owner = _owner()
    job = store.take(b.id, dead, owner)
    seen = store.get_job(job.id)

    assert store.reap(seen, WAITING, "worker died")  # the first reaper wins
    assert not store.reap(seen, WAITING, "worker died")  # a second reaper with the same view
    assert store.get_job(job.id).state == WAITING

    alive, owner2 = _owner()
    retaken = store.take(b.id, alive, owner2)
    assert not store.reap(seen, WAITING, "stale view")  # the new owner keeps its job
    assert store.get_job(retaken.id).owner["token"] == alive
    # an owner that was merely slow cannot record after being reaped
    assert not store.finish(job.id, dead, DONE, _result())

    # the reaper's view is stale when the owner finished in between: nothing happens
    view = store.get_job(retaken.id)
    assert store.finish(retaken.id, alive, DONE, _result())
    assert not store.reap(view, FAILED, "too late")
    assert store.get_job(retaken.id).state == DONE


def test_finish_batch_is_true_once(tmp_path):
    path = str(tmp_path / "journal.log")
    stores = [JobStore(path) for _ in range(4)]
    b = _batch(stores[0])
    assert not stores[0].finish_batch(b.id, {"x": 1})  # still opening: not finishable
    assert stores[0].set_batch_state(b.id, "running", expect="opening")
    assert not stores[0].set_batch_state(b.id, "running", expect="opening")
    results = []
    threads = [
        threading.Thread(target=lambda s=s, i=i: results.append(s.finish_batch(b.id, {"by": i})))
        for i, s in enumerate(stores)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    done = stores[0].get_batch(b.id)
    assert done.state == "done" and list(done.summary) == ["by"]


def test_create_batch_race_returns_none_for_the_loser(tmp_path, monkeypatch):
    path = str(tmp_path / "journal.log")
    a, b = JobStore(path), JobStore(path)
    # both read the same highest number before either inserts: the loser's insert collides
    first = a.create_batch("s", "search", "search", {})
    assert first.number == 1
    import sqlalchemy as sa

    real_connect = b.engine.connect
    calls = []

    class StaleMax:
        """The loser's first connection reads the highest number as it was before batch 1."""

        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.conn.close()

        def execute(self, query):
            return self.conn.execute(sa.text("SELECT 0"))

    def connect():
        calls.append(1)
        conn = real_connect()
        return StaleMax(conn) if len(calls) == 1 else conn

    monkeypatch.setattr(b.engine, "connect", connect)
    assert b.create_batch("s", "search", "search", {}) is None
    monkeypatch.undo()
    assert [x.number for x in a.batches("s")] == [1]
    assert b.create_batch("s", "search", "search", {}).number == 2  # a fresh look succeeds
    assert a.create_batch("other", "search", "search", {}).number == 1  # numbers are per study


def test_set_parent_run_keeps_the_first(store):
    b = _batch(store)
    assert store.set_parent_run(b.id, "run-a") == "run-a"
    assert store.set_parent_run(b.id, "run-b") == "run-a"


# ---------------------------------------------------------------- the batch lock


def test_one_batch_lock_holder_at_a_time_and_who_holds_it_is_recorded(store):
    b = _batch(store)
    first, second = BatchLock(store, b.id), BatchLock(store, b.id)
    assert first.try_acquire() and first.held
    assert not second.try_acquire()  # even from the same process: the lock is per holder
    assert store.driver(b.id)["pid"] == os.getpid()
    assert BatchLock(store, _batch(store, study="t").id).try_acquire()  # other batches are free
    first.release()
    assert store.driver(b.id) is None
    assert second.try_acquire()
    second.release()


@pytest.mark.component
def test_the_kernel_releases_the_lock_of_a_killed_holder(tmp_path):
    """SIGKILL leaves no chance to clean up: the next command still gets the lock at once."""
    path = str(tmp_path / "journal.log")
    store = JobStore(path)
    b = _batch(store)
    code = (
        "import sys, time; from bench.engine.store import JobStore; "
        "from bench.engine.lock import BatchLock; "
        f"lock = BatchLock(JobStore({path!r}), {b.id}); assert lock.try_acquire(); "
        "print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = BatchLock(store, b.id)
        assert not mine.try_acquire()
        assert store.driver(b.id)["pid"] == holder.pid  # what a waiting command prints
        holder.kill()
        holder.wait(timeout=30)
        assert mine.try_acquire()
        mine.release()
    finally:
        holder.kill()


# ---------------------------------------------------------------- opening a batch


def _open(store, calls, specs=3, identity="search", join_done=False):
    def start_parent(batch):
        calls.append(("start", batch.number))
        return f"run-{batch.number}-{len(calls)}"

    return open_batch(
        store,
        "s",
        "search",
        identity,
        {"n": specs},
        lambda settings: _specs(settings["n"]),
        start_parent,
        _Tracker(calls),
        join_done=join_done,
    )


class _Tracker:
    """What open_batch asks of the tracking store: find a parent run by tag, drop a loser."""

    def __init__(self, calls, found=()):
        self.calls, self.found = calls, list(found)

    def find_runs(self, tags):
        self.calls.append(("find", tuple(tags.items())))
        return self.found

    def delete_run(self, run_id):
        self.calls.append(("drop", run_id))


def test_open_batch_creates_then_joins_then_opens_the_next(store):
    calls = []
    b1, created = _open(store, calls)
    assert created and b1.number == 1 and b1.state == "running" and b1.parent_run_id
    assert len(store.jobs(b1.id)) == 3
    again, created = _open(store, calls)
    assert not created and again.id == b1.id
    assert [c for c in calls if c[0] != "find"] == [("start", 1)]
    # the parent run is looked up by the batch's random id, never by its number
    assert calls[0] == ("find", (("bench_batch", b1.settings["uid"]),))
    assert store.finish_batch(b1.id, {})
    b2, created = _open(store, calls)
    assert created and b2.number == 2 and b2.settings["uid"] != b1.settings["uid"]


def test_open_batch_continues_an_opening_batch_left_by_a_dead_opener(store):
    # a dead opener got as far as the row, its parent run and one job
    dead = store.create_batch("s", "search", "search", {"n": 3})
    store.set_parent_run(dead.id, "run-of-the-dead")
    store.add_jobs(dead.id, _specs(1))
    calls = []
    batch, created = _open(store, calls)
    assert not created and batch.id == dead.id and batch.number == 1
    assert batch.state == "running" and batch.parent_run_id == "run-of-the-dead"
    assert calls == []  # no second parent run (and no lookup: the row names its run)
    assert [j.key for j in store.jobs(batch.id)] == [s.key for s in _specs(3)]
    assert [b.number for b in store.batches("s")] == [1]


def test_open_batch_adopts_a_parent_run_the_dead_opener_created(store):
    store.create_batch("s", "search", "search", {"n": 2})
    batch, created = open_batch(
        store, "s", "search", "search", {"n": 2}, lambda st: _specs(st["n"]),
        lambda b: pytest.fail("a second parent run was started"),
        _Tracker([], found=["found-run"]),
    )  # fmt: skip
    assert batch.parent_run_id == "found-run" and batch.state == "running"


def test_open_batch_from_two_threads_opens_one_batch(tmp_path):
    path = str(tmp_path / "journal.log")
    out = []

    def go():
        s = JobStore(path)
        out.append(_open(s, [])[0])

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({b.id for b in out}) == 1
    assert len(JobStore(path).jobs(out[0].id)) == 3


def test_a_peer_that_opens_a_batch_between_look_and_create_is_joined_not_doubled(tmp_path):
    # the interleaving the threads above hit only by chance: this caller saw no batch, then a
    # peer opened (and started) batch 1 before this caller inserted; it must join batch 1
    path = str(tmp_path / "journal.log")
    mine, peer = JobStore(path), JobStore(path)
    real = mine.latest_batch
    looked = []

    def latest_then_a_peer_opens(*args):
        seen = real(*args)
        if not looked:
            looked.append(seen)
            _open(peer, [])
        return seen

    mine.latest_batch = latest_then_a_peer_opens
    batch, created = _open(mine, [])
    assert looked == [None]  # the race happened: nothing seen, then the peer's batch appeared
    assert not created and batch.number == 1
    assert [b.number for b in mine.batches("s")] == [1]


def test_a_job_reaped_for_good_is_synced_so_nothing_waits_on_it(store):
    # an unsynced failed job once hung every worker: nothing but its dead owner could clear it
    b = _batch(store)
    store.add_jobs(b.id, _specs(2))
    token, elsewhere = _owner()
    job = store.take(b.id, token, elsewhere)
    assert store.reap(job, FAILED, "worker other-host:4242 died (3 attempts)")
    failed = store.get_job(job.id)
    assert failed.state == FAILED and failed.synced
    # a job sent back to waiting is not synced: its next attempt's result still needs mirroring
    again = store.take(b.id, token, elsewhere)
    assert store.reap(again, WAITING, "worker died")
    assert not store.get_job(again.id).synced


def test_release_gives_back_the_attempt_its_take_counted(store):
    # Ctrl-C and registration outages release a job; only a worker's death (a reap) may use up
    # one of its MAX_ATTEMPTS, or three interrupts would fail a job that never crashed
    b = _batch(store)
    store.add_jobs(b.id, _specs(1))
    token, owner = _owner()
    for reason in ("interrupted by the user", "registration failed: down", "interrupted"):
        job = store.take(b.id, token, owner)
        assert job.attempts == 1
        assert store.release(job.id, token, reason)
        assert store.get_job(job.id).attempts == 0
    job = store.take(b.id, token, owner)
    assert store.reap(job, WAITING, "worker died")
    assert store.take(b.id, token, owner).attempts == 2  # the death counted


def test_a_done_batch_stays_unmirrored_until_its_mirror_is_complete(store):
    b = _batch(store)
    store.set_batch_state(b.id, "running", expect="opening")
    assert store.unmirrored("s") == []  # running: not done yet
    assert store.finish_batch(b.id, {})
    assert [x.id for x in store.unmirrored("s")] == [b.id]
    assert store.unmirrored("another study") == []
    store.set_mirrored(b.id)
    assert store.unmirrored("s") == []


def test_a_store_made_before_the_mirrored_flag_gains_it(tmp_path):
    import sqlalchemy as sa

    url = store_url(str(tmp_path / "journal.log"))
    engine = sa.create_engine(url)
    with engine.begin() as c:  # the bench_batches table as bench 5e6d82b created it
        c.execute(sa.text(
            "CREATE TABLE bench_batches (id INTEGER PRIMARY KEY, study VARCHAR(512) NOT NULL, "
            "number INTEGER NOT NULL, design VARCHAR(32) NOT NULL, identity VARCHAR(128) NOT "
            "NULL, state VARCHAR(16) NOT NULL, settings TEXT NOT NULL, parent_run_id "
            "VARCHAR(64), summary TEXT, created FLOAT NOT NULL)"
        ))  # fmt: skip
        c.execute(sa.text(
            "INSERT INTO bench_batches (study, number, design, identity, state, settings, "
            "parent_run_id, created) VALUES ('s', 1, 'search', 'search', 'done', '{}', 'r', 0)"
        ))  # fmt: skip
    engine.dispose()
    store = JobStore(str(tmp_path / "journal.log"))
    assert store.unmirrored("s") == []  # a batch done before the flag: left alone
    b = _batch(store)
    store.set_batch_state(b.id, "running")
    assert store.finish_batch(b.id, {})
    assert [x.number for x in store.unmirrored("s")] == [2]
    store.dispose()


def test_open_batch_refuses_to_join_a_batch_opened_on_other_data(store):
    from bench.errors import BenchError

    def go(digest):
        return open_batch(
            store, "s", "search", "search", {"n": 1, "dataset": "idx", "dataset_digest": digest},
            lambda st: _specs(st["n"]), lambda b: f"run-{b.number}", _Tracker([]),
        )  # fmt: skip

    batch, created = go("aaaa1111")
    assert created
    with pytest.raises(BenchError) as err:
        go("bbbb2222")
    message = str(err.value)
    assert "aaaa1111" in message and "bbbb2222" in message and "\n" not in message
    assert [b.number for b in store.batches("s")] == [1]  # nothing opened, nothing joined
    assert [j.attempts for j in store.jobs(batch.id)] == [0]
    assert go("aaaa1111") == (store.get_batch(batch.id), False)  # the same data joins
