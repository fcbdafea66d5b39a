"""The CLI as a user meets it: fast paths without TensorFlow, and one clear line for bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from bench import data
from bench.space import BUILTIN_DIR
from tests.conftest import run_module

SMOKE = str(BUILTIN_DIR / "smoke.yaml")
SECRETS = (
    "s3cret",
    "s3/cret",
    "pa:ss/w?rd#1",
    "s3cr'et",
)  # passwords in the rows below; never printed


@pytest.mark.component
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
        "--workers",
        "--jobs",
        "--seed",
        "--no-register",
    ):
        assert flag in proc.stdout


@pytest.mark.component
def test_reevaluate_no_refit_is_renamed_with_one_line(tmp_path):
    # in bench.search --no-refit registers the search run's own model; bench.reevaluate's
    # "register nothing" is --no-register, and its old spelling says so instead of acting
    proc = run_module("bench.reevaluate", "--study-name", "s", "--no-refit", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-register" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


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


def _labels(folder, labels):
    data.write_idx(folder / data.IDX_FILES["y_train"], labels)


def _no_train_images(folder):
    data.write_idx(folder / data.IDX_FILES["x_train"], np.zeros((0, 4, 4), dtype=np.uint8))
    data.write_idx(folder / data.IDX_FILES["y_train"], np.zeros(0, dtype=np.uint8))


def _journal(tmp_path, blob):
    path = tmp_path / "journal.log"
    path.write_bytes(blob)
    return str(path)


def _damaged_journal(tmp_path):
    """A real journal whose second line was cut short with later lines intact (a torn write).

    A journal cut after its last whole line is not damaged: Optuna reads up to there.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    good = tmp_path / "good.log"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name="s", storage=JournalStorage(JournalFileBackend(str(good)))
    )
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    lines = good.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]
    return _journal(tmp_path, b"\n".join(lines))


def _baseline(train):
    return f"baselines:\n  - name: b\n    train: {{{train}}}\n"


# "Billion laughs": 9**5 strings from six short lines; printed whole, the error would be megabytes.
ALIAS_BOMB = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
"""


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
    "trials 0": (lambda t: ["--trials", "0"], "--trials: must be from 1 to"),
    "trials negative": (lambda t: ["--trials", "-3"], "--trials: must be from 1 to"),
    "trials 10**9": (lambda t: ["--trials", "1000000000"], "--trials: must be from 1 to 100000"),
    "jobs 100000": (lambda t: ["--jobs", "100000"], "--jobs: must be from 1 to 256"),
    "workers 0": (lambda t: ["--workers", "0"], "--workers/--jobs: must be from 1 to 256"),
    "seed -1": (lambda t: ["--seed", "-1"], "--seed: must be from 0 to"),
    "seed 2**32-1": (lambda t: ["--seed", "4294967295"], "--seed: must be from 0 to"),
    "study name escapes": (lambda t: ["--study-name", "../x"], "--study-name '../x'"),
    "model name with a quote": (lambda t: ["--model-name", "it's"], "--model-name"),
    "validation split below the class count": (
        lambda t: ["--space", _space(t, "train:\n  validation_size: 5\n")],
        "train.validation_size: 5 does not fit digits",
    ),
    "yaml alias bomb": (lambda t: ["--space", _space(t, ALIAS_BOMB)], "expands to more than"),
    "space file too big": (
        lambda t: ["--space", _space(t, "# " + "x" * (1 << 20) + "\n")],
        "a search-space file holds at most",
    ),
    "long value is cut": (
        lambda t: ["--space", _space(t, f"params:\n  optimizer: {'x' * 5000}\n")],
        "params.optimizer: must be one of",
    ),
    "baseline max_epochs 0": (
        lambda t: ["--space", _space(t, _baseline("max_epochs: 0"))],
        "baselines[0].train.max_epochs: must be >= 1, got 0",
    ),
    "baseline patience -5": (
        lambda t: ["--space", _space(t, _baseline("patience: -5"))],
        "baselines[0].train.patience: must be >= 1, got -5",
    ),
    "baseline eval_batch_size 0": (
        lambda t: ["--space", _space(t, _baseline("eval_batch_size: 0"))],
        "baselines[0].train.eval_batch_size: must be >= 1, got 0",
    ),
    "password with a slash": (
        lambda t: ["--storage", "postgresql://bench:s3/cret@127.0.0.1:1/nodb"],
        "bench:***@127.0.0.1:1/nodb",
    ),
    "password with url characters": (
        lambda t: ["--storage", "postgresql://bench:pa:ss/w?rd#1@127.0.0.1:1/nodb"],
        "bench:***@127.0.0.1:1/nodb",
    ),
    "corrupt journal": (
        lambda t: ["--storage", _damaged_journal(t)],
        "the journal file",
    ),
    "journal not json": (
        lambda t: ["--storage", _journal(t, b"\x00\xff garbage\n" * 3)],
        "journal.log",
    ),
    "empty idx file": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(t / "d", lambda f: _write(f / data.IDX_FILES["y_test"], b"")),
        ],
        "the file is empty",
    ),
    "idx with no images": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(t / "d", _no_train_images),
        ],
        "hold no images",
    ),
    "float labels": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(t / "d", lambda f: _labels(f, np.arange(40, dtype=np.float32) % 2)),
        ],
        "train labels are float32",
    ),
    "int32 labels": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(t / "d", lambda f: _labels(f, np.arange(40, dtype=np.int32) % 2)),
        ],
        "train labels are int32",
    ),
    "label beyond the class count": (
        lambda t: [
            "--dataset",
            "mnist",
            "--data-dir",
            _idx_dir(t / "d", lambda f: _labels(f, np.r_[np.arange(39) % 2, 10].astype(np.uint8))),
        ],
        "found label 10, but mnist has 10 classes",
    ),
    "label with gaps": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(t / "d", lambda f: _labels(f, np.r_[np.arange(39) % 2, 200].astype(np.uint8))),
        ],
        "never occur",
    ),
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
    "metric is a list": (
        lambda t: ["--space", _space(t, "study:\n  metric: [a]\n")],
        "study.metric: must be one of",
    ),
    "type is a list": (
        lambda t: ["--space", _space(t, "params:\n  units: {type: [int], low: 1, high: 2}\n")],
        "params.units.type: must be int, float or categorical",
    ),
    "600 nested brackets": (
        lambda t: ["--space", _space(t, "params: " + "[" * 600 + "]" * 600 + "\n")],
        "nested deeper than 32",
    ),
    "5000-digit integer": (
        lambda t: ["--space", _space(t, "params:\n  units: " + "9" * 5000 + "\n")],
        "an integer of 5,000 digits",
    ),
    "space is a device": (lambda t: ["--space", "/dev/zero"], "not a regular file"),
    "space is a fifo": (lambda t: ["--space", _fifo(t)], "not a regular file (a FIFO)"),
    "baseline name with a slash": (
        lambda t: ["--space", _space(t, "baselines:\n  - name: a/b\n")],
        "baselines[0].name: use 1-100 letters",
    ),
    "baseline name of 250 characters": (
        lambda t: ["--space", _space(t, f"baselines:\n  - name: {'b' * 250}\n")],
        "baselines[0].name: use 1-100 letters",
    ),
    "space is a folder": (lambda t: ["--space", str(t)], "not a regular file (a folder)"),
    "baseline name with a leading dot": (
        lambda t: ["--space", _space(t, "baselines:\n  - name: .hidden\n")],
        "baselines[0].name: use 1-100 letters",
    ),
    "baseline name with a quote": (
        lambda t: ["--space", _space(t, 'baselines:\n  - name: "it\'s"\n')],
        "baselines[0].name: use 1-100 letters",
    ),
    "validation split above half the images": (
        lambda t: ["--space", _space(t, "train:\n  validation_size: 1500\n")],
        "train.validation_size: 1500 does not fit digits",
    ),
    "password with a quote": (
        lambda t: ["--storage", "postgresql://bench:s3cr'et@127.0.0.1:1/nodb"],
        "bench:***@127.0.0.1:1/nodb",
    ),
    "idx header whose size overflows": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(
                t / "d",
                lambda f: _write(
                    f / data.IDX_FILES["x_train"],
                    gzip.compress(b"\x00\x00\x0e\x04" + b"\xff\xff\xff\xff" * 4),
                ),
            ),
        ],
        "the IDX header declares shape",
    ),
    "idx gzip bomb": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(
                t / "d",
                lambda f: _write(
                    f / data.IDX_FILES["y_train"],
                    gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x0a" + bytes(64 << 20)),
                ),
            ),
        ],
        "more than the 10 bytes its header declares",
    ),
    "idx image with a zero side": (
        lambda t: [
            "--dataset",
            "idx",
            "--data-dir",
            _idx_dir(
                t / "d",
                lambda f: data.write_idx(
                    f / data.IDX_FILES["x_train"], np.zeros((40, 0, 4), dtype=np.uint8)
                ),
            ),
        ],
        "with a zero dimension",
    ),
}


def _fifo(tmp_path):
    import os

    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    return str(path)


@pytest.mark.component
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
    assert len(lines[0]) < 500, lines[0]  # values in messages are cut, never dumped whole
    assert "Traceback" not in proc.stderr
    assert not any(secret in proc.stderr + proc.stdout for secret in SECRETS)
    assert list(work.iterdir()) == []  # nothing written


@pytest.mark.component
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


@pytest.mark.postgres
@pytest.mark.slow
def test_one_database_for_mlflow_and_optuna_is_one_line(tmp_path):
    """MLflow and Optuna both keep their schema version in ``alembic_version``: one database
    cannot hold both, and the search must say so instead of every worker dying."""
    import os
    import uuid

    from tests.servers import free_port, kill_group, start_mlflow_server

    base = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("BENCH_TEST_POSTGRES_URL is not set; .ci/run must provide PostgreSQL")
        pytest.skip("no PostgreSQL: set BENCH_TEST_POSTGRES_URL=postgresql://user@host:5432/db")
    psycopg = pytest.importorskip("psycopg")
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        server = start_mlflow_server(tmp_path, url, free_port())  # creates MLflow's tables
        kill_group(server)
        work = tmp_path / "work"
        work.mkdir()
        proc = run_module(
            "bench.search", "--dataset", "digits", "--space", SMOKE, "--trials", "1",
            "--storage", url, cwd=work,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "its own database" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert list(work.iterdir()) == []
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    "password", ["s3cret", "s3/cret", "pa:ss/w?rd#1", "a%40b", "x/:/"], ids=repr
)
def test_redact_masks_any_password_before_cutting(password):
    from bench.errors import redact

    url = f"postgresql://bench:{password}@db.example:5432/optuna"
    text = f"cannot connect to {url} (timeout)"
    assert password not in redact(text)
    assert "postgresql://bench:***@db.example:5432/optuna" in redact(text)
    assert password not in redact(text, limit=30) and len(redact(text, limit=30)) == 30
    assert redact("http://127.0.0.1:5000/#/experiments/1/runs") == (
        "http://127.0.0.1:5000/#/experiments/1/runs"
    )


@pytest.mark.component
def test_a_study_named_dot_dot_reports_inside_reports(tmp_path):
    """A study name written by another Optuna client is not checked by bench: the report folder
    made from it must stay one folder below ``reports/``."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from bench.errors import folder_name

    assert [folder_name(n) for n in ("..", ".", "a/../b", "", "ok-1")] == [
        "_.", "_", "a_.._b", "_", "ok-1",
    ]  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    journal = str(work / "optuna-studies.log")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name="..", storage=JournalStorage(JournalFileBackend(journal))
    )
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    proc = run_module(
        "bench.report", "--storage", journal, "--study-name", "..", "--no-mlflow", cwd=work
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "report.md").exists() and not (work / "report.md").exists()
    assert (work / "reports" / "_." / "report.md").is_file(), sorted(work.rglob("*"))
