"""The Optuna adapter: its functions on a temporary journal storage, and no internal studies.

Unit tests need no TensorFlow. The last test runs two real searches and a re-evaluation and checks
that Optuna (and so optuna-dashboard) lists only the study the user named.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench import optuna_adapter as opt
from bench.errors import BenchError
from bench.records import STUDY_SPACE, TRIAL_JOB
from bench.space import load_space
from tests.conftest import run_module


@pytest.fixture
def space():
    return load_space("smoke")


@pytest.fixture
def journal(tmp_path):
    return str(tmp_path / "optuna-studies.log")


def test_open_study_records_the_space_and_refuses_another(journal, space, tmp_path):
    study = opt.open_study("s", journal, space, seed=0)
    assert opt.study_attrs(study)[STUDY_SPACE] == space.search_hash
    assert opt.direction(study) == space.direction
    again = opt.open_study("s", journal, space)  # same space: loads it
    assert again.study_name == "s"

    changed = tmp_path / "changed.yaml"
    changed.write_text(
        Path(space.path).read_text(encoding="utf-8").replace("high: 64", "high: 128")
    )
    other = load_space(changed)
    with pytest.raises(BenchError, match="different search space"):
        opt.open_study("s", journal, other)
    opt.open_study("s", journal, other, allow_space_change=True)
    assert opt.study_attrs(opt.load_study("s", journal))[STUDY_SPACE] == other.search_hash


def test_load_study_names_the_studies_there_are(journal, space):
    opt.open_study("mine", journal, space)
    with pytest.raises(BenchError, match="no such study.*mine"):
        opt.load_study("missing", journal)
    assert opt.study_names(journal) == ["mine"]


def test_storage_errors_are_one_line_bench_errors(tmp_path):
    with pytest.raises(BenchError, match="not writable|missing"):
        opt.make_storage(str(tmp_path / "no-such-folder" / "j.log"))
    bad = tmp_path / "corrupt.log"
    # a damaged line followed by a good one (a torn last line alone is skipped by Optuna)
    bad.write_text('{"op_code": 0, "worker_id": "x"\n{"op_code": 99}\n')
    with pytest.raises(BenchError, match="corrupt"):
        opt.open_study("s", str(bad), load_space("smoke"))
    with pytest.raises(BenchError, match="malformed|driver"):
        opt.make_storage("nosuchdialect://x")


def test_ask_report_prune_tell_and_read_back(journal, space):
    study = opt.open_study("s", journal, space, seed=0)
    live = opt.ask(study, space, seed=1)
    config = live.suggest(space)
    assert set(config) >= {"optimizer", "learning_rate", "units"}
    live.set_attrs({TRIAL_JOB: [1, 1], "bench.note": "x"})
    live.report(0.5, 0)
    assert not live.should_prune()  # the first trial is never pruned (n_startup_trials)
    assert opt.trial_state(study, live.number) == "RUNNING"
    assert opt.tell(study, live.number, "COMPLETE", 0.9)
    assert not opt.tell(study, live.number, "FAIL")  # already finished: False, no raise
    assert opt.trial_state(study, live.number) == "COMPLETE"
    assert opt.trial_state(study, 99) is None
    assert opt.best_value(study) == 0.9

    views = opt.trials(study)
    assert [(v.number, v.state, v.value) for v in views] == [(0, "COMPLETE", 0.9)]
    assert views[0].user_attrs[TRIAL_JOB] == [1, 1] and views[0].intermediate == {0: 0.5}
    params, dists = opt.trial_params(study, live.number)
    assert params == live.params()[0] and set(dists) == set(params)


def test_different_seeds_sample_different_configurations(journal, space):
    study = opt.open_study("s", journal, space, seed=0)
    a, b = opt.ask(study, space, seed=1), opt.ask(study, space, seed=2)
    first = a.suggest(space)
    assert first != b.suggest(space)
    # the same seed on the same (empty) history draws the same configuration
    draws = [
        opt.ask(opt.open_study(name, journal, space, seed=0), space, seed=1).suggest(space)
        for name in ("t", "u")
    ]
    assert draws[0] == draws[1]


def test_add_finished_adds_a_trial_with_the_same_parameters(journal, space):
    study = opt.open_study("s", journal, space, seed=0)
    live = opt.ask(study, space, seed=1)
    live.suggest(space)
    opt.tell(study, live.number, "FAIL")
    params, dists = opt.trial_params(study, live.number)
    number = opt.add_finished(study, "COMPLETE", 0.8, params, dists, {TRIAL_JOB: [1, 7]}, {0: 0.7})
    added = [t for t in opt.trials(study) if t.number == number][0]
    assert added.state == "COMPLETE" and added.value == 0.8 and added.params == params
    assert added.intermediate == {0: 0.7}
    pruned = opt.add_finished(study, "PRUNED", 0.3, None, None, {TRIAL_JOB: [1, 8]})
    assert opt.trial_state(study, pruned) == "PRUNED"
    assert [v.state for v in opt.trials(study, ("COMPLETE", "PRUNED"))] == ["COMPLETE", "PRUNED"]
    assert [v.state for v in opt.trials(study, ("FAIL",))] == ["FAIL"]


def test_no_trial_is_ever_enqueued_as_waiting(journal, space):
    """ask() must never hand one worker a configuration another worker is meant to train."""
    study = opt.open_study("s", journal, space, seed=0)
    for seed in range(3):
        live = opt.ask(study, space, seed)
        live.suggest(space)
        opt.tell(study, live.number, "COMPLETE", 0.5 + seed / 10)
    assert not opt.trials(study, ("WAITING",))


def test_adapter_works_on_an_rdb_storage_too(tmp_path, space):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = opt.open_study("s", url, space, seed=0)
    live = opt.ask(study, space, 0)
    live.suggest(space)
    assert opt.tell(study, live.number, "PRUNED")
    assert opt.study_names(url) == ["s"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras to train")
def test_only_the_users_study_is_listed_after_searches_and_a_reevaluation(tmp_path):
    import optuna

    search = ["--dataset", "digits", "--space", "smoke", "--trials", "3", "--jobs", "1"]
    for _ in range(2):
        proc = run_module("bench.search", *search, "--quiet", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    reeval = run_module(
        "bench.reevaluate", "--study-name", "digits-smoke", "--top-k", "2", "--seeds", "2",
        "--jobs", "1", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert reeval.returncode == 0, reeval.stderr[-3000:]
    assert "re-evaluated configurations" in reeval.stdout, reeval.stdout[-3000:]
    # the report's --reevaluate is the same batch: it joins the finished one, trains nothing
    report = run_module(
        "bench.report", "--study-name", "digits-smoke", "--reevaluate", "--top-k", "2",
        "--seeds", "2", "--quiet", "--no-mlflow", cwd=tmp_path,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "already re-evaluated in batch 3" in report.stderr, report.stderr[-3000:]
    assert "re-evaluated configurations" in report.stdout, (reeval.stdout, report.stdout)
    storage = opt.make_storage(str(tmp_path / "optuna-studies.log"))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert names == ["digits-smoke"]
    study = optuna.load_study(study_name="digits-smoke", storage=storage)
    batches = {t.user_attrs.get("bench.batch_id") for t in study.trials}
    assert {1, 2} <= batches  # both searches are in the one study


def test_importances_at_the_equal_budget_count_pruned_trials_and_carry_intervals():
    """Issue #19, item 4: the parameter that decides the value ranks first, with an interval
    that holds its point estimate, and pruned trials count beside completed ones."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState

    from bench.optuna_adapter.plots import importances_at_budget

    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True),
             "opt": CategoricalDistribution(["adam", "sgd"])}  # fmt: skip
    values = {}
    for i in range(30):
        params = {"lr": float(10 ** rng.uniform(-4, -1)), "opt": ["adam", "sgd"][i % 2]}
        at_budget = 0.9 - 0.1 * abs(np.log10(params["lr"]) + 2.5) + rng.normal(0, 0.002)
        state = TrialState.PRUNED if i % 3 == 0 else TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=state, value=None if state == TrialState.PRUNED else at_budget + 0.01,
            params=params, distributions=dists, intermediate_values={1: at_budget},
        ))  # fmt: skip
        values[i] = at_budget
    got, n = importances_at_budget(study, values, n_boot=20)
    assert n == 30  # the 10 pruned trials are in
    assert set(got) == {"lr", "opt"}
    lr, opt = got["lr"], got["opt"]
    assert lr[0] > 0.8 > opt[0]
    assert lr[1] <= lr[0] <= lr[2] and opt[1] <= opt[0] <= opt[2]
    assert importances_at_budget(study, values, n_boot=20) == (got, n)  # seeded: repeatable
    assert importances_at_budget(study, {0: 0.5}, n_boot=5) == ({}, 1)


def test_the_global_designs_draws_and_evaluators_on_this_optuna(space):
    """Issue #19, item 3, through the adapter (so CI runs it on the lowest declared Optuna too):
    QMC draws are seeded and complete; both evaluators answer for every varied parameter."""
    from bench.optuna_adapter.importance import evaluate, qmc_draws

    draws = qmc_draws(space, 12, seed=0)
    assert draws == qmc_draws(space, 12, seed=0) and len(draws) == 12
    for d in draws:
        n = d["config"]["n_layers"]
        assert d["config"]["units"] == [d["params"][f"units_{i}"] for i in range(n)]
        assert set(d["distributions"]) == set(d["params"])
    rows = [(0.5 + 0.1 * (d["config"]["optimizer"] == "adam"), d["params"], d["distributions"])
            for d in draws]  # fmt: skip
    fanova = evaluate("fanova", rows, seed=0)
    assert fanova["optimizer"] == max(fanova.values()) > 0.5  # the one factor the scores follow
    ped = evaluate("ped-anova", rows, seed=0)
    assert {"optimizer", "learning_rate", "normalization"} <= set(ped)
    assert all(v >= 0 for v in ped.values())


def test_sampler_gamma_is_the_good_fraction_and_survives_pickling(space):
    import dataclasses
    import pickle

    tuned = dataclasses.replace(space, sampler=dataclasses.replace(space.sampler, gamma=0.25))
    sampler = pickle.loads(pickle.dumps(opt.make_sampler(tuned, seed=0)))
    # the best quarter of the finished trials, at least 1 and at most 25 (Optuna's cap)
    assert [sampler._gamma(n) for n in (1, 10, 50, 200)] == [1, 3, 13, 25]
    assert not isinstance(opt.make_sampler(space, seed=0)._gamma, opt._Gamma)  # Optuna's own
