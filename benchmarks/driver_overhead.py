"""The driver's own cost per job: start the attempt, hand it to a slot, take the end, ask the
design for the next stage, finish the batch; no training.

    python benchmarks/driver_overhead.py --jobs 200 --slots 2
    python benchmarks/driver_overhead.py --jobs 200 --slots 2 \\
        --storage postgresql://postgres@127.0.0.1:5432/test

Slots that finish at once (each records a fixed result with its attempt's token and marks it
synced, which is the slot's share of the store traffic) isolate what the driver adds around every
job: the compare-and-set take, one executor round trip, the reads the loop makes, the ledger's
recovery and the end of the batch. Prints seconds per job for the journal/SQLite job store, or
for the PostgreSQL database given with ``--storage`` (a fresh study name each run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class InstantSlots:
    """An executor whose slots finish every attempt at once (see the module docstring)."""

    def __init__(self, store, slots: int):
        from bench.records import COMPLETED, JobResult

        self.store, self.slots, self._pending = store, slots, []
        self.result = JobResult(COMPLETED, 0.9, 1, 2, 0.1, 10, 1.0, {"units": [8]})

    def start(self) -> None:
        pass

    def where(self, slot: int) -> dict:
        return {"slot": slot, "host": "bench", "pid": 0}

    def submit(self, slot: int, job_id: int, token: str) -> None:
        self._pending.append((slot, job_id, token))

    def wait(self, timeout: float):
        from bench.engine.slots import Ended
        from bench.records import DONE

        out, self._pending = self._pending, []
        for _, job_id, token in out:
            self.store.finish(job_id, token, DONE, self.result)
            self.store.mark_synced(job_id, token)
        return [Ended(slot, job_id, token) for slot, job_id, token in out]

    def stop(self, grace: float) -> None:
        pass


class QuietTracker:
    failures = 0

    def safe(self, fn, *args, **kwargs):
        return None

    now = safe

    def find_runs(self, *args, **kwargs):
        return []


def run(jobs: int, slots: int, storage: str) -> float:
    from bench import optuna_adapter as opt
    from bench.designs.search import SearchDesign
    from bench.engine.driver import run_batch
    from bench.engine.interrupts import Interrupts
    from bench.engine.ledger import Ledger
    from bench.engine.store import JobStore
    from bench.space import load_space

    settings = {"seed": 0, "n_trials": jobs, "ensemble": 1, "refit": False, "register": False}
    store = JobStore(storage)
    study_name = f"overhead-{uuid.uuid4().hex[:8]}"
    batch = store.create_batch(study_name, "search", "search", settings)
    store.set_batch_state(batch.id, "running")
    design = SearchDesign(settings)
    store.add_jobs(batch.id, design.initial_jobs())
    space = load_space("smoke")
    study = opt.open_study(study_name, storage, space, 0)
    ledger = Ledger(store, store.get_batch(batch.id), study, QuietTracker(), space.metric)
    start = time.perf_counter()
    ledger.recover()
    run_batch(store, batch, design, 3, ledger, InstantSlots(store, slots), Interrupts())
    seconds = time.perf_counter() - start
    assert store.get_batch(batch.id).state == "done"
    store.dispose()
    return seconds / jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--storage", help="a database URL (default: a journal file in a temp folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or str(Path(tmp) / "journal.log")
        per_job = run(args.jobs, args.slots, storage)
    kind = "PostgreSQL" if args.storage else "journal + SQLite job store"
    print(f"driver overhead: {per_job * 1000:.1f} ms per job ({args.jobs} jobs, {args.slots} "
          f"slots, {kind})")  # fmt: skip


if __name__ == "__main__":
    main()
