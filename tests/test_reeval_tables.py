"""The tables that rank configurations follow the metric's direction and never rank a
configuration that failed a seed above a clean one (issue #20: never the wrong champion).

Unit tier: summaries and jobs built by hand; no store, no training.
"""

from __future__ import annotations

import re

from bench.engine.driver import best_jobs_frame
from bench.engine.reevaluation import print_reeval
from bench.records import (
    COMPLETED,
    DIVERGED,
    DONE,
    PRUNED,
    REEVAL_DESIGN,
    SEARCH,
    Batch,
    Job,
    JobResult,
    JobSpec,
)
from bench.results.report import reeval_frame
from tests.conftest import SPACES


def _row(source, val, seeds=3, failed=0, ci=(0.0, 1.0)):
    return {
        "source": source,
        "seeds": seeds,
        "failed_seeds": failed,
        "val_mean": val,
        "val_ci": None if val is None else list(ci),
        "test_mean": None if val is None else 0.8,
        "test_ci": None if val is None else [0.7, 0.9],
    }


# search-0001's surviving seed scored best, but two of its three seeds diverged
ACCURACY = {
    "reeval": [
        _row("search-0001", 0.99, seeds=1, failed=2),
        _row("search-0003", 0.90),
        _row("search-0005", None, seeds=0, failed=3),
        _row("search-0004", 0.92),
    ],
    "selection_direction": "maximize",
}
LOSS = {
    "reeval": [
        _row("search-0001", 0.40),
        _row("search-0002", 0.10, seeds=2, failed=1),
        _row("search-0003", 0.25),
        _row("search-0004", 0.30),
    ],
    "selection_direction": "minimize",
}


def _printed(capsys, summary, **kw) -> list[str]:
    print_reeval(summary, **kw)
    lines = capsys.readouterr().out.splitlines()
    return [line for line in lines if re.match(r"^ [* ] search-", line)]


def _order(lines: list[str]) -> list[str]:
    return [re.search(r"search-\d+", line).group() for line in lines]


def test_printed_reevaluation_puts_clean_configurations_first_and_counts_failed_seeds(capsys):
    lines = _printed(capsys, ACCURACY, maximize=True)
    assert _order(lines) == ["search-0004", "search-0003", "search-0001", "search-0005"]
    failed = dict(zip(_order(lines), lines, strict=True))
    assert "1 seed completed, 2 failed" in failed["search-0001"]
    assert "0 seeds completed, 3 failed" in failed["search-0005"]
    assert "val n/a" in failed["search-0005"] and "test n/a" in failed["search-0005"]
    assert "failed" not in failed["search-0004"] and "(3 seeds)" in failed["search-0004"]


def test_printed_reevaluation_of_a_loss_lists_the_lowest_first(capsys):
    assert _order(_printed(capsys, LOSS, maximize=False)) == [
        "search-0003",
        "search-0004",
        "search-0001",
        "search-0002",
    ]
    # without an explicit direction the summary's own is followed
    assert _order(_printed(capsys, LOSS))[0] == "search-0003"


def test_printed_reevaluation_marks_the_chosen_configuration(capsys):
    lines = _printed(capsys, {**ACCURACY, "source": "search-0003"}, maximize=True)
    assert [line for line in lines if line.startswith(" * ")] == [lines[1]]


def _batch(summary, settings=None) -> Batch:
    return Batch(1, "s", 2, REEVAL_DESIGN, "x", DONE, settings or {}, summary=summary)


def test_the_report_table_puts_clean_configurations_first_with_failed_seed_counts():
    frame = reeval_frame([_batch(ACCURACY)])
    assert list(frame["source"]) == ["search-0004", "search-0003", "search-0001", "search-0005"]
    assert list(frame["failed_seeds"]) == [0, 0, 2, 3]
    assert list(frame.columns[:3]) == ["source", "seeds", "failed_seeds"]


def test_the_report_table_of_a_loss_lists_the_lowest_first():
    frame = reeval_frame([_batch(LOSS)])
    assert list(frame["source"]) == ["search-0003", "search-0004", "search-0001", "search-0002"]


def test_the_report_table_of_an_older_summary_reads_the_direction_from_the_stored_space():
    # summaries written before they stated a direction: the batch's stored space says it
    text = (SPACES / "smoke.yaml").read_text(encoding="utf-8")
    text = text.replace("metric: val_accuracy", "metric: val_loss")
    old = {"reeval": [{k: v for k, v in r.items() if k != "failed_seeds"} for r in LOSS["reeval"]]}
    frame = reeval_frame([_batch(old, {"space_text": text, "space": "smoke.yaml"})])
    assert list(frame["source"]) == ["search-0002", "search-0003", "search-0004", "search-0001"]
    assert list(frame["failed_seeds"]) == [0, 0, 0, 0]  # absent: none recorded


# ---------------------------------------------------------------- the outcome's best jobs


def _job(i: int, value: float | None, status: str = COMPLETED) -> Job:
    config = {"units": [8 + i]}
    result = JobResult(status, value, 3, 4, 1.0, 10, 1.0, config)
    spec = JobSpec(key=f"search-{i:04d}", purpose=SEARCH, seed=i, config=config)
    return Job(i + 1, 1, spec, DONE, attempts=1, result=result, trial_number=i)


JOBS = [
    _job(0, 0.30),
    _job(1, 0.10),
    _job(2, 0.02, PRUNED),  # an early epoch's value: after every completed job
    _job(3, 0.20),
    _job(4, None, DIVERGED),
]


def test_the_best_jobs_of_a_minimized_metric_are_the_lowest():
    frame = best_jobs_frame(JOBS, maximize=False)
    assert list(frame["job"]) == ["trial 1", "trial 3", "trial 0", "trial 2", "trial 4"]


def test_the_best_jobs_of_a_maximized_metric_are_the_highest():
    frame = best_jobs_frame(JOBS, maximize=True)
    assert list(frame["job"]) == ["trial 0", "trial 3", "trial 1", "trial 2", "trial 4"]


def test_the_best_jobs_table_shows_ten_at_most():
    jobs = [_job(i, i / 100) for i in range(15)]
    frame = best_jobs_frame(jobs, maximize=False)
    assert list(frame["job"]) == [f"trial {i}" for i in range(10)]
