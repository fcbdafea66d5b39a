"""The champion rule on a real sqlite MLflow store: direction, like with like, and no race.

Each test registers small logged models (no Keras: ``create_logged_model`` is enough for the
registry) under one name and reads the ``@champion`` alias back from the store.
"""

from __future__ import annotations

import random
import threading

import pytest

from bench.tracking import Tracker
from bench.tracking.registry import register_champion

pytestmark = pytest.mark.component  # a real MLflow registry in a temporary store

DIGEST = "d1"
ONE_RUN = "one search run; holdout 0.1"


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "champions")


def _register(tracker, job, score, metric="val_accuracy", direction="maximize",
              procedure=ONE_RUN, name="m", digest=DIGEST):  # fmt: skip
    model = tracker.client.create_logged_model(tracker.experiment_id)
    return register_champion(
        tracker,
        f"models:/{model.model_id}",
        name,
        {"study_name": "s", "batch": 1, "job": job},
        {},
        score,
        digest,
        metric=metric,
        direction=direction,
        procedure=procedure,
    )


def _champion_score(tracker, name="m") -> float:
    return float(tracker.champion(name).tags["selection_score"])


def test_a_lower_loss_takes_champion_and_a_higher_one_never_does(tracker):
    first = _register(tracker, "a", 0.40, "val_loss", "minimize")
    worse = _register(tracker, "b", 0.50, "val_loss", "minimize")
    better = _register(tracker, "c", 0.30, "val_loss", "minimize")
    assert first["promoted"] and not worse["promoted"] and better["promoted"]
    assert _champion_score(tracker) == pytest.approx(0.30)


def test_metric_direction_and_procedure_are_stored_on_the_version(tracker):
    out = _register(tracker, "a", 0.4, "val_loss", "minimize", "mean over 3 re-evaluation seeds")
    tags = tracker.client.get_model_version("m", out["version"]).tags
    assert tags["selection_metric"] == "val_loss"
    assert tags["selection_direction"] == "minimize"
    assert tags["selection_procedure"] == "mean over 3 re-evaluation seeds"
    assert out["selection_metric"] == "val_loss"


def test_a_loss_is_never_compared_with_an_accuracy(tracker):
    _register(tracker, "a", 0.90, "val_accuracy", "maximize")
    loss = _register(tracker, "b", 0.95, "val_loss", "minimize")  # "higher" but a worse loss
    assert loss["promoted"] is False and "val_loss" in loss["reason"]
    assert tracker.champion("m").tags["selection_metric"] == "val_accuracy"


def test_a_reevaluation_mean_is_not_compared_with_one_search_runs_best(tracker):
    _register(tracker, "a", 0.90, procedure="mean over 3 re-evaluation seeds; holdout 0.1")
    lucky = _register(tracker, "b", 0.93, procedure=ONE_RUN)
    assert lucky["promoted"] is False and "not comparable" in lucky["reason"]
    same = _register(tracker, "c", 0.91, procedure="mean over 3 re-evaluation seeds; holdout 0.1")
    assert same["promoted"] is True


def test_a_nan_selection_score_never_takes_champion(tracker):
    _register(tracker, "a", 0.5)
    assert _register(tracker, "b", float("nan"))["promoted"] is False


class _SlowStore(Tracker):
    """A store whose reads answer late, as a remote server does: the read-compare-move of two
    registrations then interleaves unless something serializes it."""

    def champion(self, name, alias="champion"):
        found = super().champion(name, alias)
        threading.Event().wait(random.uniform(0, 0.05))
        return found


@pytest.mark.parametrize("guard", ["file-lock", "repair"])
def test_two_batches_registering_at_once_leave_the_better_one_champion(tmp_path, guard):
    # "repair" is the guard for stores without an OS lock (an MLflow server): forced here on a
    # sqlite store so both guards meet the same race
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trackers = [_SlowStore(uri, "champions") for _ in range(2)]
    if guard == "repair":
        for t in trackers:
            t.lock_path = None  # no file lock: the repair loop must hold on its own
    rounds = 12
    for r in range(rounds):
        scores = [0.80 + r / 100, 0.85 + r / 100]
        random.shuffle(scores)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def go(i: int, r=r, scores=scores, barrier=barrier, errors=errors) -> None:
            try:
                barrier.wait()
                _register(trackers[i], f"r{r}-{i}", scores[i], name=f"m{r}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert _champion_score(trackers[0], f"m{r}") == pytest.approx(max(scores)), f"round {r}"


@pytest.mark.component
def test_a_registrant_killed_while_holding_the_lock_leaves_it_free(tmp_path):
    """The champion lock is a kernel ``flock``: a holder killed with SIGKILL releases it."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    from bench.tracking.registry import _file_lock

    lock = tmp_path / "champion.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from bench.tracking.registry import _file_lock\n"
         f"with _file_lock({str(lock)!r}, 'm'):\n"
         "    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        taken = threading.Event()

        def take():
            with _file_lock(str(lock), "m"):
                taken.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not taken.wait(1.0)  # held by the live process: we wait
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        start = time.monotonic()
        assert taken.wait(10), "the lock stayed held after its holder was killed"
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()
