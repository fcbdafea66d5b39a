"""Quiet on every path: no TensorFlow, absl, oneDNN or CUDA line before or after an error.

TensorFlow's native code writes its start-up lines to file descriptor 2 before its logging is
configured, so only a command that imports TensorFlow shows them; the error paths below are the
ones that can reach that import (the Keras download of a missing dataset) or that end early
(a bad space file, an unreachable tracking server), in bench.search and in the other commands
(bench.ablate, bench.reevaluate, bench.register, bench.predict). MLflow's own INFO lines (its
"Creating initial MLflow database tables" on a fresh folder's first run) count as chatter too. A
happy piped run is checked in ``tests/test_progress.py``, and a first run here.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import cli_env, run_module, write_space
from tests.servers import free_port

pytestmark = pytest.mark.component  # every test here runs a subprocess

# What TensorFlow, absl, Keras, CUDA and MLflow print when nothing silences them (case-insensitive).
# MLflow's lines look like "2026/12/02 18:27:25 INFO mlflow.store.db.utils: Creating initial ...".
CHATTER = re.compile(
    r"oneDNN|TF_ENABLE_ONEDNN_OPTS|cuda|absl|tensorflow/core|cpu_feature_guard|TF-TRT"
    r"|All log messages before absl|^[IWE]\d{4} \d\d:\d\d|Downloading data from"
    r"|Successfully registered model|Created version"
    r"|^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d |\b(DEBUG|INFO|WARNING) (mlflow|alembic)\b",
    re.IGNORECASE | re.MULTILINE,
)


@pytest.fixture(autouse=True)
def _no_inherited_quieting(monkeypatch):
    """The commands must quiet MLflow and TensorFlow themselves: a variable that this test
    process picked up (from an in-process ``setup_logging()``, say) must not do it for them."""
    for var in ("MLFLOW_LOGGING_LEVEL", "TF_CPP_MIN_LOG_LEVEL", "BENCH_VERBOSE"):
        monkeypatch.delenv(var, raising=False)


def chatter(proc) -> list[str]:
    """Lines of stdout and stderr that are library noise, not bench's own words."""
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    return [line for line in lines if CHATTER.search(line)]


def _offline(tmp_path) -> dict[str, str]:
    """No dataset in the Keras cache, and a download that fails at once (a proxy that refuses
    every connection), online or not."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "KERAS_HOME": str(tmp_path / "keras-home"),
        "http_proxy": dead,
        "https_proxy": dead,
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "no_proxy": "",
        "NO_PROXY": "",
    }


def _space(tmp_path) -> str:
    return str(write_space(tmp_path / "bad.yaml", "version: 1\nparams:\n  unitz: 3\n"))


CASES = {
    # mnist, not fashion-mnist: Debian's Fashion-MNIST package may be installed, mnist's files
    # never are, so the search goes on to Keras' download, which imports TensorFlow
    "missing data (Keras download)": (
        lambda t: ["--dataset", "mnist", "--trials", "2"],
        "error: mnist: dataset files not found",
    ),
    "bad space": (
        lambda t: ["--dataset", "digits", "--space", _space(t)],
        "unknown key 'unitz'",
    ),
    "unreachable tracking server": (
        lambda t: [
            "--dataset",
            "digits",
            "--space",
            "smoke",
            "--tracking-uri",
            f"http://127.0.0.1:{free_port()}",
        ],
        "cannot open the tracking store",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_error_paths_print_one_line_and_no_library_chatter(tmp_path, case):
    make_args, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    proc = run_module("bench.search", *make_args(tmp_path), cwd=work, **_offline(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert chatter(proc) == [], chatter(proc)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert sorted(p.name for p in work.iterdir()) == []  # no journal, job store or mlflow.db


def test_missing_data_names_the_way_to_get_it(tmp_path):
    """The one line says where bench looked, that the download failed, and what to pass."""
    work = tmp_path / "work"
    work.mkdir()
    proc = run_module(
        "bench.search",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "empty"),
        cwd=work,
        **_offline(tmp_path),
    )
    assert proc.returncode == 2
    assert chatter(proc) == [], chatter(proc)
    line = proc.stderr.strip()
    assert "\n" not in line
    assert str(tmp_path / "empty") in line and "the Keras download failed" in line
    assert "--data-dir DIR" in line
    assert list(work.iterdir()) == []  # nothing written


# ---------------------------------------------------------------- MLflow on a fresh folder


def test_a_first_run_in_a_fresh_folder_prints_no_mlflow_lines(tmp_path):
    """MLflow creates its tables on the first run in a folder and says so at INFO, unless the
    command quiets it before MLflow is imported (it sets its own level when imported)."""
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", "smoke", "--trials", "2",
        "--max-epochs", "1", "--no-register", "--jobs", "1", "--threads", "1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file()  # the tables were created in this run
    assert chatter(proc) == [], chatter(proc)
    assert "mlflow.store" not in proc.stderr and "database tables" not in proc.stderr


def test_the_tracker_quiets_mlflow_without_the_command_line_set_up(tmp_path):
    """``Tracker`` used as a library (no ``setup_logging``) in a fresh folder prints nothing."""
    code = "from bench.tracking import Tracker; Tracker('sqlite:///mlflow.db', 'x')"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file()
    assert proc.stderr == "", proc.stderr


# ---------------------------------------------------------------- the other commands

BASE_CONFIG = "params:\n  normalization: standard\n  units: 16\n  optimizer: adam\n"


def _base_config(tmp_path) -> str:
    return str(write_space(tmp_path / "base.yaml", BASE_CONFIG))


def _empty_store(work) -> None:
    """An MLflow store with no model in it (its tables made here, not by the command)."""
    code = "import mlflow; mlflow.MlflowClient('sqlite:///mlflow.db').search_experiments()"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _image(tmp_path) -> str:
    from PIL import Image

    path = tmp_path / "shirt.png"
    Image.new("L", (28, 28), 128).save(path)
    return str(path)


def _not_an_image(tmp_path) -> str:
    path = tmp_path / "shirt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return str(path)


# module, a setup of the work folder, the arguments, what the one line says
OTHER_CASES = {
    "ablate: unknown factor": (
        "bench.ablate",
        None,
        lambda t: ["--base-config", _base_config(t), "--space", "smoke", "--dataset", "digits",
                   "--factors", "normalisation"],
        "did you mean 'normalization'?",
    ),
    # past the base configuration and the plan: Keras' download imports TensorFlow
    "ablate: missing data (Keras download)": (
        "bench.ablate",
        None,
        lambda t: ["--base-config", _base_config(t), "--space", "smoke", "--dataset", "mnist",
                   "--factors", "optimizer"],
        "error: mnist: dataset files not found",
    ),
    "reevaluate: no such study": (
        "bench.reevaluate",
        None,
        lambda t: ["--study-name", "nope"],
        "no such",
    ),
    "register: no such study": (
        "bench.register",
        None,
        lambda t: ["--study-name", "nope"],
        "no such",
    ),
    "predict: not an image": (
        "bench.predict",
        None,
        lambda t: [_not_an_image(t)],
        "not an image",
    ),
    # past the inputs: MLflow (and with it the model loader) is imported, then finds nothing
    "predict: no such model": (
        "bench.predict",
        _empty_store,
        lambda t: [_image(t), "--model", "models:/nope@champion"],
        "--model models:/nope@champion",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", OTHER_CASES)
def test_other_commands_error_paths_print_one_line_and_no_library_chatter(tmp_path, case):
    module, prepare, make_args, expected = OTHER_CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    if prepare is not None:
        prepare(work)
    before = sorted(p.name for p in work.iterdir())
    proc = run_module(module, *make_args(tmp_path), cwd=work, **_offline(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert chatter(proc) == [], chatter(proc)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written


# ---------------------------------------------------------------- --verbose


def test_verbose_lets_the_library_output_through(tmp_path):
    """The missing-data path imports TensorFlow and asks Keras to download: quiet, one line;
    with --verbose, Keras' "Downloading data from" line (and whatever TensorFlow prints) too."""
    args = ["--dataset", "mnist", "--trials", "2"]
    work = tmp_path / "work"
    work.mkdir()
    quiet = run_module("bench.search", *args, cwd=work, **_offline(tmp_path))
    loud = run_module("bench.search", *args, "--verbose", cwd=work, **_offline(tmp_path))
    for proc in (quiet, loud):
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "error: mnist: dataset files not found" in proc.stderr.splitlines()[-1]
    assert chatter(quiet) == [] and len(quiet.stderr.splitlines()) == 1, quiet.stderr
    assert any("Downloading data from" in line for line in chatter(loud)), loud.stdout + loud.stderr
    assert list(work.iterdir()) == []
