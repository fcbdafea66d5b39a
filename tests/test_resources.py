"""bench.resources: CPUs from affinity and cgroup quotas, GPUs without TensorFlow, the worker plan.

Cgroup layouts are fake trees under tmp_path (``root=``); the affinity mask is monkeypatched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bench import resources
from bench.errors import BenchError
from bench.resources import (
    WorkerPlan,
    cgroup_cpu_limit,
    plan_workers,
    usable_cpus,
    visible_gpus,
)

REPO = Path(__file__).resolve().parent.parent

# The mountinfo lines a kernel writes for a v2-only host and for a v1 "cpu,cpuacct" hierarchy.
V2_MOUNT = "30 23 0:26 {root} /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw\n"
V1_MOUNT = (
    "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
)


def write(base: Path, relative: str, text: str) -> None:
    path = base / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def v2_tree(base: Path, group: str, limits: dict[str, str], mountinfo: bool = True) -> Path:
    """A cgroup v2 host: ``limits`` maps a group (relative to the mount) to its cpu.max."""
    write(base, "proc/self/cgroup", f"0::{group}\n")
    if mountinfo:
        write(base, "proc/self/mountinfo", V2_MOUNT.format(root="/"))
    for where, value in limits.items():
        write(base, f"sys/fs/cgroup/{where}/cpu.max".replace("//", "/"), value + "\n")
    return base


def v1_tree(base: Path, group: str, mount_root: str, quota: int, period: int = 100000) -> Path:
    """A cgroup v1 host whose cpu hierarchy is mounted at /sys/fs/cgroup/cpu,cpuacct."""
    write(base, "proc/self/cgroup", f"5:memory:{group}\n4:cpu,cpuacct:{group}\n0::/\n")
    write(base, "proc/self/mountinfo", V1_MOUNT.format(root=mount_root))
    rel = os.path.relpath(group, mount_root).lstrip(".")
    folder = f"sys/fs/cgroup/cpu,cpuacct/{rel}".rstrip("/")
    write(base, f"{folder}/cpu.cfs_quota_us", f"{quota}\n")
    write(base, f"{folder}/cpu.cfs_period_us", f"{period}\n")
    return base


@pytest.fixture
def cores(monkeypatch):
    """Set the affinity mask this process reports: ``cores(64)``."""

    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    return set_cores


# ---------------------------------------------------------------- cgroup quotas


def test_v2_quota_of_the_containers_own_group(tmp_path, cores):
    cores(64)
    root = v2_tree(tmp_path, "/", {"": "200000 100000"})
    assert cgroup_cpu_limit(root) == 2.0
    assert usable_cpus(root) == 2


def test_v2_max_means_no_limit(tmp_path, cores):
    cores(6)
    root = v2_tree(tmp_path, "/", {"": "max 100000"})
    assert cgroup_cpu_limit(root) is None
    assert usable_cpus(root) == 6


def test_v2_nested_group_takes_the_tightest_ancestor_and_rounds_up(tmp_path, cores):
    cores(64)
    root = v2_tree(
        tmp_path,
        "/kubepods.slice/pod1/ctr",
        {
            "kubepods.slice": "max 100000",
            "kubepods.slice/pod1": "150000 100000",
            "kubepods.slice/pod1/ctr": "800000 100000",
        },
    )
    assert cgroup_cpu_limit(root) == 1.5
    assert usable_cpus(root) == 2


def test_v2_without_mountinfo_uses_sys_fs_cgroup(tmp_path, cores):
    cores(64)
    root = v2_tree(tmp_path, "/user.slice", {"user.slice": "300000 100000"}, mountinfo=False)
    assert usable_cpus(root) == 3


def test_v2_group_outside_the_namespace_reads_the_mount_point(tmp_path, cores):
    cores(64)
    root = v2_tree(tmp_path, "/../../system.slice/x", {"": "100000 100000"})
    assert usable_cpus(root) == 1


def test_v1_quota_with_a_container_mount_root(tmp_path, cores):
    cores(64)
    root = v1_tree(tmp_path, "/docker/abc", mount_root="/docker/abc", quota=250000)
    assert cgroup_cpu_limit(root) == 2.5
    assert usable_cpus(root) == 3


def test_v1_quota_of_a_host_group(tmp_path, cores):
    cores(64)
    root = v1_tree(tmp_path, "/batch/job7", mount_root="/", quota=50000)
    assert cgroup_cpu_limit(root) == 0.5
    assert usable_cpus(root) == 1  # never 0


def test_v1_minus_one_means_no_limit(tmp_path, cores):
    cores(4)
    root = v1_tree(tmp_path, "/", mount_root="/", quota=-1)
    assert cgroup_cpu_limit(root) is None
    assert usable_cpus(root) == 4


def test_hybrid_host_uses_the_v1_cpu_controller(tmp_path, cores):
    """systemd's hybrid layout: v1 controllers plus a v2 tree without the cpu controller."""
    cores(64)
    root = v1_tree(tmp_path, "/", mount_root="/", quota=200000)
    with (root / "proc/self/mountinfo").open("a") as f:
        f.write("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    (root / "sys/fs/cgroup/unified").mkdir(parents=True)
    assert usable_cpus(root) == 2


def test_mountinfo_escapes_are_decoded(tmp_path, cores):
    cores(64)
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(
        tmp_path,
        "proc/self/mountinfo",
        "30 23 0:26 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n",
    )
    write(tmp_path, "sys/fs/my cgroup/cpu.max", "400000 200000\n")
    assert usable_cpus(tmp_path) == 2


def test_affinity_below_the_quota_wins(tmp_path, cores):
    cores(3)
    root = v2_tree(tmp_path, "/", {"": "800000 100000"})
    assert usable_cpus(root) == 3


@pytest.mark.parametrize("cpu_max", ["", "garbage", "0 100000", "100000 0"])
def test_unreadable_or_odd_quota_files_mean_no_limit(tmp_path, cores, cpu_max):
    cores(5)
    root = v2_tree(tmp_path, "/", {"": cpu_max})
    assert usable_cpus(root) == 5


def test_no_proc_no_limit_and_no_affinity_falls_back_to_cpu_count(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert cgroup_cpu_limit(tmp_path) is None
    assert usable_cpus(tmp_path) == 7


def test_this_machine():
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


# ---------------------------------------------------------------- GPUs

SMI_TWO = (
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)\n"
    "  MIG 3g.40gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)\n"
)


def no_probe() -> str:
    raise AssertionError("CUDA_VISIBLE_DEVICES is set: nvidia-smi must not be asked")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", []),
        ("-1", []),
        ("0,2", ["0", "2"]),
        (" 1 , 3 ", ["1", "3"]),
        ("0,-1,2", ["0"]),  # CUDA stops at the first invalid entry
        ("GPU-11111111", ["GPU-11111111"]),
    ],
)
def test_cuda_visible_devices_wins(value, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}, probe=no_probe) == expected


def test_nvidia_smi_gpus_are_named_by_uuid():
    gpus = visible_gpus({}, probe=lambda: SMI_TWO)
    assert gpus == [
        "GPU-11111111-2222-3333-4444-555555555555",
        "GPU-66666666-7777-8888-9999-000000000000",
    ]


def test_nvidia_smi_without_uuids_gives_indices():
    assert visible_gpus({}, probe=lambda: "GPU 0: Tesla T4\nGPU 1: Tesla T4\n") == ["0", "1"]


@pytest.mark.parametrize("output", [None, "", "No devices found.\n"])
def test_no_driver_no_gpus(output):
    assert visible_gpus({}, probe=lambda: output) == []


def fake_nvidia_smi(folder: Path, body: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.component
def test_default_probe_runs_nvidia_smi_from_path(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, "printf 'GPU 0: Fake (UUID: GPU-abc)\\n'")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus({}) == ["GPU-abc"]


@pytest.mark.component
def test_default_probe_missing_or_failing_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus({}) == []  # not installed
    fake_nvidia_smi(tmp_path, "echo 'GPU 0: half-dead (UUID: GPU-x)'; exit 9")
    assert visible_gpus({}) == []  # the driver did not answer


# ---------------------------------------------------------------- the plan


def test_64_core_host_with_a_2_cpu_quota_plans_2_workers(tmp_path, cores):
    cores(64)
    cpus = usable_cpus(v2_tree(tmp_path, "/", {"": "200000 100000"}))
    plan = plan_workers(None, None, n_trials=50, cpus=cpus, gpus=[])
    assert plan == WorkerPlan(jobs=2, threads=1, per_worker_env=[{}, {}])


def test_cpu_only_leaves_cuda_settings_alone():
    plan = plan_workers(None, None, n_trials=50, cpus=8, gpus=[])
    assert (plan.jobs, plan.threads) == (8, 1)
    assert plan.per_worker_env == [{}] * 8
    assert plan.gpus == []
    assert plan.describe() == "8 worker(s) x 1 thread(s)"


def test_two_gpus_two_workers_one_gpu_each():
    plan = plan_workers(None, None, n_trials=50, cpus=16, gpus=["0", "1"])
    assert (plan.jobs, plan.threads) == (2, 8)
    assert plan.per_worker_env == [
        {"CUDA_VISIBLE_DEVICES": "0", "TF_FORCE_GPU_ALLOW_GROWTH": "true"},
        {"CUDA_VISIBLE_DEVICES": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"},
    ]
    assert plan.describe() == "2 worker(s) x 8 thread(s) on GPU(s) 0, 1"


def test_more_jobs_than_gpus_share_them_round_robin():
    plan = plan_workers(5, None, n_trials=50, cpus=16, gpus=["a", "b"])
    assert plan.gpus == ["a", "b", "a", "b", "a"]
    assert plan.threads == 3
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for env in plan.per_worker_env)


def test_fewer_jobs_than_gpus_one_gpu_each():
    plan = plan_workers(1, None, n_trials=50, cpus=16, gpus=["0", "1", "2"])
    assert plan.gpus == ["0"] and plan.threads == 16


@pytest.mark.parametrize(
    "jobs, threads, n_trials, cpus, gpus, expected",
    [
        (None, None, 1, 2, [], (1, 2)),  # never more workers than trials
        (None, None, 3, 64, [], (3, 21)),
        (None, None, 1, 16, ["0", "1"], (1, 16)),
        (4, None, 2, 8, [], (2, 4)),  # an explicit --jobs is capped by the trials too
        (None, 4, 50, 2, [], (2, 4)),  # explicit threads are kept
        (3, None, 50, 2, [], (3, 1)),  # up to 4 workers per CPU is allowed
        (None, None, 0, 2, [], (1, 2)),  # nothing left to run: still a valid plan
    ],
)
def test_jobs_and_threads(jobs, threads, n_trials, cpus, gpus, expected):
    plan = plan_workers(jobs, threads, n_trials, cpus, gpus)
    assert (plan.jobs, plan.threads) == expected
    assert len(plan.per_worker_env) == plan.jobs


@pytest.mark.parametrize(
    "jobs, threads, cpus, words",
    [
        (9, None, 2, ["--jobs 9", "4 x the 2 usable CPU(s)", "(8)", "--jobs 8 or fewer"]),
        (300, None, 128, ["--jobs 300", "worker processes on one machine", "(256)", "--jobs 256"]),
        (0, None, 2, ["--jobs 0", "at least 1"]),
        (None, 0, 2, ["--threads 0", "at least 1"]),
    ],
)
def test_bounds_are_one_line_errors(jobs, threads, cpus, words):
    with pytest.raises(BenchError) as err:
        plan_workers(jobs, threads, n_trials=1000, cpus=cpus, gpus=[])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bounds_hold_exactly_at_the_limit():
    assert plan_workers(8, None, 1000, cpus=2, gpus=[]).jobs == 8
    assert plan_workers(resources.MAX_JOBS, None, 1000, cpus=128, gpus=[]).jobs == 256
