"""Helpers for tests that run real searches as subprocesses and interfere with them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import cli_env

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


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, backend: str, port: int) -> subprocess.Popen:
    log = open(folder / f"mlflow-server-{port}.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(folder / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        env=cli_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import urllib.request

    def up():
        if proc.poll() is not None:
            log_text = (folder / f"mlflow-server-{port}.log").read_text()
            raise AssertionError(f"mlflow server exited: {log_text[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not up():
        time.sleep(0.5)
    if not up():
        kill_group(proc)
        raise AssertionError("mlflow server did not come up within 120 s")
    return proc
