"""Scale-out: independent workers on two "hosts" share one PostgreSQL study, its job store (two
``bench_*`` tables in the same database) and one MLflow tracking server.

Needs the PostgreSQL server named by ``BENCH_TEST_POSTGRES_URL`` (``.ci/run`` sets it; in CI its
absence is a failure, elsewhere the tests skip). Each test gets fresh databases. The second host is
a worker in its own UTS namespace (``unshare --uts``, another host name), when root can make one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid

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
FAST_LEASE = {"BENCH_LEASE_SECONDS": "3"}


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


def _two_hosts(cluster, trials: int, space: str, **env):
    """One worker here and one on the other host; separate folders: only the servers are shared."""
    args = _worker_args(cluster, trials, space)
    folders = []
    for name in ("machine-0", "machine-1"):
        folder = cluster["folder"] / name
        folder.mkdir()
        folders.append(folder)
    here = start_search(folders[0], *args, **env)
    if _can_fake_a_host():
        there = _start_on_other_host(folders[1], args, **env)
    else:
        there = start_search(folders[1], *args, **env)
    return [here, there], folders


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


def test_two_hosts_share_one_study_one_parent_run_and_register_once(cluster):
    procs, folders = _two_hosts(cluster, 6, slow_space(cluster["folder"]))
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    assert codes == [0, 0], [(f / "search.err").read_text()[-2000:] for f in folders]
    jobs, _ = _check_totals(cluster, 6)
    pids = {(j.owner or {}).get("pid") for j in jobs if j.purpose == "search"}
    assert len(pids) == 2  # the work really was shared
    if _can_fake_a_host():
        assert OTHER_HOST in {(j.owner or {}).get("host") for j in jobs}
    joined = sum("joining search batch 1" in (f / "search.err").read_text() for f in folders)
    assert joined == 1


def test_a_killed_worker_is_retried_by_the_other_host_and_totals_hold(cluster):
    procs, folders = _two_hosts(cluster, 6, slow_space(cluster["folder"]), **FAST_LEASE)
    try:
        victim = wait_for(
            lambda: running_mid_job(cluster["folder"], STUDY, 0, cluster["storage"]),
            300,
            "a job mid-training",
        )
        pid = victim.owner["pid"]
        os.kill(pid, signal.SIGKILL)
        codes = {p.pid: p.wait(timeout=900) for p in procs}
    finally:
        for p in procs:
            kill_group(p)
    # with --jobs 1 the search process trains itself (unshare and sh exec into it): it is the victim
    assert sorted(codes.values()) == [-signal.SIGKILL, 0]
    jobs, children = _check_totals(cluster, 6)
    redone = {j.id: j for j in jobs}[victim.id]
    assert redone.state == "done" and redone.attempts == 2
    attempts = [r for r in children if r.data.tags.get("job_key") == victim.key]
    dead = [r for r in attempts if r.info.status == "FAILED"]  # the dead attempt's run
    assert len(dead) == 1 and "died" in dead[0].data.tags["state_reason"]
    trials = trials_of(cluster["folder"], STUDY, cluster["storage"])
    assert [t.number for t in trials if t.state.name == "FAIL"] == [victim.trial_number]


def test_a_silent_machine_loses_its_job_by_lease_and_the_other_retries_it(cluster):
    """A worker on another host stops (SIGSTOP: no lease renewal, no exit); its lease runs out."""
    if not _can_fake_a_host():
        pytest.skip("needs root and unshare to give a worker another host name")
    space = slow_space(cluster["folder"])
    args = _worker_args(cluster, 4, space)
    other = cluster["folder"] / "other-host"
    other.mkdir()
    remote = _start_on_other_host(other, args, **FAST_LEASE)
    here_folder = cluster["folder"] / "here"
    here_folder.mkdir()
    here = None
    try:

        def remote_job():
            for j in _jobs(cluster):
                if j.state == "running" and j.run_id and (j.owner or {}).get("host") == OTHER_HOST:
                    return j
            return None

        victim = wait_for(remote_job, 300, "a job running on the other host")
        os.killpg(remote.pid, signal.SIGSTOP)  # the machine goes silent
        here = start_search(here_folder, *args, **FAST_LEASE)
        assert here.wait(timeout=900) == 0, (here_folder / "search.err").read_text()[-2000:]
    finally:
        kill_group(remote)
        if here is not None:
            kill_group(here)
    jobs = {j.id: j for j in _jobs(cluster)}
    assert jobs[victim.id].state == "done" and jobs[victim.id].attempts == 2
    trials = trials_of(cluster["folder"], STUDY, cluster["storage"])
    assert len([t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]) == 4
    assert not [t.number for t in trials if t.state.name == "RUNNING"]


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
