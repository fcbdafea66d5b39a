"""Where a batch's jobs run: slots that an executor supervises for the driver.

The contract (:class:`Executor`) is small: start the slots, hand one a job's attempt, wait for
attempts to end, stop. An attempt ends in one of three ways (:class:`Ended`): the slot finished
it (its result is in the store), the slot died with it (the driver reaps the job; the executor
starts a fresh slot in its place), or the slot refuses more work (an error that every job would
hit, such as a registration outage or data that differs from the batch's).

:class:`LocalExecutor` runs the slots on this machine: in the driver's own process when there is
one slot and nothing to set per slot, else as child processes, each keeping TensorFlow and the
data loaded between jobs. A child that dies is seen at once through its process sentinel; a
child whose driver dies is killed by the kernel (``PR_SET_PDEATHSIG`` on Linux) or notices
within a second (elsewhere). No lease, no clock, no process table of another machine.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from bench.engine.interrupts import Interrupts
from bench.engine.worker import WorkerSettings
from bench.errors import BenchError, redact

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Ended:
    """How one attempt (or one slot) ended.

    Attributes:
        slot: The slot.
        job_id: The job it ran (None for a slot that ended between jobs).
        token: The attempt's token.
        died: Why the slot is gone, when it died (the driver reaps the attempt).
        error: Why the slot refuses more work, when it does (the driver retires it).
        gone: The slot is not free for now: its replacement is reported free (an ``Ended``
            with no job) once ready, or never (a cluster that lost a node may have no room).
    """

    slot: int
    job_id: int | None
    token: str | None
    died: str | None = None
    error: str | None = None
    gone: bool = False


class Executor(Protocol):
    """What the driver needs from an executor."""

    slots: int
    # slots being (re)placed that cannot take work yet: the driver waits for them rather than
    # ending a stage early (a replacement Ray actor; always 0 on this machine)
    starting: int

    def describe(self) -> str:
        """One line on where the slots run, printed when the batch starts ("" for nothing)."""
        ...

    def start(self) -> None: ...

    def where(self, slot: int) -> dict: ...

    def submit(self, slot: int, job_id: int, token: str) -> None: ...

    def wait(self, timeout: float) -> list[Ended]: ...

    def stop(self, grace: float) -> None: ...


@dataclass
class LocalExecutor:
    """Slots on this machine.

    Args:
        settings: What every slot needs.
        slots: How many.
        env: Per slot, variables set before it imports TensorFlow (its GPU); empty on a CPU plan.
        interrupts: The driver's interrupt state (an in-process slot shares it).
    """

    settings: WorkerSettings
    slots: int
    env: list[dict[str, str]] = field(default_factory=list)
    interrupts: Interrupts = field(default_factory=Interrupts)

    def __post_init__(self) -> None:
        self.in_process = self.slots == 1 and not any(self.env)
        self._worker = None
        self._pending: tuple[int, int, str] | None = None
        self._procs: dict[int, object] = {}
        self._conns: dict[int, object] = {}
        self._busy: dict[int, tuple[int, str]] = {}

    starting = 0  # local slots start in start() and are replaced at once

    def describe(self) -> str:
        return ""  # the batch's first line already says N slots on this machine

    def start(self) -> None:
        if self.in_process:
            from bench.engine.worker import Worker

            self._worker = Worker(self.settings, self.interrupts)  # a BenchError reaches the CLI
            return
        for slot in range(self.slots):
            self._spawn(slot)

    def where(self, slot: int) -> dict:
        import socket

        proc = self._procs.get(slot)
        pid = os.getpid() if self.in_process else getattr(proc, "pid", None)
        return {"slot": slot, "host": socket.gethostname(), "pid": pid}

    def submit(self, slot: int, job_id: int, token: str) -> None:
        self._busy[slot] = (job_id, token)
        if self.in_process:
            self._pending = (slot, job_id, token)
        else:
            self._conns[slot].send((job_id, token))

    def wait(self, timeout: float) -> list[Ended]:
        if self.in_process:
            return self._run_pending()
        from multiprocessing.connection import wait

        ready = wait([*self._conns.values(), *(p.sentinel for p in self._procs.values())], timeout)
        ended: list[Ended] = []
        for slot in list(self._procs):
            conn, proc = self._conns[slot], self._procs[slot]
            if conn in ready or conn.poll():
                try:
                    kind, job_id, token, message = conn.recv()
                except (EOFError, OSError):
                    kind = None
                if kind == "done":
                    self._busy.pop(slot, None)
                    ended.append(Ended(slot, job_id, token))
                    continue
                if kind == "error":
                    self._busy.pop(slot, None)
                    ended.append(Ended(slot, job_id, token, error=message))
                    self._retire(slot)
                    continue
            if proc.sentinel in ready and not proc.is_alive():
                job_id, token = self._busy.pop(slot, (None, None))
                why = _exit_words(proc.exitcode)
                self._retire(slot)
                if job_id is None:  # died between jobs (at start-up): no job to retry
                    ended.append(Ended(slot, None, None, error=f"slot {slot} {why} between jobs"))
                    continue
                ended.append(Ended(slot, job_id, token, died=f"its slot {why}"))
                self._spawn(slot)  # a fresh slot in its place
        return ended

    def stop(self, grace: float) -> None:
        """Stop every slot: a busy one gets SIGINT (it releases its job, or finishes recording
        a result first), an idle one SIGTERM (it may still be importing TensorFlow); what is
        left after ``grace`` seconds is killed."""
        for slot, proc in self._procs.items():
            if proc.is_alive() and proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGINT if slot in self._busy else signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace
        for proc in self._procs.values():
            proc.join(timeout=max(0.1, deadline - time.time()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns.values():
            conn.close()
        self._procs.clear()
        self._conns.clear()
        self._busy.clear()

    # ------------------------------------------------------------ internals

    def _run_pending(self) -> list[Ended]:
        if self._pending is None:
            time.sleep(0.05)
            return []
        slot, job_id, token = self._pending
        self._pending = None
        try:
            self._worker.run_one(job_id, token)
        except (BenchError, RuntimeError) as exc:
            self._busy.pop(slot, None)
            return [Ended(slot, job_id, token, error=str(exc))]
        self._busy.pop(slot, None)
        return [Ended(slot, job_id, token)]

    def _spawn(self, slot: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe()
        env = self.env[slot] if slot < len(self.env) else {}
        proc = ctx.Process(
            target=slot_main,
            args=(self.settings, slot, env, theirs, os.getpid()),
            name=f"bench-slot-{slot}",
        )
        proc.start()
        theirs.close()
        self._procs[slot], self._conns[slot] = proc, mine

    def _retire(self, slot: int) -> None:
        proc = self._procs.pop(slot, None)
        conn = self._conns.pop(slot, None)
        if conn is not None:
            conn.close()
        if proc is not None and proc.is_alive():
            proc.join(timeout=5)


def _exit_words(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _die_with(parent: int) -> None:
    """End this slot when its driver ends, however it ends."""
    try:  # Linux: the kernel sends SIGKILL the moment the parent dies
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the line above ran
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a second guard): notice within a second
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bench-parent-watch").start()


def slot_main(settings: WorkerSettings, slot: int, env: dict, conn, parent: int) -> None:
    """A slot process: load once, then run the attempts the driver sends until told to stop."""
    _die_with(parent)
    os.environ.update(env)
    from bench.engine.worker import Worker
    from bench.logs import setup_logging

    setup_logging()
    interrupts = Interrupts()
    interrupts.install()
    job_id = token = None
    try:
        worker = Worker(settings, interrupts)
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                sys.exit(0)  # the driver is gone or done
            if message is None:
                sys.exit(0)
            job_id, token = message
            worker.run_one(job_id, token)
            conn.send(("done", job_id, token, None))
            job_id = token = None
    except KeyboardInterrupt:
        sys.exit(130)
    except (BenchError, RuntimeError) as exc:
        _tell(conn, ("error", job_id, token, str(exc)))
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - one line; its job is reaped by the driver
        log.error("slot %d crashed: %s: %s", slot, type(exc).__name__, redact(exc))
        sys.exit(1)


def _tell(conn, message) -> None:
    try:
        conn.send(message)
    except OSError:
        pass
