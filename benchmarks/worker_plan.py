"""What `bench.search` would start on this machine, and what each worker process would see.

    python benchmarks/worker_plan.py                 # this machine as it is
    taskset -c 0-3 python benchmarks/worker_plan.py  # an affinity mask, as a container's cpuset
    python benchmarks/worker_plan.py --trials 1 --jobs 3

Prints the usable CPUs (affinity and cgroup quota) against ``os.cpu_count()``, the visible GPUs,
and the worker plan (``bench.resources.plan_for_this_machine``, the function the CLIs call).
Then it starts one child process per planned worker with that worker's environment, as
``bench.search`` does, and asks inside the child which CPUs and GPUs it can use: the affinity
mask, ``CUDA_VISIBLE_DEVICES`` and ``TF_FORCE_GPU_ALLOW_GROWTH``, and the CUDA devices a framework
in the child counts (TensorFlow when installed, else PyTorch or JAX, whichever imports; none on a
CPU machine). Exits 1 when a worker on a GPU machine would see other than exactly one GPU.
Standard library only in this process, so it runs on a machine without bench's dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.resources import (  # noqa: E402
    cgroup_cpu_limit,
    plan_for_this_machine,
    usable_cpus,
    visible_gpus,
)

# Run in each child: what that worker process would see. The first framework that imports counts.
CHILD = r"""
import json, os
seen = {
    "affinity": len(os.sched_getaffinity(0)),
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "TF_FORCE_GPU_ALLOW_GROWTH": os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"),
    "framework": None,
    "devices": None,
}
try:
    import tensorflow as tf
    seen["framework"] = "tensorflow"
    gpus = tf.config.list_physical_devices("GPU")
    seen["devices"] = len(gpus)
    seen["memory_growth"] = [tf.config.experimental.get_memory_growth(g) for g in gpus]
except ImportError:
    try:
        import torch
        seen["framework"] = "torch"
        seen["devices"] = torch.cuda.device_count()
        seen["names"] = [torch.cuda.get_device_name(i) for i in range(seen["devices"])]
    except ImportError:
        try:
            import jax
            seen["framework"] = "jax"
            seen["devices"] = len([d for d in jax.devices() if d.platform == "gpu"])
        except Exception:
            pass
print(json.dumps(seen))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="as bench.search --jobs")
    parser.add_argument("--threads", type=int, default=None, help="as bench.search --threads")
    parser.add_argument("--trials", type=int, default=50, help="as bench.search --trials")
    args = parser.parse_args(argv)

    plan = plan_for_this_machine(args.jobs, args.threads, args.trials)
    print(f"os.cpu_count():      {os.cpu_count()}")
    print(f"affinity mask:       {len(os.sched_getaffinity(0))} CPU(s)")
    print(f"cgroup CPU quota:    {cgroup_cpu_limit()}")
    print(f"usable CPUs:         {usable_cpus()}")
    print(f"visible GPUs:        {visible_gpus() or 'none'}")
    print(f"plan:                {plan.describe()}")

    failures = 0
    for i in range(plan.jobs):
        env = {**os.environ, **(plan.per_worker_env[i] if plan.per_worker_env else {})}
        out = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
        )
        line = (out.stdout.strip().splitlines() or ["{}"])[-1]
        seen = json.loads(line)
        print(f"worker {i}: {json.dumps(seen)}")
        if plan.gpus and seen.get("devices") not in (None, 1):
            print(f"worker {i}: sees {seen['devices']} GPUs, expected exactly 1")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
