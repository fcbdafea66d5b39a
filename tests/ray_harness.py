"""A real multi-node Ray cluster on this host, and one bench command on it.

Run inside a network namespace that has only loopback (``unshare --net``, then ``ip link set lo
up``; :func:`tests.test_ray.run_on_cluster` does both), so Ray binds 127.0.0.1 and no test
traffic ever leaves the machine::

    python -m tests.ray_harness FOLDER NODES \
        [--remove-node-mid-job | --kill-driver-mid-job | --stop-node-mid-job] \
        [--rerun-after-kill] -- bench.search ARGS...

It starts ``ray.cluster_utils.Cluster`` with NODES nodes of one CPU each, writes the address to
``FOLDER/ray-address``, runs ``python -m <command> ARGS --executor ray`` in FOLDER with
``RAY_ADDRESS`` set (output to ``FOLDER/search.out`` / ``search.err``), and with
``--remove-node-mid-job`` removes the worker node that holds a job mid-training; with
``--kill-driver-mid-job`` it SIGKILLs the command while a job trains, then runs the same command
again on the same cluster; with ``--stop-node-mid-job`` it SIGSTOPs every process of the
worker node that holds a job mid-training (its raylet and the slot's actor among them), waits
until the job has been redone and finished on another node, then SIGCONTs the stopped slot
alone (so it trains on and reaches its own record, which must be refused) and, once the slot
has logged that its attempt was dropped, the rest of the node; with ``--rerun-after-kill``, a
command that died of SIGKILL is run once more, as is. The (last) command's exit code
becomes this script's; ``FOLDER/harness.json`` says what was done.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    split = argv.index("--")
    folder, nodes, *flags = argv[:split]
    command, *args = argv[split + 1 :]
    folder = Path(folder)
    from ray.cluster_utils import Cluster

    head: dict = {"num_cpus": 1}
    if "--stop-node-mid-job" in flags:  # a stopped node is declared dead within seconds
        head["_system_config"] = {
            "health_check_initial_delay_ms": 1000,
            "health_check_period_ms": 1000,
            "health_check_timeout_ms": 1000,
            "health_check_failure_threshold": 5,
        }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    workers = [cluster.add_node(num_cpus=1) for _ in range(int(nodes) - 1)]
    cluster.wait_for_nodes()
    (folder / "ray-address").write_text(cluster.address)
    done: dict = {"nodes": int(nodes), "address": cluster.address}
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    with open(folder / "search.out", "a") as out, open(folder / "search.err", "a") as err:

        def start() -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", command, *args, "--executor", "ray"],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=err,
            )

        proc = start()
        try:
            if "--remove-node-mid-job" in flags:
                done["removed"] = _remove_a_node_mid_job(folder, cluster, workers, proc)
            if "--stop-node-mid-job" in flags:
                done["stopped"] = _stop_a_node_mid_job(folder, workers, proc)
            if "--kill-driver-mid-job" in flags:
                job = _wait_mid_job(folder, proc, lambda job: True)
                proc.kill()
                done["killed"] = {"job": job.id if job else None, "code": proc.wait()}
                proc = start()
            done["code"] = proc.wait(timeout=900)
            if "--rerun-after-kill" in flags and done["code"] == -signal.SIGKILL:
                done["killed"] = {"code": done["code"]}  # the plain rerun a user would type
                proc = start()
                done["code"] = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
            cluster.shutdown()
    (folder / "harness.json").write_text(json.dumps(done))
    return done["code"]


def _remove_a_node_mid_job(folder: Path, cluster, workers, proc) -> dict | None:
    """Wait for a job training on a worker node (not the head), then remove that node."""
    ids = {node.node_id: node for node in workers}
    job = _wait_mid_job(folder, proc, lambda job: (job.owner or {}).get("node") in ids)
    if job is None:
        return None
    cluster.remove_node(ids[job.owner["node"]], allow_graceful=False)
    return {"job": job.id, "key": job.key, "node": job.owner["node"]}


def _stop_a_node_mid_job(folder: Path, workers, proc) -> dict | None:
    """SIGSTOP a worker node mid-job; SIGCONT its slot once the job was redone elsewhere."""
    from tests.faults import jobs_of

    ids = {node.node_id: node for node in workers}
    job = _wait_mid_job(folder, proc, lambda job: (job.owner or {}).get("node") in ids)
    if job is None:
        return None
    node = ids[job.owner["node"]]
    slot = job.owner["pid"]
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
    stopped = sorted(_with_descendants([*roots, slot]))
    for pid in stopped:
        _signal(pid, signal.SIGSTOP)
    out = {"job": job.id, "key": job.key, "node": job.owner["node"], "slot": slot}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        again = {j.id: j for j in jobs_of(folder, _study(folder))}[job.id]
        if again.state == "done" and again.attempts >= 2:
            out["redone_on"] = again.owner.get("node")
            break
        time.sleep(0.5)
    _signal(slot, signal.SIGCONT)  # the slot alone: its node stays stopped, unaware of its death
    logs = Path(node.get_logs_dir_path())
    deadline = time.time() + 120
    while time.time() < deadline and "dropped" not in out:
        for path in logs.glob(f"*-{slot}.err"):
            if "this attempt's work is dropped" in path.read_text(errors="replace"):
                out["dropped"] = path.name
        if "dropped" not in out and not Path(f"/proc/{slot}").exists():
            break  # the slot ended without reaching its record
        time.sleep(0.5)
    for pid in stopped:
        _signal(pid, signal.SIGCONT)
    return out


def _with_descendants(pids: list[int]) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found = set(pids)
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_mid_job(folder: Path, proc, where):
    """A search job that has just started training (its run exists; it was not running at the
    previous look, so most of its epochs are still ahead) where ``where(job)``, once one job
    is done; None if the command ends first."""
    from tests.faults import jobs_of

    seen: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        jobs = jobs_of(folder, _study(folder))
        started = [j for j in jobs if j.state == "running" and j.run_id and j.purpose == "search"]
        if any(j.state == "done" for j in jobs):
            for job in started:
                if job.id not in seen and where(job):
                    return job
        seen |= {j.id for j in started}
        time.sleep(0.2)
    return None


def _study(folder: Path) -> str:
    return (folder / "study-name").read_text().strip()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
