"""Per-epoch metrics go through a background sender: every epoch lands, in order, and a failing
store is counted and skipped, never raised into the training loop (real MLflow SQLite store)."""

from __future__ import annotations

import threading
import time

import pytest

from bench.tracking import Tracker

pytestmark = pytest.mark.component  # MLflow's SQLite store runs its migrations: seconds


def test_queued_epochs_all_land_in_order_after_flush(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "epochs")
    run_id = tracker.start_child(None, "job", {"lr": 0.1}, {})
    for epoch in range(1, 31):
        tracker.log_metrics_later(run_id, {"val_accuracy": epoch / 100, "loss": 1 / epoch}, epoch)
    tracker.flush()
    history = tracker.client.get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 31))
    assert [round(m.value, 2) for m in sorted(history, key=lambda m: m.step)][-1] == 0.30
    assert len(tracker.client.get_metric_history(run_id, "loss")) == 30
    assert tracker.failures == 0
    tracker.flush()  # nothing queued: returns at once


def test_the_training_loop_does_not_wait_for_a_slow_store(tmp_path, monkeypatch):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "slow")
    run_id = tracker.start_child(None, "job", {}, {})
    sent = threading.Event()
    real = tracker.log_metrics

    def slow(*args, **kwargs):  # a tracking server that takes a second to answer each call
        time.sleep(1.0)
        real(*args, **kwargs)
        sent.set()

    monkeypatch.setattr(tracker, "log_metrics", slow)
    started = time.monotonic()
    for epoch in range(1, 4):
        tracker.log_metrics_later(run_id, {"val_accuracy": 0.5}, epoch)
    queued_in = time.monotonic() - started
    assert queued_in < 0.5 and not sent.is_set()  # three 1-s calls queued, none waited for
    tracker.flush()
    assert time.monotonic() - started >= 3.0  # flush waited for all three
    assert len(tracker.client.get_metric_history(run_id, "val_accuracy")) == 3


def test_a_failing_store_is_counted_once_per_call_and_never_raised(tmp_path, caplog):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "down")
    calls = []

    def down(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("tracking server unreachable")

    tracker.log_metrics = down  # type: ignore[method-assign]
    for epoch in range(1, 6):
        tracker.log_metrics_later("no-such-run", {"val_accuracy": 0.5}, epoch)
    tracker.flush()  # does not raise
    assert tracker.failures == 5
    # the first failure opened the breaker: the other four were skipped without a call
    assert len(calls) == 1
    assert sum("tracking store" in r.getMessage() for r in caplog.records) == 1
