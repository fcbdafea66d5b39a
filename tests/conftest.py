"""Shared fixtures: seeded randomness, an isolated working directory, a CLI runner; the tiers.

Tiers, by marker (``pyproject.toml`` declares them):

- unit (no marker): milliseconds to a second, in this process, no TensorFlow, no subprocess.
  ``python -m pytest -m unit`` runs this tier alone, in under a minute. The guard below fails a
  unit test that starts a process or imports TensorFlow, and unit tests run first in any
  selection, so TensorFlow is not loaded yet when they run and the check holds.
- component: real Keras training or real subprocesses on small data (seconds each).
- slow: end-to-end commands on real data, servers, kills (still run in CI).
- postgres, browser: need the PostgreSQL server / headless Chromium (also slow).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import multiprocessing.process
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "search_spaces"  # the built-in spaces (shipped as bench/space/builtin/)


HEAVIER = ("component", "slow", "postgres", "browser")  # any of these: not a unit test


def _is_unit(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(name) for name in HEAVIER)


# Session fixtures that run a real search in a subprocess before their first test: a test that
# uses one is a component test at least (the guard below cannot see a fixture's own processes).
_SEARCH_FIXTURES = {"digits_search", "fashion_search"}
_MODULE_MARK = re.compile(r"^pytestmark = .*\b(component|slow|postgres|browser)\b", re.M)
_HEAVY_IMPORTS = ("tensorflow", "keras")


class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Installed for ``-m unit``: the unit tier must run where TensorFlow cannot be imported.

    Finding the module still works (``importlib.util.find_spec`` probes stay true); importing it
    fails with the reason.
    """

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HEAVY_IMPORTS:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"the unit tier imported {spec.name}; mark that test component or slow")

    def exec_module(self, module):  # never reached: create_module refuses
        raise ImportError(module.__name__)


def _unit_only(config) -> bool:
    return (config.getoption("markexpr") or "").strip() == "unit"


def pytest_configure(config):
    if _unit_only(config):
        sys.meta_path.insert(0, _NoTensorFlow())


def pytest_ignore_collect(collection_path, config):
    """With ``-m unit``, modules marked heavier as a whole are not even imported."""
    if _unit_only(config) and collection_path.suffix == ".py":
        return bool(_MODULE_MARK.search(collection_path.read_text(encoding="utf-8"))) or None
    return None


def pytest_collection_modifyitems(config, items):
    """Mark the unit tier, and run it first (the guard's TensorFlow check needs a clean slate).

    Under pytest-xdist (``--dist loadgroup``, the default in pyproject.toml), the tests of one
    session search fixture share a worker, so each search runs once, and the PostgreSQL tests
    share one, so two of them never write the same database at once.
    """
    for item in items:
        spawns = sorted(_SEARCH_FIXTURES & set(getattr(item, "fixturenames", ())))
        if spawns and _is_unit(item):
            item.add_marker(pytest.mark.component)
        if item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.xdist_group("postgres"))
        elif spawns:
            item.add_marker(pytest.mark.xdist_group(spawns[0]))
        if _is_unit(item):
            item.add_marker(pytest.mark.unit)
    items.sort(key=lambda item: not _is_unit(item))  # stable: file order within each tier


@pytest.fixture(autouse=True)
def _unit_tier_guard(request, monkeypatch):
    """A unit test may neither start a process nor import TensorFlow: mark it component."""
    if not _is_unit(request.node):
        yield
        return

    def refuse(*_args, **_kwargs):
        raise AssertionError(
            "a unit test started a process; mark it @pytest.mark.component (or slow)"
        )

    had_tensorflow = "tensorflow" in sys.modules
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    yield
    if not had_tensorflow and "tensorflow" in sys.modules:
        pytest.fail("a unit test imported TensorFlow; mark it @pytest.mark.component (or slow)")


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
