"""How many worker processes and TensorFlow threads this machine can run. Standard library only.

``os.cpu_count()`` is the wrong number in a container or under ``taskset``: it counts the host's
cores, not the ones this process may use. :func:`usable_cpus` takes the smaller of

- the CPU affinity mask (``os.sched_getaffinity``; a cgroup ``cpuset`` shows up here too), and
- the CFS bandwidth quota of the process's cgroup, rounded up: cgroup v2 ``cpu.max``
  (``"max 100000"`` no limit, ``"200000 100000"`` two CPUs) or cgroup v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` (quota -1: no limit).

The cgroup files are found the way the kernel lays them out: the process's group comes from
``/proc/self/cgroup``, the hierarchy's mount point and mount root from ``/proc/self/mountinfo``
(so containers with and without a cgroup namespace both resolve), and every ancestor group up to
the mount point is read too, because a parent's quota caps its children. Without a readable
mountinfo the usual places (``/sys/fs/cgroup`` for v2, ``/sys/fs/cgroup/cpu`` for v1) are used.
Not handled: ``cpu.weight`` / ``cpu.shares`` (relative priorities, not limits), and platforms
without ``sched_getaffinity`` (macOS, Windows), where ``os.cpu_count()`` stands.

:func:`visible_gpus` lists NVIDIA GPUs without importing TensorFlow, and :func:`plan_workers`
turns both counts into a :class:`WorkerPlan`; :func:`plan_for_this_machine` does all three.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bench.errors import BenchError

MAX_JOBS = 256  # one machine's worker processes; beyond this, add machines (README: Scale-out)
JOBS_PER_CPU = 4  # oversubscription past 4 processes per core only adds start-up and switching
NVIDIA_SMI_TIMEOUT_S = 10.0  # a wedged driver must not hang the CLI


# ---------------------------------------------------------------- CPUs


def usable_cpus(root: str | os.PathLike = "/") -> int:
    """CPUs this process can keep busy: affinity mask and cgroup quota, whichever is smaller.

    Args:
        root: Where ``proc/`` and ``sys/`` are looked up; tests point it at a fake tree.

    Returns:
        At least 1.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def cgroup_cpu_limit(root: str | os.PathLike = "/") -> float | None:
    """The tightest CFS quota (in CPUs, e.g. 1.5) over the process's cgroups; None if unlimited.

    Args:
        root: Where ``proc/`` and ``sys/`` are looked up.

    Returns:
        quota / period of the most restrictive group on the way from this process's cgroup to
        its hierarchy's mount point, across cgroup v1 and v2; None when no group sets a quota
        or nothing is readable.
    """
    base = Path(root)
    groups = _read_text(base / "proc/self/cgroup")
    if groups is None:
        return None
    mounts = _cgroup_mounts(_read_text(base / "proc/self/mountinfo") or "")
    limits: list[float] = []
    for line in groups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, group = parts
        if hierarchy == "0" and controllers == "":
            mount = mounts.get("cgroup2", ("/", "/sys/fs/cgroup"))
            limits += _walk(base, mount, group, _v2_limit)
        elif "cpu" in controllers.split(","):
            mount = mounts.get("cpu", ("/", "/sys/fs/cgroup/cpu"))
            limits += _walk(base, mount, group, _v1_limit)
    return min(limits) if limits else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _unescape(field_text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def _cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """``{"cgroup2" | "cpu": (mount root, mount point)}`` from /proc/self/mountinfo.

    A line reads ``id parent dev root mountpoint options [optional...] - fstype source super``;
    for a v1 hierarchy the super options name its controllers (``rw,cpu,cpuacct``).
    """
    found: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mount = (_unescape(fields[3]), _unescape(fields[4]))
        if tail[0] == "cgroup2":
            found.setdefault("cgroup2", mount)
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            found.setdefault("cpu", mount)
    return found


def _walk(
    base: Path, mount: tuple[str, str], group: str, read: Callable[[Path], float | None]
) -> list[float]:
    """Limits of ``group`` and each ancestor below the mount point that set one."""
    mount_root, mount_point = (PurePosixPath(p) for p in mount)
    try:
        relative = PurePosixPath(group).relative_to(mount_root)
    except ValueError:
        relative = PurePosixPath("..")
    if ".." in relative.parts:
        # The group lies outside what is mounted (seen from inside a cgroup namespace, an outer
        # group reads as "/../.."): the mount point is then the closest group that can be read.
        relative = PurePosixPath()
    top = base / str(mount_point).lstrip("/")
    limits = []
    for depth in range(len(relative.parts), -1, -1):
        limit = read(top.joinpath(*relative.parts[:depth]))
        if limit is not None:
            limits.append(limit)
    return limits


def _v2_limit(directory: Path) -> float | None:
    text = _read_text(directory / "cpu.max")
    if text is None:
        return None
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = parts[1] if len(parts) > 1 else "100000"  # the kernel's default period
    return _ratio(parts[0], period)


def _v1_limit(directory: Path) -> float | None:
    quota = _read_text(directory / "cpu.cfs_quota_us")
    period = _read_text(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota.strip(), period.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for "no limit"


# ---------------------------------------------------------------- GPUs


def _nvidia_smi() -> str | None:
    """``nvidia-smi -L``'s output, or None when the tool is missing or fails."""
    try:
        proc = subprocess.run(
            ["nvidia-smi", "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


_SMI_GPU = re.compile(r"^GPU (?P<index>\d+):.*?(?:\(UUID: (?P<uuid>[^)\s]+)\))?\s*$")


def visible_gpus(
    env: Mapping[str, str] = os.environ,
    probe: Callable[[], str | None] = _nvidia_smi,
) -> list[str]:
    """NVIDIA GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries; no TensorFlow.

    ``CUDA_VISIBLE_DEVICES`` wins when set: ``""`` or ``"-1"`` means none, ``"0,2"`` those two,
    and, as CUDA reads it, the list ends at the first negative entry (``"0,-1,2"`` is ``["0"]``).
    Otherwise ``nvidia-smi -L`` is asked and each GPU is named by its UUID, because nvidia-smi
    numbers GPUs in PCI bus order while CUDA by default numbers the fastest first: an index
    taken from one can name a different card in the other, a UUID cannot. MIG slices are not
    listed separately.

    Args:
        env: The environment to read ``CUDA_VISIBLE_DEVICES`` from.
        probe: Returns ``nvidia-smi -L``'s output, or None when there is no usable driver.

    Returns:
        Device names in order; empty when there is no GPU.
    """
    if "CUDA_VISIBLE_DEVICES" in env:
        devices = []
        for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            devices.append(entry)
        return devices
    output = probe()
    if not output:
        return []
    devices = []
    for line in output.splitlines():
        match = _SMI_GPU.match(line.strip())
        if match:
            devices.append(match.group("uuid") or match.group("index"))
    return devices


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class WorkerPlan:
    """How a search runs on this machine.

    Attributes:
        jobs: Worker processes.
        threads: TensorFlow intra/inter-op threads per worker.
        per_worker_env: One mapping per worker of the variables to set before it imports
            TensorFlow (merged over the inherited environment); empty mappings without GPUs,
            so a CPU machine's CUDA settings are left exactly as they were.
        executor: ``local`` (slots on this machine) or ``ray`` (Ray actors on a cluster; then
            ``jobs`` 0 fills the cluster, and Ray gives each slot its GPU).
        ray_address: The Ray cluster (None: ``RAY_ADDRESS``, or a Ray started here).
        gpus_per_slot: GPUs per Ray actor where the cluster has GPUs.
    """

    jobs: int
    threads: int
    per_worker_env: list[dict[str, str]] = field(default_factory=list)
    executor: str = "local"
    ray_address: str | None = None
    gpus_per_slot: float = 1.0

    @property
    def gpus(self) -> list[str]:
        """The GPU each worker uses, in worker order (empty on a CPU-only plan)."""
        return [env["CUDA_VISIBLE_DEVICES"] for env in self.per_worker_env if env]

    def describe(self) -> str:
        """One line for the CLI, e.g. ``2 worker(s) x 8 thread(s) on GPU(s) 0, 1``."""
        if self.executor == "ray":
            slots = f"{self.jobs} Ray actor(s)" if self.jobs else "Ray actors filling the cluster"
            return f"{slots} x {self.threads} thread(s)"
        text = f"{self.jobs} worker(s) x {self.threads} thread(s)"
        gpus = list(dict.fromkeys(self.gpus))
        return f"{text} on GPU(s) {', '.join(gpus)}" if gpus else text


def plan_workers(
    requested_jobs: int | None,
    requested_threads: int | None,
    n_trials: int,
    cpus: int,
    gpus: list[str],
) -> WorkerPlan:
    """Decide the number of workers, their threads and their GPU.

    Default workers: one per GPU when there are GPUs, else one per usable CPU, and never more
    than ``n_trials`` (an idle worker only pays TensorFlow's start-up). Threads default to an
    even share of the CPUs, at least one. Each worker on a GPU machine sees a single GPU
    (``CUDA_VISIBLE_DEVICES``) and allocates its memory as it grows
    (``TF_FORCE_GPU_ALLOW_GROWTH``); asked for more workers than GPUs, workers share them
    round-robin (worker i on GPU i mod n), which allow-growth makes possible: without it the
    first TensorFlow process on a card reserves nearly all its memory. Fewer workers than GPUs
    leave the rest idle: a trial trains one model on one device.

    Args:
        requested_jobs: ``--jobs``, or None for the default.
        requested_threads: ``--threads``, or None for the default.
        n_trials: Trials left to run in this batch.
        cpus: Usable CPUs (:func:`usable_cpus`).
        gpus: Visible GPUs (:func:`visible_gpus`).

    Returns:
        The plan.

    Raises:
        BenchError: ``--jobs`` or ``--threads`` below 1, or ``--jobs`` above
            ``JOBS_PER_CPU`` x ``cpus`` or ``MAX_JOBS``.
    """
    cpus = max(1, cpus)
    if requested_jobs is not None:
        _check_jobs(requested_jobs, cpus)
    if requested_threads is not None and requested_threads < 1:
        raise BenchError(f"--threads {requested_threads}: must be at least 1; use --threads 1")
    jobs = requested_jobs or (len(gpus) if gpus else cpus)
    jobs = max(1, min(jobs, n_trials))
    threads = requested_threads or max(1, cpus // jobs)
    if gpus:
        envs = [
            {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)], "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
            for i in range(jobs)
        ]
    else:
        envs = [{} for _ in range(jobs)]
    return WorkerPlan(jobs, threads, envs)


def _check_jobs(jobs: int, cpus: int) -> None:
    if jobs < 1:
        raise BenchError(f"--jobs {jobs}: must be at least 1; leave it out for one per CPU/GPU")
    per_cpu = JOBS_PER_CPU * cpus
    if jobs > min(per_cpu, MAX_JOBS):
        if per_cpu <= MAX_JOBS:
            why = f"{JOBS_PER_CPU} x the {cpus} usable CPU(s) of this machine"
        else:
            why = "the limit of worker processes on one machine"
        raise BenchError(
            f"--jobs {jobs}: above {why} ({min(per_cpu, MAX_JOBS)}); use --jobs "
            f"{min(per_cpu, MAX_JOBS)} or fewer, or more machines sharing one --storage"
        )


def plan_for(
    requested_jobs: int | None,
    requested_threads: int | None,
    n_trials: int,
    executor: str = "local",
    ray_address: str | None = None,
    gpus_per_slot: float = 1.0,
) -> WorkerPlan:
    """The plan for ``--executor``: :func:`plan_for_this_machine` for ``local``; for ``ray``,
    ``--jobs`` actors (default: as many as the cluster holds, never more than ``n_trials``) of
    ``--threads`` CPUs (default 1), placed by Ray."""
    if executor != "ray":
        return plan_for_this_machine(requested_jobs, requested_threads, n_trials)
    jobs = min(requested_jobs, max(1, n_trials)) if requested_jobs else 0
    return WorkerPlan(jobs, requested_threads or 1, [], "ray", ray_address, gpus_per_slot)


def plan_for_this_machine(
    requested_jobs: int | None, requested_threads: int | None, n_trials: int
) -> WorkerPlan:
    """:func:`plan_workers` with this machine's :func:`usable_cpus` and :func:`visible_gpus`."""
    return plan_workers(requested_jobs, requested_threads, n_trials, usable_cpus(), visible_gpus())


__all__ = [
    "JOBS_PER_CPU",
    "MAX_JOBS",
    "WorkerPlan",
    "cgroup_cpu_limit",
    "plan_for",
    "plan_for_this_machine",
    "plan_workers",
    "usable_cpus",
    "visible_gpus",
]
