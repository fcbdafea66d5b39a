"""Unit: the driver's loop with a fake executor (no TensorFlow, no MLflow, no subprocess).

The driver alone starts attempts, reaps the ones whose slot died (the retry policy), retires
slots that refuse work, asks the design for the next stage and finishes the batch; a late write
from an attempt it gave up is refused by the store.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import optuna_adapter as opt
from bench.designs.search import SearchDesign
from bench.engine.driver import run_batch
from bench.engine.interrupts import Interrupts
from bench.engine.ledger import MAX_ATTEMPTS, Ledger
from bench.engine.store import JobStore
from bench.records import (
    COMPLETED,
    DONE,
    FAILED,
    RUNNING,
    SEARCH,
    TRIAL_BATCH,
    TRIAL_JOB,
    WAITING,
    JobResult,
)
from bench.space import load_space
from tests.fake_executor import FakeExecutor, FakeTracker

pytestmark = pytest.mark.unit
SETTINGS = {"seed": 0, "n_trials": 4, "ensemble": 1, "refit": False, "register": False}


@pytest.fixture
def world(tmp_path):
    journal = str(tmp_path / "journal.log")
    store = JobStore(journal)
    space = load_space("smoke")
    study = opt.open_study("s", journal, space, 0, record_space=False)
    yield store, study, space
    store.dispose()


def _open(store, settings=SETTINGS):
    batch = store.create_batch("s", "search", "search", settings)
    store.set_batch_state(batch.id, "running")
    design = SearchDesign(settings)
    store.add_jobs(batch.id, design.initial_jobs())
    return store.get_batch(batch.id), design


def _result(job):
    return JobResult(COMPLETED, 0.5 + job.spec.seed / 100, 1, 2, 0.1, 10, 1.0, {"units": [8]})


def _drive(store, study, space, batch, design, executor, deadline=None):
    ledger = Ledger(store, batch, study, FakeTracker(), space.metric)
    ledger.recover()
    return run_batch(store, batch, design, 3, ledger, executor, Interrupts(), deadline=deadline)


def test_every_job_runs_once_on_free_slots_and_the_batch_finishes(world):
    store, study, space = world
    batch, design = _open(store)
    executor = FakeExecutor(store, 2, _result)
    assert _drive(store, study, space, batch, design, executor) == 0
    jobs = store.jobs(batch.id)
    assert [j.state for j in jobs] == [DONE] * 4 and all(j.attempts == 1 for j in jobs)
    assert sorted(job for _, job, _ in executor.handed) == sorted(j.id for j in jobs)
    assert len({token for *_, token in executor.handed}) == 4  # a fresh token per attempt
    assert {slot for slot, *_ in executor.handed} == {0, 1}
    done = store.get_batch(batch.id)
    assert done.state == DONE and done.summary["finished"] == 4
    assert executor.started == 1 and executor.stopped >= 1


def test_a_job_that_kills_its_slot_every_time_fails_after_3_attempts_and_is_replaced(world):
    store, study, space = world
    batch, design = _open(store, {**SETTINGS, "max_failures": 1})
    deadly = {store.jobs(batch.id)[1].key}
    executor = FakeExecutor(
        store, 2, _result, behave=lambda job: "die" if job.key in deadly else "done"
    )
    assert _drive(store, study, space, batch, design, executor) == 0
    jobs = {j.key: j for j in store.jobs(batch.id)}
    (key,) = deadly
    assert jobs[key].state == FAILED and jobs[key].attempts == MAX_ATTEMPTS
    assert jobs[key].synced and "not retried again" in jobs[key].reason
    assert [j for _, j, _ in executor.handed].count(jobs[key].id) == MAX_ATTEMPTS
    search = [j for j in jobs.values() if j.purpose == SEARCH]
    assert len(search) == 5 and sum(j.state == DONE for j in search) == 4  # one replacement
    assert store.get_batch(batch.id).state == DONE


def test_an_attempt_given_up_cannot_write_late(world):
    """A frozen slot (SIGSTOP, a partitioned node) is declared lost: its job is retried on
    another slot and the frozen attempt's late result, trial number or run id are refused."""
    store, study, space = world
    batch, design = _open(store, {**SETTINGS, "n_trials": 2})
    first = store.jobs(batch.id)[0].key
    executor = FakeExecutor(store, 2, _result)
    frozen_once = []

    def behave(job):
        if job.key == first and not frozen_once:
            frozen_once.append(job)
            return "freeze"
        return "done"

    executor.behave = behave
    original_wait = executor.wait

    def wait(timeout):
        out = original_wait(timeout)
        if executor.frozen and not out:
            executor.lose(next(iter(executor.frozen)))
        return out

    executor.wait = wait
    assert _drive(store, study, space, batch, design, executor) == 0
    stale_token = next(t for _, j, t in executor.handed if j == frozen_once[0].id)
    job = store.get_job(frozen_once[0].id)
    assert job.state == DONE and job.attempts == 2 and job.synced
    late = JobResult(COMPLETED, 0.99, 1, 2, 0.1, 10, 1.0, {"units": [99]})
    assert not store.owns(job.id, stale_token)
    assert not store.finish(job.id, stale_token, DONE, late)
    assert not store.update_owned(job.id, stale_token, run_id="late-run")
    assert store.get_job(job.id).result == _result(job) and store.get_job(job.id).run_id is None


def test_a_slot_that_refuses_work_is_retired_and_the_others_finish(world):
    store, study, space = world
    batch, design = _open(store)
    refused = []

    def behave(job):
        if not refused:
            refused.append(job.key)
            return "error"
        return "done"

    executor = FakeExecutor(store, 2, _result, behave=behave)
    assert _drive(store, study, space, batch, design, executor) == 1
    jobs = store.jobs(batch.id)
    assert all(j.state == DONE for j in jobs)
    retired = next(slot for slot, *_ in executor.handed)
    assert all(slot != retired for slot, *_ in executor.handed[1:])  # never handed work again
    released = next(j for j in jobs if j.key == refused[0])
    assert released.attempts == 1  # a release is not a death


def test_when_every_slot_refuses_the_batch_stays_open_for_a_rerun(world):
    store, study, space = world
    batch, design = _open(store)
    executor = FakeExecutor(store, 2, _result, behave=lambda job: "error")
    assert _drive(store, study, space, batch, design, executor) == 2
    assert store.get_batch(batch.id).state == RUNNING
    assert all(j.state == WAITING for j in store.jobs(batch.id))


def test_no_attempt_starts_after_the_deadline(world):
    store, study, space = world
    batch, design = _open(store)
    executor = FakeExecutor(store, 2, _result)
    assert _drive(store, study, space, batch, design, executor, deadline=0.0) == 0
    assert executor.handed == [] and store.get_batch(batch.id).state == RUNNING


def test_a_new_driver_reaps_what_a_dead_driver_left_running_and_mirrors_what_it_recorded(world):
    store, study, space = world
    batch, design = _open(store)
    a, b = store.jobs(batch.id)[:2]
    # the previous driver's slots: one died mid-job, one recorded its result and died unsynced
    store.take(batch.id, "dead-1", {"slot": 0, "host": "old", "pid": 1})
    store.take(batch.id, "dead-2", {"slot": 1, "host": "old", "pid": 2})
    assert store.finish(b.id, "dead-2", DONE, _result(b))
    ledger = Ledger(store, batch, study, FakeTracker(), space.metric)
    ledger.recover()
    a, b = store.get_job(a.id), store.get_job(b.id)
    assert a.state == WAITING and a.attempts == 1 and "driver stopped" in a.reason
    assert b.state == DONE and b.synced and b.attempts == 1  # kept, not trained again
    complete = [t for t in opt.trials(study) if t.state == "COMPLETE"]
    assert [t.value for t in complete] == [_result(b).value]  # mirrored into Optuna once


def test_every_job_purpose_has_one_runner_and_only_training_asks_the_sampler():
    from bench.engine.worker import RUNNERS, Worker
    from bench.records import BASELINE, PURPOSES, REFIT

    assert set(RUNNERS) == set(PURPOSES)  # a purpose without a row would fail mid-batch
    assert [p for p, r in RUNNERS.items() if r.asks_sampler] == [SEARCH]
    # the test set is scored for reporting on every purpose but the search (selection) itself
    assert [p for p, r in RUNNERS.items() if not r.test_scored] == [SEARCH]
    assert {p for p, r in RUNNERS.items() if r.steps is Worker.train} >= {SEARCH, BASELINE, REFIT}
    assert RUNNERS[REFIT].then is not None  # a refit registers before its result is recorded


def test_a_job_redone_after_deaths_keeps_one_finished_trial_despite_an_orphan(world):
    """Attempt 1 asked Optuna for a trial and died before recording its number (the trial is an
    orphan, still RUNNING); attempt 2 asked another and died (reaped: FAIL); attempt 3 trains the
    same configuration and records it. Its sync must add a finished trial: the orphan of attempt
    1 is not one (found by the Ray kill-point test, where the orphan is failed only later)."""
    store, study, space = world
    batch, design = _open(store, {**SETTINGS, "n_trials": 1})
    job = store.jobs(batch.id)[0]
    ledger = Ledger(store, batch, study, FakeTracker(), space.metric)
    ref = {TRIAL_JOB: [batch.id, job.id], TRIAL_BATCH: batch.number}

    orphan = opt.ask(study, space, job.spec.seed)  # attempt 1: asked, then died at "take"
    orphan.set_attrs(ref)
    assert ledger.reap(store.take(batch.id, "t1", {"slot": 0}), "died") is True
    second = opt.ask(study, space, job.spec.seed)  # attempt 2: asked, recorded, died
    second.set_attrs(ref)
    taken = store.take(batch.id, "t2", {"slot": 0})
    config = second.suggest(space)
    store.update_owned(taken.id, "t2", trial_number=second.number)
    store.update_owned(taken.id, "t2", spec=replace(taken.spec, config=config))
    assert ledger.reap(store.get_job(taken.id), "died") is True
    assert opt.trial_state(study, second.number) == "FAIL"

    store.take(batch.id, "t3", {"slot": 1})  # attempt 3: same configuration, no new trial
    assert store.finish(job.id, "t3", DONE, _result(store.get_job(job.id)))
    ledger.sync(store.get_job(job.id), "t3")
    assert opt.trial_state(study, orphan.number) == "RUNNING"  # failed later, by the driver
    finished = [t for t in opt.trials(study, ("COMPLETE",)) if t.user_attrs.get(TRIAL_JOB)]
    assert len(finished) == 1 and finished[0].user_attrs[TRIAL_JOB] == [batch.id, job.id]
    # the configuration attempt 2 drew (and attempt 3 trained), under the finished trial
    assert finished[0].params == opt.trials(study)[second.number].params
    ledger.fail_orphan_trials(asking=False)
    assert opt.trial_state(study, orphan.number) == "FAIL"
    assert len(opt.trials(study, ("COMPLETE",))) == 1
