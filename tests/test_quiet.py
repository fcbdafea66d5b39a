"""Quiet on every path: no TensorFlow, absl, oneDNN or CUDA line before or after an error.

TensorFlow's native code writes its start-up lines to file descriptor 2 before its logging is
configured, so only a command that imports TensorFlow shows them; the error paths below are the
ones that can reach that import (the Keras download of a missing dataset) or that end early
(a bad space file, an unreachable tracking server). A happy piped run is checked in
``tests/test_progress.py``.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_module, write_space
from tests.servers import free_port

pytestmark = pytest.mark.component  # every test here runs a subprocess

# What TensorFlow, absl, Keras and CUDA print when nothing silences them (case-insensitive).
CHATTER = re.compile(
    r"oneDNN|TF_ENABLE_ONEDNN_OPTS|cuda|absl|tensorflow/core|cpu_feature_guard|TF-TRT"
    r"|All log messages before absl|^[IWE]\d{4} \d\d:\d\d|Downloading data from"
    r"|Successfully registered model|Created version",
    re.IGNORECASE | re.MULTILINE,
)


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
