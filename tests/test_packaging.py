"""A non-editable install works from any folder, and a search starts quietly.

``pip install .`` copies only the ``bench`` package into the environment, with the built-in
spaces that are edited in the top-level ``search_spaces/`` (``pyproject.toml`` maps them onto
``bench.space.builtin``, which package discovery cannot see, so it lists the packages; a fast test
keeps that list equal to the tree). The search is then run from an empty folder, where nothing of
the checkout can help.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv

import pytest
import tomllib
from setuptools import find_packages

from tests.conftest import REPO, SPACES, cli_env

# What TensorFlow, absl and CUDA print on a plain start-up when nothing silences them.
CHATTER = re.compile(
    r"cudart_stub|cuda_|oneDNN|absl::InitializeLog|tensorflow/|TF-TRT|cpu_feature_guard"
    r"|Successfully registered model|Created version"
)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(extra)
    return env


def test_the_package_list_is_the_tree_plus_the_spaces():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    found = set(find_packages(str(REPO), include=["bench*"]))
    assert set(tool["setuptools"]["packages"]) == found | {"bench.space.builtin"}
    assert tool["setuptools"]["package-dir"] == {"bench.space.builtin": "search_spaces"}
    assert sorted(p.stem for p in SPACES.glob("*.yaml")) == ["baselines", "mlp", "smoke"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A virtual environment with bench installed from the checkout, not in editable mode."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    build = root / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(
        REPO,
        build,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "mlruns",
            "mlartifacts",
            "reports",
            "tensorboard",
            "test-artifacts",
            "*.db",
            "*.log",
            "build",
            "*.egg-info",
            "__pycache__",
            "tests",
        ),
    )
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(build),
        ],
        env=_clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"python": python, "bin": env_dir / "bin"}


@pytest.mark.slow
def test_non_editable_install_runs_a_search_from_an_empty_folder(installed, tmp_path):
    probe = subprocess.run(
        [str(installed["python"]), "-c",
         "import bench; from bench.space import BUILTIN_DIR, builtin_names, load_space\n"
         "print(bench.__file__); print(BUILTIN_DIR); print(*builtin_names())\n"
         "for name in builtin_names(): load_space(name)"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    where, builtin, names = probe.stdout.strip().splitlines()
    assert str(REPO) not in where  # the installed copy, not the checkout
    assert builtin.endswith("bench/space/builtin") and str(REPO) not in builtin
    assert names == "baselines mlp smoke"  # every space of search_spaces/, shipped
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [str(installed["python"]), "-m", "bench.search", "--dataset", "digits", "--space",
         "smoke", "--trials", "2", "--jobs", "1"],
        cwd=work,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered digits-mlp version 1" in proc.stdout
    assert "/#/experiments/" in proc.stdout


@pytest.mark.slow
def test_console_script_answers_help(installed, tmp_path):
    proc = subprocess.run(
        [str(installed["bin"] / "bench-search"), "--help"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--trials" in proc.stdout


@pytest.mark.slow
def test_search_starts_quietly_and_prints_one_line_per_job_when_piped(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.search", "--dataset", "digits", "--space", "smoke",
         "--trials", "2", "--jobs", "1"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in proc.stderr.splitlines() if CHATTER.search(line)]
    noise += [line for line in proc.stdout.splitlines() if CHATTER.search(line)]
    assert noise == [], noise
    assert "\r" not in proc.stderr  # no progress bar redrawn in a pipe
    assert len(re.findall(r"^\[\d+/2\] search-\d+: ", proc.stderr, re.M)) == 2, proc.stderr
