"""bench.report on synthetic studies: built with Optuna directly, no training, no TensorFlow."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from PIL import Image

from bench.data import FASHION_CLASSES
from tests.conftest import cli_env, run_module

STUDY = "fashion-mnist-mlp"
NORMS = ["none", "minmax", "standard"]
OPTS = ["sgd", "adam"]
DISTS = {
    "normalization": CategoricalDistribution(NORMS),
    "n_layers": IntDistribution(1, 3),
    "units_0": IntDistribution(32, 512, log=True),
    "optimizer": CategoricalDistribution(OPTS),
    "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
}
PLOTS = (  # importances.png needs 20 trials at the equal budget; this study has 9
    "history.png",
    "wall_time.png",
    "parallel.png",
    "slice.png",
    "learning_curves.png",
    "confusion_matrix.png",
)
T0 = dt.datetime(2025, 1, 1, 12, 0, 0)


def _history(rng, epochs: int, final: float) -> dict[str, list[float]]:
    acc = list(np.linspace(final - 0.1, final, epochs) + rng.normal(0, 0.003, epochs))
    loss = list(np.linspace(0.9, 0.3, epochs))
    return {
        "loss": loss,
        "accuracy": [a + 0.01 for a in acc],
        "val_loss": [x + 0.05 for x in loss],
        "val_accuracy": acc,
        "learning_rate": [1e-3] * epochs,
    }


def _config(p: dict) -> dict:
    n = p["n_layers"]
    return {
        "normalization": p["normalization"],
        "n_layers": n,
        "units": [p["units_0"]] * n,
        "activation": ["relu"] * n,
        "dropout": [0.1] * n,
        "l2": 1e-5,
        "optimizer": p["optimizer"],
        "learning_rate": p["learning_rate"],
        "batch_size": 128,
        "lr_schedule": "constant",
    }


def _add(study, number: int, state: TrialState, value, params: dict, attrs: dict) -> None:
    trial = optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions={k: DISTS[k] for k in params},
        user_attrs=attrs,
        intermediate_values={0: 0.5, 1: 0.6} if state != TrialState.FAIL else None,
    )
    trial.datetime_start = T0 + dt.timedelta(minutes=2 * number)
    trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=90)
    study.add_trial(trial)


def build_study(
    storage, name: str = STUDY, n_search: int = 10, baseline: bool = True
) -> optuna.Study:
    """Search trials (some pruned, one failed), a baseline row, and the study-level attributes."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for i in range(n_search):
        params = {
            "normalization": NORMS[i % 3],
            "n_layers": 1 + i % 3,
            "units_0": int(rng.integers(32, 512)),
            "optimizer": OPTS[i % 2],
            "learning_rate": float(10 ** rng.uniform(-4, -1)),
        }
        state = {3: TrialState.PRUNED, 7: TrialState.PRUNED, 5: TrialState.FAIL}.get(
            i, TrialState.COMPLETE
        )
        value = round(0.80 + 0.008 * i + 0.01 * (params["normalization"] != "none"), 4)
        attrs = {"bench.config": _config(params), "bench.seed": i, "bench.batch_id": 1}
        if state != TrialState.FAIL:
            epochs = 3 if state == TrialState.PRUNED else 6
            attrs.update(
                {
                    "bench.history": _history(rng, epochs, value),
                    "bench.epochs": epochs,
                    "bench.best_epoch": epochs - 1,
                    "bench.train_seconds": 10.0 + i,
                }
            )
        if state != TrialState.COMPLETE:
            attrs["bench.reason"] = "pruned at epoch 2" if state == TrialState.PRUNED else "boom"
        _add(study, i, state, value if state == TrialState.COMPLETE else None, params, attrs)
    if baseline:
        cfg = {
            **_config(
                {
                    "normalization": "standard",
                    "n_layers": 2,
                    "units_0": 300,
                    "optimizer": "sgd",
                    "learning_rate": 0.01,
                }
            ),
            "units": [300, 100],
        }
        _add(
            study,
            n_search,
            TrialState.COMPLETE,
            0.8878,
            {},
            {
                "bench.config": cfg,
                "bench.epochs": 10,
                "bench.train_seconds": 28.0,
                "bench.history": _history(rng, 10, 0.8878),
                "bench.test_accuracy": 0.8793,
                "bench.baseline": {
                    "name": "dense300-100-sgd-standard",
                    "config": cfg,
                    "train": {"max_epochs": 10},
                    "published_test_accuracy": 0.8825,
                },
            },
        )
    matrix = (np.eye(10, dtype=int) * 900 + rng.integers(0, 12, (10, 10))).tolist()
    study.set_user_attr(
        "bench.confusion_matrix", {"trial": 9, "classes": list(FASHION_CLASSES), "matrix": matrix}
    )
    return study


def add_batch(
    journal_path,
    study: str,
    design: str,
    summary: dict | None,
    parent_run_id: str | None = None,
    settings: dict | None = None,
) -> None:
    """A finished batch in the job store beside the journal, as the engine records one."""
    from bench.engine.store import JobStore

    store = JobStore(str(journal_path))
    batch = store.create_batch(
        study, design, f"{design}-test", settings or {"experiment": "fashion-mnist-mlp"}
    )
    if parent_run_id:
        store.set_parent_run(batch.id, parent_run_id)
    store.set_batch_state(batch.id, "running")
    store.finish_batch(batch.id, summary or {})
    store.dispose()


REEVAL_SUMMARY = {
    "reeval": [
        {
            "source": "search-0009",
            "seeds": 3,
            "val_mean": 0.884,
            "val_ci": [0.87406, 0.89394],
            "test_mean": 0.879,
            "test_ci": [0.87, 0.888],
        },
        {
            "source": "search-0008",
            "seeds": 3,
            "val_mean": 0.8723,
            "val_ci": [0.866, 0.8786],
            "test_mean": 0.868,
            "test_ci": [0.86, 0.876],
        },
    ]
}


def ablation_summary() -> dict:
    """Records of a 2-factor ablation with 3 seeds: 'none' clearly worse, sgd about the same."""
    recs = []
    for seed, noise in enumerate((0.0, 0.002, -0.001)):
        recs.append(
            {
                "factor": "base",
                "level": "base",
                "seed": seed,
                "is_base": True,
                "val_accuracy": 0.88 + noise,
                "test_accuracy": 0.875 + noise,
            }
        )
        for level, delta in (("minmax", 0.001), ("none", -0.04)):
            recs.append(
                {
                    "factor": "normalization",
                    "level": level,
                    "seed": seed,
                    "is_base": False,
                    "val_accuracy": 0.88 + noise + delta + 0.0005 * seed,
                    "test_accuracy": None,
                }
            )
        recs.append(
            {
                "factor": "optimizer",
                "level": "sgd",
                "seed": seed,
                "is_base": False,
                "val_accuracy": 0.88 - noise * 2,
                "test_accuracy": 0.87,
            }
        )
    return {
        "finished": len(recs),
        "failed": 0,
        "records": recs,
        "base_levels": {"normalization": "standard", "optimizer": "adam"},
    }


def journal(path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A synthetic study with an MLflow parent run, reported once by the CLI."""
    from bench.tracking import Tracker

    folder = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    parent = Tracker(uri, "fashion-mnist-mlp").start_parent("fashion-mnist-mlp-batch-1", {}, {})
    study = build_study(journal(folder / "optuna-studies.log"))
    add_batch(folder / "optuna-studies.log", STUDY, "search", REEVAL_SUMMARY, parent)
    proc = run_module(
        "bench.report", "--tracking-uri", uri, "--top-k", "3", cwd=folder, timeout=300
    )
    return {
        "folder": folder,
        "uri": uri,
        "parent": parent,
        "study": study,
        "proc": proc,
        "out": folder / "reports" / STUDY,
    }


@pytest.mark.component
def test_report_prints_every_table(reported):
    proc = reported["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for title in (
        "Trials (top 3 ranked first)",
        "Breakdown by normalization",
        "Breakdown by optimizer",
        "Breakdown by depth",
        "Baselines: published vs reproduced",
        "Re-evaluated configurations",
    ):
        assert title in out, title
    assert out.count("from an adaptive search — levels were tried unequally") == 3
    assert "best_eq_budget" in out and "median_eq_budget" in out
    assert "What matters" not in out  # no ablation batch
    row = next(line for line in out.splitlines() if "search-0009" in line)
    assert "0.884" in row and "[0.8741, 0.8939]" in row
    row = next(
        line
        for line in out.splitlines()
        if "dense300-100-sgd-standard" in line and "0.8825" in line
    )
    assert "0.8793" in row and "-0.0032" in row and "yes" in row


@pytest.mark.component
def test_pngs_are_nontrivial_images(reported):
    for name in PLOTS:
        with Image.open(reported["out"] / name) as img:
            assert img.format == "PNG"
            assert img.width >= 400 and img.height >= 250, (name, img.size)
            colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 50, (name, len(colours or []))


@pytest.mark.component
def test_markdown_lists_every_trial_and_links_existing_images(reported):
    text = (reported["out"] / "report.md").read_text()
    table = text.split("## Trials", 1)[1].split("\n## ", 1)[0]
    listed = {int(m.group(1)) for m in re.finditer(r"^\| \d* \| (\d+) \| [A-Z]+ \|", table, re.M)}
    assert listed == {t.number for t in reported["study"].trials} == set(range(11))
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(PLOTS)
    assert all((reported["out"] / link).is_file() for link in links)


@pytest.mark.component
def test_top_k_are_the_best_completed_trials(reported):
    from bench.results.report import trials_frame

    frame = trials_frame(reported["study"], 3)
    done = sorted(
        (t for t in reported["study"].trials if t.state == TrialState.COMPLETE),
        key=lambda t: -t.value,
    )
    assert list(frame["trial"][:3]) == [t.number for t in done[:3]]
    assert list(frame["rank"][:4]) == ["1", "2", "3", ""]
    assert set(frame["state"][len(done) :]) == {"PRUNED", "FAIL"}


@pytest.mark.component
def test_ablation_groups_by_normalization(reported):
    from bench.results.report import breakdown, trials_frame

    table = breakdown(trials_frame(reported["study"], 3), "normalization", "val_accuracy", True)
    by = table.set_index("normalization")
    for norm in NORMS:
        done = [
            t.value
            for t in reported["study"].trials
            if t.state == TrialState.COMPLETE
            and t.user_attrs["bench.config"]["normalization"] == norm
        ]
        finished = [
            t
            for t in reported["study"].trials
            if t.state.name in ("COMPLETE", "PRUNED")
            and t.user_attrs["bench.config"]["normalization"] == norm
        ]
        assert by.loc[norm, "best"] == pytest.approx(max(done))
        assert by.loc[norm, "median"] == pytest.approx(float(np.median(done)))
        assert by.loc[norm, "completed"] == len(done)
        assert by.loc[norm, "finished"] == len(finished)
    assert list(table["best"]) == sorted(table["best"], reverse=True)
    # equal budget: every finished trial's value after 2 epochs (intermediate value at step 1)
    for norm in NORMS:
        finished = [
            t
            for t in reported["study"].trials
            if t.state.name in ("COMPLETE", "PRUNED")
            and t.user_attrs["bench.config"]["normalization"] == norm
        ]
        assert by.loc[norm, "best_eq_budget"] == pytest.approx(
            max(t.intermediate_values[1] for t in finished)
        )
    assert list(table.columns[:5]) == [
        "normalization",
        "best",
        "best_eq_budget",
        "median",
        "median_eq_budget",
    ]


@pytest.mark.component
def test_report_is_logged_to_the_parent_run(reported):
    from mlflow import MlflowClient

    names = {
        a.path.split("/")[-1]
        for a in MlflowClient(reported["uri"]).list_artifacts(reported["parent"], "report")
    }
    assert names == {"report.md", "report.html", *PLOTS}


@pytest.mark.component
def test_report_never_imports_tensorflow(reported):
    code = (
        "import sys; from bench.report import main; rc = main(['--tracking-uri', "
        f"{reported['uri']!r}, '--out', 'tf-check']); "
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "print('HEAVY', heavy, rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=reported["folder"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "HEAVY [] 0" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


@pytest.mark.component
def test_small_study_skips_importances_with_a_note(tmp_path):
    storage = journal(tmp_path / "optuna-studies.log")
    build_study(storage, n_search=1, baseline=False)
    proc = run_module("bench.report", "--out", "r", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Parameter importances (fANOVA) at the equal budget, 95% bootstrap intervals: " in (
        proc.stdout
    )
    why = (
        "skipped, 1 finished trial(s) reached the equal budget, and importances from fewer than 20"
    )
    assert why in proc.stdout and "bench.ablate --factors, or --cross" in proc.stdout
    assert "not logged to MLflow: the study has no parent run" in proc.stderr
    assert (tmp_path / "r" / "history.png").is_file()
    assert not (tmp_path / "r" / "importances.png").exists()
    assert not (tmp_path / "mlflow.db").exists()  # a report never creates a tracking store


@pytest.mark.component
def test_several_studies_need_a_name(tmp_path):
    storage = journal(tmp_path / "optuna-studies.log")
    build_study(storage, name="alpha", n_search=2, baseline=False)
    build_study(storage, name="beta", n_search=2, baseline=False)
    proc = run_module("bench.report", "--no-mlflow", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --study-name is required: optuna-studies.log holds 2 studies (alpha, beta)"
    ]
    proc = run_module(
        "bench.report", "--study-name", "beta", "--no-mlflow", cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "reports" / "beta" / "report.md").is_file()


@pytest.mark.component
@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-k", "0"], "--top-k: must be >= 1, got 0"),
        (["--storage", "missing.log"], "--storage missing.log: no such journal file"),
        (["--study-name", "nope"], "--study-name 'nope': not in optuna-studies.log"),
        (
            ["--storage", "postgresql://bench:s3cret@127.0.0.1:1/db"],
            "--storage postgresql://bench:***@",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    build_study(journal(tmp_path / "optuna-studies.log"), n_search=2, baseline=False)
    proc = run_module("bench.report", *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout


@pytest.mark.component
def test_what_matters_leads_with_a_forest_plot_and_no_tensorflow(tmp_path):
    """A finished ablation batch: the report opens with What matters and writes its plot."""
    log = tmp_path / "optuna-studies.log"
    build_study(journal(log), n_search=4, baseline=False)
    add_batch(
        log,
        STUDY,
        "ablation",
        ablation_summary(),
        settings={"base_source": "trial 2", "experiment": "fashion-mnist-mlp"},
    )
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
        "from bench.report import main; rc = main(['--no-mlflow', '--out', 'r']); "
        "print('RC', rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "RC 0" in proc.stdout, proc.stdout[-1000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert out.index("== What matters") < out.index("== Summary")
    assert "1. normalization: effect" in out and "2. optimizer: effect" in out
    assert "none worse by" in out
    assert "around trial 2" in out
    text = (tmp_path / "r" / "report.md").read_text()
    assert text.index("## What matters") < text.index("## Summary")
    assert "![What matters](what_matters.png)" in text
    with Image.open(tmp_path / "r" / "what_matters.png") as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 250


def _champion_batch(summary: dict):
    from bench.records import Batch

    return Batch(1, STUDY, 1, "search", "i", "done", {"model_name": "m"}, "p", summary)


def test_champion_section_states_a_loss_gap_as_a_loss_not_as_points():
    from bench.results.report import champion_section

    loss = {"version": "3", "champion_version": "3", "source": "search-0004", "refit": True,
            "refit_epochs": 12, "selection_metric": "val_loss", "selection_score": 0.30,
            "test_loss": 0.35, "test_accuracy": 0.88, "val_test_gap": -0.05}  # fmt: skip
    text = champion_section([_champion_batch(loss)])
    assert "chosen by validation loss 0.3000; test loss 0.3500; test accuracy 0.8800" in text
    assert "val->test gap -0.0500 (loss)" in text and "points" not in text
    accuracy = {**loss, "selection_metric": "val_accuracy", "selection_score": 0.905,
                "test_accuracy": 0.9, "val_test_gap": 0.005}  # fmt: skip
    text = champion_section([_champion_batch(accuracy)])
    assert "chosen by validation 0.9050; test accuracy 0.9000; val->test gap +0.5 points" in text


@pytest.mark.component
def test_a_crossed_run_adds_interactions_and_their_plot_with_tensorflow_blocked(tmp_path):
    """Issue #19: a finished crossed batch puts its interactions and plot under What matters."""
    log = tmp_path / "optuna-studies.log"
    build_study(journal(log), n_search=4, baseline=False)
    levels = {"normalization": ["standard", "none"], "optimizer": ["adam", "sgd"]}
    recs = [
        {"levels": {"normalization": n, "optimizer": o}, "seed": s, "test_accuracy": None,
         "val_accuracy": 0.88 - (0.1 if (n, o) == ("none", "sgd") else 0) + noise}
        for (n, o, s), noise in zip(
            [(n, o, s) for n in levels["normalization"] for o in levels["optimizer"]
             for s in range(3)],
            np.random.default_rng(0).normal(0, 0.003, 12), strict=True,
        )
    ]  # fmt: skip
    summary = {"finished": 12, "failed": 0, "records": recs, "levels": levels,
               "base_levels": {"normalization": "standard", "optimizer": "adam"}}  # fmt: skip
    settings = {"base_source": "trial 2", "factors": ["normalization", "optimizer"]}
    add_batch(log, STUDY, "crossed", summary, settings=settings)
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
        "from bench.report import main; rc = main(['--no-mlflow', '--out', 'r']); "
        "print('RC', rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert "RC 0" in proc.stdout, proc.stdout[-1000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert out.index("== Interactions") < out.index("== Summary")
    assert "crossed normalization x optimizer (batch 1, around trial 2" in out
    assert "normalization x optimizer: normalization none (vs standard) is worse by" in out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h3>Interactions</h3>" in page and "No controlled ablation" not in page
    assert page.count("data:image/png;base64") >= 2  # the interaction plot is embedded
    with Image.open(tmp_path / "r" / "interactions.png") as img:
        assert img.format == "PNG" and img.width >= 400


@pytest.mark.component
def test_importances_count_pruned_trials_at_the_equal_budget_with_intervals(tmp_path):
    """Issue #19, item 4: every finished trial at the equal budget, an interval, the count."""
    storage = journal(tmp_path / "optuna-studies.log")
    build_study(storage, n_search=24, baseline=False)
    proc = run_module("bench.report", "--out", "r", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Parameter importances" not in proc.stdout.split("note:", 1)[-1]  # drawn, no note
    with Image.open(tmp_path / "r" / "importances.png") as img:
        assert img.format == "PNG" and img.width >= 400
