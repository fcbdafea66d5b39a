"""No silent stage: what a batch's run prints, from the first trial to the registration.

Unit: :class:`bench.engine.progress.Narration` on made-up job snapshots, and the time-left rule.
Component: a real piped digits search through every stage (the shared ``digits_search``).
"""

from __future__ import annotations

import io
import re

import pytest

from bench.engine.progress import Narration, Progress, jobs_for_estimate, time_left
from bench.records import (
    DONE,
    ENSEMBLE,
    FAILED,
    REEVAL,
    REFIT,
    RUNNING,
    SEARCH,
    WAITING,
    Batch,
    Job,
    JobResult,
    JobSpec,
)
from tests.test_quiet import chatter

BATCH = Batch(1, "s", 1, "search", "search", "running", {"model_name": "digits-mlp"})


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _result(value=0.9, status="completed", epochs=3, seconds=41.0, **extra) -> JobResult:
    return JobResult(status, value, epochs - 1, epochs, seconds, 100, 1.0, {}, **extra)


def _job(id_, key, purpose, state, result=None, **spec) -> Job:
    return Job(id_, 1, JobSpec(key, purpose, id_, **spec), state, result=result)


# ---------------------------------------------------------------- the time-left rule


@pytest.mark.parametrize(("to_run", "need"), [(1, 1), (4, 4), (5, 5), (50, 5), (100, 10)])
def test_the_estimate_waits_for_five_jobs_or_a_tenth(to_run, need):
    assert jobs_for_estimate(to_run) == need


def test_one_finished_job_gives_no_estimate():
    """Issue 21: "about 38 min left" after the first of 50 trials."""
    assert time_left(45.0, 1, 50) == "time left: estimating after 5 jobs"
    assert time_left(200.0, 4, 50) == "time left: estimating after 5 jobs"
    assert time_left(300.0, 5, 50) == "about 45 min left"  # 60 s a job, 45 to go
    assert time_left(10.0, 5, 6) == "under 1 min left"
    assert time_left(1000.0, 10, 100) == "about 2 h 30 min left"
    assert time_left(9.0, 3, 3) == "none left"


# ---------------------------------------------------------------- every stage, in order


def test_every_stage_has_a_start_and_an_end_line():
    clock = Clock()
    n = Narration(BATCH, (SEARCH,), True, 2, clock)
    s0 = _job(1, "search-0000", SEARCH, RUNNING)
    s1 = _job(2, "search-0001", SEARCH, RUNNING)
    assert n.update([s0, s1]) == []

    clock.now += 30
    s1 = _job(2, "search-0001", SEARCH, DONE, _result(0.91))
    assert n.update([s0, s1]) == [
        "[1/2] search-0001: completed 0.9100 (best 0.9100; time left: estimating after 2 jobs)"
    ]
    s0 = _job(1, "search-0000", SEARCH, DONE, _result(0.5, "pruned"))
    assert n.update([s0, s1]) == ["[2/2] search-0000: pruned 0.5000 (best 0.9100; none left)"]

    clock.now += 30
    reevals = [
        _job(3, "reeval-search-0001-s1", REEVAL, RUNNING, info={"source": "search-0001"}),
        _job(4, "reeval-search-0001-s2", REEVAL, WAITING, info={"source": "search-0001"}),
    ]
    lines = n.update([s0, s1, *reevals])
    assert lines == [
        "search: 2/2 jobs finished in 60 s; best 0.9100",
        "re-evaluation: 2 runs (1 configuration x 2 seeds) started",
    ]
    done = [_job(j.id, j.key, REEVAL, DONE, _result(0.9), info=j.spec.info) for j in reevals]
    clock.now += 20
    assert n.update([s0, s1, *done]) == [
        "[re-evaluation 1/2] reeval-search-0001-s1: completed 0.9000",
        "[re-evaluation 2/2] reeval-search-0001-s2: completed 0.9000",
        "re-evaluation: 2/2 runs completed in 20 s",
    ]

    first = {"member": 0, "source": "search-0001"}
    second = {"member": 1, "source": "search-0000"}
    members = [
        _job(5, "refit", REFIT, RUNNING, train={"max_epochs": 27}, info=first),
        _job(6, "refit-1", REFIT, RUNNING, train={"max_epochs": 9}, info=second),
    ]
    assert n.update([s0, s1, *done, *members]) == [
        "refit member 1/2 (search-0001): started, 27 epochs on all training images",
        "refit member 2/2 (search-0000): started, 9 epochs on all training images",
    ]
    assert n.stage == "refit (2 running)"
    refitted = _result(None, epochs=27, test_accuracy=0.9472)
    members = [
        _job(5, "refit", REFIT, DONE, refitted, train={"max_epochs": 27}, info=first),
        Job(6, 1, members[1].spec, FAILED, reason="ValueError: boom"),
    ]
    assert n.update([s0, s1, *done, *members]) == [
        "refit member 1/2 (search-0001): 27 epochs in 41 s, test accuracy 0.9472",
        "refit member 2/2 (search-0000): failed: ValueError: boom",
    ]

    info = {"members": [{"source": "search-0001"}, {"source": "search-0000"}]}
    ensemble = _job(7, "ensemble", ENSEMBLE, RUNNING, info=info)
    assert n.update([s0, s1, *done, *members, ensemble]) == [
        "ensemble of 2 (search-0001 + search-0000): averaging their probabilities, testing, "
        "registering"
    ]
    clock.now += 12
    registered = {"version": "3", "champion_version": "2"}
    tested = _result(None, test_accuracy=0.95, registered=registered)
    ensemble = _job(7, "ensemble", ENSEMBLE, DONE, tested, info=info)
    assert n.update([s0, s1, *done, *members, ensemble], final=True) == [
        "ensemble of 2: test accuracy 0.9500, registered digits-mlp version 3 (champion stays "
        "version 2), done in about 12 s"
    ]


def test_a_stage_that_began_and_ended_between_two_looks_still_gets_both_lines():
    n = Narration(BATCH, (SEARCH,), True, 1, Clock())
    s0 = _job(1, "search-0000", SEARCH, DONE, _result(0.9))
    n.update([_job(1, "search-0000", SEARCH, RUNNING)])
    registered = {"version": "1", "champion_version": "1"}
    result = _result(None, epochs=4, seconds=3.0, test_accuracy=0.93, registered=registered)
    refit = _job(2, "refit", REFIT, DONE, result, train={"max_epochs": 4}, info={"source": "s0"})
    assert n.update([s0, refit], final=True)[1:] == [
        "search: 1/1 jobs finished in 0 s; best 0.9000",
        "refit (s0): started, 4 epochs on all training images",
        "refit (s0): 4 epochs in 3 s, test accuracy 0.9300, registered digits-mlp "
        "version 1 (champion)",
    ]


def test_a_joined_batch_narrates_only_what_happens_now():
    clock = Clock()
    before = [_job(i, f"search-000{i}", SEARCH, DONE, _result(0.8)) for i in (1, 2)]
    n = Narration(BATCH, (SEARCH,), True, 4, clock)
    running = [_job(i, f"search-000{i}", SEARCH, RUNNING) for i in (3, 4)]
    assert n.update(before + running) == []
    clock.now += 10
    # the later job finishes first: numbers follow the order they finish in, never repeat
    late = _job(4, "search-0004", SEARCH, DONE, _result(0.85))
    assert n.update(before + [running[0], late]) == [
        "[3/4] search-0004: completed 0.8500 (best 0.8500; time left: estimating after 2 jobs)"
    ]
    early = _job(3, "search-0003", SEARCH, DONE, _result(0.7))
    assert n.update([*before, early, late]) == [
        "[4/4] search-0003: completed 0.7000 (best 0.8500; none left)"
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_counts_every_job_and_names_the_running_stage():
    stream = Terminal()
    progress = Progress("unused", BATCH, (SEARCH,), True, 1, stream=stream)
    n = Narration(BATCH, (SEARCH,), True, 1, Clock())
    bar = progress._draw(None, n, n.update([_job(1, "search-0000", SEARCH, RUNNING)]))
    search = _job(1, "search-0000", SEARCH, DONE, _result(0.9))
    refit = _job(2, "refit", REFIT, RUNNING, train={"max_epochs": 4}, info={"source": "s0"})
    bar = progress._draw(bar, n, n.update([search, refit]))
    bar.close()
    out = stream.getvalue()
    assert "[1/1]" not in out  # a finished job is a tick of the bar, not a line
    # the stage lines are written above the bar, whose label is the running stage
    assert "search: 1/1 jobs finished in 0 s; best 0.9000\n" in out
    assert "refit (s0): started, 4 epochs on all training images\n" in out
    assert re.search(r"\rrefit: +50%\|.*\| 1/2 \[.*best 0\.9000; none left\]", out), out


# ---------------------------------------------------------------- a real piped run


@pytest.mark.slow
def test_a_piped_search_prints_every_stage_and_no_chatter(digits_search):
    _, proc = digits_search
    err = proc.stderr
    assert chatter(proc) == [], chatter(proc)
    assert "\r" not in err  # no bar redrawn in a pipe
    expected = [
        r"^study 'digits-smoke' search batch 1: 4 jobs on 2 worker\(s\)",
        r"^\[1/4\] search-\d{4}: (completed|pruned) [\d.]+ \(best [\d.-]+; time left: "
        r"estimating after 4 jobs\)$",
        r"^\[4/4\] search-\d{4}: .*; none left\)$",
        r"^search: 4/4 jobs finished in \d+ s; best 0\.\d{4}$",
        r"^re-evaluation: 4 runs \(2 configurations x 2 seeds\) started$",
        r"^\[re-evaluation 4/4\] reeval-search-\d{4}-s\d+: completed 0\.\d{4}$",
        r"^re-evaluation: \d/4 runs completed in \d+ s$",
        r"^refit member 1/2 \(search-\d{4}\): started, \d+ epochs on all training images$",
        r"^refit member 1/2 \(search-\d{4}\): \d+ epochs in \d+ s, test accuracy 0\.\d{4}$",
        r"^refit member 2/2 \(search-\d{4}\): started, \d+ epochs on all training images$",
        r"^refit member 2/2 \(search-\d{4}\): \d+ epochs in \d+ s, test accuracy 0\.\d{4}$",
        r"^ensemble of 2 \(search-\d{4} \+ search-\d{4}\): averaging their probabilities",
        r"^ensemble of 2: test accuracy 0\.\d{4}, registered digits-mlp version 1 \(champion\)",
    ]
    positions = []
    for pattern in expected:
        match = re.search(pattern, err, re.M)
        assert match, f"no line matches {pattern!r} in:\n{err}"
        positions.append(match.start())
    # each stage's lines come after the previous stage's end (members may interleave)
    assert positions[3] > positions[2] and positions[4] > positions[3]
    assert min(positions[7:11]) > positions[6] and positions[11] > max(positions[7:11])
    assert positions[12] > positions[11]
    assert "(start the UI first: python -m bench.ui)" in proc.stdout
