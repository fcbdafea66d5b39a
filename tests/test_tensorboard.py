"""``python -m bench.search --tensorboard DIR`` writes one TensorBoard log folder per trial."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from tests.conftest import SPACES, run_module

STUDY = "digits-smoke"  # <dataset>-<space file stem>


def _scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


@pytest.mark.slow
def test_tensorboard_logs_each_trials_epochs(workdir):
    if importlib.util.find_spec("tensorboard") is None and not os.environ.get("CI"):
        pytest.skip("--tensorboard needs the tensorboard package: pip install tensorboard")
    proc = run_module("bench.search", "--dataset", "digits", "--space", str(SPACES / "smoke.yaml"),
                      "--trials", "1", "--jobs", "1", "--tensorboard", "tb", "--quiet",
                      cwd=workdir, timeout=600, MLFLOW_DISABLE_TELEMETRY="true",
                      DO_NOT_TRACK="true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial_dir = workdir / "tb" / STUDY / "search-0000"  # one folder per job, named by its key
    assert sorted(p.name for p in (workdir / "tb" / STUDY).iterdir()) == ["refit", "search-0000"], (
        "a job failed and was replaced; see the search's stderr:\n" + proc.stderr[-2000:]
    )
    for part in ("train", "validation"):
        assert list((trial_dir / part).glob("events.out.tfevents.*")), f"no event file in {part}/"

    import optuna

    from bench.optuna_adapter import make_storage

    storage = make_storage(str(workdir / "optuna-studies.log"))
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trial = study.trials[0]
    history = trial.user_attrs["bench.history"]  # what the trial reported, epoch by epoch
    logged = _scalars(trial_dir / "validation", "epoch_accuracy")
    assert [step for step, _ in logged] == list(range(trial.user_attrs["bench.epochs"]))
    np.testing.assert_allclose([v for _, v in logged], history["val_accuracy"], atol=1e-5)
    assert not (workdir / "tensorboard").exists()  # only the folder asked for


@pytest.mark.slow
def test_tensorboard_is_off_by_default(workdir):
    proc = run_module("bench.search", "--dataset", "digits", "--space", "smoke", "--trials", "1",
                      "--jobs", "1", "--no-register", "--quiet", cwd=workdir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (workdir / "tensorboard").exists()
    assert not any(p.name.startswith("events.out.tfevents") for p in workdir.rglob("*"))
