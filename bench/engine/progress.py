"""Progress of a batch, read from the job store, so it follows any number of workers and machines.

Every stage says when it starts and when it ends. The batch's own jobs (search trials, ablation
cells, re-evaluations) get one line each as they finish, then one line when the last one has;
the stages a design adds after them (re-evaluation of the best configurations, each refit, the
ensemble, the registration) get a line when they start and one when they end. On a pipe or a
file these are the output; on a terminal a bar covers every job and the same stage lines are
written above it.

:class:`Narration` turns successive snapshots of the batch's jobs into those lines (no I/O, no
clock of its own: unit-tested with made-up jobs); :class:`Progress` polls the store in a thread
and writes them.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable

from bench.engine.store import JobStore
from bench.records import (
    ABLATION,
    BASELINE,
    COMPLETED,
    DONE,
    ENSEMBLE,
    FAILED,
    FINAL,
    REEVAL,
    REFIT,
    REGISTER,
    RUNNING,
    SEARCH,
    Batch,
    Job,
)

POLL_SECONDS = 2.0  # the store is read this often; a stage shorter than this still gets its lines

# The time-left estimate waits for max(5, 10% of the jobs to run) finished jobs. Job times vary
# about tenfold within a search (a trial pruned after its first epoch against one early-stopped
# after 40; batch size 32 against 512), and with W workers the first W jobs finish before any
# worker's second: the mean of the first one or two jobs was off by a factor of several (issue
# 21: "about 38 min left" after one trial). Five is the fewest that averages out one outlier;
# 10% keeps a long batch from trusting its first minutes.
ESTIMATE_MIN_JOBS = 5
ESTIMATE_FRACTION = 0.10

STAGE_NAMES = {
    SEARCH: "search",
    BASELINE: "search",
    REEVAL: "re-evaluation",
    ABLATION: "ablation",
    REFIT: "refit",
    REGISTER: "registration",
    ENSEMBLE: "ensemble",
}


def jobs_for_estimate(to_run: int) -> int:
    """Finished jobs (of ``to_run`` in this run) before the time left is estimated."""
    return min(to_run, max(ESTIMATE_MIN_JOBS, math.ceil(ESTIMATE_FRACTION * to_run)))


def _n(count: int, word: str) -> str:
    """``1 epoch``, ``27 epochs``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def duration(seconds: float) -> str:
    """``41 s``, ``12 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def time_left(elapsed: float, finished: int, to_run: int) -> str:
    """The time-left words of a progress line.

    Args:
        elapsed: Seconds since this run started.
        finished: Jobs finished in this run.
        to_run: Jobs this run had to finish when it started (more when failed jobs are replaced).

    Returns:
        ``time left: estimating after 5 jobs`` until :func:`jobs_for_estimate` jobs finished,
        then ``about 12 min left`` (the mean time per finished job times the jobs left).
    """
    left = max(0, to_run - finished)
    if left == 0:
        return "none left"
    need = jobs_for_estimate(to_run)
    if finished < need:
        return f"time left: estimating after {_n(need, 'job')}"
    seconds = elapsed / finished * left
    return "under 1 min left" if seconds < 60 else f"about {duration(seconds)} left"


def _finished(job: Job) -> bool:
    return job.state in (DONE, FAILED)


def _value(job: Job) -> str:
    r = job.result
    return f"{r.value:.4f}" if r and r.value is not None else "-"


def _status(job: Job) -> str:
    return job.result.status if job.state == DONE and job.result else job.state


class Narration:
    """Turns snapshots of a batch's jobs into progress lines; no I/O, no clock of its own.

    Args:
        batch: The batch (its settings name the registered model).
        purposes: The purposes of the batch's own jobs (``search`` and ``baseline``,
            ``reeval``, ``ablation``); any other job is a later stage.
        maximize: The metric's direction, for "best".
        total: The batch's own jobs when the run started.
        clock: Seconds, monotonic (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self,
        batch: Batch,
        purposes: tuple[str, ...],
        maximize: bool,
        total: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.batch, self.purposes, self.maximize = batch, purposes, maximize
        self.total = total
        self.clock = clock
        self.started = clock()
        self.main_name = STAGE_NAMES.get(purposes[0], purposes[0]) if purposes else "jobs"
        self._first = True
        self._before: set[int] = set()  # finished before this run: not narrated again
        self._reported: set[int] = set()
        self._begun: dict[int, float] = {}  # job id -> when its start line was written
        self._main_done_before = 0
        self._main_count = 0  # finished jobs of the batch's own, numbered in the order seen
        self._reeval_count = 0
        self._main_closed = False
        self._reeval_opened = self._reeval_closed = False
        self._reeval_started = 0.0
        # what the bar shows
        self.best: float | None = None
        self.finished = 0
        self.all_jobs = total
        self.stage = self.main_name
        self.left = ""

    # ------------------------------------------------------------ the one entry point

    def update(self, jobs: list[Job], final: bool = False) -> list[str]:
        """The lines this snapshot adds; ``final``: the workers have stopped (close stages)."""
        now = self.clock()
        if self._first:
            self._first = False
            self._before = {j.id for j in jobs if _finished(j)}
            self._main_done_before = sum(1 for j in jobs if self._is_main(j) and _finished(j))
            self._main_count = self._main_done_before
            self.left = time_left(0.0, 0, self.total - self._main_done_before)
        main = [j for j in jobs if self._is_main(j)]
        later = [j for j in jobs if not self._is_main(j)]
        self.total = max(self.total, len(main))
        self.all_jobs = len(main) + len(later)
        self.finished = sum(1 for j in jobs if _finished(j))
        values = [
            j.result.value
            for j in main
            if j.state == DONE and j.result and j.result.status == COMPLETED
            if j.result.value is not None
        ]
        self.best = (max(values) if self.maximize else min(values)) if values else None
        out = self._main_lines(main, now)
        if not self._main_closed and (later or final) and main and all(map(_finished, main)):
            out += self._close_main(main, now)
        out += self._reeval_lines([j for j in later if j.purpose == REEVAL], now)
        out += self._final_lines([j for j in later if j.purpose in FINAL], now)
        self.stage = self._stage([j for j in jobs if j.state == RUNNING], later, final)
        if final and not all(map(_finished, jobs)):
            self.stage = "stopped"  # interrupted, out of time, or a worker crashed
        return out

    def _stage(self, running: list[Job], later: list[Job], final: bool) -> str:
        """What the bar's label says: the running stage (``refit member 1/2``, ``search``)."""
        if final:
            return "finished"
        if not running:
            return self.stage  # between two stages: the last one until the next starts
        labels = {self._label(j, later) for j in running}
        if len(labels) == 1:
            return labels.pop()
        return f"{STAGE_NAMES.get(running[0].purpose, running[0].purpose)} ({len(running)} running)"

    def _is_main(self, job: Job) -> bool:
        return job.purpose in self.purposes

    # ------------------------------------------------------------ the batch's own jobs

    def _main_lines(self, main: list[Job], now: float) -> list[str]:
        out = []
        for j in sorted((j for j in main if _finished(j)), key=lambda j: j.id):
            if j.id in self._reported or j.id in self._before:
                continue
            self._reported.add(j.id)
            self._main_count += 1
            n = self._main_count
            mine = n - self._main_done_before
            self.left = time_left(now - self.started, mine, self.total - self._main_done_before)
            best = f"{self.best:.4f}" if self.best is not None else "-"
            out.append(
                f"[{n}/{self.total}] {j.key}: {_status(j)} {_value(j)} (best {best}; {self.left})"
            )
        return out

    def _close_main(self, main: list[Job], now: float) -> list[str]:
        self._main_closed = True
        if all(j.id in self._before for j in main):
            return []  # nothing of it ran here
        done = sum(1 for j in main if j.state == DONE)
        best = f"; best {self.best:.4f}" if self.best is not None else ""
        return [
            f"{self.main_name}: {done}/{len(main)} jobs finished in "
            f"{duration(now - self.started)}{best}"
        ]

    # ------------------------------------------------------------ later stages

    def _reeval_lines(self, reevals: list[Job], now: float) -> list[str]:
        if not reevals or all(j.id in self._before for j in reevals):
            return []
        out = []
        if not self._reeval_opened:
            self._reeval_opened, self._reeval_started = True, now
            self._reeval_count = sum(1 for j in reevals if j.id in self._before)
            sources = {j.spec.info.get("source") for j in reevals}
            seeds = len(reevals) // max(1, len(sources))
            out.append(
                f"re-evaluation: {_n(len(reevals), 'run')} ({_n(len(sources), 'configuration')} "
                f"x {_n(seeds, 'seed')}) started"
            )
        finished = sorted((j for j in reevals if _finished(j)), key=lambda j: j.id)
        for j in finished:
            if j.id in self._reported or j.id in self._before:
                continue
            self._reported.add(j.id)
            self._reeval_count += 1
            out.append(
                f"[re-evaluation {self._reeval_count}/{len(reevals)}] {j.key}: "
                f"{_status(j)} {_value(j)}"
            )
        if not self._reeval_closed and len(finished) == len(reevals):
            self._reeval_closed = True
            done = sum(1 for j in reevals if j.state == DONE and _status(j) == COMPLETED)
            out.append(
                f"re-evaluation: {done}/{len(reevals)} runs completed in "
                f"{duration(now - self._reeval_started)}"
            )
        return out

    def _label(self, job: Job, later: list[Job]) -> str:
        """``refit member 1/2``, ``refit``, ``refit.1 (next choice)``, ``ensemble of 2``."""
        if job.purpose == REFIT:
            member = job.spec.info.get("member")
            if member is not None:
                n = sum(1 for j in later if j.purpose == REFIT and "member" in j.spec.info)
                return f"refit member {int(member) + 1}/{n}"
            return "refit" if job.key == "refit" else f"{job.key} (next choice)"
        if job.purpose in (REGISTER, ENSEMBLE):
            members = job.spec.info.get("members") or []
            return f"ensemble of {len(members)}" if len(members) > 1 else "registration"
        if job.purpose == REEVAL:
            return "re-evaluation"
        return self.main_name

    def _final_lines(self, jobs: list[Job], now: float) -> list[str]:
        out = []
        for j in sorted(jobs, key=lambda j: j.id):
            if j.id in self._before or j.id in self._reported:
                continue
            if j.state in (RUNNING, DONE, FAILED) and j.id not in self._begun:
                self._begun[j.id] = now
                out.append(self._start_line(j, jobs))
            if _finished(j):
                self._reported.add(j.id)
                seen = now - self._begun[j.id]  # 0: began and ended between two looks
                out.append(self._end_line(j, jobs, seen or None))
        return out

    def _start_line(self, job: Job, jobs: list[Job]) -> str:
        label, info = self._label(job, jobs), job.spec.info
        if job.purpose == REFIT:
            epochs = job.spec.train.get("max_epochs")
            budget = f"{_n(int(epochs), 'epoch')} " if epochs else ""
            return f"{label} ({info.get('source')}): started, {budget}on all training images"
        members = info.get("members") or []
        if len(members) > 1:
            sources = " + ".join(str(m.get("source")) for m in members)
            return f"{label} ({sources}): averaging their probabilities, testing, registering"
        return f"{label} ({info.get('source')}'s model): testing and registering it"

    def _end_line(self, job: Job, jobs: list[Job], seconds: float | None) -> str:
        label, source, r = self._label(job, jobs), job.spec.info.get("source"), job.result
        head = f"{label} ({source})" if job.purpose == REFIT else label
        if job.state == FAILED or r is None:
            return f"{head}: failed: {job.reason or 'no result'}"
        if r.status != COMPLETED:
            return f"{head}: {r.status} after {_n(r.epochs_run, 'epoch')} ({r.reason})"
        parts = []
        if job.purpose == REFIT:
            parts.append(f"{_n(r.epochs_run, 'epoch')} in {duration(r.train_seconds)}")
        if r.test_accuracy is not None:
            parts.append(f"test accuracy {r.test_accuracy:.4f}")
        if r.registered:
            parts.append(self._registered(r.registered))
        if job.purpose != REFIT and seconds is not None:
            parts.append(f"done in about {duration(seconds)}")
        return f"{head}: " + ", ".join(parts)

    def _registered(self, registered: dict) -> str:
        name = self.batch.settings.get("model_name", "the model")
        version, champion = registered.get("version"), registered.get("champion_version")
        words = f"registered {name} version {version}"
        if champion is not None and str(champion) == str(version):
            return words + " (champion)"
        return words + f" (champion stays version {champion})"


class Progress:
    """Polls the job store in a thread and writes :class:`Narration`'s lines.

    On a terminal: a bar over every job of the batch, with the stage lines written above it.
    Otherwise (a pipe, a log file, CI): the lines alone.
    """

    def __init__(
        self,
        storage: str,
        batch: Batch,
        purposes: tuple[str, ...],
        maximize: bool,
        total: int,
        enabled: bool = True,
        stream=None,
    ):
        self.storage, self.batch, self.purposes = storage, batch, purposes
        self.maximize, self.total, self.enabled = maximize, total, enabled
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        """Stop after one last look at the store (the last stage's end line)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            store = JobStore(self.storage)
        except Exception:  # noqa: BLE001 - progress is cosmetic
            return
        narration = Narration(self.batch, self.purposes, self.maximize, self.total)
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        bar = None
        while True:
            final = self._stop.is_set()
            try:
                lines = narration.update(store.jobs(self.batch.id), final=final)
                if tty:
                    bar = self._draw(bar, narration, lines)
                else:
                    for line in lines:
                        self.stream.write(line + "\n")
                    self.stream.flush()
            except Exception:  # noqa: BLE001 - progress is cosmetic
                pass
            if final:
                break
            self._stop.wait(POLL_SECONDS)
        if bar is not None:
            bar.close()

    def _draw(self, bar, narration: Narration, lines: list[str]):
        from tqdm import tqdm

        if bar is None:
            bar = tqdm(
                total=narration.all_jobs,
                desc=narration.stage,
                unit="job",
                file=self.stream,
                dynamic_ncols=True,
                # tqdm's own time left is the rate of the first jobs: rough in the same way
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}{postfix}]",
            )
        for line in lines:
            if not line.startswith("["):  # per-job lines are the bar's own ticks
                bar.write(line, file=self.stream)
        bar.total = max(narration.all_jobs, 1)
        bar.n = narration.finished
        bar.set_description_str(narration.stage, refresh=False)
        best = f"best {narration.best:.4f}; " if narration.best is not None else ""
        bar.set_postfix_str(f"{best}{narration.left}".strip("; "), refresh=False)
        bar.refresh()
        return bar
