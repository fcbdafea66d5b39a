"""``train.cv_folds: K``: a job is scored as the mean over K stratified folds of training data."""

from __future__ import annotations

import pytest

from bench.errors import SpaceError
from bench.space import parse_space
from tests.conftest import run_module, write_space

SPACE = """
version: 1
study:
  metric: val_accuracy
  sampler: {name: random, seed: 0}
  pruner: {name: none}
train:
  max_epochs: 2
  patience: 2
  validation_size: 300
  steps_per_execution: 4
  jit_compile: false
  cv_folds: 3
params:
  n_layers: 1
  units: 32
  batch_size: 64
  learning_rate: {type: float, low: 0.005, high: 0.02, log: true}
"""


def test_cv_folds_is_validated():
    base = {"version": 1, "params": {"n_layers": 1}}
    assert parse_space({**base, "train": {"cv_folds": 4}}, "s.yaml").train.cv_folds == 4
    assert parse_space(base, "s.yaml").train.cv_folds == 1  # off by default
    for bad in (0, 21, "three"):
        with pytest.raises(SpaceError, match="cv_folds"):
            parse_space({**base, "train": {"cv_folds": bad}}, "s.yaml")


@pytest.mark.slow
def test_search_job_value_is_the_mean_over_folds(workdir):
    pytest.importorskip("keras")
    from bench.engine.store import JobStore

    space = write_space(workdir / "cv.yaml", SPACE)
    proc = run_module(
        "bench.search",
        "--dataset",
        "digits",
        "--space",
        str(space),
        "--trials",
        "2",
        "--jobs",
        "1",
        "--quiet",
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = [j for j in JobStore("optuna-studies.log").jobs(1) if j.purpose == "search"]
    assert len(jobs) == 2
    for j in jobs:
        folds = j.result.history["cv_val_accuracy"]
        assert len(folds) == 3 and len(set(folds)) > 1  # three different validation folds
        assert j.result.value == pytest.approx(sum(folds) / 3)
