"""Named kill points and signal points for fault-injection tests.

``BENCH_TEST_KILL_AT=<point>`` makes the process that reaches ``<point>`` kill itself with
SIGKILL (no cleanup, like a power cut or the OOM killer); ``BENCH_TEST_KILL_SKIP=n`` lets the
first n passes through that point live. Unset, a kill point costs one dictionary lookup.
Several points may be named, comma-separated. With ``BENCH_TEST_KILL_ONCE=<folder>`` each named
point kills only the first process, of all those that share the folder, to reach it (a marker
file per point, created exclusively before the kill): on a cluster of slots, one death per point
instead of one per slot.

``BENCH_TEST_SIGNAL_AT=<tracking call>`` (``log_metrics``, ``end_run``, ...) sends this process
``BENCH_TEST_SIGNAL`` (``SIGINT`` or ``SIGTERM``) from *inside* MLflow's store code during that
call (after ``BENCH_TEST_SIGNAL_SKIP=n`` calls), so a test can make Ctrl-C land in the middle of
a tracking write on purpose instead of by chance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

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
    if target is None or name not in target.split(","):
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] <= int(os.environ.get("BENCH_TEST_KILL_SKIP", "0")):
        return
    once = os.environ.get("BENCH_TEST_KILL_ONCE")
    if once:
        try:
            os.close(os.open(os.path.join(once, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another process died here already
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def signal_point(name: str):
    """Around a tracking call: signal this process from within MLflow's store if asked to.

    A profile hook waits for the first Python frame of an ``mlflow.store`` module and sends the
    signal there; Python runs the handler at the next instruction, inside that MLflow frame.
    """
    if os.environ.get("BENCH_TEST_SIGNAL_AT") != name:
        yield
        return
    key = "signal:" + name
    _seen[key] = _seen.get(key, 0) + 1
    if _seen[key] != int(os.environ.get("BENCH_TEST_SIGNAL_SKIP", "0")) + 1:
        yield
        return
    signum = getattr(signal, os.environ.get("BENCH_TEST_SIGNAL", "SIGINT"))
    previous = sys.getprofile()

    stamp = os.environ.get("BENCH_TEST_SIGNAL_STAMP")  # where to note when the signal went

    def hook(frame, event, arg):
        if event == "call" and frame.f_globals.get("__name__", "").startswith("mlflow.store"):
            sys.setprofile(previous)
            if stamp:
                with open(stamp, "a", encoding="utf-8") as f:
                    f.write(f"{time.time()}\n")
            os.kill(os.getpid(), signum)

    sys.setprofile(hook)
    try:
        yield
    finally:
        if sys.getprofile() is hook:
            sys.setprofile(previous)
