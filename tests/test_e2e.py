"""End to end on real Fashion-MNIST: the README's main command, as a subprocess, tiny budget."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_module
from tests.faults import trials_of

pytestmark = pytest.mark.slow


def _client(folder):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{folder}/mlflow.db")


def test_search_tracks_registers_and_the_champion_predicts_raw_pixels(fashion_search):
    folder = fashion_search
    trials = trials_of(folder, "fashion-mnist-mlp")
    assert [t.state.name in ("COMPLETE", "PRUNED") for t in trials] == [True, True]

    client = _client(folder)
    exp = client.get_experiment_by_name("fashion-mnist-mlp")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials_runs = [r for r in children if r.data.tags.get("purpose") == "search"]
    assert sorted(int(r.data.tags["trial_number"]) for r in trials_runs) == [0, 1]
    # the champion: the best two configurations (--ensemble 2, the default) refit on all 60,000
    # training images and averaged; every run nested under the batch's parent
    # (2 epochs never reach the first pruning rung, so both trials complete)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    refits = [r for r in children if r.data.tags.get("purpose") == "refit"]
    assert len(refits) == 2
    for run in refits:
        assert run.data.tags["refit"] == "true"
        assert run.info.status == "FINISHED" and run.data.params["split"] == "all"
    ensembles = [r for r in children if r.data.params.get("purpose") == "ensemble"]
    assert len(ensembles) == 1 and ensembles[0].info.status == "FINISHED"
    for run in trials_runs:
        for key in (
            "normalization",
            "n_layers",
            "units_0",
            "dropout_0",
            "l2",
            "optimizer",
            "learning_rate",
            "batch_size",
            "lr_schedule",
            "max_epochs",
            "patience",
            "seed",
        ):
            assert key in run.data.params, key
        assert run.data.params["max_epochs"] == "2"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 2
        assert run.data.tags["study_name"] == "fashion-mnist-mlp" and run.data.tags["space_hash"]
    assert parent.data.params["dataset"] == "fashion-mnist"
    assert parent.inputs.dataset_inputs[0].dataset.name == "fashion-mnist"
    assert "space/mlp.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id, "space")]

    version = client.get_model_version_by_alias("fashion-mnist-mlp", "champion")
    assert version.tags["refit"] == "true"
    assert version.tags["source"] == "ensemble" and version.tags["ensemble_size"] == "2"
    assert version.run_id == ensembles[0].info.run_id
    test_accuracy = float(version.tags["test_accuracy"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test_accuracy)

    import mlflow

    from bench.data import load_dataset

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/fashion-mnist-mlp@champion")
    ds = load_dataset("fashion-mnist")
    assert ds.x_test.dtype == np.uint8
    probs = np.asarray(model.predict(ds.x_test))
    assert probs.shape == (10000, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert float((probs.argmax(axis=1) == ds.y_test).mean()) == pytest.approx(
        test_accuracy, abs=1e-4
    )
    # two epochs of a sampled, untuned MLP: far past chance (0.1), whatever the sampler drew
    assert test_accuracy > 0.5


def test_rerunning_the_same_command_continues_the_same_study(fashion_search):
    proc = run_module(
        "bench.search",
        "--trials",
        "2",
        "--max-epochs",
        "2",
        "--quiet",
        cwd=fashion_search,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 2" in proc.stderr
    trials = trials_of(fashion_search, "fashion-mnist-mlp")
    assert len([t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    # the default space's starting configuration (study.enqueue) was trial 0, and only trial 0:
    # the second batch of the same study does not queue it again
    from bench.space import load_space, resolve_space

    (start,) = load_space(resolve_space("mlp")).enqueue
    same = [t.number for t in trials if t.params == start]
    assert same == [0], [(t.number, t.params) for t in trials]
    client = _client(fashion_search)
    exp = client.get_experiment_by_name("fashion-mnist-mlp")
    parents = client.search_runs([exp.experiment_id], "tags.role = 'study'")
    assert sorted(p.data.tags["batch"] for p in parents) == ["1", "2"]
    assert client.get_model_version_by_alias("fashion-mnist-mlp", "champion") is not None
    assert "models:/fashion-mnist-mlp@champion" in proc.stdout
