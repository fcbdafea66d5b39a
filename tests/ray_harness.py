"""A real multi-node Ray cluster on this host, and one bench command on it.

Run inside a network namespace that has only loopback (``unshare --net``, then ``ip link set lo
up``; :func:`tests.test_ray.run_on_cluster` does both), so Ray binds 127.0.0.1 and no test
traffic ever leaves the machine::

    python -m tests.ray_harness FOLDER NODES [--remove-node-mid-job | --kill-driver-mid-job] \
        -- bench.search ARGS...

It starts ``ray.cluster_utils.Cluster`` with NODES nodes of one CPU each, writes the address to
``FOLDER/ray-address``, runs ``python -m <command> ARGS --executor ray`` in FOLDER with
``RAY_ADDRESS`` set (output to ``FOLDER/search.out`` / ``search.err``), and with
``--remove-node-mid-job`` removes the worker node that holds a job mid-training; with
``--kill-driver-mid-job`` it SIGKILLs the command while a job trains, then runs the same command
again on the same cluster. The (last) command's exit code becomes this script's;
``FOLDER/harness.json`` says what was done.
"""

from __future__ import annotations

import json
import os
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

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
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
            if "--kill-driver-mid-job" in flags:
                job = _wait_mid_job(folder, proc, lambda job: True)
                proc.kill()
                done["killed"] = {"job": job.id if job else None, "code": proc.wait()}
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
