"""Named kill points for fault-injection tests.

``BENCH_TEST_KILL_AT=<point>`` makes the process that reaches ``<point>`` kill itself with
SIGKILL (no cleanup, like a power cut or the OOM killer); ``BENCH_TEST_KILL_SKIP=n`` lets the
first n passes through that point live. Unset, a kill point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "open-batch",  # after the batch row exists, before its parent run and jobs
    "take",  # after a job is taken, before its Optuna trial is recorded on it
    "start-run",  # after the job's MLflow run is created, before its id is recorded
    "train",  # in the middle of training (after the first epoch)
    "record",  # after the model is logged, before the result is recorded
    "sync",  # after the result is recorded, before Optuna and MLflow mirror it
    "register",  # after the model version is created, before the alias moves
    "reeval",  # in the middle of a re-evaluation, refit or ablation job's training
)
_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Die here if the test asked for it (see the module docstring)."""
    target = os.environ.get("BENCH_TEST_KILL_AT")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] > int(os.environ.get("BENCH_TEST_KILL_SKIP", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
