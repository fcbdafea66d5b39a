"""bench.ablate end to end on digits (a few seconds per cell), resume after SIGINT, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_module

BASE = """\
params:
  normalization: standard
  n_layers: 1
  units: 16
  optimizer: adam
  learning_rate: 0.01
  batch_size: 64
train:
  max_epochs: 3
  patience: 2
  validation_size: 300
  steps_per_execution: 4
  jit_compile: false
"""
STUDY = "digits-smoke"


def _args(folder: Path) -> list[str]:
    return [
        "--base-config", "base.yaml", "--space", "smoke", "--dataset", "digits",
        "--factors", "normalization", "--seeds", "2", "--jobs", "1", "--threads", "1",
        "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
    ]  # fmt: skip


def _jobs(folder: Path, design: str = "ablation"):
    from bench.engine.store import JobStore

    store = JobStore(str(folder / "optuna-studies.log"))
    batch = store.latest_batch(STUDY, design)
    jobs = store.jobs(batch.id) if batch else []
    store.dispose()
    return batch, jobs


def _done(folder: Path, design: str = "ablation") -> int:
    if not (folder / "optuna-studies.log.jobs.db").is_file():
        return 0
    try:
        return sum(1 for j in _jobs(folder, design)[1] if j.state == "done")
    except Exception:  # noqa: BLE001 - the store may be mid-creation
        return 0


def _interrupt(folder: Path, args: list[str], design: str, after: int) -> str:
    """Start ``bench.ablate args``, SIGINT it once ``after`` jobs of ``design`` are done; it must
    end with 130 and no traceback. Returns its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ablate", *args],
        cwd=folder, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while _done(folder, design) < after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "finished before it could be interrupted: " + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    return err


@pytest.mark.slow
def test_ablation_resumes_after_sigint_and_tracks_every_cell(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    err = _interrupt(tmp_path, _args(tmp_path), "ablation", 1)
    assert "rerun the same command to resume" in err
    batch, jobs = _jobs(tmp_path)
    before = {j.key: (j.id, j.run_id, j.result.train_seconds) for j in jobs if j.state == "done"}
    assert 1 <= len(before) < 6
    assert len(jobs) == 6  # every cell x seed was enqueued when the batch opened

    proc2 = run_module("bench.ablate", *_args(tmp_path), cwd=tmp_path, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert f"joining ablation batch {batch.number}" in proc2.stderr
    assert "What matters" in proc2.stdout and "normalization: effect" in proc2.stdout
    batch2, jobs2 = _jobs(tmp_path)
    assert batch2.id == batch.id and batch2.state == "done"
    assert len(jobs2) == 6 and all(j.state == "done" for j in jobs2)
    after = {j.key: (j.id, j.run_id, j.result.train_seconds) for j in jobs2}
    assert {k: after[k] for k in before} == before  # finished cells were not trained again
    assert sorted(after) == sorted(
        f"cell-{c}-s{s}"
        for c in ("base", "normalization=minmax", "normalization=per_pixel")
        for s in (0, 1)
    )
    summary = batch2.summary
    assert summary["finished"] == 6 and summary["headlines"][0].startswith("normalization:")

    # MLflow: one parent per ablation, tagged; one finished nested run per cell x seed
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("role") == "ablation"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["factors"] == "normalization"
    assert parent.data.tags["seeds"] == "0,1"
    assert parent.data.tags["base"] == "--base-config base.yaml"
    children = [
        r for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and r.info.status == "FINISHED"
    ]  # fmt: skip
    cells = sorted((r.data.params["factor"], r.data.params["level"], r.data.params["seed"])
                   for r in children)  # fmt: skip
    assert cells == sorted(
        (f, lv, s)
        for f, lv in (("base", "base"), ("normalization", "minmax"),
                      ("normalization", "per_pixel"))
        for s in ("0", "1")
    )  # fmt: skip
    assert all("test_accuracy" in r.data.metrics for r in children)

    # the same command once more: nothing trains, the results are printed
    proc3 = run_module("bench.ablate", *_args(tmp_path), cwd=tmp_path, timeout=300)
    assert proc3.returncode == 0, proc3.stderr[-2000:]
    assert "already complete" in proc3.stderr and "What matters" in proc3.stdout
    assert len(_jobs(tmp_path)[1]) == 6


CROSS = ["--cross", "normalization,optimizer"]


@pytest.mark.slow
def test_crossed_run_resumes_after_sigint_tracks_every_cell_and_reports_interactions(tmp_path):
    """Issue #19, item 1: 3 x 2 cells x 2 seeds on digits, interrupted, resumed, reported."""
    (tmp_path / "base.yaml").write_text(BASE)
    args = [a for a in _args(tmp_path) if a not in ("--factors", "normalization")] + CROSS
    err = _interrupt(tmp_path, args, "crossed", 2)
    assert "crossed: normalization x optimizer (3 x 2 levels) = 6 cells, 2 seeds" in err
    batch, jobs = _jobs(tmp_path, "crossed")
    before = {j.key: (j.id, j.run_id, j.result.train_seconds) for j in jobs if j.state == "done"}
    assert 2 <= len(before) < 12 and len(jobs) == 12

    proc2 = run_module("bench.ablate", *args, cwd=tmp_path, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert f"joining crossed batch {batch.number}" in proc2.stderr
    batch2, jobs2 = _jobs(tmp_path, "crossed")
    assert batch2.id == batch.id and batch2.state == "done"
    assert len(jobs2) == 12 and all(j.state == "done" for j in jobs2)
    after = {j.key: (j.id, j.run_id, j.result.train_seconds) for j in jobs2}
    assert {k: after[k] for k in before} == before  # finished cells were not trained again
    assert sorted(after) == sorted(
        f"cross-normalization={n},optimizer={o}-s{s}"
        for n in ("minmax", "standard", "per_pixel") for o in ("adam", "momentum") for s in (0, 1)
    )  # fmt: skip
    assert "Interactions" in proc2.stdout and "normalization x optimizer: " in proc2.stdout
    assert "Interaction contrasts normalization x optimizer" in proc2.stdout
    assert len(batch2.summary["records"]) == 12 and len(batch2.summary["headlines"]) == 3

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("design") == "crossed"]
    assert (
        parent.info.status == "FINISHED"
        and parent.data.tags["factors"] == "normalization,optimizer"
    )
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children = [r for r in children if r.info.status == "FINISHED"]  # not a KILLED first try
    cells = sorted((r.data.params["level"], r.data.params["seed"], r.data.params["normalization"],
                    r.data.params["optimizer"]) for r in children)  # fmt: skip
    assert len(cells) == 12 and all(c[0] == f"{c[2]},{c[3]}" for c in cells)
    assert {r.data.params["factor"] for r in children} == {"normalization,optimizer"}

    rep = run_module("bench.report", "--study-name", STUDY, "--out", "r", "--tracking-uri",
                     f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.index("## Interactions") < md.index("## Summary")
    assert "![Interactions](interactions.png)" in md
    assert (tmp_path / "r" / "interactions.png").stat().st_size > 10_000

    proc3 = run_module("bench.ablate", *args, cwd=tmp_path, timeout=300)
    assert proc3.returncode == 0 and "already complete" in proc3.stderr
    assert "Interactions" in proc3.stdout and len(_jobs(tmp_path, "crossed")[1]) == 12


def _study(folder: Path, name: str = "searched", complete: bool = True) -> None:
    """A study with one completed and one pruned trial (no job store), or an empty one."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(folder / "optuna-studies.log")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    if not complete:
        return
    config = {"normalization": "standard", "n_layers": 1, "units": [16], "activation": ["relu"],
              "dropout": [0.0], "l2": 0.0, "optimizer": "adam", "learning_rate": 0.01,
              "batch_size": 64, "lr_schedule": "constant"}  # fmt: skip
    dist = {"normalization": CategoricalDistribution(["minmax", "standard"])}
    for state, value in ((TrialState.COMPLETE, 0.9), (TrialState.PRUNED, None)):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"normalization": "standard"}, distributions=dist,
            user_attrs={"bench.config": config}, intermediate_values={0: 0.5},
        ))  # fmt: skip


BAD = [
    # (files to write, study to create, args, message)
    ({}, None, ["--factors", "normalisation"], "did you mean 'normalization'?"),
    ({}, None, ["--factors", "batch_size"], "single level"),
    ({}, None, ["--seeds", "1"], "--seeds: must be from 2"),
    ({"bad.yaml": "parms: {units: 16}\n"}, None, ["--base-config", "bad.yaml"],
     "unknown key 'parms'; did you mean 'params'?"),
    ({"bad.yaml": "params: {unitz: 16}\n"}, None, ["--base-config", "bad.yaml"],
     "unknown key 'unitz'; did you mean 'units'?"),
    ({}, "searched", ["--study-name", "searched", "--base-trial", "7"], "has no trial 7"),
    ({}, "searched", ["--study-name", "searched", "--base-trial", "1"], "did not complete"),
    ({}, "empty", ["--study-name", "empty"], "has no completed trial"),
    ({}, None, ["--study-name", "nope"], "no such study"),
    # a --base-config file gets the bounds a space file gets (issue #20, items 10 and 11)
    ({"deep.yaml": "params: " + "[" * 600 + "]" * 600 + "\n"}, None,
     ["--base-config", "deep.yaml"], "--base-config deep.yaml: line 1, column 40: nested deeper"),
    ({"big.yaml": "params: {units: " + "9" * 5000 + "}\n"}, None,
     ["--base-config", "big.yaml"], "an integer of 5,000 digits"),
    ({}, None, ["--base-config", "/dev/zero"],
     "--base-config /dev/zero: not a regular file (a character device)"),
    ({"fifo": None}, None, ["--base-config", "fifo"], "--base-config fifo: not a regular file"),
    # --cross (issue #19): 2 or 3 factors, known, not also varied alone, within the cell limit
    ({}, None, ["--cross", "normalization,optimiser"], "did you mean 'optimizer'?"),
    ({}, None, ["--cross", "normalization"], "--cross: 1 factor(s) given (normalization)"),
    ({}, None, ["--cross", "normalization,optimizer,units,l2"], "--cross: 4 factor(s) given"),
    ({}, None, ["--cross", "normalization,optimizer", "--factors", "optimizer"],
     "--cross and --factors both name 'optimizer'"),
    ({}, None, ["--cross", "normalization,optimizer", "--max-cells", "4"],
     "= 6 cells x 3 seeds = 18 jobs, over the limit of 4 cells"),
    # --path (issue #19): its two ends, and nothing else beside it
    ({}, None, ["--path", "--from", "config", "base.yaml", "--to", "config", "base.yaml"],
     "--path: the reference and the target are the same configuration"),
    ({}, None, ["--path", "--from", "baseline", "dense300-100-sgd-standar", "--to", "config",
                "base.yaml"], "did you mean 'dense300-100-sgd-standard'?"),
    ({}, None, ["--path", "--from", "teddy", "1"], "--from teddy 1: KIND must be one of"),
    ({}, None, ["--path", "--cross", "normalization,optimizer"], "--path with --cross"),
    ({}, None, ["--to", "config", "base.yaml"], "--to: only with --path"),
    # --global (issue #19): at least 8 configurations, and no base or factors beside it
    ({}, None, ["--global", "7"], "argument --global: must be from 8 to 1024 configurations"),
    ({}, None, ["--global", "16", "--cross", "normalization,optimizer"], "--global with --cross"),
    ({}, None, ["--global", "16", "--factors", "optimizer"], "--global with --factors"),
    ({}, None, ["--global", "16", "--path"], "--global with --path"),
]  # fmt: skip


@pytest.mark.component
@pytest.mark.parametrize("files, study, args, message", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, files, study, args, message):
    (tmp_path / "base.yaml").write_text(BASE)
    for name, text in files.items():
        if text is None:
            os.mkfifo(tmp_path / name)  # a FIFO with no writer: reading it would wait forever
        else:
            (tmp_path / name).write_text(text)
    if study:
        _study(tmp_path, study, complete=study != "empty")
    if "--base-config" not in args and "--study-name" not in args and "--path" not in args:
        args = ["--base-config", "base.yaml", *args]
    common = ["--space", "smoke", "--dataset", "digits"]
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_module("bench.ablate", *common, *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.component
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    proc = run_module("bench.ablate", *_args(tmp_path), "--dry-run", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 cells (1 shared base + 2), 2 seeds (0, 1) -> 6 jobs" in proc.stderr
    assert "minmax | standard* | per_pixel" in proc.stderr
    assert "estimated time" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml"]


def test_design_jobs_are_paired_and_deterministic():
    from bench.designs.ablation import AblationDesign, plan_to_settings
    from bench.designs.ablation_plan import plan
    from bench.space import load_space

    space = load_space("smoke")
    config = {"normalization": "standard", "n_layers": 1, "units": 16, "dropout": 0.0,
              "l2": 1e-5, "optimizer": "adam", "learning_rate": 0.01}  # fmt: skip
    p = plan(space, config, ["normalization", "optimizer"], [0, 1])
    settings = {"plan": plan_to_settings(p, {"max_epochs": 2})}
    specs = AblationDesign(settings).initial_jobs()
    assert len(specs) == len(p.cells) * 2 == 8
    assert [s.key for s in specs[:4]] == [
        "cell-base-s0", "cell-normalization=minmax-s0", "cell-normalization=per_pixel-s0",
        "cell-optimizer=momentum-s0",
    ]  # fmt: skip
    assert all(s.purpose == "ablation" and s.train == {"max_epochs": 2} for s in specs)
    assert {s.seed for s in specs} == {0, 1}
    assert specs[1].info == {"factor": "normalization", "level": "minmax", "is_base": False}
    assert specs[1].config["normalization"] == "minmax" and specs[1].config["units"] == [16]
    assert AblationDesign(settings).initial_jobs() == specs
    assert AblationDesign(settings).next_jobs([], 3) == []


TARGET = (
    BASE.replace("normalization: standard", "normalization: minmax")
    .replace("units: 16", "units: 32")
    .replace("learning_rate: 0.01", "learning_rate: 0.005")
)


@pytest.mark.slow
def test_ablation_path_runs_its_stages_resumes_after_sigint_and_reports(tmp_path):
    """Issue #19, item 2: 3 parameters differ, so stage 0 (reference, target, 3 leave-one-out),
    step 1 (3 moves) and step 2 (2 moves) x 2 seeds = 20 jobs; interrupted and resumed."""
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "target.yaml").write_text(TARGET)
    args = [
        "--path", "--from", "config", "base.yaml", "--to", "config", "target.yaml",
        "--space", "smoke", "--dataset", "digits", "--seeds", "2", "--jobs", "1",
        "--threads", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    err = _interrupt(tmp_path, args, "path", 3)
    assert "path: 3 parameter(s) differ (normalization, units, learning_rate)" in err
    batch, jobs = _jobs(tmp_path, "path")
    before = {j.key: (j.id, j.run_id) for j in jobs if j.state == "done"}
    assert 3 <= len(before) < 20

    proc2 = run_module("bench.ablate", *args, cwd=tmp_path, timeout=900)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    batch2, jobs2 = _jobs(tmp_path, "path")
    assert batch2.id == batch.id and batch2.state == "done"
    assert len(jobs2) == 20 and all(j.state == "done" for j in jobs2)
    after = {j.key: (j.id, j.run_id) for j in jobs2}
    assert {k: after[k] for k in before} == before  # finished cells were not trained again
    steps = sorted({k.rsplit("-s", 1)[0] for k in after if k.startswith("path-step")})
    assert len(steps) == 5 and sum(s.startswith("path-step1-") for s in steps) == 3
    summary = batch2.summary
    assert [m["step"] for m in summary["path"]] == [1, 2, 3]
    assert summary["headlines"][0].startswith("path total: target minus reference")
    assert "Ablation path" in proc2.stdout and "leave-one-out" in proc2.stdout

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    (parent,) = [r for r in runs if r.data.tags.get("design") == "path"]
    children = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and r.info.status == "FINISHED"
    ]  # fmt: skip (the interrupted job's first run ended KILLED)
    assert len(children) == 20 and {r.data.params["factor"] for r in children} == {"path"}
    assert {r.data.params["seed"] for r in children} == {"0", "1"}

    rep = run_module("bench.report", "--study-name", STUDY, "--out", "r", "--tracking-uri",
                     f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Ablation path" in md and "![Ablation path](path.png)" in md
    assert (tmp_path / "r" / "path.png").stat().st_size > 10_000


@pytest.mark.slow
def test_global_run_resumes_after_sigint_tracks_every_configuration_and_reports(tmp_path):
    """Issue #19, item 3: 8 space-filling configurations on digits, 2 of them repeated with a
    second seed (10 jobs), interrupted, resumed without retraining, reported with its floors."""
    args = [
        "--global", "8", "--space", "smoke", "--dataset", "digits", "--seeds", "2",
        "--jobs", "1", "--threads", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    err = _interrupt(tmp_path, args, "global", 2)
    assert "global: 8 configurations from a scrambled Sobol sequence" in err
    assert "2 of them also with seed(s) 1 for the noise floor -> 10 jobs" in err
    batch, jobs = _jobs(tmp_path, "global")
    before = {j.key: (j.id, j.run_id) for j in jobs if j.state == "done"}
    assert 2 <= len(before) < 10 and len(jobs) == 10

    proc2 = run_module("bench.ablate", *args, cwd=tmp_path, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    batch2, jobs2 = _jobs(tmp_path, "global")
    assert batch2.id == batch.id and batch2.state == "done"
    assert len(jobs2) == 10 and all(j.state == "done" for j in jobs2)
    after = {j.key: (j.id, j.run_id) for j in jobs2}
    assert {k: after[k] for k in before} == before  # finished jobs were not trained again
    assert sorted(after) == sorted([f"global-c{i}-s0" for i in range(8)]
                                   + ["global-c0-s1", "global-c7-s1"])  # fmt: skip
    summary = batch2.summary
    assert len(summary["records"]) == 10 and summary["analysis"]["n_used"] == 8
    evaluators = [e["name"] for e in summary["analysis"]["evaluators"]]
    assert evaluators == ["fanova", "ped-anova"]
    assert "Importance over the whole space" in proc2.stdout
    assert "seed-noise floor" in proc2.stdout and "chance floor" in proc2.stdout

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("design") == "global"]
    assert parent.info.status == "FINISHED" and parent.data.params["configurations"] == "8"
    children = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and r.info.status == "FINISHED"
    ]  # fmt: skip (the interrupted job's first run ended KILLED)
    assert len(children) == 10 and {r.data.params["factor"] for r in children} == {"global"}
    levels = sorted(r.data.params["level"] for r in children)
    assert levels == sorted([f"c{i}" for i in range(8)] + ["c0", "c7"])

    rep = run_module("bench.report", "--study-name", STUDY, "--out", "r", "--tracking-uri",
                     f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Importance over the whole space" in md and "(seed-noise floor)" in md
    assert "![Importance over the whole space](importance.png)" in md
    assert (tmp_path / "r" / "importance.png").stat().st_size > 10_000
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h3>Importance over the whole space</h3>" in page

    proc3 = run_module("bench.ablate", *args, cwd=tmp_path, timeout=300)
    assert proc3.returncode == 0 and "already complete" in proc3.stderr
    assert "Importance over the whole space" in proc3.stdout
