"""Slots as Ray actors, across the machines of a Ray cluster (``--executor ray``).

The only module that imports Ray (an optional extra: ``pip install 'bench[ray]'``). Ray places
each slot (``num_cpus`` = its TensorFlow threads; ``num_gpus`` = 1, or a fraction, when the
cluster has GPUs, and Ray then sets the actor's ``CUDA_VISIBLE_DEVICES`` to its own GPU), and
Ray detects failure: an actor whose process dies, or whose node is lost, fails the call the
driver waits on, and the driver reaps that attempt and asks for a fresh actor. Only Ray's core
API is used (actors, ``ray.wait``); the search, re-evaluation, refit and ensemble stages are
bench's own.

Actors are owned by the driver, so they end with it (Ray's fate sharing). Each actor keeps
TensorFlow and the data loaded between jobs; it must reach the job store, the Optuna storage and
the tracking server at the same URLs as the driver (a database and a tracking server, not local
files, once the cluster has more than one machine).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from bench.engine.slots import Ended
from bench.engine.worker import WorkerSettings
from bench.errors import BenchError, redact

log = logging.getLogger("bench")
START_TIMEOUT = 120.0  # seconds for Ray to place and start every slot at the outset
PASSED_ENV = ("BENCH_", "MLFLOW_", "KERAS_HOME")  # variables an actor gets from its driver


def check_ray() -> None:
    """Refuse ``--executor ray`` up front (before a batch is opened) where Ray is missing.

    Raises:
        BenchError: one line saying how to install it.
    """
    _ray()


def _ray():
    try:
        import ray
    except ImportError:
        raise BenchError(
            "--executor ray: Ray is not installed here; pip install 'bench[ray]' (or use "
            "--executor local)"
        ) from None
    return ray


class _Slot:
    """One slot: a Ray actor that runs one attempt at a time (plus :meth:`interrupt`, which may
    run beside it: the actor allows two calls at once)."""

    def __init__(self, settings: WorkerSettings, env: dict[str, str]):
        os.environ.update(env)
        from bench.engine.interrupts import Interrupts
        from bench.engine.worker import Worker
        from bench.logs import setup_logging

        setup_logging()
        self.interrupts = Interrupts()  # never installed: Ray owns this process's signals
        self.worker = Worker(settings, self.interrupts)

    def where(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node": context.get_node_id(),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }

    def run(self, job_id: int, token: str) -> tuple[str, str | None]:
        try:
            self.worker.run_one(job_id, token)
        except KeyboardInterrupt:
            return "interrupted", None  # the job was released
        except (BenchError, RuntimeError) as exc:
            return "error", str(exc)
        return "done", None

    def interrupt(self) -> None:
        self.interrupts.requested = True  # the running job stops at its next check point


@dataclass
class RayExecutor:
    """Slots as Ray actors on the cluster at ``address`` (None: ``RAY_ADDRESS``, or a local
    Ray started for this command).

    Args:
        settings: What every slot needs.
        slots: How many actors; None fills the cluster (its CPUs over ``threads``, and its GPUs
            over ``gpus_per_slot`` where it has GPUs).
        address: The cluster, as ``ray.init`` takes it.
        gpus_per_slot: GPUs per actor where the cluster has GPUs (1, or a fraction to share).
    """

    settings: WorkerSettings
    slots: int | None = None
    address: str | None = None
    gpus_per_slot: float = 1.0

    def __post_init__(self) -> None:
        self.settings = portable(self.settings)
        self._actors: dict[int, object] = {}
        self._where: dict[int, dict] = {}
        self._running: dict[object, tuple[int, int, str]] = {}
        self._placing: dict[object, int] = {}  # a fresh actor's where() -> its slot
        self._placing_since = 0.0
        self._class = None
        self.threads = max(1, int(self.settings.threads or 1))

    def start(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(
                address=self.address or os.environ.get("RAY_ADDRESS") or None,
                logging_level=logging.WARNING,
                log_to_driver=True,
                configure_logging=False,
            )
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        self.num_gpus = self.gpus_per_slot if gpus > 0 else 0
        if self.slots is None:
            fit = int(resources.get("CPU", 1) // self.threads)
            if self.num_gpus:
                fit = min(fit, int(gpus // self.num_gpus))
            self.slots = max(1, fit)
        # the driver's bench and MLflow settings reach every actor, wherever Ray starts it
        passed = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
        self._class = ray.remote(_Slot).options(
            num_cpus=self.threads,
            num_gpus=self.num_gpus,
            max_restarts=0,
            max_concurrency=2,
            runtime_env={"env_vars": passed} if passed else None,
        )
        pending = {self._spawn(slot): slot for slot in range(self.slots)}
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=START_TIMEOUT)
        for ref in ready:
            try:
                self._where[pending[ref]] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # it could not start (bad data, ...)
                raise BenchError(
                    f"--executor ray: slot {pending[ref]} could not start: {_why(exc)}"
                ) from None
        if late:
            self.stop(grace=0)
            raise BenchError(
                f"--executor ray: the cluster placed {len(ready)} of {self.slots} slots in "
                f"{START_TIMEOUT:.0f} s (it has {resources.get('CPU', 0):g} CPUs and "
                f"{gpus:g} GPUs; each slot needs {self.threads} CPU(s)"
                + (f" and {self.num_gpus:g} GPU" if self.num_gpus else "")
                + "); ask for fewer with --jobs, or add nodes"
            )

    def describe(self) -> str:
        nodes = {w.get("node") for w in self._where.values()}
        gpu = f", {self.num_gpus:g} GPU each" if self.num_gpus else ""
        return f"{self.slots} Ray actor(s) on {len(nodes)} node(s), {self.threads} CPU{gpu} each"

    @property
    def starting(self) -> int:
        """Slots whose fresh actor Ray has not placed and started yet."""
        return len(self._placing)

    def where(self, slot: int) -> dict:
        return {"slot": slot, **self._where.get(slot, {})}

    def submit(self, slot: int, job_id: int, token: str) -> None:
        ref = self._actors[slot].run.remote(job_id, token)
        self._running[ref] = (slot, job_id, token)

    def wait(self, timeout: float) -> list[Ended]:
        """Attempts that ended, and slots whose replacement actor is ready (``Ended`` with no
        job: the slot is free again). A replacement is handed work only once Ray has placed
        it, so no job waits on an actor the cluster has no room for."""
        ray = _ray()
        if (
            not self._running
            and self._placing
            and time.time() > self._placing_since + START_TIMEOUT
        ):
            log.warning(
                "%d slot(s) could not be replaced in %.0f s (the cluster has no room); going on "
                "without them",
                len(self._placing),
                START_TIMEOUT,
            )
            self._placing.clear()
        refs = [*self._running, *self._placing]
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # everything else that is ready too, without waiting again
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        ended: list[Ended] = []
        for ref in ready:
            if ref in self._placing:
                slot = self._placing.pop(ref)
                try:
                    self._where[slot] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    log.warning("slot %d could not be replaced: %s", slot, _why(exc))
                    self._actors.pop(slot, None)
                    continue
                ended.append(Ended(slot, None, None))
                continue
            slot, job_id, token = self._running.pop(ref)
            try:
                kind, message = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # its process died or its node was lost
                why = f"its Ray actor died ({_why(exc)})"
                ended.append(Ended(slot, job_id, token, died=why, gone=True))
                self._replace(slot)
                continue
            except ray.exceptions.RayTaskError as exc:  # it raised: a fresh actor, as a crash
                why = f"its slot crashed ({_why(exc)})"
                ended.append(Ended(slot, job_id, token, died=why, gone=True))
                self._replace(slot)
                continue
            if kind == "error":
                ended.append(Ended(slot, job_id, token, error=message))
                ray.kill(self._actors.pop(slot), no_restart=True)
            else:
                ended.append(Ended(slot, job_id, token))
        return ended

    def stop(self, grace: float) -> None:
        """Ask every busy actor to stop (its job is released), wait up to ``grace`` seconds,
        then end every actor."""
        ray = _ray()
        if self._running:
            for slot, _, _ in self._running.values():
                if slot in self._actors:
                    self._actors[slot].interrupt.remote()
            ray.wait(list(self._running), num_returns=len(self._running), timeout=grace)
            self._running.clear()
        self._placing.clear()
        for actor in self._actors.values():
            ray.kill(actor, no_restart=True)
        self._actors.clear()

    def _spawn(self, slot: int):
        """Create slot ``slot``'s actor; returns the reference of its ``where`` (ready once
        Ray has placed and started it; calls made before then wait in its queue)."""
        actor = self._class.remote(self.settings, {})
        self._actors[slot] = actor
        return actor.where.remote()

    def _replace(self, slot: int) -> None:
        """End a dead (or unreachable) actor for good and ask Ray for a fresh one in its place;
        the slot is free again once Ray has placed it (:meth:`wait`), which may be never on a
        cluster that lost a node: the batch then goes on with fewer slots."""
        ray = _ray()
        old = self._actors.pop(slot, None)
        if old is not None:
            try:
                ray.kill(old, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if not self._placing:
            self._placing_since = time.time()
        self._placing[self._spawn(slot)] = slot


def portable(settings: WorkerSettings) -> WorkerSettings:
    """The settings with local paths made absolute: a Ray actor runs in a working directory of
    Ray's, not the driver's, so a relative journal file or ``sqlite:///mlflow.db`` would name
    another file there."""
    from dataclasses import replace
    from pathlib import Path

    def absolute(url: str | None) -> str | None:
        if not url:
            return url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
        if url.startswith("file:") or "://" in url:
            return url
        return str(Path(url).resolve())

    return replace(
        settings,
        storage=absolute(settings.storage),
        tracking_uri=absolute(settings.tracking_uri),
        tensorboard_dir=str(Path(settings.tensorboard_dir).resolve())
        if settings.tensorboard_dir
        else None,
    )


def _why(exc: Exception) -> str:
    lines = [line for line in redact(exc).strip().splitlines() if line.strip()]
    return redact(lines[-1] if lines else type(exc).__name__, limit=300)
