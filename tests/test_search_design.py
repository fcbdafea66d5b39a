"""The search design's stages as pure functions: which jobs come next, from stored jobs alone.

No training and no stores: jobs are built by hand, the way the job store returns them.
"""

from __future__ import annotations

import pytest

from bench.designs.search import SearchDesign
from bench.records import (
    ALL,
    COMPLETED,
    DIVERGED,
    DONE,
    ENSEMBLE,
    FAILED,
    PRUNED,
    REEVAL,
    REFIT,
    REGISTER,
    SEARCH,
    BatchSettings,
    BatchSummary,
    Job,
    JobResult,
    JobSpec,
    check_keys,
    is_ensemble,
)


def _search(i: int, value: float | None, status: str = COMPLETED, best_epoch: int = 9) -> Job:
    config = {"units": [64 + i], "learning_rate": 0.001 * (i + 1)}
    result = JobResult(status, value, best_epoch, best_epoch + 1, 1.0, 10, 1.0, config,
                       model_uri=f"models:/m-{i}")  # fmt: skip
    spec = JobSpec(key=f"search-{i:04d}", purpose=SEARCH, seed=i, config=config)
    return Job(i + 1, 1, spec, DONE, attempts=1, result=result, synced=True)


def _done(spec: JobSpec, job_id: int, epochs: int, test: float, state: str = DONE) -> Job:
    status = COMPLETED if state == DONE else "failed"
    result = JobResult(status, None, epochs - 1, epochs, 1.0, 10, 1.0, spec.config or {},
                       test_accuracy=test, model_uri=f"models:/refit-{job_id}")  # fmt: skip
    return Job(job_id, 1, spec, state, attempts=1, result=result, synced=True)


SEARCHED = [
    _search(0, 0.80),
    _search(1, 0.91, best_epoch=20),
    _search(2, 0.95, PRUNED),  # pruned: never chosen, whatever its last score
    _search(3, 0.90, best_epoch=30),
    _search(4, 0.85),
]


def _design(**settings) -> SearchDesign:
    return SearchDesign({"seed": 0, "refit": True, "register": True, **settings})


def test_the_two_best_completed_configurations_are_refit_as_members():
    specs = _design(ensemble=2).next_jobs(SEARCHED, max_epochs=36)
    assert [s.key for s in specs] == ["refit", "refit-1"]
    assert [s.info["source"] for s in specs] == ["search-0001", "search-0003"]
    assert [s.info["member"] for s in specs] == [0, 1]
    assert all(s.purpose == REFIT and s.split == ALL for s in specs)
    # each for the epochs its validation run found best, on that run's schedule
    assert [s.train["max_epochs"] for s in specs] == [21, 31]
    assert all(s.train["schedule_epochs"] == 36 for s in specs)
    assert specs[0].config == SEARCHED[1].result.config


def test_once_the_members_are_done_one_job_averages_and_registers_them():
    design = _design(ensemble=2)
    members = design.next_jobs(SEARCHED, 36)
    jobs = SEARCHED + [_done(s, 10 + i, 21 + 10 * i, 0.9 + i / 100) for i, s in enumerate(members)]
    (ensemble,) = design.next_jobs(jobs, 36)
    assert ensemble.key == "ensemble" and ensemble.purpose == ENSEMBLE and is_ensemble(ensemble)
    assert "model_uri" not in ensemble.info  # nothing to load as one: it is built from members
    assert [m["model_uri"] for m in ensemble.info["members"]] == ["models:/refit-10",
                                                                  "models:/refit-11"]  # fmt: skip
    assert ensemble.info["selection_score"] == pytest.approx((0.91 + 0.90) / 2)  # members' mean
    assert ensemble.info["source"] == "search-0001+search-0003"
    assert [m["refit_epochs"] for m in ensemble.info["members"]] == [21, 31]
    done = Job(20, 1, ensemble, DONE, result=JobResult(COMPLETED, 0.905, 0, 0, 0, 0, 0, {}))
    assert design.next_jobs([*jobs, done], 36) == []  # the batch is complete


def test_a_failed_member_leaves_the_other_registered_alone():
    design = _design(ensemble=2)
    a, b = design.next_jobs(SEARCHED, 36)
    jobs = SEARCHED + [_done(a, 10, 21, 0.9), _done(b, 11, 31, 0.0, state=FAILED)]
    (register,) = design.next_jobs(jobs, 36)
    assert register.key == "ensemble" and register.info["model_uri"] == "models:/refit-10"
    assert len(register.info["members"]) == 1


def test_a_member_lost_between_two_inserts_is_added_before_the_ensemble():
    # a crash after "refit" was stored but before "refit-1": the rerun must not register one
    design = _design(ensemble=2)
    first, second = design.next_jobs(SEARCHED, 36)
    missing = design.next_jobs([*SEARCHED, _done(first, 10, 21, 0.9)], 36)
    assert missing == [second]


def test_ensemble_1_and_a_single_completed_trial_refit_one_configuration():
    (one,) = _design(ensemble=1).next_jobs(SEARCHED, 36)
    assert one.key == "refit" and one.info["source"] == "search-0001" and "member" not in one.info
    lone = [_search(0, 0.8), _search(1, 0.9, PRUNED)]
    (refit,) = _design(ensemble=3).next_jobs(lone, 36)
    assert refit.key == "refit" and "member" not in refit.info


def test_no_refit_registers_the_best_search_runs_own_model():
    (register,) = _design(ensemble=2, refit=False).next_jobs(SEARCHED, 36)
    assert register.key == "register" and register.info["model_uri"] == "models:/m-1"


def test_the_summary_names_the_ensemble_and_each_member_alone():
    design = _design(ensemble=2)
    members = design.next_jobs(SEARCHED, 36)
    jobs = SEARCHED + [_done(s, 10 + i, 21 + 10 * i, 0.9 + i / 100) for i, s in enumerate(members)]
    (spec,) = design.next_jobs(jobs, 36)
    registered = {"version": "3", "champion_version": "3", "promoted": True, "reason": "x",
                  "selection_metric": "val_accuracy", "selection_direction": "maximize",
                  "selection_procedure": "p"}  # what register_and_promote returns  # fmt: skip
    result = JobResult(COMPLETED, 0.905, 0, 0, 0, 0, 0, {}, test_accuracy=0.9, test_loss=0.3,
                       model_uri="models:/avg", registered=registered)  # fmt: skip
    summary = design.summary([*jobs, Job(20, 1, spec, DONE, result=result)])
    assert summary["version"] == "3" and summary["refit"] is True
    assert summary["refit_epochs"] == "21+31"
    assert summary["source"] == "search-0001+search-0003"
    assert summary["val_test_gap"] == pytest.approx(0.905 - 0.9)
    assert [m["test_accuracy"] for m in summary["ensemble"]] == [0.9, 0.91]
    check_keys(summary, BatchSummary, "summary")  # every key it writes is declared


def test_an_undeclared_settings_or_summary_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r"undeclared key\(s\) n_trails; declare them in "
                       r"bench.records.BatchSettings"):  # fmt: skip
        check_keys({"seed": 0, "n_trails": 5}, BatchSettings, "search batch settings")
    with pytest.raises(ValueError, match="bench.records.BatchSummary"):
        check_keys({"champion": "3"}, BatchSummary, "summary")


# ---------------------------------------------------------------- failures never choose silently


def _reeval(job_id: int, source: str, seed: int, value: float | None, status: str = COMPLETED,
            state: str = DONE) -> Job:  # fmt: skip
    config = next(j.result.config for j in SEARCHED if j.key == source)
    spec = JobSpec(key=f"reeval-{source}-s{seed}", purpose=REEVAL, seed=seed, config=config,
                   info={"source": source})  # fmt: skip
    result = JobResult(status, value, 9, 10, 1.0, 10, 1.0, config, test_accuracy=value)
    return Job(job_id, 1, spec, state, attempts=1, result=result, synced=True)


def test_a_configuration_that_fails_one_reevaluation_seed_is_not_chosen():
    # search-0001 diverges on 2 of 3 seeds; its one good seed beats search-0003's mean
    jobs = SEARCHED + [
        _reeval(30, "search-0001", 0, 0.99),
        _reeval(31, "search-0001", 1, None, DIVERGED),
        _reeval(32, "search-0001", 2, None, "failed", state=FAILED),
        *(_reeval(33 + s, "search-0003", s, v) for s, v in enumerate([0.90, 0.91, 0.89])),
    ]
    (choice,) = _design(ensemble=1).choices(jobs, 2)
    assert choice.source == "search-0003" and choice.score == pytest.approx(0.90)
    (refit,) = _design(ensemble=1).next_jobs(jobs, 36)
    assert refit.info["source"] == "search-0003"
    assert refit.info["selection"] == "mean over 3 re-evaluation seeds"
    rows = {r["source"]: r for r in _design().summary(jobs)["reeval"]}
    assert rows["search-0001"]["seeds"] == 1 and rows["search-0001"]["failed_seeds"] == 2


def test_when_every_reevaluated_configuration_failed_a_seed_the_summary_says_so():
    jobs = SEARCHED + [_reeval(30, "search-0001", 0, 0.9), _reeval(31, "search-0001", 1, None,
                                                                   DIVERGED)]  # fmt: skip
    design = _design(ensemble=1)
    assert design.next_jobs(jobs, 36) == []
    assert "re-evaluat" in design.summary(jobs)["no_champion"]


def test_a_diverged_refit_falls_back_to_the_next_choice():
    design = _design(ensemble=1)
    (first,) = design.next_jobs(SEARCHED, 36)
    assert first.info["selection"] == "one search run"
    diverged = _done(first, 10, 21, 0.0)
    diverged.result.status = DIVERGED
    (second,) = design.next_jobs([*SEARCHED, diverged], 36)
    assert second.purpose == REFIT and second.key == "refit.1"
    assert second.info["source"] == "search-0003" and "member" not in second.info
    assert second.info["selection_score"] == pytest.approx(0.90)


def test_refits_that_all_diverge_end_with_a_reason_not_a_silent_batch():
    design = _design(ensemble=1, refit_tries=2)
    jobs = list(SEARCHED)
    for i in range(2):
        (spec,) = design.next_jobs(jobs, 36)
        job = _done(spec, 10 + i, 5, 0.0)
        job.result.status = DIVERGED
        jobs.append(job)
    assert design.next_jobs(jobs, 36) == []
    reason = design.summary(jobs)["no_champion"]
    assert "refit" in reason and "search-0001" in reason and "search-0003" in reason


def test_an_ensemble_whose_members_all_diverge_says_so():
    design = _design(ensemble=2)
    a, b = design.next_jobs(SEARCHED, 36)
    jobs = SEARCHED + [_done(a, 10, 21, 0.0), _done(b, 11, 31, 0.0, state=FAILED)]
    jobs[-2].result.status = DIVERGED
    assert design.next_jobs(jobs, 36) == []
    assert "every ensemble member" in design.summary(jobs)["no_champion"]


def test_the_ensemble_states_what_its_selection_score_is():
    design = _design(ensemble=2)
    members = design.next_jobs(SEARCHED, 36)
    jobs = SEARCHED + [_done(s, 10 + i, 21, 0.9) for i, s in enumerate(members)]
    (ensemble,) = design.next_jobs(jobs, 36)
    assert ensemble.info["selection"] == "mean of 2 members' (one search run)"


def test_the_val_test_gap_of_a_loss_compares_losses():
    design = _design(ensemble=1)
    (spec,) = design.next_jobs(SEARCHED, 36)
    registered = {"version": "1", "champion_version": "1", "promoted": True, "reason": "x",
                  "selection_metric": "val_loss"}  # fmt: skip
    spec.info["selection_score"] = 0.30  # a val_loss
    result = JobResult(COMPLETED, 0.30, 0, 21, 0, 0, 0, {}, test_accuracy=0.9, test_loss=0.35,
                       model_uri="models:/r", registered=registered)  # fmt: skip
    summary = design.summary([*SEARCHED, Job(20, 1, spec, DONE, result=result)])
    assert summary["val_test_gap"] == pytest.approx(0.30 - 0.35)


def test_an_ensemble_job_of_an_older_store_is_still_an_ensemble():
    # before the ensemble had its own purpose it was a register job without a model of its own
    old = JobSpec(key="ensemble", purpose=REGISTER, seed=0, info={"members": []})
    plain = JobSpec(key="register", purpose=REGISTER, seed=0, info={"model_uri": "models:/m/1"})
    assert is_ensemble(old) and not is_ensemble(plain)


def test_a_configuration_whose_every_reevaluation_seed_failed_is_summarised_not_a_crash():
    # the last worker summarises the batch: a crash there left it running forever
    jobs = SEARCHED + [
        _reeval(30, "search-0001", 0, None, DIVERGED),
        _reeval(31, "search-0001", 1, None, "failed", state=FAILED),
    ]
    design = _design(ensemble=1)
    assert design.next_jobs(jobs, 36) == []
    summary = design.summary(jobs)
    (row,) = summary["reeval"]
    assert row["source"] == "search-0001"
    assert row["seeds"] == 0 and row["failed_seeds"] == 2
    assert row["val_mean"] is None and row["val_ci"] is None
    assert row["test_mean"] is None and row["test_ci"] is None
    assert "re-evaluat" in summary["no_champion"]
    check_keys(summary, BatchSummary, "summary")


def test_a_zero_test_accuracy_counts_in_the_reevaluation_mean():
    jobs = SEARCHED + [_reeval(30 + s, "search-0003", s, v) for s, v in enumerate([0.9, 0.92])]
    jobs[-2].result.test_accuracy = 0.0  # a real score, not a missing one
    jobs[-1].result.test_accuracy = 0.5
    (row,) = _design().summary(jobs)["reeval"]
    assert row["seeds"] == 2 and row["failed_seeds"] == 0
    assert row["val_mean"] == pytest.approx(0.91)
    assert row["test_mean"] == pytest.approx(0.25)


def test_the_summary_states_the_direction_its_reevaluation_rows_were_chosen_by():
    jobs = SEARCHED + [_reeval(30, "search-0003", 0, 0.3)]
    assert _design().summary(jobs)["selection_direction"] == "maximize"
    minimize = SearchDesign({"seed": 0, "refit": True, "register": True}, maximize=False)
    assert minimize.summary(jobs)["selection_direction"] == "minimize"


# ---------------------------------------------------------------- a metric to minimize (val_loss)

LOSSES = [
    _search(0, 0.40),
    _search(1, 0.25, best_epoch=20),
    _search(2, 0.05, PRUNED),  # pruned: never chosen, however low its last loss
    _search(3, 0.30, best_epoch=30),
    _search(4, 0.35),
]


def _minimize(**settings) -> SearchDesign:
    return SearchDesign({"seed": 0, "refit": True, "register": True, **settings}, maximize=False)


def test_a_minimized_metric_chooses_the_lowest_values():
    design = _minimize(ensemble=2)
    assert [j.key for j in design.candidates(LOSSES, 3)] == [
        "search-0001",
        "search-0003",
        "search-0004",
    ]
    assert [c.source for c in design.choices(LOSSES, 2)] == ["search-0001", "search-0003"]
    specs = design.next_jobs(LOSSES, 36)
    assert [s.info["source"] for s in specs] == ["search-0001", "search-0003"]
    assert _minimize(ensemble=1).summary(LOSSES)["best_job"] == "search-0001"


def test_a_minimized_metric_chooses_the_lowest_reevaluation_mean():
    # search-0001 had the lowest search loss; re-evaluated, search-0003's mean is lower
    jobs = LOSSES + [
        *(_reeval(30 + s, "search-0001", s, v) for s, v in enumerate([0.33, 0.35])),
        *(_reeval(40 + s, "search-0003", s, v) for s, v in enumerate([0.28, 0.30])),
    ]
    design = _minimize(ensemble=1)
    assert [c.source for c in design.choices(jobs, 2)] == ["search-0003", "search-0001"]
    (refit,) = design.next_jobs(jobs, 36)
    assert refit.info["source"] == "search-0003"
    assert refit.info["selection_score"] == pytest.approx(0.29)


# The built-in space's study.enqueue start, written out by hand as the model configuration the
# search runs for it (issue #22: a champion member that came from it is said to be so).
START = {"normalization": "standard", "n_layers": 2, "units": [512, 256],
         "activation": ["relu", "relu"], "dropout": [0.1, 0.1], "l2": 1e-6, "optimizer": "adam",
         "learning_rate": 1e-3, "batch_size": 256, "lr_schedule": "cosine"}  # fmt: skip


def test_a_champion_member_from_the_spaces_start_is_named_in_the_summary():
    from bench.records import Batch
    from bench.results.champion import start_note
    from bench.results.report import champion_section
    from bench.space import load_space_text

    _, text = load_space_text("mlp")
    start = _search(5, 0.92, best_epoch=25)
    start = Job(6, 1, JobSpec(key="search-0005", purpose=SEARCH, seed=5, config=START), DONE,
                attempts=1, result=JobResult(COMPLETED, 0.92, 25, 26, 1.0, 10, 1.0, dict(START),
                                             model_uri="models:/m-5"), synced=True)  # fmt: skip
    design = _design(ensemble=2, space_text=text, space="/x/mlp.yaml")
    searched = [*SEARCHED, start]
    members = design.next_jobs(searched, 36)
    assert [s.info["source"] for s in members] == ["search-0005", "search-0001"]
    assert [s.info["from_start"] for s in members] == [True, False]
    jobs = searched + [_done(s, 10 + i, 26 - 5 * i, 0.9) for i, s in enumerate(members)]
    (spec,) = design.next_jobs(jobs, 36)
    assert [m["from_start"] for m in spec.info["members"]] == [True, False]
    registered = {"version": "1", "champion_version": "1", "promoted": True, "reason": "x",
                  "selection_metric": "val_accuracy", "selection_direction": "maximize",
                  "selection_procedure": "p"}  # fmt: skip
    result = JobResult(COMPLETED, 0.91, 0, 0, 0, 0, 0, {}, test_accuracy=0.9, test_loss=0.3,
                       model_uri="models:/avg", registered=registered)  # fmt: skip
    summary = design.summary([*jobs, Job(20, 1, spec, DONE, result=result)])
    assert summary["from_start"] == ["search-0005"]
    check_keys(summary, BatchSummary, "summary")
    note = start_note(summary["from_start"], 2)
    assert note.startswith("note: 1 of the champion's 2 members (search-0005) came from the "
                           "space's study.enqueue start")  # fmt: skip
    section = champion_section([Batch(1, "s", 1, "search", "i", DONE, {"model_name": "m"},
                                      "p", summary)])  # fmt: skip
    assert "member search-0005: validation 0.9200, test alone" in section
    assert "(the space's hand-picked start)" in section and note in section
    # a champion the search found alone is not marked
    other = _design(ensemble=2, space_text=text, space="/x/mlp.yaml")
    picked = other.next_jobs(SEARCHED, 36)
    assert [s.info["from_start"] for s in picked] == [False, False]
    # an unreadable stored space says nothing rather than guessing
    alone = _design(ensemble=2, space_text=text.replace("enqueue:", "enqueue_off:"))
    assert alone._starts() == []


def test_failed_search_jobs_are_replaced_up_to_the_flags_count():
    """``bench.search --max-replacements N`` (issue #17, item 4: ``max_failures`` was documented
    but nothing set it) reaches the design as ``max_failures``."""
    from bench.search import build_parser

    assert build_parser().parse_args([]).max_replacements == 10
    assert build_parser().parse_args(["--max-replacements", "0"]).max_replacements == 0
    failed = [Job(i + 1, 1, JobSpec(key=f"search-{i:04d}", purpose=SEARCH, seed=i), FAILED,
                  attempts=3, reason="x") for i in range(3)]  # fmt: skip
    keys = [s.key for s in _design(max_failures=2).replacements(failed)]
    assert keys == ["search-0000+", "search-0001+"]
    assert _design(max_failures=0).replacements(failed) == []
    assert len(_design().replacements(failed)) == 3  # a batch opened before the flag: 10
