"""Scale-out: independent workers share one PostgreSQL study and one MLflow tracking server.

Needs the PostgreSQL server named by ``BENCH_TEST_POSTGRES_URL`` (``.ci/run`` sets it; in CI its
absence is a failure, elsewhere the tests skip). Each test gets fresh databases.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from bench import study as st
from tests.conftest import run_module
from tests.faults import (
    free_port,
    kill_group,
    running_mid_trial,
    slow_space,
    start_mlflow_server,
    start_search,
    trials_of,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
STUDY = "digits-slow"


@pytest.fixture
def pg():
    """A factory of fresh, empty databases on the test server; dropped afterwards."""
    base = os.environ.get("BENCH_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI"):
            pytest.fail("BENCH_TEST_POSTGRES_URL is not set; .ci/run must provide PostgreSQL")
        pytest.skip("no PostgreSQL: set BENCH_TEST_POSTGRES_URL=postgresql://user@host:5432/db")
    psycopg = pytest.importorskip("psycopg")
    made = []

    def create() -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return base.rsplit("/", 1)[0] + "/" + name

    yield create
    with psycopg.connect(base, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cluster(tmp_path, pg):
    """An MLflow server backed by PostgreSQL on a free loopback port, and a study database."""
    port = free_port()
    server = start_mlflow_server(tmp_path, pg(), port)
    yield {"tracking": f"http://127.0.0.1:{port}", "storage": pg(), "folder": tmp_path}
    kill_group(server)


def _worker_args(cluster, trials: int, space: str) -> list[str]:
    """What one machine runs to join the cluster's study and tracking server."""
    return [
        "--dataset",
        "digits",
        "--space",
        space,
        "--trials",
        str(trials),
        "--jobs",
        "1",
        "--storage",
        cluster["storage"],
        "--tracking-uri",
        cluster["tracking"],
    ]


def _workers(cluster, n: int, trials: int, space: str, **env):
    args = _worker_args(cluster, trials, space)
    folders = []
    for i in range(n):  # separate folders: nothing shared but the database and the server
        folder = cluster["folder"] / f"machine-{i}"
        folder.mkdir()
        folders.append(folder)
    return [start_search(f, *args, **env) for f in folders], folders


def _check_totals(cluster, trials: int, extra_failed: int = 0):
    from mlflow import MlflowClient

    study_trials = trials_of(cluster["folder"], STUDY, cluster["storage"])
    finished = [t for t in study_trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials
    numbers = [t.number for t in study_trials]
    assert len(numbers) == len(set(numbers))
    assert len([t for t in study_trials if t.state.name == "FAIL"]) == extra_failed
    client = MlflowClient(cluster["tracking"])
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == trials + extra_failed
    finished_runs = [r for r in children if r.info.status in ("FINISHED", "KILLED")]
    assert sorted(int(r.data.tags["trial_number"]) for r in finished_runs) == sorted(
        t.number for t in finished
    )
    versions = client.search_model_versions("name = 'digits-mlp'")
    assert len(versions) == 1  # registered once, by the last worker to finish
    assert str(client.get_model_version_by_alias("digits-mlp", "champion").version) == str(
        versions[0].version
    )
    return study_trials, children


def test_three_workers_share_one_study_one_parent_run_and_register_once(cluster):
    procs, folders = _workers(cluster, 3, 6, slow_space(cluster["folder"]))
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    assert codes == [0, 0, 0], [(f / "search.err").read_text()[-2000:] for f in folders]
    trials, _ = _check_totals(cluster, 6)
    owners = {t.user_attrs[st.OWNER_ATTR]["pid"] for t in trials}
    assert len(owners) >= 2  # the work really was shared
    joined = sum("joining batch 1" in (f / "search.err").read_text() for f in folders)
    assert joined == 2


def test_a_killed_worker_is_retried_by_the_others_and_totals_hold(cluster):
    procs, folders = _workers(cluster, 3, 6, slow_space(cluster["folder"]))
    try:
        victim = wait_for(
            lambda: running_mid_trial(cluster["folder"], STUDY, 0, cluster["storage"]),
            300,
            "a trial mid-training",
        )
        pid = victim.user_attrs[st.OWNER_ATTR]["pid"]
        os.kill(pid, signal.SIGKILL)
        codes = {p.pid: p.wait(timeout=900) for p in procs}
    finally:
        for p in procs:
            kill_group(p)
    assert codes.pop(pid) == -signal.SIGKILL
    assert set(codes.values()) == {0}
    trials, children = _check_totals(cluster, 6, extra_failed=1)
    dead = {t.number: t for t in trials}[victim.number]
    assert dead.state.name == "FAIL" and "died" in dead.user_attrs[st.REASON_ATTR]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].params == dead.params
    assert {int(r.data.tags["trial_number"]): r.info.status for r in children}[
        victim.number
    ] == "FAILED"


def test_a_silent_machine_is_failed_by_heartbeat_and_retried(cluster):
    """A worker on another host (own UTS namespace) goes silent; the heartbeat catches it."""
    import shutil

    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give a worker another hostname")
    env = {"BENCH_HEARTBEAT_INTERVAL": "1", "BENCH_GRACE_PERIOD": "4"}
    space = slow_space(cluster["folder"])
    (procs, folders) = _workers(cluster, 1, 4, space, **env)
    other = cluster["folder"] / "other-host"
    other.mkdir()
    import subprocess
    import sys

    from tests.conftest import cli_env

    args = [*_worker_args(cluster, 4, space), "--quiet"]
    remote = subprocess.Popen(
        [
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname bench-other-host && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "bench.search",
            *args,
        ],
        cwd=other,
        env=cli_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=open(other / "search.err", "w"),  # noqa: SIM115 - closed with the process
        start_new_session=True,
    )
    try:

        def remote_trial():
            for t in trials_of(cluster["folder"], STUDY, cluster["storage"]):
                owner = t.user_attrs.get(st.OWNER_ATTR, {})
                if (
                    t.state.name == "RUNNING"
                    and owner.get("host") == "bench-other-host"
                    and t.intermediate_values
                ):
                    return t
            return None

        victim = wait_for(remote_trial, 300, "a trial running on the other host")
        os.killpg(remote.pid, signal.SIGSTOP)  # the machine goes silent: no heartbeat, no exit
        assert procs[0].wait(timeout=900) == 0, (folders[0] / "search.err").read_text()[-2000:]
    finally:
        kill_group(remote)
        kill_group(procs[0])
    trials = trials_of(cluster["folder"], STUDY, cluster["storage"])
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name in ("COMPLETE", "PRUNED")
    assert len([t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]) == 4


def test_password_in_the_storage_url_never_reaches_logs_or_mlflow(tmp_path, pg):
    url = pg().replace("postgresql://postgres@", "postgresql://postgres:Sup3rS3cret@")
    proc = run_module(
        "bench.search",
        "--dataset",
        "digits",
        "--space",
        str(slow_space(tmp_path)),
        "--trials",
        "1",
        "--max-epochs",
        "1",
        "--storage",
        url,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Sup3rS3cret" not in proc.stdout + proc.stderr
    assert "postgres:***@" in proc.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("digits-mlp")
    for run in client.search_runs([exp.experiment_id]):
        blob = repr(run.data.params) + repr(run.data.tags)
        assert "Sup3rS3cret" not in blob
    parent = client.search_runs([exp.experiment_id], "tags.role = 'study'")[0]
    assert parent.data.params["storage"].startswith("postgresql://postgres:***@")
    for version in client.search_model_versions("name = 'digits-mlp'"):
        assert "Sup3rS3cret" not in repr(version.tags)
