"""Helpers for tests that run real searches as subprocesses and interfere with them.

They read what a search left behind the way a user's tools would: the job store
(:class:`bench.engine.store.JobStore`), the Optuna study through the public API, and MLflow through
``MlflowClient``.
"""

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
JOURNAL = "optuna-studies.log"
EXPERIMENT = "digits-mlp"
MODEL = "digits-mlp"


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


def job_store(folder: Path, storage: str | None = None):
    from bench.engine.store import JobStore

    return JobStore(storage or str(folder / JOURNAL))


def batches(folder: Path, study: str, storage: str | None = None):
    return job_store(folder, storage).batches(study)


def jobs_of(folder: Path, study: str, number: int = 1, storage: str | None = None):
    """The jobs of batch ``number`` of ``study`` ([] before it exists)."""
    store = job_store(folder, storage)
    try:
        found = [b for b in store.batches(study) if b.number == number]
        return store.jobs(found[0].id) if found else []
    finally:
        store.dispose()


def load_study(folder: Path, name: str, storage: str | None = None):
    import optuna

    from bench.optuna_adapter import make_storage

    return optuna.load_study(
        study_name=name, storage=make_storage(storage or str(folder / JOURNAL))
    )


def trials_of(folder: Path, name: str, storage: str | None = None):
    return sorted(
        load_study(folder, name, storage).get_trials(deepcopy=False), key=lambda t: t.number
    )


def mlflow_runs(folder: Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT):
    """``(client, runs)`` of the experiment in the folder's sqlite store (or ``tracking_uri``)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{folder}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], max_results=5000)


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


def running_mid_job(folder: Path, study: str, min_done: int = 1, storage: str | None = None):
    """A search job that is training (its run exists), once ``min_done`` jobs are done."""
    jobs = jobs_of(folder, study, storage=storage)
    done = [j for j in jobs if j.state == "done"]
    running = [j for j in jobs if j.state == "running" and j.run_id and j.purpose == "search"]
    return running[0] if len(done) >= min_done and running else None
