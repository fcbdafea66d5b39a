"""Who owns a running job, and whether that owner is still alive.

An owner is one worker process: a random token (what the job store compares), plus where it runs.
Liveness has two detectors. The lease: every worker renews its jobs' leases while it works on them
(until the result is recorded), so a job whose lease ran out has lost its worker, on any machine.
The process table: on the same kernel and in the same PID namespace, a dead owner is seen at once
through ``/proc`` (its PID is gone or belongs to a process started at another time). Containers
that share a host name but not a PID namespace are told apart by the namespace, never misread.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from pathlib import Path

from bench.errors import BenchError


def _lease_seconds() -> float:
    """``BENCH_LEASE_SECONDS`` (default 30), checked: a typo must not become a lease of NaN."""
    text = os.environ.get("BENCH_LEASE_SECONDS", "30")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 1 <= value <= 86_400:  # NaN fails this too
        raise BenchError(
            f"BENCH_LEASE_SECONDS={text[:40]!r}: must be a number of seconds from 1 to 86400 "
            "(default 30); fix it or unset it"
        )
    return value


LEASE_SECONDS = _lease_seconds()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None when it is gone or a zombie)."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def new_owner() -> dict:
    """This process as an owner record (the token is stored separately by the job store)."""
    pid = os.getpid()
    return {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": pid,
        "start": process_start(pid),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
    }


def is_dead(owner: dict | None, lease_until: float | None, now: float | None = None) -> bool:
    """Whether the worker that holds a job is gone (lease expired or its process exited)."""
    if not owner:
        return True
    now = time.time() if now is None else now
    if lease_until is not None and lease_until < now:
        return True
    same_kernel = owner.get("boot") is not None and owner.get("boot") == _read(
        "/proc/sys/kernel/random/boot_id"
    )
    if same_kernel and owner.get("pidns") is not None and owner.get("pidns") == _pid_namespace():
        return process_start(int(owner["pid"])) != owner.get("start")
    return False
