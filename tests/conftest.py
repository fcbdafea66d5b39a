"""Shared fixtures: seeded randomness, an isolated working directory, a CLI runner."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "search_spaces"  # the built-in spaces (shipped as bench/space/builtin/)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    if "keras" in sys.modules:  # never import TensorFlow just to seed it
        sys.modules["keras"].utils.set_random_seed(0)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory: the default mlflow.db, mlruns/ and journal land here."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "BENCH_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENCH_DATA_DIR")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_module(
    module: str, *args: str, cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` the way a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_space(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file() or bool(
        os.environ.get("BENCH_DATA_DIR")
    )


@pytest.fixture(scope="session")
def fashion_search(tmp_path_factory):
    """One tiny real Fashion-MNIST search (2 trials x 2 epochs) shared by the slow tests.

    Returns the folder it ran in: ``mlflow.db``, ``mlruns/`` and ``optuna-studies.log`` are there,
    and ``models:/fashion-mnist-mlp@champion`` is registered.
    """
    if not fashion_available() and not os.environ.get("CI"):
        pytest.skip("Fashion-MNIST files missing: apt-get install dataset-fashion-mnist")
    folder = tmp_path_factory.mktemp("fashion-search")
    proc = run_module(
        "bench.search", "--trials", "2", "--max-epochs", "2", "--quiet", cwd=folder, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def digits_search(tmp_path_factory):
    """One small piped digits search through every stage: 4 trials, re-evaluation of the best 2
    with 2 seeds, 2 refit members in parallel, their ensemble registered (about 40 s).

    Returns:
        ``(folder, proc)``: the folder holds ``mlflow.db``, ``mlruns/``, ``optuna-studies.log``
        and its job store; ``proc`` is the finished search with its stdout and stderr.
    """
    folder = tmp_path_factory.mktemp("digits-search")
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", "smoke", "--trials", "4",
        "--reeval-top-k", "2", "--reeval-seeds", "2", "--jobs", "2", cwd=folder,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc
