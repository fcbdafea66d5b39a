"""``--executor ray`` on a real multi-node Ray cluster on this host (one CPU per node), run by
:mod:`tests.ray_harness` inside a network namespace with only loopback: Ray binds 127.0.0.1 and no
test traffic leaves the machine. The study and the tracking store are files in the test's folder,
which every node (all on this host) reaches.

Needs Ray (``pip install -e '.[ray]'``; ``.ci/run`` installs it: in CI its absence is a failure,
elsewhere the tests skip), root and ``unshare``. Serial by nature: each test starts its cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from tests.faults import batches, jobs_of, mlflow_runs, slow_space, trials_of, wait_for

STUDY = "digits-slow"


def on_ray(test):
    """Slow, needs Ray, and serial with the other cluster tests (one xdist group)."""
    return pytest.mark.slow(pytest.mark.ray(pytest.mark.xdist_group("ray")(test)))


MODEL = "digits-mlp"


def _need_ray() -> None:
    missing = None
    try:
        import ray  # noqa: F401
    except ImportError:
        missing = "Ray is not installed (pip install -e '.[ray]')"
    if missing is None and not (shutil.which("unshare") and os.geteuid() == 0):
        missing = "needs root and unshare for a loopback-only network namespace"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; .ci/run must provide it")
        pytest.skip(missing)


def start_on_cluster(
    folder: Path, nodes: int, *args: str, flags=(), study=STUDY, **env
) -> subprocess.Popen:
    """``bench.search ARGS --executor ray`` on a fresh ``nodes``-node cluster (see module doc)."""
    _need_ray()
    (folder / "study-name").write_text(study)
    script = 'ip link set lo up && exec "$@"'
    return subprocess.Popen(
        ["unshare", "--net", "sh", "-c", script, "sh", sys.executable, "-m",
         "tests.ray_harness", str(folder), str(nodes), *flags, "--", "bench.search",
         "--quiet", *args],
        cwd=REPO,
        env=cli_env(**env),
        stdout=open(folder / "harness.out", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _search_args(folder: Path, trials: int, epochs: int = 15) -> list[str]:
    return ["--dataset", "digits", "--space", slow_space(folder), "--trials", str(trials),
            "--max-epochs", str(epochs)]  # fmt: skip


def _finish(proc: subprocess.Popen, folder: Path) -> dict:
    try:
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (folder / "search.err").read_text() if (folder / "search.err").exists() else ""
    harness = (folder / "harness.out").read_text()
    assert code == 0, (err[-3000:], harness[-3000:])
    assert "Traceback" not in _bench_lines(err), err[-3000:]
    return json.loads((folder / "harness.json").read_text())


def _bench_lines(err: str) -> str:
    """The command's own lines (Ray's actors echo their logs, with a prefix, to the driver)."""
    return "\n".join(line for line in err.splitlines() if "(_Slot pid=" not in line)


def _check_totals(folder: Path, trials: int):
    """N search jobs done, N finished trials, nothing RUNNING, one parent run, one registration."""
    jobs = jobs_of(folder, STUDY)
    search = [j for j in jobs if j.purpose == "search"]
    assert sum(j.state == "done" for j in search) == trials, [(j.key, j.state) for j in search]
    study_trials = trials_of(folder, STUDY)
    assert len([t for t in study_trials if t.state.name in ("COMPLETE", "PRUNED")]) == trials
    assert not [t.number for t in study_trials if t.state.name in ("RUNNING", "WAITING")]
    client, runs = mlflow_runs(folder)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1  # registered once
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == str(versions[0].version)
    assert [b.state for b in batches(folder, STUDY)] == ["done"]
    return jobs, runs


@on_ray
def test_two_nodes_share_one_batch_and_register_once(tmp_path):
    proc = start_on_cluster(tmp_path, 2, *_search_args(tmp_path, 6))
    _finish(proc, tmp_path)
    jobs, _ = _check_totals(tmp_path, 6)
    nodes = {(j.owner or {}).get("node") for j in jobs if j.state == "done"}
    assert len(nodes) == 2, nodes  # the work really was spread over both nodes
    assert all(j.attempts == 1 for j in jobs)
    err = (tmp_path / "search.err").read_text()
    assert "slots: 2 Ray actor(s) on 2 node(s), 1 CPU each" in err


@on_ray
def test_a_node_removed_mid_job_is_retried_elsewhere(tmp_path):
    proc = start_on_cluster(
        tmp_path, 3, *_search_args(tmp_path, 6, epochs=40), flags=["--remove-node-mid-job"]
    )
    harness = _finish(proc, tmp_path)
    removed = harness["removed"]
    assert removed, "no job ran on a worker node"
    jobs, runs = _check_totals(tmp_path, 6)
    redone = {j.id: j for j in jobs}[removed["job"]]
    assert redone.state == "done" and redone.attempts == 2
    assert redone.owner["node"] != removed["node"]
    dead = [
        r
        for r in runs
        if r.data.tags.get("job_key") == removed["key"] and r.info.status == "FAILED"
    ]
    assert dead and "Ray actor died" in dead[0].data.tags["state_reason"]


@on_ray
def test_a_killed_slot_process_is_retried_on_a_fresh_actor(tmp_path):
    proc = start_on_cluster(tmp_path, 2, *_search_args(tmp_path, 4))
    try:
        victim = wait_for(
            lambda: next(
                (j for j in jobs_of(tmp_path, STUDY) if j.state == "running" and j.run_id), None
            ),
            300,
            "a job mid-training",
        )
        os.kill(victim.owner["pid"], signal.SIGKILL)  # the actor's process (same PID namespace)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    _finish(proc, tmp_path)
    jobs, runs = _check_totals(tmp_path, 4)
    redone = {j.id: j for j in jobs}[victim.id]
    assert redone.state == "done" and redone.attempts == 2
    assert redone.owner["pid"] != victim.owner["pid"]


@on_ray
def test_a_job_that_kills_its_actor_every_time_fails_after_3_attempts_and_is_replaced(tmp_path):
    """The driver's BENCH_* settings reach every actor, so the kill point fires in each."""
    args = [*_search_args(tmp_path, 1), "--max-replacements", "1"]
    proc = start_on_cluster(tmp_path, 2, *args, BENCH_TEST_KILL_AT="train")
    try:
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (tmp_path / "search.err").read_text()
    assert code == 1, err[-3000:]
    assert "error: no job of batch 1 finished; 2 failed" in err
    jobs = jobs_of(tmp_path, STUDY)
    assert [(j.state, j.attempts) for j in jobs] == [("failed", 3)] * 2  # 1 + 1 replacement
    assert [b.state for b in batches(tmp_path, STUDY)] == ["done"]
    assert {t.state.name for t in trials_of(tmp_path, STUDY)} == {"FAIL"}
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) >= 6 and not [r for r in runs if r.info.status == "RUNNING"]


@on_ray
def test_a_killed_driver_takes_its_actors_with_it_and_a_rerun_resumes(tmp_path):
    proc = start_on_cluster(
        tmp_path, 2, *_search_args(tmp_path, 6, epochs=40), flags=["--kill-driver-mid-job"]
    )
    harness = _finish(proc, tmp_path)
    assert harness["killed"]["code"] == -signal.SIGKILL and harness["killed"]["job"]
    jobs, _ = _check_totals(tmp_path, 6)
    killed = {j.id: j for j in jobs}[harness["killed"]["job"]]
    assert killed.state == "done" and killed.attempts == 2  # reaped by the rerun, run again
    first = [j for j in jobs if j.attempts == 1 and j.state == "done"]
    assert first  # what the killed driver finished was kept, not trained again
    err = (tmp_path / "search.err").read_text()
    assert "joining search batch 1" in err


@on_ray
def test_a_stopped_node_is_redone_elsewhere_and_its_late_result_is_refused(tmp_path):
    """SIGSTOP a node mid-job until the job was redone on another node, then SIGCONT the slot:
    it trains on and reaches its record, which is refused. With --no-refit a search run that is
    the best so far logs its model, so a late attempt that was not fenced would log one."""
    args = [*_search_args(tmp_path, 6, epochs=40), "--no-refit"]
    proc = start_on_cluster(tmp_path, 3, *args, flags=["--stop-node-mid-job"])
    harness = _finish(proc, tmp_path)
    stopped = harness["stopped"]
    assert stopped and stopped.get("redone_on"), stopped  # redone while the node was stopped
    assert stopped["redone_on"] != stopped["node"]
    assert stopped.get("dropped"), "the resumed slot never reached its record"
    jobs, runs = _check_totals(tmp_path, 6)
    redone = {j.id: j for j in jobs}[stopped["job"]]
    assert redone.state == "done" and redone.attempts == 2
    mine = [r for r in runs if r.data.tags.get("job_key") == stopped["key"]]
    late = [r for r in mine if r.info.status == "FAILED"]
    assert len(mine) == 2 and len(late) == 1, [r.info.status for r in mine]
    client, _ = mlflow_runs(tmp_path)
    assert not client.search_logged_models(
        experiment_ids=[late[0].info.experiment_id],
        filter_string=f"source_run_id = '{late[0].info.run_id}'",
    )  # no model landed in the stopped attempt's run
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.run_id != late[0].info.run_id


@on_ray
def test_every_kill_point_kills_once_on_ray_and_the_batch_recovers(tmp_path):
    """Each kill point of tests/test_faults.py kills one process of a 2-node run: the driver at
    open-batch (then the plain rerun a user would type), a slot's actor at every other point (the
    driver retries that attempt on a fresh actor). The batch ends with test_faults' guarantees:
    N search jobs and trials finished, nothing RUNNING, the champion registered once."""
    from bench.faults import POINTS
    from tests.test_faults import REEVAL, assert_recovered

    markers = tmp_path / "killed"
    markers.mkdir()
    args = ["--dataset", "digits", "--space", "smoke", "--trials", "4", "--ensemble", "1", *REEVAL]
    proc = start_on_cluster(
        tmp_path, 2, *args, flags=["--rerun-after-kill"], study="digits-smoke",
        BENCH_TEST_KILL_AT=",".join(POINTS), BENCH_TEST_KILL_ONCE=str(markers),
    )  # fmt: skip
    harness = _finish(proc, tmp_path)
    assert sorted(p.name for p in markers.iterdir()) == sorted(POINTS)  # each point killed once
    assert harness.get("killed"), "the driver did not die at open-batch"
    # 7 slot deaths; 6 attempts reaped and retried (at sync the result was recorded first: the
    # driver only finishes its mirroring)
    err = (tmp_path / "search.err").read_text()
    assert err.count("its Ray actor died") == len(POINTS) - 2, _bench_lines(err)[-3000:]
    assert_recovered(tmp_path, n=4, study="digits-smoke")


@pytest.mark.component
def test_without_ray_the_flag_says_how_to_get_it_and_writes_nothing(tmp_path):
    """Where Ray is missing, --executor ray is one line and exit 2, before anything is written."""
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no Ray in this environment')\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.search", "--dataset", "digits", "--space", "smoke",
         "--trials", "1", "--executor", "ray", "--quiet"],
        cwd=work, env=cli_env(PYTHONPATH=str(fake.parent)), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --executor ray: Ray is not installed")
    assert "pip install 'bench[ray]'" in lines[0]
    assert list(work.iterdir()) == []  # no study, no job store, no tracking store


@pytest.mark.component
def test_ray_address_without_the_ray_executor_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.search", "--dataset", "digits", "--space", "smoke",
         "--trials", "1", "--ray-address", "127.0.0.1:6379", "--quiet"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --ray-address: only with --executor ray; add --executor ray"
    )
    assert list(tmp_path.iterdir()) == []
