"""The CLI as a user meets it: fast paths without TensorFlow, and one clear line for bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from bench import data
from tests.conftest import REPO, SPACES, cli_env, run_module

SMOKE = str(SPACES / "smoke.yaml")


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        check=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_help_and_space_validation_never_import_tensorflow():
    mods = _modules_after(
        "import contextlib, io\nfrom bench import search\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    search.main(['--help'])"
    )
    assert "tensorflow" not in mods and "keras" not in mods and "mlflow" not in mods
    mods = _modules_after(
        "from bench.space import load_space\n"
        f"load_space({str(SPACES / 'mlp.yaml')!r})\n"
        "import bench.data, bench.study, bench.errors"
    )
    assert "tensorflow" not in mods and "keras" not in mods


def test_help_lists_the_flags(tmp_path):
    proc = run_module("bench.search", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for flag in (
        "--trials",
        "--space",
        "--dataset",
        "--data-dir",
        "--study-name",
        "--storage",
        "--tracking-uri",
        "--experiment",
        "--model-name",
        "--max-epochs",
        "--timeout",
        "--jobs",
        "--seed",
        "--no-register",
    ):
        assert flag in proc.stdout


def _idx_dir(folder, mutate=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 255, (40, 4, 4), dtype=np.uint8),
        "y_train": np.arange(40, dtype=np.uint8) % 2,
        "x_test": rng.integers(0, 255, (10, 4, 4), dtype=np.uint8),
        "y_test": np.arange(10, dtype=np.uint8) % 2,
    }
    for key, fname in data.IDX_FILES.items():
        data.write_idx(folder / fname, arrays[key])
    if mutate:
        mutate(folder)
    return str(folder)


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _write(path, blob):
    path.write_bytes(blob)


BAD_INPUTS = {
    "malformed yaml": (
        lambda t: ["--space", _space(t, "params: [unclosed\n")],
        "is not valid YAML",
    ),
    "unknown key": (
        lambda t: ["--space", _space(t, "params:\n  dropuot: 0.1\n")],
        "did you mean 'dropout'?",
    ),
    "wrong type": (
        lambda t: ["--space", _space(t, "train:\n  max_epochs: ten\n")],
        "train.max_epochs: must be an integer",
    ),
    "low > high": (
        lambda t: ["--space", _space(t, "params:\n  n_layers: {type: int, low: 4, high: 1}\n")],
        "`low <= high` must hold",
    ),
    "log low <= 0": (
        lambda t: [
            "--space",
            _space(t, "params:\n  l2: {type: float, low: 0, high: 1, log: true}\n"),
        ],
        "`low > 0` must hold",
    ),
    "empty choices": (
        lambda t: [
            "--space",
            _space(t, "params:\n  optimizer: {type: categorical, choices: []}\n"),
        ],
        "must be a non-empty list",
    ),
    "unknown optimizer": (
        lambda t: ["--space", _space(t, "params:\n  optimizer: lion\n")],
        "params.optimizer: must be one of",
    ),
    "unknown normalization": (
        lambda t: ["--space", _space(t, "params:\n  normalization: l2norm\n")],
        "params.normalization: must be one of",
    ),
    "unknown sampler": (
        lambda t: ["--space", _space(t, "study:\n  sampler: {name: grid}\n")],
        "study.sampler.name: must be one of",
    ),
    "unknown pruner": (
        lambda t: ["--space", _space(t, "study:\n  pruner: {name: patient}\n")],
        "study.pruner.name: must be one of",
    ),
    "trials 0": (lambda t: ["--trials", "0"], "--trials: must be >= 1"),
    "trials negative": (lambda t: ["--trials", "-3"], "--trials: must be >= 1"),
    "unreadable space": (
        lambda t: ["--space", str(t / "nope.yaml")],
        "cannot read the search-space file",
    ),
    "missing dataset": (
        lambda t: ["--dataset", "idx", "--data-dir", str(t / "empty")],
        "dataset files not found",
    ),
    "corrupt gz": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(t / "d", lambda f: _write(f / data.IDX_FILES["x_train"], b"\x1f\x8b garbage")),
        ],
        "corrupt gzip file",
    ),
    "wrong magic": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(
                t / "d",
                lambda f: _write(
                    f / data.IDX_FILES["y_test"],
                    gzip.compress(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00"),
                ),
            ),
        ],
        "not an IDX file",
    ),
    "count mismatch": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(
                t / "d",
                lambda f: data.write_idx(
                    f / data.IDX_FILES["y_train"], np.zeros(39, dtype=np.uint8)
                ),
            ),
        ],
        "40 train images but 39 train labels",
    ),
    "bad image shape": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(
                t / "d",
                lambda f: data.write_idx(
                    f / data.IDX_FILES["x_train"], np.zeros(40, dtype=np.uint8)
                ),
            ),
        ],
        "expected (N, H[, W]) images",
    ),
    "unwritable tracking dir": (
        lambda t: ["--tracking-uri", "sqlite:////proc/bench/mlflow.db"],
        "does not exist",
    ),
    "tracking dir is read-only": (
        lambda t: ["--tracking-uri", "sqlite:////proc/mlflow.db"],
        "cannot write in /proc",
    ),
    "file store": (lambda t: ["--tracking-uri", str(t / "mlruns")], "file store is not supported"),
    "malformed storage url": (
        lambda t: ["--storage", "postgresql://u@h:port/db"],
        "malformed storage URL",
    ),
    "unreachable database": (
        lambda t: ["--storage", "postgresql://bench:s3cret@127.0.0.1:1/nodb"],
        "cannot connect to the database",
    ),
    "unknown dataset": (lambda t: ["--dataset", "cifar"], "unknown dataset 'cifar'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    make_args, message = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    args = make_args(tmp_path)
    if "--dataset" not in args:
        args += ["--dataset", "digits"]
    if "--space" not in args:
        args += ["--space", SMOKE]
    proc = (
        run_module("bench.search", "--trials", "1", *args, cwd=work)
        if "--trials" not in args
        else run_module("bench.search", *args, cwd=work)
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    assert list(work.iterdir()) == []  # nothing written


def test_unreachable_database_message_redacts_the_password(tmp_path):
    proc = run_module(
        "bench.search",
        "--dataset",
        "digits",
        "--space",
        SMOKE,
        "--storage",
        "postgresql://bench:hunter2@127.0.0.1:1/x",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "bench:***@127.0.0.1" in proc.stderr
