"""Opening the SQLite files behind equal's caches, safely from several processes at once."""

from __future__ import annotations

import os
import random
import sqlite3
import time

__all__ = ["connect_wal"]


def connect_wal(path: str | os.PathLike[str], *, timeout: float = 120.0) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with write-ahead logging and ``synchronous=NORMAL``.

    WAL with NORMAL survives a killed process (not a power cut) and lets readers run beside one writer.
    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once,
    without waiting for its busy timeout, when another process holds the file while it is being created
    or switched; so that one statement is retried here, with jittered backoff, until ``timeout``.
    """
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn
