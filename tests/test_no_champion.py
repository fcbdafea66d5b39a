"""A batch that was to register a champion and could not says so and exits 1 (never a silent 0).

Component tier: a real job store in ``tmp_path`` driven by the real driver loop with a fake
executor that records each job's outcome as a slot would, then the search command's own summary
step; no training.
"""

from __future__ import annotations

import pytest

from bench import optuna_adapter as opt
from bench.designs.search import SearchDesign
from bench.engine.driver import print_outcome, run_batch
from bench.engine.interrupts import Interrupts
from bench.engine.ledger import Ledger
from bench.engine.store import JobStore
from bench.errors import EXIT_FAILURE
from bench.records import COMPLETED, DIVERGED, DONE, REEVAL, REFIT, SEARCH, JobResult
from bench.space import load_space
from tests.fake_executor import FakeExecutor, FakeTracker


@pytest.fixture
def store(tmp_path):
    s = JobStore(str(tmp_path / "journal.log"))
    s.journal = str(tmp_path / "journal.log")  # the Optuna storage beside it
    yield s
    s.dispose()


def _run_batch(store, settings, outcome) -> object:
    """Create a search batch, finish each job as ``outcome(spec)`` says, stage after stage."""
    batch = store.create_batch("s", "search", "search", settings)
    store.set_batch_state(batch.id, "running")
    design = SearchDesign(settings)
    store.add_jobs(batch.id, design.initial_jobs())
    space = load_space("smoke")
    study = opt.open_study("s", store.journal, space, 0)
    ledger = Ledger(store, batch, study, FakeTracker(), space.metric)
    executor = FakeExecutor(store, 1, lambda job: outcome(job.spec))
    assert run_batch(store, batch, design, 10, ledger, executor, Interrupts()) == 0
    return store.get_batch(batch.id)


def _outcome(spec):
    config = {"units": [8 + spec.seed]}
    if spec.purpose == SEARCH:
        return JobResult(COMPLETED, 0.5 + spec.seed / 100, 3, 4, 1.0, 10, 1.0, config)
    assert spec.purpose == REFIT
    return JobResult(DIVERGED, None, 0, 1, 1.0, 10, 1.0, spec.config, reason="loss is nan")


@pytest.mark.parametrize("ensemble", [1, 2])
def test_refits_that_all_diverge_exit_1_with_the_reason(store, capsys, ensemble):
    settings = {"seed": 0, "n_trials": 4, "ensemble": ensemble, "refit": True}
    batch = _run_batch(store, settings, _outcome)
    refits = [j for j in store.jobs(batch.id) if j.purpose == REFIT]
    # a single refit falls back to the next choices (three tries); an ensemble's members all fail
    assert len(refits) == (3 if ensemble == 1 else 2)
    rc = _print_outcome(store, batch)
    err = capsys.readouterr().err
    assert rc == EXIT_FAILURE
    assert "error: no champion registered:" in err and "diverged" in err


def _print_outcome(store, batch, maximize=True) -> int:
    return print_outcome(
        store, batch, None, "sqlite:///x.db", "x.log", ("search",), 1.0, 0, None, maximize=maximize
    )


def _reevals_diverge(spec):
    if spec.purpose == REEVAL:
        return JobResult(DIVERGED, None, 0, 1, 1.0, 10, 1.0, spec.config, reason="loss is nan")
    return _outcome(spec)


def test_reevaluations_that_all_diverge_finish_the_batch_and_exit_1(store, capsys):
    # the summary of a configuration with no completed seed used to raise (mean of nothing):
    # the last worker crashed and the batch stayed running, every rerun crashing the same way
    settings = {"seed": 0, "n_trials": 4, "ensemble": 1, "refit": True, "reeval_top_k": 2,
                "reeval_seeds": 2}  # fmt: skip
    batch = _run_batch(store, settings, _reevals_diverge)
    assert batch.state == DONE
    jobs = store.jobs(batch.id)
    assert sum(j.purpose == REEVAL for j in jobs) == 4 and not any(j.purpose == REFIT for j in jobs)
    rows = batch.summary["reeval"]
    assert sorted((r["seeds"], r["failed_seeds"], r["val_mean"]) for r in rows) == [
        (0, 2, None),
        (0, 2, None),
    ]
    rc = _print_outcome(store, batch)
    err = capsys.readouterr().err
    assert rc == EXIT_FAILURE
    assert "error: no champion registered:" in err and "re-evaluat" in err


@pytest.mark.parametrize("maximize", [True, False])
def test_the_outcome_lists_the_best_jobs_in_the_metrics_direction(store, capsys, maximize):
    settings = {"seed": 0, "n_trials": 4, "ensemble": 1, "refit": True}
    batch = _run_batch(store, settings, _outcome)
    _print_outcome(store, batch, maximize=maximize)
    table = [line.split() for line in capsys.readouterr().out.splitlines() if "search-" in line]
    # search values are 0.5 + seed / 100: a loss (minimized) lists the lowest first
    order = ["search-0000", "search-0001", "search-0002", "search-0003"]
    assert [row[0] for row in table] == (order[::-1] if maximize else order)
