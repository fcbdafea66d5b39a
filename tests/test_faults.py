"""Faults with real processes: interrupts, kill -9, a dead tracking server, a changed space.

Each test counts trials by state in the Optuna storage and MLflow runs by status, before and
after, and then resumes the same command to check nothing finished was lost.
"""

from __future__ import annotations

import signal

import pytest

from bench import study as st
from tests.conftest import SPACES, run_module
from tests.faults import (
    free_port,
    kill_group,
    running_mid_trial,
    slow_space,
    start_mlflow_server,
    start_search,
    stderr_of,
    trials_of,
    wait_for,
)

pytestmark = pytest.mark.slow
STUDY = "digits-slow"


def _runs(folder, tracking_uri=None):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{folder}/mlflow.db")
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    trials = {int(r.data.tags["trial_number"]): r for r in runs if "trial_number" in r.data.tags}
    return client, parents, trials


def _finished(trials):
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_finished_trials_and_rerun_resumes(tmp_path, jobs, sig):
    if jobs == "2" and sig == signal.SIGTERM:
        pytest.skip("SIGTERM is forwarded the same way as SIGINT; one multi-worker case suffices")
    args = ["--dataset", "digits", "--space", slow_space(tmp_path), "--trials", "4", "--jobs", jobs]
    proc = start_search(tmp_path, *args)
    try:
        wait_for(lambda: running_mid_trial(tmp_path, STUDY), 240, "a trial mid-training")
        before = trials_of(tmp_path, STUDY)
        done_before = {t.number for t in _finished(before)}
        running = {t.number for t in before if t.state.name == "RUNNING"}
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 130  # prompt: well under the 30 s bound
    finally:
        kill_group(proc)
    err = stderr_of(tmp_path)
    assert "interrupted: kept" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err

    trials = trials_of(tmp_path, STUDY)
    by_number = {t.number: t for t in trials}
    assert done_before <= {t.number for t in _finished(trials)}  # nothing finished was lost
    # a trial caught training is failed as interrupted and re-enqueued; one that was already being
    # recorded when the signal came is kept as finished (the interrupt waits for it)
    _, parents, runs = _runs(tmp_path)
    interrupted = []
    for number in running:
        t = by_number[number]
        assert t.state.name in ("FAIL", "COMPLETE", "PRUNED")
        if t.state.name == "FAIL":
            assert "interrupted" in t.user_attrs[st.REASON_ATTR]
            retry = [r for r in trials if r.system_attrs.get("failed_trial") == number]
            assert (
                len(retry) == 1 and retry[0].params == t.params and retry[0].state.name == "WAITING"
            )
            assert runs[number].info.status == "KILLED"
            interrupted += retry
    assert interrupted, "no trial was caught mid-training"
    assert [p.info.status for p in parents] == ["KILLED"]

    rerun = run_module("bench.search", "--quiet", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "joining batch 1" in rerun.stderr
    trials = trials_of(tmp_path, STUDY)
    assert len(_finished(trials)) == 4
    assert len({t.number for t in trials}) == len(trials)
    assert {r.number for r in interrupted} <= {t.number for t in _finished(trials)}  # rerun done
    client, parents, runs = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"]  # one parent run, reopened and closed
    assert {runs[t.number].info.status for t in _finished(trials)} <= {"FINISHED", "KILLED"}
    assert client.get_model_version_by_alias("digits-mlp", "champion") is not None


def test_kill_9_of_the_whole_search_then_rerun_fails_and_retries_the_stale_trial(tmp_path):
    args = ["--dataset", "digits", "--space", slow_space(tmp_path), "--trials", "3", "--jobs", "1"]
    proc = start_search(tmp_path, *args)
    try:
        victim = wait_for(lambda: running_mid_trial(tmp_path, STUDY), 240, "a trial mid-training")
        finished_before = {t.number: t.value for t in _finished(trials_of(tmp_path, STUDY))}
    finally:
        kill_group(proc)  # SIGKILL: no handler runs
    assert {t.number: t.state.name for t in trials_of(tmp_path, STUDY)}[victim.number] == "RUNNING"

    rerun = run_module("bench.search", "--quiet", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = trials_of(tmp_path, STUDY)
    by_number = {t.number: t for t in trials}
    stale = by_number[victim.number]
    assert stale.state.name == "FAIL" and "died" in stale.user_attrs[st.REASON_ATTR]
    for number, value in finished_before.items():  # zero completed trials lost
        assert by_number[number].value == value
    assert len(_finished(trials)) == 3
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == stale.params
    _, parents, runs = _runs(tmp_path)
    assert runs[victim.number].info.status == "FAILED"
    assert [p.info.status for p in parents] == ["FINISHED"]


def test_kill_9_of_one_worker_is_retried_by_its_peer(tmp_path):
    args = ["--dataset", "digits", "--space", slow_space(tmp_path), "--trials", "4", "--jobs", "2"]
    proc = start_search(tmp_path, *args)
    try:
        victim = wait_for(
            lambda: running_mid_trial(tmp_path, STUDY, min_finished=0), 240, "a trial mid-training"
        )
        import os

        os.kill(victim.user_attrs[st.OWNER_ATTR]["pid"], signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, stderr_of(tmp_path)[-3000:]
    finally:
        kill_group(proc)
    trials = trials_of(tmp_path, STUDY)
    assert len(_finished(trials)) == 4
    dead = {t.number: t for t in trials}[victim.number]
    assert dead.state.name == "FAIL" and "died" in dead.user_attrs[st.REASON_ATTR]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name in ("COMPLETE", "PRUNED")
    _, parents, runs = _runs(tmp_path)
    assert runs[victim.number].info.status == "FAILED"
    assert len(runs) == 5 and [p.info.status for p in parents] == ["FINISHED"]


def test_tracking_server_down_mid_study_keeps_results_and_register_finishes_later(tmp_path):
    port = free_port()
    backend = f"sqlite:///{tmp_path}/server.db"
    server = start_mlflow_server(tmp_path, backend, port)
    uri = f"http://127.0.0.1:{port}"
    args = [
        "--dataset",
        "digits",
        "--space",
        slow_space(tmp_path),
        "--trials",
        "3",
        "--jobs",
        "1",
        "--tracking-uri",
        uri,
    ]
    proc = start_search(tmp_path, *args, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    try:
        wait_for(
            lambda: running_mid_trial(tmp_path, STUDY, min_finished=1), 240, "one finished trial"
        )
        kill_group(server)
        assert proc.wait(timeout=600) == 0, stderr_of(tmp_path)[-3000:]
    finally:
        kill_group(proc)
        kill_group(server)
    err = stderr_of(tmp_path)
    assert "tracking store" in err and "results still go to the Optuna storage" in err
    assert "python -m bench.register --study-name digits-slow" in err
    trials = trials_of(tmp_path, STUDY)
    assert len(_finished(trials)) == 3  # every result landed in Optuna

    server = start_mlflow_server(tmp_path, backend, port)
    try:
        done = run_module(
            "bench.register", "--study-name", STUDY, "--tracking-uri", uri, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert "digits-mlp version 1" in done.stdout
        again = run_module(
            "bench.register", "--study-name", STUDY, "--tracking-uri", uri, cwd=tmp_path
        )
        assert again.returncode == 0 and "digits-mlp version 1" in again.stdout  # idempotent
    finally:
        kill_group(server)


def test_same_study_with_another_space_is_refused_unless_allowed(tmp_path):
    import optuna

    from bench.space import load_space

    storage = st.make_storage(str(tmp_path / "optuna-studies.log"))
    st.open_study("digits-smoke", storage, load_space(SPACES / "smoke.yaml"))
    changed = tmp_path / "smoke.yaml"
    changed.write_text((SPACES / "smoke.yaml").read_text().replace("high: 64", "high: 128"))
    proc = run_module(
        "bench.search",
        "--dataset",
        "digits",
        "--space",
        str(changed),
        "--trials",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "was created with a different search space" in proc.stderr
    assert "--allow-space-change" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert optuna.load_study(study_name="digits-smoke", storage=storage).trials == []
