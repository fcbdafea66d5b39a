"""Helpers for tests that run real searches as subprocesses and interfere with them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import cli_env
from tests.servers import free_port, kill_group, start_mlflow_server  # noqa: F401 - re-exported

# Trials of a few seconds each on digits: long enough to be caught mid-training.
SLOW_SPACE = """
version: 1
study:
  sampler: {name: tpe, seed: 0, n_startup_trials: 3}
  pruner: {name: none}
train: {max_epochs: 15, patience: 15, min_delta: 0.0, validation_size: 300,
        steps_per_execution: 1, jit_compile: false}
params:
  n_layers: 1
  units: {type: int, low: 32, high: 64}
  batch_size: 16
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def slow_space(folder: Path) -> str:
    path = folder / "slow.yaml"
    path.write_text(SLOW_SPACE)
    return str(path)


def start_search(folder: Path, *args: str, **env: str) -> subprocess.Popen:
    """Start ``python -m bench.search`` in its own process group, output to files."""
    out = open(folder / "search.out", "a")  # noqa: SIM115 - closed with the process
    err = open(folder / "search.err", "a")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "bench.search", "--quiet", *args],
        cwd=folder,
        env=cli_env(**env),
        stdout=out,
        stderr=err,
        start_new_session=True,
    )


def stderr_of(folder: Path) -> str:
    return (folder / "search.err").read_text()


def load_study(folder: Path, name: str, storage: str | None = None):
    import optuna

    from bench.study import make_storage

    return optuna.load_study(
        study_name=name, storage=make_storage(storage or str(folder / "optuna-studies.log"))
    )


def trials_of(folder: Path, name: str, storage: str | None = None):
    return sorted(
        load_study(folder, name, storage).get_trials(deepcopy=False), key=lambda t: t.number
    )


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the storage may not exist yet
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def running_mid_trial(folder: Path, name: str, min_finished: int = 1, storage: str | None = None):
    """A RUNNING trial with at least one epoch done, once ``min_finished`` trials finished."""
    trials = trials_of(folder, name, storage)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    running = [
        t for t in trials if t.state.name == "RUNNING" and 0 < len(t.intermediate_values) <= 10
    ]
    return running[0] if len(finished) >= min_finished and running else None
