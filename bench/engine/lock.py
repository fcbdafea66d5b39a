"""One driver per batch: a lock that the operating system or the database releases when its
holder dies.

- Beside a journal or SQLite store: ``flock`` on a file next to the store
  (``<store>.batch-N.lock``). The kernel drops it when the holder's descriptor closes, however
  the process ends.
- In PostgreSQL: a session advisory lock, held on a connection of its own. The server drops it
  when that session ends (the holder exits, is killed, or its connection is lost).
- In MySQL/MariaDB: ``GET_LOCK`` on a connection of its own, released the same way.

Nothing here reads a clock or a process table: liveness is the lock's holder's to prove, and the
OS or the database is what proves it. Who holds a lock (host, pid, since) is written in the batch
row by the holder, only for the message a waiting command prints.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import sqlalchemy as sa

from bench.engine.store import JobStore
from bench.errors import BenchError, redact

# PostgreSQL's two-key advisory lock: this class id ("benc") keeps bench's locks apart from any
# other application's that shares the database; the second key is the batch's id.
_PG_CLASS = 0x62656E63


class BatchLock:
    """The exclusive right to drive one batch.

    Args:
        store: The batch's job store.
        batch_id: The batch.
    """

    def __init__(self, store: JobStore, batch_id: int):
        self.store, self.batch_id = store, batch_id
        self._fd: int | None = None
        self._conn = None
        url = sa.engine.make_url(store.url)
        self._dialect = url.get_backend_name()
        if self._dialect == "sqlite":
            self._path = Path(f"{Path(url.database or '').resolve()}.batch-{batch_id}.lock")
        elif self._dialect not in ("postgresql", "mysql", "mariadb"):
            raise BenchError(
                f"--storage {redact(store.url)}: no batch lock for the {self._dialect} database; "
                "use a journal file, SQLite, PostgreSQL or MySQL"
            )

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it; never waits. True when this process holds it."""
        if self.held:
            return True
        got = self._try_file() if self._dialect == "sqlite" else self._try_database()
        if got:
            self.store.set_driver(self.batch_id, describe_driver())
        return got

    def release(self) -> None:
        """Give the lock back (also done by the OS or the database when this process dies)."""
        if not self.held:
            return
        try:
            self.store.set_driver(self.batch_id, None)
        except Exception:  # noqa: BLE001 - only a message depends on it; the lock is what counts
            pass
        if self._fd is not None:
            os.close(self._fd)  # the kernel releases the flock with the descriptor
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.close()  # the session ends: the database releases its lock
            finally:
                self._conn = None

    def __enter__(self) -> BatchLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_file(self) -> bool:
        import fcntl

        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _try_database(self) -> bool:
        conn = self.store.engine.connect()
        try:
            if self._dialect == "postgresql":
                got = conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(:c, :b)"),
                    {"c": _PG_CLASS, "b": self.batch_id},
                ).scalar()
            else:
                got = conn.execute(
                    sa.text("SELECT GET_LOCK(:name, 0)"), {"name": f"bench-batch-{self.batch_id}"}
                ).scalar()
            conn.commit()  # a session lock outlives the transaction; the connection holds it
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True


def describe_driver() -> dict:
    """This process as a driver, for the message a waiting command prints."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def driver_words(info: dict | None) -> str:
    """``host:pid since 14:02:11`` (local time of the reader; only for people)."""
    if not info:
        return "another command"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since") or 0))
    return f"{info.get('host', '?')} pid {info.get('pid', '?')} (since {since})"
