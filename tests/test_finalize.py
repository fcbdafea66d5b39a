"""bench.finalize: the confidence interval, the choice of configurations, and a real --finalize run
on a tiny digits search tracked into a temp sqlite MLflow store."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage

from bench.finalize import SEED0, candidates, mean_ci
from tests.conftest import SPACES, run_module

# ---------------------------------------------------------------- units (no TensorFlow)


def test_mean_ci_uses_students_t():
    mean, low, high = mean_ci([0.80, 0.82, 0.84])
    # t(0.975, df=2) = 4.302652729911275; sample std = 0.02; half width = t * 0.02 / sqrt(3)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.82)
    assert (low, high) == pytest.approx((0.82 - half, 0.82 + half))


def test_mean_ci_needs_two_values_for_an_interval():
    mean, low, high = mean_ci([0.9])
    assert mean == 0.9 and math.isnan(low) and math.isnan(high)
    assert mean_ci([0.5, 0.5]) == (0.5, 0.5, 0.5)  # no spread, no width


def _trial(value, units, state=optuna.trial.TrialState.COMPLETE, baseline=None):
    config = {"n_layers": 1, "units": [units], "optimizer": "adam"}
    attrs = {"bench.config": config}
    if baseline:
        attrs["bench.baseline"] = {"name": baseline, "train": {"max_epochs": 5}}
    return optuna.trial.create_trial(state=state, value=value, params={"u": units},
                                     distributions={"u": IntDistribution(1, 999)},
                                     user_attrs=attrs)


def test_candidates_are_the_best_distinct_configurations():
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        _trial(0.80, 10), _trial(0.90, 20), _trial(0.90, 20),  # a duplicate of the best
        _trial(0.85, 30), _trial(0.95, 40, state=optuna.trial.TrialState.PRUNED),
        _trial(0.88, 20, baseline="seed"),  # same model, other training: a distinct candidate
    ])
    assert [t.number for t in candidates(study, 3)] == [1, 5, 3]
    assert [t.number for t in candidates(study, 10)] == [1, 5, 3, 0]


def test_candidates_follow_the_direction():
    study = optuna.create_study(direction="minimize")
    study.add_trials([_trial(0.3, 1), _trial(0.1, 2), _trial(0.2, 3)])
    assert [t.number for t in candidates(study, 2)] == [1, 2]


# ---------------------------------------------------------------- component: a real finalize


@pytest.fixture(scope="module")
def finalized(tmp_path_factory):
    """A 3-trial digits search, then --finalize --top-k 2 --seeds 2 (about a minute on 2 cores)."""
    folder = tmp_path_factory.mktemp("finalize")
    # smoke.yaml without pruning: --finalize --top-k 2 needs two completed trials, and whether the
    # median pruner cuts the third trial depends on the order two workers finish in.
    space = folder / "smoke.yaml"
    space.write_text((SPACES / "smoke.yaml").read_text().replace(
        "pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: {name: none}"))
    assert "pruner: {name: none}" in space.read_text()
    search = run_module("bench.search", "--dataset", "digits", "--space", str(space),
                        "--trials", "3", "--quiet", cwd=folder)
    assert search.returncode == 0, search.stderr[-3000:]
    # No --dataset/--space: they default to what the search recorded (digits, the copy).
    args = ["--finalize", "--top-k", "2", "--seeds", "2", "--out", "rep"]
    proc = run_module("bench.report", *args, cwd=folder)
    study = optuna.load_study(study_name="digits-smoke", storage=JournalStorage(
        JournalFileBackend(str(folder / "optuna-studies.log"))))
    return {"folder": folder, "proc": proc, "study": study, "args": args, "space": space,
            "uri": f"sqlite:///{folder / 'mlflow.db'}"}


def test_finalize_retrains_k_times_r_models(finalized):
    proc = finalized["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = finalized["study"].user_attrs["bench.finalized"]
    assert record["retrains"] == 4 and record["seeds"] == [SEED0, SEED0 + 1]
    top2 = [t.number for t in candidates(finalized["study"], 2)]
    assert [c["trial"] for c in record["configs"]] == top2
    for c in record["configs"]:
        assert [r["seed"] for r in c["runs"]] == record["seeds"]
        assert len(c["test_accuracy"]) == 2 and all(0 <= a <= 1 for a in c["test_accuracy"])
        assert c["ci_low"] <= c["mean"] <= c["ci_high"]
        assert c["mean"] == pytest.approx(sum(c["test_accuracy"]) / 2)
    champion = record["champion"]
    assert champion["mean"] == max(c["mean"] for c in record["configs"])
    assert "Finalized champion" in proc.stdout and f"{champion['mean']:.4f} ±" in proc.stdout


def test_every_retrain_is_an_mlflow_run_under_the_parent(finalized):
    from mlflow import MlflowClient

    client = MlflowClient(finalized["uri"])
    parent = finalized["study"].user_attrs["bench.batch"]["parent_run_id"]
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], "tags.role = 'finalize'")
    assert len(runs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert all("test_accuracy" in r.data.metrics for r in runs)


def test_champion_is_registered_with_its_interval(finalized):
    from mlflow import MlflowClient

    record = finalized["study"].user_attrs["bench.finalized"]
    champion = record["champion"]
    version = MlflowClient(finalized["uri"]).get_model_version_by_alias("digits-mlp", "champion")
    assert version.version == champion["version"]
    tags = version.tags
    assert tags["source"] == "finalize" and tags["n_seeds"] == "2"
    assert float(tags["test_accuracy_mean"]) == pytest.approx(champion["mean"])
    assert float(tags["test_accuracy_ci95_low"]) == pytest.approx(champion["ci_low"])
    assert float(tags["test_accuracy_ci95_high"]) == pytest.approx(champion["ci_high"])
    assert tags["finalized_from_trial"] == str(champion["trial"])
    assert float(tags["test_accuracy"]) == max(
        next(c for c in record["configs"] if c["trial"] == champion["trial"])["test_accuracy"])
    cm = finalized["study"].user_attrs["bench.confusion_matrix"]
    assert cm["source"] == "finalize" and cm["trial"] == champion["trial"]
    assert sum(map(sum, cm["matrix"])) == 360  # digits' test split


def test_finalize_again_reuses_the_record(finalized):
    before = finalized["study"].user_attrs["bench.finalized"]
    proc = run_module("bench.report", *finalized["args"], cwd=finalized["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finalized" in proc.stderr
    assert finalized["study"].user_attrs["bench.finalized"] == before


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "fashion-mnist"], "was searched on digits; pass --dataset digits"),
    (["--space", str(SPACES / "mlp.yaml")], "was searched with another space"),
    (["--seeds", "1"], "--seeds 1: a confidence interval needs at least 2 seeds"),
])
def test_finalize_refuses_mismatched_inputs(finalized, extra, message):
    proc = run_module("bench.report", "--finalize", *extra, cwd=finalized["folder"], timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
