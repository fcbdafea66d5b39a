"""One driver per batch on a shared PostgreSQL study, its job store (two ``bench_*`` tables in
the same database) and one MLflow tracking server: a second command on a running batch, from
another "host", waits for the driver (a PostgreSQL advisory lock) and prints the outcome; when the
driver is killed, the database releases its lock and the waiting command finishes the batch.

Needs the PostgreSQL server named by ``BENCH_TEST_POSTGRES_URL`` (``.ci/run`` sets it; in CI its
absence is a failure, elsewhere the tests skip). Each test gets fresh databases. The second host is
a command in its own UTS namespace (``unshare --uts``, another host name), when root can make one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_module
from tests.faults import (
    free_port,
    jobs_of,
    kill_group,
    running_mid_job,
    slow_space,
    start_mlflow_server,
    start_search,
    trials_of,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
STUDY = "digits-slow"
OTHER_HOST = "bench-other-host"


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


def _can_fake_a_host() -> bool:
    return bool(shutil.which("unshare")) and os.geteuid() == 0


def _worker_args(cluster, trials: int, space: str) -> list[str]:
    """What one machine runs to join the cluster's study and tracking server."""
    return ["--dataset", "digits", "--space", space, "--trials", str(trials), "--jobs", "1",
            "--storage", cluster["storage"], "--tracking-uri", cluster["tracking"]]  # fmt: skip


def _start_on_other_host(folder, args, **env) -> subprocess.Popen:
    """``python -m bench.search`` with another host name (its own UTS namespace)."""
    return subprocess.Popen(
        [
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {OTHER_HOST} && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "bench.search",
            "--quiet",
            *args,
        ],  # fmt: skip
        cwd=folder,
        env=cli_env(**env),
        stdout=open(folder / "search.out", "w"),  # noqa: SIM115 - closed with the process
        stderr=open(folder / "search.err", "w"),  # noqa: SIM115
        start_new_session=True,
    )


def _jobs(cluster):
    return jobs_of(cluster["folder"], STUDY, storage=cluster["storage"])


def _check_totals(cluster, trials: int):
    """N search jobs done, N finished trials, nothing RUNNING, one parent run, one registration."""
    from mlflow import MlflowClient

    jobs = _jobs(cluster)
    search = [j for j in jobs if j.purpose == "search"]
    assert sum(j.state == "done" for j in search) == trials, [(j.key, j.state) for j in search]
    study_trials = trials_of(cluster["folder"], STUDY, cluster["storage"])
    finished = [t for t in study_trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials
    assert not [t.number for t in study_trials if t.state.name in ("RUNNING", "WAITING")]
    client = MlflowClient(cluster["tracking"])
    exp = client.get_experiment_by_name("digits-mlp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    for j in jobs:
        if j.state == "done":
            run = [r for r in children if r.info.run_id == j.run_id]
            assert run and run[0].info.status in ("FINISHED", "KILLED")
    versions = client.search_model_versions("name = 'digits-mlp'")
    assert len(versions) == 1  # registered once, by whichever worker ran the refit
    champion = client.get_model_version_by_alias("digits-mlp", "champion")
    assert str(champion.version) == str(versions[0].version)
    return jobs, children


def _second_command(cluster, args) -> tuple[subprocess.Popen, Path]:
    """The same command on the other host (its own folder: only the servers are shared)."""
    folder = cluster["folder"] / "other-host"
    folder.mkdir()
    if _can_fake_a_host():
        return _start_on_other_host(folder, args), folder
    return start_search(folder, *args), folder


def test_a_second_command_waits_for_the_driver_and_prints_the_outcome(cluster):
    args = _worker_args(cluster, 6, slow_space(cluster["folder"]))
    here_folder = cluster["folder"] / "here"
    here_folder.mkdir()
    here = start_search(here_folder, *args)
    there = None
    try:
        wait_for(
            lambda: running_mid_job(cluster["folder"], STUDY, 0, cluster["storage"]),
            300,
            "a job mid-training",
        )
        there, there_folder = _second_command(cluster, args)
        codes = [here.wait(timeout=900), there.wait(timeout=900)]
    finally:
        kill_group(here)
        if there is not None:
            kill_group(there)
    err = (there_folder / "search.err").read_text()
    assert codes == [0, 0], [(f / "search.err").read_text()[-2000:] for f in (here_folder,)] + [
        err[-2000:]
    ]
    assert "joining search batch 1" in err
    assert f"is being driven by {socket.gethostname()} pid {here.pid}" in err
    assert "waiting for it to finish" in err and "continuing it here" not in err
    out = (there_folder / "search.out").read_text()
    assert "batch 1: 6/6 jobs finished" in out and "registered digits-mlp version 1" in out
    jobs, _ = _check_totals(cluster, 6)
    # nothing was trained twice: every attempt ran in the driver (one in-process slot)
    assert {(j.owner or {}).get("pid") for j in jobs if j.state == "done"} == {here.pid}
    assert all(j.attempts == 1 for j in jobs)


def test_when_the_driver_is_killed_the_waiting_command_finishes_the_batch(cluster):
    """SIGKILL the driver (its slot processes die with it): PostgreSQL ends its session and
    releases the lock; the waiting command takes it, reaps what was running, and finishes."""
    args = _worker_args(cluster, 6, slow_space(cluster["folder"]))
    args[args.index("--jobs") + 1] = "2"
    here_folder = cluster["folder"] / "here"
    here_folder.mkdir()
    here = start_search(here_folder, *args)
    there = None
    try:
        victim = wait_for(
            lambda: running_mid_job(cluster["folder"], STUDY, 0, cluster["storage"]),
            300,
            "a job mid-training",
        )
        there, there_folder = _second_command(cluster, args)
        wait_for(
            lambda: "waiting for it to finish" in (there_folder / "search.err").read_text(),
            120,
            "the second command to wait",
        )
        slot_pid = victim.owner["pid"]
        os.kill(here.pid, signal.SIGKILL)  # the driver only
        assert here.wait(timeout=30) == -signal.SIGKILL
        wait_for(lambda: not _alive(slot_pid), 30, "its slot to die with it")
        code = there.wait(timeout=900)
    finally:
        kill_group(here)
        if there is not None:
            kill_group(there)
    err = (there_folder / "search.err").read_text()
    assert code == 0, err[-3000:]
    assert "continuing it here" in err and "Traceback" not in err
    jobs, children = _check_totals(cluster, 6)
    redone = {j.id: j for j in jobs}[victim.id]
    assert redone.state == "done" and redone.attempts == 2
    dead = [
        r
        for r in children
        if r.data.tags.get("job_key") == victim.key and r.info.status == "FAILED"
    ]
    assert dead and "driver stopped" in dead[0].data.tags["state_reason"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (reaped by nobody yet) is dead too
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_password_in_the_storage_url_never_reaches_logs_or_mlflow(tmp_path, pg):
    url = pg().replace("postgresql://postgres@", "postgresql://postgres:Sup3rS3cret@")
    proc = run_module(
        "bench.search", "--dataset", "digits", "--space", str(slow_space(tmp_path)),
        "--trials", "1", "--max-epochs", "1", "--jobs", "1", "--storage", url, cwd=tmp_path,
    )  # fmt: skip
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
    # the parameter names where the study lives, never who logs in (issue: host and database)
    from sqlalchemy.engine import make_url

    u = make_url(url)
    assert parent.data.params["storage"] == f"postgresql://{u.host}:{u.port}/{u.database}"
    for version in client.search_model_versions("name = 'digits-mlp'"):
        assert "Sup3rS3cret" not in repr(version.tags)
