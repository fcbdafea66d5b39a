"""Component: a real study on scikit-learn's digits, tracked into a temporary sqlite MLflow store.

The slots are enqueued with chosen parameters so that pruning is certain: a good configuration
first, then one whose learning rate is far too small, which the median pruner stops.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")

from bench import study as st  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.registry import ALIAS, finalize  # noqa: E402
from bench.space import parse_space  # noqa: E402
from bench.tracking import Tracker  # noqa: E402
from bench.worker import SearchConfig, Worker  # noqa: E402

SPACE = {
    "version": 1,
    "study": {
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    },
    "train": {
        "max_epochs": 4,
        "patience": 3,
        "validation_size": 300,
        "steps_per_execution": 4,
        "jit_compile": False,
    },
    "params": {
        "n_layers": 1,
        "units": 32,
        "batch_size": 64,
        "learning_rate": {"type": "float", "low": 1e-6, "high": 0.05, "log": True},
    },
}
GOOD, BAD = {"learning_rate": 0.02}, {"learning_rate": 1e-6}


def study_with_slots(tmp_path, space: dict, name: str, slots: list[dict]):
    """A study whose batch 1 holds the given parameter sets as slots (what open_batch does)."""
    import yaml

    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    cfg = SearchConfig(
        space_path=str(space_file),
        dataset="digits",
        study_name=name,
        storage=str(tmp_path / "journal.log"),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        experiment="digits-exp",
        model_name="digits-mlp",
        seed=0,
        threads=1,
    )
    study = st.open_study(
        name, st.make_storage(cfg.storage), parse_space(space, str(space_file)), 0
    )
    tracker = Tracker(cfg.tracking_uri, cfg.experiment)
    parent = tracker.start_parent(f"{name}-batch-1", {"n_trials": len(slots)}, {"study_name": name})
    for params in slots:
        study.enqueue_trial(params, user_attrs={st.SLOT_ATTR: 1})
    study.set_user_attr(st.BATCH_ATTR, st.Batch(1, parent, len(slots), "running").record())
    return cfg, study, tracker, parent


@pytest.fixture
def search(tmp_path):
    return study_with_slots(tmp_path, SPACE, "digits-test", [GOOD, BAD])


def test_two_trial_study_is_tracked_pruned_and_registered(search, tmp_path):
    cfg, study, tracker, parent = search
    worker = Worker(cfg, 1)
    assert worker.run() == "done"
    summary = worker.finalize_if_last()

    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[1].user_attrs[st.REASON_ATTR].startswith("pruned at epoch")
    assert trials[0].user_attrs["bench.model_uri"].startswith("models:/")
    assert "bench.model_uri" not in trials[1].user_attrs  # no model for a non-improving trial

    client = tracker.client
    runs = client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    by_number = {int(r.data.tags["trial_number"]): r for r in runs}
    assert sorted(by_number) == [0, 1]
    good, bad = by_number[0], by_number[1]
    assert good.info.status == "FINISHED" and good.data.tags["optuna_state"] == "COMPLETE"
    assert bad.info.status == "KILLED" and bad.data.tags["optuna_state"] == "PRUNED"
    assert bad.data.tags["state_reason"].startswith("pruned at epoch")
    assert float(good.data.params["learning_rate"]) == pytest.approx(0.02)
    for key in (
        "normalization",
        "units_0",
        "optimizer",
        "batch_size",
        "max_epochs",
        "patience",
        "seed",
    ):
        assert key in good.data.params
    assert good.data.params["seed"] == "0" and bad.data.params["seed"] == "1"
    assert good.data.tags["dataset_digest"] == worker.dataset.digest
    history = client.get_metric_history(good.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(trials[0].user_attrs["bench.epochs"]))
    for key in ("loss", "accuracy", "val_loss", "learning_rate"):
        assert len(client.get_metric_history(good.info.run_id, key)) == len(history)
    assert {"best_val_accuracy", "epochs_run", "train_seconds", "param_count"} <= set(
        good.data.metrics
    )

    # registry: version with the test numbers, alias champion, parent run finished with test metrics
    version = client.get_model_version_by_alias("digits-mlp", ALIAS)
    assert str(version.version) == summary["registered"] == "1"
    assert float(version.tags["test_accuracy"]) == pytest.approx(summary["test_accuracy"])
    assert (
        version.tags["trial_number"] == "0"
        and version.tags["previous_champion_test_accuracy"] == "none"
    )
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert st.current_batch(study).state == "done"

    # the registered model takes raw uint8 pixels and returns probabilities
    import mlflow

    ds = load_dataset("digits")
    model = mlflow.pyfunc.load_model("models:/digits-mlp@champion")
    probs = np.asarray(model.predict(ds.x_test))
    assert probs.shape == (len(ds.x_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    accuracy = float((probs.argmax(axis=1) == ds.y_test).mean())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    confusion = study.user_attrs["bench.confusion_matrix"]
    assert np.trace(confusion["matrix"]) == round(accuracy * len(ds.y_test))


def test_champion_moves_only_when_test_accuracy_improves(search):
    cfg, study, tracker, parent = search
    worker = Worker(cfg, 1)
    worker.run()
    first = worker.finalize_if_last()
    client = tracker.client
    # a second registration of a worse model must not take the alias
    champion = client.get_model_version_by_alias("digits-mlp", ALIAS)
    client.set_model_version_tag("digits-mlp", champion.version, "test_accuracy", "0.9999")
    client.delete_model_version_tag(
        "digits-mlp", champion.version, "trial_number"
    )  # forces re-registration
    second = finalize(study, st.current_batch(study), tracker, worker.dataset, cfg, worker.space)
    assert second["registered"] == "2" and second["promoted"] is False
    assert (
        str(client.get_model_version_by_alias("digits-mlp", ALIAS).version) == first["registered"]
    )
    v2 = client.get_model_version("digits-mlp", "2")
    assert v2.tags["previous_champion_test_accuracy"] == "0.9999" and v2.tags["promoted"] == "false"


def test_diverging_and_raising_trials_fail_alone_and_the_study_goes_on(tmp_path):
    space = {
        **SPACE,
        "params": {
            "n_layers": 2,
            "batch_size": 64,
            "units": {"type": "int", "low": 8, "high": 1_000_000, "log": True},
            "normalization": {"type": "categorical", "choices": ["none", "minmax"]},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e30, "log": True},
        },
    }
    space["study"] = {"pruner": {"name": "none"}}
    slots = [  # raw pixels with a huge SGD step diverge; a 10^6 x 10^6 layer cannot be allocated
        {"normalization": "none", "optimizer": "sgd", "learning_rate": 1e30, "units": 16},
        {"normalization": "minmax", "optimizer": "adam", "learning_rate": 1e-2, "units": 1_000_000},
        {"normalization": "minmax", "optimizer": "adam", "learning_rate": 1e-2, "units": 16},
    ]
    cfg, study, tracker, parent = study_with_slots(tmp_path, space, "faulty", slots)

    worker = Worker(cfg, 1)
    assert worker.run() == "done"
    trials = sorted(study.trials, key=lambda t: t.number)
    diverged, oom, good = trials[:3]
    assert diverged.state.name == "PRUNED"
    assert (
        "loss became" in diverged.user_attrs[st.REASON_ATTR]
        or "non-finite" in diverged.user_attrs[st.REASON_ATTR]
    )
    assert diverged.user_attrs["bench.epochs"] <= 1
    assert oom.state.name == "FAIL" and "ResourceExhausted" in oom.user_attrs[st.REASON_ATTR]
    assert good.state.name == "COMPLETE"
    replacement = trials[3:]  # the failed configuration's slot was replaced by a fresh one
    assert len(replacement) == 1 and replacement[0].state.name in ("COMPLETE", "PRUNED", "FAIL")
    runs = {
        int(r.data.tags["trial_number"]): r
        for r in tracker.client.search_runs(
            [tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
        )
    }
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["optuna_state"] == "PRUNED"
    assert (
        runs[1].info.status == "FAILED" and "ResourceExhausted" in runs[1].data.tags["state_reason"]
    )
    assert runs[2].info.status == "FINISHED"
