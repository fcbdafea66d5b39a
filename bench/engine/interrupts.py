"""SIGINT/SIGTERM: a request the engine acts on at points it chooses, never a stray exception.

Python's default turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens
to be. Inside MLflow's or SQLAlchemy's code that can be half-way through a write, inside their
own ``except`` blocks (the user then sees "During handling of the above exception..." and a
traceback), or in a retry loop that swallows it and keeps the process alive. So while the engine
works (:meth:`Interrupts.cooperative`), the handler only records the request and the engine
raises KeyboardInterrupt itself, from its own code, at :meth:`Interrupts.check` points: after
every training batch, between jobs, every second of waiting, and at the end of each critical
section (where a finished result is being recorded). Every one of those points is at most one
training batch or one tracking call away, so a signal ends the command within seconds.

Outside the engine (start-up: imports, opening the batch) the handler raises at once, as
Python's default does; the command then says "interrupted while starting".

A second signal arriving more than :data:`FORCE_AFTER` seconds after the first ends the process
at once (exit 130): the job store keeps every finished result and a plain rerun recovers the job
that was abandoned, so a user never has to reach for ``kill -9``. Signals closer together are one
request (a terminal sends Ctrl-C to every worker process, and the parent forwards it too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from bench.errors import EXIT_INTERRUPTED

FORCE_AFTER = 5.0  # seconds; closer signals are duplicates of the first, not a second request


class Interrupts:
    """The interrupt state of one process; :meth:`install` once, early."""

    def __init__(self) -> None:
        self.requested = False
        self._first_at = 0.0
        self._depth = 0  # inside critical(): even a raising handler defers
        self._cooperative = 0  # inside cooperative(): the handler never raises

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first_at > FORCE_AFTER:
                os.write(
                    sys.stderr.fileno(),
                    b"interrupted again: stopping now; rerun the same command to resume\n",
                )
                os._exit(EXIT_INTERRUPTED)
            return
        self.requested = True
        self._first_at = time.monotonic()
        if self._depth == 0 and self._cooperative == 0:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt here if an interrupt was requested (and no critical section
        is open)."""
        if self.requested and self._depth == 0:
            raise KeyboardInterrupt

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking to :meth:`check` every tenth of a second."""
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    @contextlib.contextmanager
    def cooperative(self):
        """While inside, a signal only sets :attr:`requested`; the code calls :meth:`check`."""
        self._cooperative += 1
        try:
            self.check()
            yield self
        finally:
            self._cooperative -= 1

    @contextlib.contextmanager
    def critical(self):
        """A section that must finish once started (recording a result); an interrupt that
        arrives inside takes effect when it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        self.check()
