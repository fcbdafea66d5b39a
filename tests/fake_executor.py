"""A fake executor and tracker for unit tests of the driver (no TensorFlow, no MLflow).

The fake plays the slots: for each attempt the driver hands it, ``behave(job)`` says what the
slot does: ``"done"`` (records ``result(job)`` with the attempt's token, as a slot does), ``"die"``
(the slot dies mid-job, recording nothing), ``"error"`` (the slot refuses more work and releases
the job, as on a registration outage) or ``"freeze"`` (the slot stops answering; the test ends
the attempt itself with :meth:`FakeExecutor.lose`).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.engine.slots import Ended
from bench.engine.store import JobStore
from bench.records import DONE, Job, JobResult


class FakeExecutor:
    def __init__(
        self,
        store: JobStore,
        slots: int,
        result: Callable[[Job], JobResult],
        behave: Callable[[Job], str] = lambda job: "done",
    ):
        self.store, self.slots, self.result, self.behave = store, slots, result, behave
        self.started = self.stopped = 0
        self.handed: list[tuple[int, int, str]] = []  # (slot, job id, token) in order
        self.frozen: dict[int, tuple[int, str]] = {}
        self._pending: list[tuple[int, int, str]] = []
        self._lost: list[Ended] = []

    starting = 0

    def describe(self) -> str:
        return ""

    def start(self) -> None:
        self.started += 1

    def where(self, slot: int) -> dict:
        return {"slot": slot, "host": "fake", "pid": 1000 + slot}

    def submit(self, slot: int, job_id: int, token: str) -> None:
        self.handed.append((slot, job_id, token))
        self._pending.append((slot, job_id, token))

    def wait(self, timeout: float) -> list[Ended]:
        ended: list[Ended] = []
        pending, self._pending = self._pending, []
        for slot, job_id, token in pending:
            job = self.store.get_job(job_id)
            what = self.behave(job)
            if what == "done":
                assert self.store.finish(job_id, token, DONE, self.result(job))
                self.store.mark_synced(job_id, token)
                ended.append(Ended(slot, job_id, token))
            elif what == "die":
                ended.append(Ended(slot, job_id, token, died="its slot was killed by SIGKILL"))
            elif what == "error":
                self.store.release(job_id, token, "registration failed: down")
                ended.append(Ended(slot, job_id, token, error="registration failed: down"))
            elif what == "freeze":
                self.frozen[slot] = (job_id, token)
            else:
                raise AssertionError(what)
        ended += self._lost
        self._lost = []
        return ended

    def lose(self, slot: int) -> None:
        """What an executor reports when a frozen slot's node is declared dead."""
        job_id, token = self.frozen.pop(slot)
        self._lost.append(Ended(slot, job_id, token, died="its node was lost"))

    def stop(self, grace: float) -> None:
        self.stopped += 1


class FakeTracker:
    """Records the calls a ledger makes; never fails."""

    failures = 0
    experiment_id = "0"

    def __init__(self):
        self.calls: list[tuple] = []

    def safe(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    now = safe

    def find_runs(self, tags, status=None):
        self.calls.append(("find_runs", tags, status))
        return []

    def set_tags(self, run_id, tags):
        self.calls.append(("set_tags", run_id, tags))

    def end_run(self, run_id, status):
        self.calls.append(("end_run", run_id, status))

    def log_metrics(self, run_id, metrics, step):
        self.calls.append(("log_metrics", run_id, metrics, step))
