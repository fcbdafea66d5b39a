"""Crash guarantees with real processes: a SIGKILL at every named kill point, then a plain rerun.

Each kill-point test runs ``python -m bench.search`` with ``BENCH_TEST_KILL_AT=<point>`` (the
process SIGKILLs itself there: no handler, no cleanup), snapshots what the job store had recorded,
reruns the same command without the variable and checks the guarantees of the engine:

- the rerun exits 0 without waiting on the dead claimant;
- exactly N search jobs are done in the batch, and exactly N COMPLETE/PRUNED search trials of
  the batch are in Optuna (a FAIL trial for the killed attempt is allowed);
- no Optuna trial and no MLflow run is left RUNNING;
- the champion is registered once (one model version with the batch's identity; ``@champion``);
- every job that was done before the kill is still done with the same result.

Also: SIGINT/SIGTERM interrupt and resume, a tracking server that dies mid-search, a changed
search space, and workers that all crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.faults import POINTS
from bench.records import FINAL
from tests.conftest import cli_env, run_module
from tests.faults import (
    MODEL,
    batches,
    free_port,
    jobs_of,
    kill_group,
    mlflow_runs,
    running_mid_job,
    slow_space,
    start_mlflow_server,
    start_search,
    stderr_of,
    trials_of,
    wait_for,
)

pytestmark = pytest.mark.slow
STUDY = "digits-smoke"
N = 4
# One refit (--ensemble 1): the kill points below name its windows; the ensemble has its own test.
SEARCH = ["--dataset", "digits", "--space", "smoke", "--trials", str(N), "--jobs", "1", "--quiet",
          "--ensemble", "1"]  # fmt: skip
REEVAL = ["--reeval-top-k", "2", "--reeval-seeds", "2"]
# Let the first pass through a point live where a later one is sure to come, so that some results
# are recorded before the kill and the test can check that none of them is lost.
SKIP = {"open-batch": 0, "register": 0, "train": 0}  # smoke prunes most trials at epoch 0


def _finished_trials(folder, study=STUDY, batch=1, storage=None):
    return [
        t
        for t in trials_of(folder, study, storage)
        if t.state.name in ("COMPLETE", "PRUNED")
        and t.user_attrs.get("bench.batch_id") == batch
        and t.user_attrs.get("bench.baseline") is None
    ]


def _snapshot(folder, study=STUDY):
    return {
        j.key: j.result.to_dict()
        for j in jobs_of(folder, study)
        if j.state == "done" and j.result is not None
    }


def assert_recovered(folder, n=N, before=None, study=STUDY, registered=True):
    """Every guarantee a plain rerun must give (see the module docstring)."""
    found = batches(folder, study)
    assert [b.state for b in found] == ["done"], [(b.number, b.state) for b in found]
    jobs = jobs_of(folder, study)
    search = [j for j in jobs if j.purpose == "search"]
    assert sum(j.state == "done" for j in search) == n, [(j.key, j.state) for j in search]
    assert all(j.state in ("done", "failed") for j in jobs), [(j.key, j.state) for j in jobs]
    assert all(j.synced for j in jobs), [j.key for j in jobs if not j.synced]

    trials = trials_of(folder, study)
    assert len(_finished_trials(folder, study)) == n
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]

    client, runs = mlflow_runs(folder)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    for j in jobs:  # each recorded job's run is closed with its outcome
        if j.state == "done" and j.run_id:
            assert client.get_run(j.run_id).info.status in ("FINISHED", "KILLED")

    if registered:
        versions = client.search_model_versions(f"name='{MODEL}'")
        mine = [
            v
            for v in versions
            if v.tags.get("study_name") == study and v.tags.get("batch") == str(found[0].number)
        ]
        assert len(mine) == 1, [(v.version, v.tags) for v in versions]
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert str(champion.version) == str(mine[0].version)
        assert str((found[0].summary or {}).get("version")) == str(mine[0].version)
        final = [
            j for j in jobs if j.purpose in FINAL and j.state == "done" and j.result.registered
        ]
        assert len(final) == 1
        # the job's recorded model (and its test accuracy) is the registered one, even when the
        # worker that registered it died before recording
        assert final[0].result.model_uri == mine[0].source
        assert float(mine[0].tags["test_accuracy"]) == pytest.approx(final[0].result.test_accuracy)

    now = {j.key: j.result.to_dict() for j in jobs if j.state == "done" and j.result}
    for key, result in (before or {}).items():
        assert now.get(key) == result, f"job {key}: its recorded result changed or was lost"


def _left_behind(folder, point: str) -> None:
    """What the kill left (so the test knows it hit the window it names), checked before rerun."""
    found = batches(folder, STUDY)
    jobs = jobs_of(folder, STUDY)
    running = [j for j in jobs if j.state == "running"]
    client, runs = mlflow_runs(folder)
    if point == "open-batch":
        assert [b.state for b in found] == ["opening"] and not jobs
        return
    assert [b.state for b in found] == ["running"]
    if point == "take":  # a RUNNING trial that its job does not know yet
        assert len(running) == 1 and running[0].trial_number is None
        assert [t.state.name for t in trials_of(folder, STUDY)][-1] == "RUNNING"
    elif point == "start-run":  # a RUNNING run that its job does not know yet
        assert len(running) == 1 and running[0].run_id is None
        assert [r for r in runs if r.data.tags.get("job_key") == running[0].key]
    elif point in ("train", "record", "reeval"):
        assert len(running) == 1 and running[0].run_id
        assert client.get_run(running[0].run_id).info.status == "RUNNING"
    elif point == "sync":  # recorded in the job store, not yet mirrored
        assert not running and [j for j in jobs if j.state == "done" and not j.synced]
    elif point == "register":  # a version exists, the alias has not moved to it
        assert [j.key for j in running] == ["refit"]
        assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
        assert not client.get_registered_model(MODEL).aliases


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_point_then_plain_rerun_recovers(tmp_path, point):
    args = SEARCH + (REEVAL if point == "reeval" else [])
    env = {
        "BENCH_TEST_KILL_AT": point,
        "BENCH_TEST_KILL_SKIP": str(SKIP.get(point, 1)),
    }
    killed = run_module("bench.search", *args, cwd=tmp_path, **env)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    _left_behind(tmp_path, point)
    before = _snapshot(tmp_path)

    started = time.monotonic()
    rerun = run_module("bench.search", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert time.monotonic() - started < 240  # it never waits out a dead claimant's claim
    assert "Traceback" not in rerun.stderr
    assert_recovered(tmp_path, before=before)
    if point == "reeval":
        reevals = [j for j in jobs_of(tmp_path, STUDY) if j.purpose == "reeval"]
        sources = {j.spec.info["source"] for j in reevals}  # top 2 distinct completed configs
        assert len(reevals) == 2 * len(sources) and all(j.state == "done" for j in reevals)
        assert any(j.attempts == 2 for j in reevals)  # the killed one ran again


@pytest.mark.component
def test_kill_once_kills_one_process_per_point_across_processes(tmp_path):
    """With BENCH_TEST_KILL_ONCE, each named point kills only the first process to reach it."""
    code = "from bench.faults import kill_point; kill_point('a'); kill_point('b'); print('lived')"
    env = {"BENCH_TEST_KILL_AT": "a,b", "BENCH_TEST_KILL_ONCE": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(**env),
                       capture_output=True, text=True, timeout=60)
        for _ in range(3)
    ]  # fmt: skip
    assert [r.returncode for r in runs] == [-signal.SIGKILL, -signal.SIGKILL, 0]
    assert runs[2].stdout.strip() == "lived"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


# A space in which several of 4 digits trials complete (a median pruner that cuts the hopeless
# learning rates only), so that the default --ensemble 2 has two configurations to average.
ENSEMBLE_SPACE = """
version: 1
study:
  sampler: {name: tpe, seed: 0, n_startup_trials: 2}
  pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
train:
  {max_epochs: 4, patience: 3, validation_size: 300, steps_per_execution: 4, jit_compile: false}
params:
  n_layers: 1
  units: 32
  batch_size: 64
  learning_rate: {type: float, low: 1.0e-6, high: 0.05, log: true}
"""


def test_kill_while_registering_the_ensemble_then_plain_rerun_recovers(tmp_path):
    """The averaged model is logged and registered, the alias not yet moved: the rerun finds
    that version instead of registering another, and the members are not trained again."""
    (tmp_path / "space.yaml").write_text(ENSEMBLE_SPACE)
    study = "digits-space"
    args = ["--dataset", "digits", "--space", "space.yaml", "--trials", "4", "--jobs", "1",
            "--quiet"]  # fmt: skip
    env = {"BENCH_TEST_KILL_AT": "register", "BENCH_TEST_KILL_SKIP": "0"}
    killed = run_module("bench.search", *args, cwd=tmp_path, **env)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    jobs = jobs_of(tmp_path, study)
    members = sorted((j for j in jobs if j.purpose == "refit"), key=lambda j: j.key)
    assert [(j.key, j.state) for j in members] == [("refit", "done"), ("refit-1", "done")]
    assert [j.key for j in jobs if j.state == "running"] == ["ensemble"]
    client, _ = mlflow_runs(tmp_path)
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1  # the members are not
    assert not client.get_registered_model(MODEL).aliases
    before = _snapshot(tmp_path, study)

    rerun = run_module("bench.search", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_recovered(tmp_path, before=before, study=study)
    jobs = jobs_of(tmp_path, study)
    assert [j.attempts for j in jobs if j.purpose == "refit"] == [1, 1]  # not trained again
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["source"] == "ensemble" and champion.tags["ensemble_size"] == "2"
    assert champion.tags["refit"] == "true"
    assert champion.tags["chosen_from"] == "+".join(j.spec.info["source"] for j in members)
    # what the registration writes after the kill point is written by the rerun
    assert champion.description.startswith("Mean of the probabilities of 2 configurations (")
    note = client.get_run(champion.run_id).data.tags["mlflow.note.content"]
    assert champion.description in note
    assert all(f"/runs/{j.run_id})" in note for j in members)


def test_jobs_that_kill_their_slot_every_time_fail_after_3_attempts_and_are_replaced(tmp_path):
    """Every slot dies (SIGKILL mid-training) on every job: each job is retried on a fresh slot
    until its third attempt dies, then fails for good; the design replaces it (up to
    --max-replacements), and the batch ends. Nothing finished, so the command exits 1."""
    args = ["--dataset", "digits", "--space", "smoke", "--trials", "2", "--jobs", "2", "--quiet",
            "--max-replacements", "1"]  # fmt: skip
    crashed = run_module("bench.search", *args, cwd=tmp_path, BENCH_TEST_KILL_AT="train")
    assert crashed.returncode == 1, crashed.stderr[-3000:]
    assert "error: no job of batch 1 finished; 3 failed" in crashed.stderr, crashed.stderr[-3000:]
    assert "its slot was killed by SIGKILL" in crashed.stderr
    assert "Traceback" not in crashed.stderr
    jobs = jobs_of(tmp_path, STUDY)
    assert [(j.state, j.attempts) for j in jobs] == [("failed", 3)] * 3  # 2 + 1 replacement
    assert all(j.synced and "not retried again" in j.reason for j in jobs)
    assert [b.state for b in batches(tmp_path, STUDY)] == ["done"]
    assert {t.state.name for t in trials_of(tmp_path, STUDY)} == {"FAIL"}
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) >= 9 and not [r for r in runs if r.info.status == "RUNNING"]


def test_validation_split_that_cannot_work_is_refused_nonzero(tmp_path):
    from bench.space import resolve_space

    space = tmp_path / "tiny-val.yaml"
    text = Path(resolve_space("smoke")).read_text(encoding="utf-8")
    space.write_text(text.replace("validation_size: 300", "validation_size: 5"))
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", str(space), "--trials", "2",
        "--jobs", "1", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "validation_size" in proc.stderr and "Traceback" not in proc.stderr


# Where the signal lands. One worker: the process signals itself from inside MLflow's store code
# during the named tracking call (BENCH_TEST_SIGNAL_AT), so the interrupt strikes a tracking write
# on purpose: log_metrics mid-training (after the first job's epochs), end_run inside the critical
# section that records the second job. Two workers: the parent is signalled mid-job, as a terminal
# would, and forwards it.
STRIKES = {
    "SIGINT-in-log_metrics": ("SIGINT", "log_metrics", "20", "1"),
    "SIGTERM-in-log_metrics": ("SIGTERM", "log_metrics", "20", "1"),
    "SIGTERM-in-end_run": ("SIGTERM", "end_run", "1", "1"),
    "SIGINT-2-workers": ("SIGINT", None, None, "2"),
}


@pytest.mark.parametrize("strike", list(STRIKES))
def test_interrupt_keeps_finished_jobs_and_rerun_resumes(tmp_path, strike):
    sig, call, skip, jobs = STRIKES[strike]
    study = "digits-slow"
    args = ["--dataset", "digits", "--space", slow_space(tmp_path), "--trials", "3", "--jobs", jobs]
    env: dict[str, str] = {}
    stamp = tmp_path / "signalled-at"
    if call:
        env.update(BENCH_TEST_SIGNAL_AT=call, BENCH_TEST_SIGNAL=sig, BENCH_TEST_SIGNAL_SKIP=skip,
                   BENCH_TEST_SIGNAL_STAMP=str(stamp))  # fmt: skip
    proc = start_search(tmp_path, *args, **env)
    try:
        if not call:
            wait_for(lambda: running_mid_job(tmp_path, study), 300, "a job mid-training")
            time.sleep(1.0)  # a few epochs in
            stamp.write_text(f"{time.time()}\n")
            proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=300 if call else 60) == 130, stderr_of(tmp_path)[-3000:]
        exited = time.time()
    finally:
        kill_group(proc)
    # "the process exits within seconds" (docs/failure-modes.md), measured from the signal
    signalled = [float(x) for x in stamp.read_text().split()]
    assert len(signalled) == 1 and exited - signalled[0] < 15, exited - signalled[0]
    err = stderr_of(tmp_path)
    assert "interrupted: kept" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err and "During handling" not in err, err[-3000:]
    jobs_now = jobs_of(tmp_path, study)
    assert not [j.key for j in jobs_now if j.state == "running"]  # given back, not left running
    before = _snapshot(tmp_path, study)
    assert before  # at least one finished job was kept
    if call == "log_metrics":  # struck mid-training: that job was given back
        released = [j for j in jobs_now if "interrupted" in j.reason]
        assert released and all(j.state == "waiting" for j in released)
    if call == "end_run":  # struck while recording: the result was recorded first, then it stopped
        assert len(before) == 2, before
    assert not [t.number for t in trials_of(tmp_path, study) if t.state.name == "RUNNING"]
    _, runs = mlflow_runs(tmp_path)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    if call == "log_metrics":  # the struck job's run ends KILLED (docs/failure-modes.md)
        assert [r for r in runs if r.info.status == "KILLED"], [r.info.status for r in runs]

    rerun = run_module("bench.search", "--quiet", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "joining search batch 1" in rerun.stderr
    assert_recovered(tmp_path, n=3, before=before, study=study)


def test_tracking_server_down_mid_search_keeps_results(tmp_path):
    study = "digits-slow"
    port = free_port()
    backend = f"sqlite:///{tmp_path}/server.db"
    server = start_mlflow_server(tmp_path, backend, port)
    uri = f"http://127.0.0.1:{port}"
    args = ["--dataset", "digits", "--space", slow_space(tmp_path), "--trials", "3", "--jobs", "1"]
    args += ["--tracking-uri", uri]
    proc = start_search(tmp_path, *args, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    try:
        wait_for(lambda: running_mid_job(tmp_path, study), 300, "one finished job")
        kill_group(server)
        code = proc.wait(timeout=600)
    finally:
        kill_group(proc)
        kill_group(server)
    err = stderr_of(tmp_path)
    assert "results still go to the Optuna storage" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    jobs = [j for j in jobs_of(tmp_path, study) if j.purpose == "search"]
    assert sum(j.state == "done" for j in jobs) == 3, [(j.key, j.state) for j in jobs]
    assert len(_finished_trials(tmp_path, study)) == 3  # every result landed in Optuna
    assert not [t.number for t in trials_of(tmp_path, study) if t.state.name == "RUNNING"]
    # the champion could not be registered without the tracking store: the command says so
    # (exit 0 with a "not complete" note, or 1), never claims a registration
    assert "registered digits-mlp version" not in (tmp_path / "search.out").read_text()
    assert code in (0, 1), err[-3000:]

    server = start_mlflow_server(tmp_path, backend, port)
    try:
        done = run_module(
            "bench.register", "--study-name", study, "--tracking-uri", uri, cwd=tmp_path,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "digits-mlp version 1" in done.stdout
        again = run_module(
            "bench.register", "--study-name", study, "--tracking-uri", uri, cwd=tmp_path
        )
        assert again.returncode == 0 and "digits-mlp version 1" in again.stdout  # idempotent
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
        _, runs = mlflow_runs(tmp_path, uri)
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    finally:
        kill_group(server)


def test_same_study_with_another_space_is_refused_unless_allowed(tmp_path):
    from bench import optuna_adapter as opt
    from bench.space import load_space, resolve_space

    journal = str(tmp_path / "optuna-studies.log")
    smoke = resolve_space("smoke")
    opt.open_study(STUDY, journal, load_space(smoke))
    changed = tmp_path / "smoke.yaml"
    changed.write_text(Path(smoke).read_text(encoding="utf-8").replace("high: 64", "high: 128"))
    args = ["--dataset", "digits", "--space", str(changed), "--trials", "1", "--quiet"]
    proc = run_module("bench.search", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "was created with a different search space" in proc.stderr
    assert "--allow-space-change" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert opt.load_study(STUDY, journal).trials == []
    assert batches(tmp_path, STUDY) == []  # refused before anything was written


def test_kill_9_of_one_slot_is_retried_on_a_fresh_slot(tmp_path):
    study = "digits-slow"
    args = ["--dataset", "digits", "--space", slow_space(tmp_path), "--trials", "4", "--jobs", "2"]
    proc = start_search(tmp_path, *args)
    try:
        victim = wait_for(lambda: running_mid_job(tmp_path, study, 0), 300, "a job mid-training")
        assert victim.owner["pid"] != proc.pid  # a slot process, not the driver
        os.kill(victim.owner["pid"], signal.SIGKILL)
        code = proc.wait(timeout=600)
    finally:
        kill_group(proc)
    # one slot died; the driver reaped its attempt and a fresh slot finished it: success
    assert code == 0, stderr_of(tmp_path)[-3000:]
    assert "Traceback" not in stderr_of(tmp_path)
    assert_recovered(tmp_path, n=4, study=study)
    redone = {j.id: j for j in jobs_of(tmp_path, study)}[victim.id]
    assert redone.attempts == 2
    client, runs = mlflow_runs(tmp_path)
    attempts = [r for r in runs if r.data.tags.get("job_key") == victim.key]
    assert sorted(r.info.status for r in attempts)[0] == "FAILED"
