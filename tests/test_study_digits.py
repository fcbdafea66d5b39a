"""Component: real searches on scikit-learn's digits, tracked into a temporary sqlite MLflow store.

One search (a subprocess, like a user) is shared by the tests that read what it left: the job
store, the Optuna trials, the MLflow runs and the registered champion. A batch of fixed
configurations is run by an in-process :class:`bench.engine.worker.Worker` to show that a
diverging and a raising configuration fail alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.component  # trains Keras in this process
pytest.importorskip("keras")

from bench.engine.store import JobStore  # noqa: E402
from bench.records import SEARCH, JobSpec  # noqa: E402
from tests.conftest import run_module  # noqa: E402
from tests.faults import jobs_of, mlflow_runs, trials_of  # noqa: E402

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
STUDY = "digits-space"
MODEL = "digits-mlp"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits-search")
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", "space.yaml", "--trials", "4",
        "--jobs", "1", "--quiet", cwd=folder,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc


def test_every_job_is_recorded_in_the_store_optuna_and_mlflow(searched):
    folder, _ = searched
    jobs = jobs_of(folder, STUDY)
    search = [j for j in jobs if j.purpose == SEARCH]
    assert len(search) == 4 and all(j.state == "done" and j.synced for j in search)
    assert [j.spec.seed for j in search] == [0, 1, 2, 3]  # job seeds are seed + job index

    trials = {t.number: t for t in trials_of(folder, STUDY)}
    client, runs = mlflow_runs(folder)
    by_id = {r.info.run_id: r for r in runs}
    for j in search:
        t = trials[j.trial_number]
        r = j.result
        run = by_id[j.run_id]
        assert t.state.name == {"completed": "COMPLETE", "pruned": "PRUNED"}[r.status]
        assert t.user_attrs["bench.config"] == r.config == j.spec.config
        assert t.user_attrs["bench.mlflow_run_id"] == j.run_id
        assert run.data.tags["trial_number"] == str(j.trial_number)
        assert run.data.tags["purpose"] == SEARCH and run.data.tags["state"] == r.status
        assert run.info.status == {"completed": "FINISHED", "pruned": "KILLED"}[r.status]
        if r.status == "pruned":
            assert r.reason.startswith("pruned at epoch")
            assert run.data.tags["state_reason"].startswith("pruned at epoch")
        else:
            assert t.value == pytest.approx(r.value)
            assert run.data.metrics["best_val_accuracy"] == pytest.approx(r.value)
        for key in ("normalization", "units_0", "optimizer", "batch_size", "max_epochs",
                    "patience", "seed", "learning_rate"):  # fmt: skip
            assert key in run.data.params, key
        assert run.data.params["seed"] == str(j.spec.seed)
        assert float(run.data.params["learning_rate"]) == pytest.approx(r.config["learning_rate"])
        history = client.get_metric_history(j.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(r.epochs_run))
        for key in ("loss", "accuracy", "val_loss"):
            assert len(client.get_metric_history(j.run_id, key)) == len(history)
        assert {"epochs_run", "train_seconds", "param_count"} <= set(run.data.metrics)


def test_one_parent_run_per_batch_holds_every_job_run(searched):
    folder, _ = searched
    store = JobStore(str(folder / "optuna-studies.log"))
    (batch,) = store.batches(STUDY)
    assert batch.state == "done"
    client, runs = mlflow_runs(folder)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert [p.info.run_id for p in parents] == [batch.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == batch.parent_run_id]
    assert sorted(r.info.run_id for r in children) == sorted(j.run_id for j in store.jobs(batch.id))
    assert parents[0].data.metrics["test_accuracy"] == pytest.approx(batch.summary["test_accuracy"])


def test_the_champion_averages_the_two_best_configurations_refit_on_all_images(searched):
    import mlflow

    from bench.data import load_dataset

    folder, proc = searched
    jobs = jobs_of(folder, STUDY)
    summary = JobStore(str(folder / "optuna-studies.log")).batches(STUDY)[0].summary
    done = [j for j in jobs if j.purpose == SEARCH and j.result.status == "completed"]
    top = sorted(done, key=lambda j: (-j.result.value, j.id))[:2]  # by validation score only
    assert len(top) == 2, "the fixture's search should complete at least two trials"
    refits = sorted((j for j in jobs if j.purpose == "refit"), key=lambda j: j.spec.info["member"])
    assert [j.key for j in refits] == ["refit", "refit-1"]
    for member, best in zip(refits, top, strict=True):
        assert member.spec.config == best.result.config
        assert member.spec.split == "all"
        assert member.result.epochs_run == best.result.best_epoch + 1
        assert member.result.registered is None  # the ensemble is registered, not its members
        assert member.result.test_accuracy is not None  # each member's own, reported
    (ensemble,) = [j for j in jobs if j.purpose == "ensemble"]
    assert summary["source"] == f"{top[0].key}+{top[1].key}" and summary["refit"] is True
    mean_score = (top[0].result.value + top[1].result.value) / 2
    assert summary["selection_score"] == pytest.approx(mean_score)

    client, runs = mlflow_runs(folder)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == str(summary["version"]) == "1"
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
    assert version.tags["study_name"] == STUDY and version.tags["batch"] == "1"
    assert version.tags["source"] == "ensemble" and version.tags["refit"] == "true"
    assert version.tags["ensemble_size"] == "2"
    assert version.tags["refit_epochs"] == "+".join(str(j.result.epochs_run) for j in refits)
    assert float(version.tags["test_accuracy"]) == pytest.approx(summary["test_accuracy"])
    assert float(version.tags["selection_score"]) == pytest.approx(mean_score)
    assert version.tags["promoted"] == "true"
    assert version.run_id == ensemble.run_id  # its own run, nested under the batch's parent
    parent = {r.info.run_id: r for r in runs}[ensemble.run_id].data.tags["mlflow.parentRunId"]
    assert parent == JobStore(str(folder / "optuna-studies.log")).batches(STUDY)[0].parent_run_id
    assert f"registered {MODEL} version 1 (the mean of 2 configurations" in proc.stdout

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    ds = load_dataset("digits")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    probs = np.asarray(model.predict(ds.x_test))  # raw uint8 pixels in, probabilities out
    assert probs.shape == (len(ds.x_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    accuracy = float((probs.argmax(axis=1) == ds.y_test).mean())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    # the served model is the mean of the two refit members' probabilities
    parts = [np.asarray(mlflow.pyfunc.load_model(j.result.model_uri).predict(ds.x_test))
             for j in refits]  # fmt: skip
    np.testing.assert_allclose(probs, (parts[0] + parts[1]) / 2, atol=1e-5)


def test_the_champion_run_and_version_say_what_the_model_averages(searched):
    from bench.data import load_dataset

    folder, _ = searched
    jobs = jobs_of(folder, STUDY)
    by_key = {j.key: j for j in jobs}
    refits = sorted((j for j in jobs if j.purpose == "refit"), key=lambda j: j.spec.info["member"])
    (ensemble,) = [j for j in jobs if j.purpose == "ensemble"]
    summary = JobStore(str(folder / "optuna-studies.log")).batches(STUDY)[0].summary
    client, runs = mlflow_runs(folder)
    run = {r.info.run_id: r for r in runs}[ensemble.run_id]
    experiment = run.info.experiment_id
    note = run.data.tags["mlflow.note.content"]
    for i, member in enumerate(refits):
        source = by_key[member.spec.info["source"]]
        # each member's configuration, on the ensemble's own run
        assert run.data.params[f"member{i}.source"] == source.key
        assert run.data.params[f"member{i}.normalization"] == member.spec.config["normalization"]
        assert run.data.params[f"member{i}.optimizer"] == member.spec.config["optimizer"]
        assert run.data.params[f"member{i}.units_0"] == str(member.spec.config["units"][0])
        assert run.data.params[f"member{i}.refit_epochs"] == str(member.result.epochs_run)
        # and the runs that trained and scored it, as tags and as links in the run's note
        assert run.data.tags[f"member{i}.run"] == member.run_id
        assert run.data.tags[f"member{i}.source_run"] == source.run_id
        assert f"(#/experiments/{experiment}/runs/{member.run_id})" in note
        assert f"(#/experiments/{experiment}/runs/{source.run_id})" in note

    version = client.get_model_version_by_alias(MODEL, "champion")
    text = version.description
    images = len(load_dataset("digits").x_train)
    epochs = "+".join(str(j.result.epochs_run) for j in refits)
    assert text.startswith("Mean of the probabilities of 2 configurations (search-"), text
    assert f"refit on all {images:,} training images for {epochs} epochs" in text
    assert f"chosen by validation accuracy {summary['selection_score']:.4f}" in text
    assert text.endswith(f"test accuracy {summary['test_accuracy']:.4f}."), text
    assert "\n" not in text and ". " not in text  # one sentence
    assert text in note


def test_predicting_with_the_champion_prints_no_keras_warning(searched):
    import warnings

    import mlflow

    from bench.data import load_dataset

    folder, _ = searched
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    images = load_dataset("digits").x_test[:5]
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            assert np.asarray(model.predict(images)).shape == (5, 10)
    messages = [str(w.message) for w in seen]
    keras_warnings = [m for m in messages if "structure" in m or "Expected" in m]
    assert not keras_warnings, keras_warnings


@pytest.mark.component
def test_ensemble_1_registers_the_single_best_configuration_refit(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", "space.yaml", "--trials", "3",
        "--jobs", "1", "--quiet", "--ensemble", "1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = jobs_of(tmp_path, STUDY)
    best = max((j for j in jobs if j.purpose == SEARCH and j.result.status == "completed"),
               key=lambda j: (j.result.value, -j.id))  # fmt: skip
    (refit,) = [j for j in jobs if j.purpose == "refit"]
    assert not [j for j in jobs if j.purpose in ("register", "ensemble")]
    assert refit.spec.config == best.result.config and refit.spec.split == "all"
    assert refit.result.epochs_run == best.result.best_epoch + 1
    client, _ = mlflow_runs(tmp_path)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["source"] == "refit" and version.run_id == refit.run_id
    assert float(version.tags["selection_score"]) == pytest.approx(best.result.value)
    assert version.description.startswith(f"{best.key} ({best.result.config['normalization']}, ")
    assert f"for {refit.result.epochs_run} epochs; chosen by validation accuracy" in (
        version.description
    )
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path)[1]}
    note = runs[refit.run_id].data.tags["mlflow.note.content"]
    assert version.description in note and f"/runs/{best.run_id})" in note
    assert "refit on all training images for" in proc.stdout


def test_champion_moves_only_when_the_validation_score_is_not_worse(searched):
    from bench.tracking import Tracker
    from bench.tracking.registry import register_champion

    folder, _ = searched
    tracker = Tracker(f"sqlite:///{folder}/mlflow.db", "digits-mlp")
    champion = tracker.champion(MODEL)
    uri = f"models:/{MODEL}/{champion.version}"
    score = float(champion.tags["selection_score"])
    digest = champion.tags["dataset_digest"]

    worse = register_champion(tracker, uri, MODEL, {"study_name": "x", "batch": 1, "job": "a"},
                              {}, score - 0.1, digest)  # fmt: skip
    assert worse["promoted"] is False and worse["champion_version"] == str(champion.version)
    again = register_champion(tracker, uri, MODEL, {"study_name": "x", "batch": 1, "job": "a"},
                              {}, score - 0.1, digest)  # fmt: skip
    assert again["version"] == worse["version"]  # same identity: the same version, not a new one
    better = register_champion(tracker, uri, MODEL, {"study_name": "x", "batch": 1, "job": "b"},
                               {}, score + 0.01, digest)  # fmt: skip
    assert better["promoted"] is True
    assert str(tracker.champion(MODEL).version) == better["version"]
    other_data = register_champion(tracker, uri, MODEL, {"study_name": "y", "batch": 1, "job": "c"},
                                   {}, 0.0, "another-dataset")  # fmt: skip
    assert other_data["promoted"] is True  # scores on another dataset are not comparable
    assert len(tracker.client.search_model_versions(f"name='{MODEL}'")) == 4


def test_diverging_and_raising_configurations_fail_alone_and_the_batch_goes_on(
    workdir, monkeypatch
):
    from bench.engine import open_batch
    from bench.engine.driver import drive_here
    from bench.engine.worker import WorkerSettings
    from bench.space import load_space
    from bench.tracking import Tracker

    space = {
        **SPACE,
        "study": {"pruner": {"name": "none"}},
        "params": {
            "n_layers": 2,
            "batch_size": 64,
            "units": {"type": "int", "low": 8, "high": 1_000_000, "log": True},
            "normalization": {"type": "categorical", "choices": ["none", "minmax"]},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e30, "log": True},
        },
    }
    (workdir / "faulty.yaml").write_text(yaml.safe_dump(space))
    loaded = load_space(workdir / "faulty.yaml")
    base = {"activation": ["relu", "relu"], "batch_size": 64, "dropout": [0.0, 0.0], "l2": 0.0,
            "lr_schedule": "constant", "n_layers": 2}  # fmt: skip
    configs = [  # raw pixels with a huge SGD step diverge; a 10^6 x 10^6 layer cannot be allocated
        {**base, "normalization": "none", "optimizer": "sgd", "learning_rate": 1e30,
         "units": [16, 16]},
        {**base, "normalization": "minmax", "optimizer": "adam", "learning_rate": 1e-2,
         "units": [1_000_000, 1_000_000]},
        {**base, "normalization": "minmax", "optimizer": "adam", "learning_rate": 1e-2,
         "units": [16, 16]},
    ]  # fmt: skip
    storage = str(workdir / "journal.log")
    uri = f"sqlite:///{workdir}/mlflow.db"
    settings = {"space": str(loaded.path), "dataset": "digits", "data_dir": None,
                "experiment": "digits-exp", "model_name": MODEL, "seed": 0, "max_epochs": None,
                "n_trials": 3, "register": False, "refit": True, "reeval_top_k": 0,
                "reeval_seeds": 0, "baselines": [], "max_failures": 1}  # fmt: skip
    tracker = Tracker(uri, "digits-exp")
    specs = [JobSpec(key=f"search-{i:04d}", purpose=SEARCH, seed=i, config=c)
             for i, c in enumerate(configs)]  # fmt: skip
    store = JobStore(storage)
    from bench import optuna_adapter as opt

    opt.open_study("faulty", storage, loaded, 0)
    batch, created = open_batch(
        store, "faulty", "search", "search", settings, lambda s: specs,
        lambda b: tracker.start_parent("faulty-batch-1", {}, {"role": "study"}), tracker,
    )  # fmt: skip
    assert created
    assert drive_here(WorkerSettings(storage, uri, batch.id, threads=2)) == 0

    jobs = {j.key: j for j in store.jobs(batch.id)}
    diverged, oom, good = (jobs[f"search-{i:04d}"] for i in range(3))
    assert diverged.state == "done" and diverged.result.status == "diverged"
    assert "loss became" in diverged.result.reason or "non-finite" in diverged.result.reason
    assert diverged.result.epochs_run <= 1
    assert oom.state == "failed" and "ResourceExhausted" in oom.reason
    assert good.state == "done" and good.result.status == "completed"
    replacement = jobs.get("search-0001+")  # the failed configuration is replaced by a fresh one
    assert replacement is not None and replacement.spec.config != oom.spec.config
    assert replacement.state in ("done", "failed")
    assert store.get_batch(batch.id).state == "done"

    runs = {r.info.run_id: r for r in mlflow_runs(workdir, uri, "digits-exp")[1]}
    assert runs[diverged.run_id].info.status == "FAILED"
    assert runs[diverged.run_id].data.tags["state"] == "diverged"
    assert runs[oom.run_id].info.status == "FAILED"
    assert "ResourceExhausted" in runs[oom.run_id].data.tags["state_reason"]
    assert runs[good.run_id].info.status == "FINISHED"
    states = {t.number: t.state for t in opt.trials(opt.load_study("faulty", storage))}
    assert "RUNNING" not in states.values()


@pytest.mark.component
def test_the_report_says_how_the_champion_was_chosen_and_its_val_to_test_gap(searched):
    folder, _ = searched
    jobs = jobs_of(folder, STUDY)
    members = sorted((j for j in jobs if j.purpose == "refit"), key=lambda j: j.spec.info["member"])
    summary = JobStore(str(folder / "optuna-studies.log")).batches(STUDY)[0].summary
    proc = run_module("bench.report", "--no-mlflow", "--study-name", STUDY, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = proc.stdout.split("== Champion", 1)[1].split("\n== ", 1)[0]
    assert "the mean of 2 configurations' probabilities" in section
    assert f"test accuracy {summary['test_accuracy']:.4f}" in section
    assert f"val->test gap {summary['val_test_gap'] * 100:+.1f} points" in section
    for j in members:
        assert (
            f"- member {j.spec.info['source']}: validation {j.spec.info['selection_score']:.4f}, "
            f"test alone {j.result.test_accuracy:.4f}" in section
        )
    markdown = (folder / "reports" / STUDY / "report.md").read_text(encoding="utf-8")
    assert "## Champion (chosen by validation" in markdown


def test_no_start_leaves_the_spaces_start_out_and_min_epochs_holds_early_stopping(tmp_path):
    # min_delta 0.5: no epoch improves on the first, so patience 1 alone would stop at 2 epochs
    start = {"learning_rate": 0.01}
    space = {
        **SPACE,
        "study": {**SPACE["study"], "pruner": {"name": "none"}, "enqueue": [start]},
        "train": {**SPACE["train"], "patience": 1, "min_delta": 0.5, "min_epochs": 3},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", "space.yaml", "--trials", "2",
        "--jobs", "1", "--quiet", "--no-register", "--no-start", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(tmp_path, "digits-space")
    assert len(trials) == 2
    assert all(t.params["learning_rate"] != start["learning_rate"] for t in trials)
    # every search trial trained min_epochs (3) epochs before early stopping could end it
    assert [len(t.intermediate_values) for t in trials] == [3, 3]
