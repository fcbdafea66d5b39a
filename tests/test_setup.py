"""``./setup``, the README's set-up-and-run command, as a user runs it (a real subprocess).

Nothing here installs anything: ``--dry-run`` says what it would do, ``apt-get`` and ``sudo`` are
stand-ins on a PATH made for each test, and the runs that go as far as the search are ones that
need no package (one runs a tiny digits search to the end, on the project installed already).
``SETUP_DATASETS_DIR`` stands for ``/usr/share/datasets``, so the machine's own Fashion-MNIST
package does not hide the missing-data case. CI (``.ci/run``) runs ``./setup --install-only``
from the fresh clone for real.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_quiet import chatter

pytestmark = pytest.mark.component  # every test here runs a subprocess

SETUP = REPO / "setup"
TOOLS = ("bash", "env", "dirname", "awk", "tail", "grep", "sed", "cat")


def _path(tmp_path: Path, apt: str | None = None) -> str:
    """A PATH with the shell tools ./setup uses, this Python as python3 and, when given, an
    ``apt-get`` stand-in (and a ``sudo`` that runs it) recording its calls in ``apt.log``."""
    bin_dir = tmp_path / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is missing on this machine"
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    if apt is not None:
        log = tmp_path / "apt.log"
        stub = f'#!/bin/sh\necho "apt-get $*" >> {log}\n{apt}\n'
        (bin_dir / "apt-get").write_text(stub)
        (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
        for name in ("apt-get", "sudo"):
            (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def _setup(
    tmp_path: Path,
    *args: str,
    apt: str | None = None,
    datasets: Path | None = None,
    **extra_env: str,
):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BENCH_DATA_DIR", "MLFLOW_TRACKING_URI", "PYTHON", "KERAS_HOME")
        # a user's shell has none of these: bench must quiet MLflow and TensorFlow itself
        and k not in ("MLFLOW_LOGGING_LEVEL", "TF_CPP_MIN_LOG_LEVEL", "BENCH_VERBOSE")
    }
    env.update(
        PATH=_path(tmp_path, apt),
        SETUP_DATASETS_DIR=str(datasets or tmp_path / "no-datasets"),
        KERAS_HOME=str(tmp_path / "keras-home"),
        **extra_env,
    )
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [str(SETUP), *args],
        cwd=work,  # ./setup works from any folder: it moves to the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def _project_installed(tmp_path: Path) -> bool:
    return "requirements met" in _setup(tmp_path, "--dry-run", "--dataset", "digits").stderr


def test_setup_is_executable_and_answers_help(tmp_path):
    assert os.access(SETUP, os.X_OK), "./setup must be committed executable (git add --chmod=+x)"
    proc = _setup(tmp_path, "--help")
    assert proc.returncode == 0
    assert "--install-only" in proc.stdout and "--dry-run" in proc.stdout


def test_a_plan_without_the_dataset_installs_debians_package(tmp_path):
    proc = _setup(tmp_path, "--dry-run", apt="exit 0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert (
        lines[0] == "setup: Fashion-MNIST missing: will run apt-get install dataset-fashion-mnist"
    )
    assert lines[-1].endswith("-m bench.search --trials 50")
    assert not (tmp_path / "apt.log").exists()  # a dry run runs nothing


def test_without_apt_it_says_how_the_data_will_come(tmp_path):
    proc = _setup(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "setup: Fashion-MNIST missing and no apt-get here; the search will try Keras' download "
        "(needs the internet), else pass --data-dir DIR"
    )


def test_data_already_there_or_not_needed_is_left_alone(tmp_path):
    datasets = tmp_path / "datasets"
    (datasets / "fashion-mnist").mkdir(parents=True)
    (datasets / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    proc = _setup(tmp_path, "--dry-run", apt="exit 1", datasets=datasets)
    assert proc.stderr.splitlines()[0] == (
        f"setup: Fashion-MNIST: {datasets / 'fashion-mnist'} (Debian's dataset-fashion-mnist)"
    )
    for flags in (["--dataset", "digits"], ["--data-dir=/somewhere"]):
        proc = _setup(tmp_path, "--dry-run", *flags, "--trials", "3", apt="exit 1")
        assert "no package needed" in proc.stderr.splitlines()[0], proc.stderr
        assert proc.stderr.splitlines()[-1].endswith(
            f"-m bench.search {' '.join(flags)} --trials 3"
        )


def test_a_search_flag_with_install_only_is_refused(tmp_path):
    proc = _setup(tmp_path, "--install-only", "--trials", "3", apt="exit 0")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "setup: --trials: a search flag, but --install-only runs no search; leave one out"
    ]
    assert not (tmp_path / "apt.log").exists()


def test_when_apt_cannot_install_it_says_so_and_goes_on(tmp_path):
    if not _project_installed(tmp_path):
        pytest.skip("bench is not installed editable from this checkout: ./setup would run pip")
    failing = (
        '[ "$1" = update ] && exit 0\n'
        'echo "E: Unable to locate package dataset-fashion-mnist" >&2; exit 100'
    )
    proc = _setup(tmp_path, "--install-only", apt=failing)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("apt-get install -y") and calls[0].endswith("dataset-fashion-mnist")
    assert calls[1] == "apt-get update -qq"  # a fresh image has no package lists: update, retry
    assert calls[2] == calls[0]
    assert (
        "setup: could not install dataset-fashion-mnist (E: Unable to locate package "
        "dataset-fashion-mnist); the search will try Keras' download (needs the internet), "
        "else pass --data-dir DIR"
    ) in proc.stderr.splitlines()


def test_it_runs_the_search_with_the_users_flags(tmp_path):
    """The last step is the search itself: its flags reach it, and so does its verdict."""
    if not _project_installed(tmp_path):
        pytest.skip("bench is not installed editable from this checkout: ./setup would run pip")
    proc = _setup(tmp_path, "--dataset", "digits", "--space", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-2].endswith(
        f"-m bench.search --trials 50 --dataset digits --space {tmp_path}/nope.yaml"
    )
    assert "cannot read the search-space file" in lines[-1]
    assert list((tmp_path / "work").iterdir()) == []


def test_a_missing_dataset_is_installed_with_apt(tmp_path):
    """The path a fresh Debian machine takes: apt-get installs the package, then the project."""
    if not _project_installed(tmp_path):
        pytest.skip("bench is not installed editable from this checkout: ./setup would run pip")
    proc = _setup(tmp_path, "--install-only", apt="exit 0")
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert len(calls) == 1, calls  # it worked the first time: no update, no retry
    assert re.fullmatch(r"apt-get install -y .*\bdataset-fashion-mnist", calls[0]), calls
    lines = proc.stderr.splitlines()
    assert re.fullmatch(
        r"setup: installing Debian's dataset-fashion-mnist \((sudo -n )?apt-get install\)",
        lines[0],
    ), proc.stderr
    assert not any("could not install" in line for line in lines), proc.stderr
    assert lines[1:] == [f"setup: project: bench installed from {REPO}, requirements met"]


def test_the_project_check_needs_no_tomllib(tmp_path):
    """Python 3.10 has no tomllib: the check reads pyproject.toml with tomli (or pip's copy of
    it) instead of taking the project as not installed and running pip on every ./setup."""
    if not _project_installed(tmp_path):
        pytest.skip("bench is not installed editable from this checkout")
    if not any(importlib.util.find_spec(m) for m in ("tomli", "pip._vendor.tomli")):
        pytest.skip("neither tomli nor pip's vendored copy is here")
    shadow = tmp_path / "py310"
    shadow.mkdir()
    (shadow / "tomllib.py").write_text("raise ImportError('no tomllib before Python 3.11')\n")
    proc = _setup(tmp_path, "--dry-run", "--dataset", "digits", PYTHONPATH=str(shadow))
    assert proc.returncode == 0, proc.stderr
    assert f"setup: project: bench installed from {REPO}, requirements met" in proc.stderr


def test_setup_runs_a_search_to_the_end(tmp_path):
    """README's ./setup as a user runs it, with a tiny search: the project is installed already,
    so pip is not run; digits needs no package, so apt is not either. Every stage says so, and
    nothing else is printed (MLflow's first-run lines included)."""
    if not _project_installed(tmp_path):
        pytest.skip("bench is not installed editable from this checkout: ./setup would run pip")
    proc = _setup(
        tmp_path, "--dataset", "digits", "--space", "smoke", "--trials", "2",
        "--max-epochs", "1", "--jobs", "2", "--threads", "1", apt="exit 1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "apt.log").exists()
    err = proc.stderr
    assert "installing the project" not in err
    expected = [
        r"^setup: --dataset digits: no package needed$",
        rf"^setup: project: bench installed from {re.escape(str(REPO))}, requirements met$",
        r"^setup: running: \S*python3? -m bench\.search --dataset digits --space smoke "
        r"--trials 2 --max-epochs 1 --jobs 2 --threads 1$",
        r"^study 'digits-smoke' search batch 1: 2 jobs on 2 worker\(s\)",
        r"^search: 2/2 jobs finished in \d+ s; best ",
        # two completed trials are averaged; one (the other pruned) is refit and registered alone
        r"^refit( member 1/2)? \(search-\d{4}\): started, 1 epoch on all training images$",
        r"^refit( member 1/2)? \(search-\d{4}\): 1 epoch in \d+ s, test accuracy 0\.\d{4}",
        r"^(ensemble of 2:|refit \(search-\d{4}\):) .*, registered digits-mlp version 1 "
        r"\(champion\)",
    ]
    at = 0
    for pattern in expected:
        match = re.compile(pattern, re.M).search(err, at)
        assert match, f"no line matches {pattern!r} after position {at} in:\n{err}"
        # the next pattern may match the same line: a lone refit reports its test accuracy and
        # its registration on one line ("…, test accuracy 0.81, registered …")
        at = match.start()
    assert chatter(proc) == [], chatter(proc)
    work = tmp_path / "work"  # the search wrote where ./setup was run, not in the checkout
    assert {"mlflow.db", "mlruns", "optuna-studies.log"} <= {p.name for p in work.iterdir()}
    assert "models:/digits-mlp@champion" in proc.stdout
