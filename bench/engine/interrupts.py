"""SIGINT/SIGTERM as KeyboardInterrupt, deferred while a finished result is being recorded."""

from __future__ import annotations

import contextlib
import signal


class Interrupts:
    """SIGINT/SIGTERM become KeyboardInterrupt, except inside :meth:`critical` (then deferred)."""

    def __init__(self) -> None:
        self.requested = False
        self._depth = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return  # one interrupt is enough; a second must not break the cleanup
        self.requested = True
        if self._depth == 0:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.requested:
            raise KeyboardInterrupt
