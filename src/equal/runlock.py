"""One writer per run directory: an advisory ``flock`` on ``DIR/.lock`` held for the whole run.

Every command that writes a run directory (``equal extract``, ``equal train``, ``equal align``) wraps its
work in :func:`run_lock`. A second process on the same directory gets :class:`~equal.errors.RunLockedError`
at once, naming the process that holds it (read from the JSON the holder wrote into ``.lock``).

Why ``flock`` and not a pid file: the kernel drops the lock when the holder's last descriptor closes, which
includes a ``kill -9`` or a crash, so a stale lock never needs to be detected or broken by hand; the next
run simply takes it. The ``.lock`` file itself stays in the directory (deleting it would let two processes
lock two different inodes); only its content (the holder) changes.

POSIX only: ``fcntl`` does not exist on Windows, where :func:`run_lock` raises ``NotImplementedError``.
``flock`` on NFS is emulated with POSIX byte-range locks by Linux (since 2.6.12), which also works across
hosts; other network file systems may not honour it.

Leftover temporary files of a killed writer (:mod:`equal.data.io` writes ``.NAME.<12 hex>.tmp`` files,
the trainer and the model cache ``.tmp-NAME-*`` folders) are deleted by :func:`remove_stale_temps`, which
is only safe while holding the lock (otherwise it could delete a live writer's temp file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equal.errors import RunLockedError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "read_lock_holder", "remove_stale_temps", "run_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Names written by equal.data.io._temp_path (".{name}.{token_hex(6)}.tmp") and by the tempfile.mkdtemp
# staging folders of the trainer / model cache (".tmp-{name}-XXXXXXXX"). Kept narrow on purpose: a
# user's own "notes.tmp" in a run directory is not ours to delete.
_TEMP_FILE_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
_TEMP_DIR_RE = re.compile(r"^\.tmp-.+")


@dataclass(frozen=True)
class RunLock:
    """A held lock on a run directory (see :func:`run_lock`).

    Attributes
    ----------
    directory : pathlib.Path
        The locked run directory.
    path : pathlib.Path
        The lock file, ``directory / ".lock"``.
    pid : int
        This process.
    host : str
        This host name.
    command : str
        What holds it (``"equal extract"``).
    started : str
        When it was taken, UTC ISO 8601 (``2026-12-01T12:00:00Z``).
    fd : int
        The open descriptor that carries the ``flock``.
    """

    directory: Path
    path: Path
    pid: int
    host: str
    command: str
    started: str
    fd: int

    def holder(self) -> dict[str, Any]:
        """The JSON written into the lock file."""
        return {"pid": self.pid, "host": self.host, "command": self.command, "started": self.started}


def read_lock_holder(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder recorded in ``directory/.lock`` (``pid``, ``host``, ``command``, ``started``), or None.

    The content is informative only: it is what the last holder wrote, whether or not it is still alive.
    """
    try:
        raw = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8")
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "pid unknown"
    parts = [f"pid {holder.get('pid', '?')}"]
    host = holder.get("host")
    if host and host != socket.gethostname():
        parts[0] += f" on {host}"
    if holder.get("command"):
        parts.append(repr(str(holder["command"])))
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return ", ".join(parts)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike[str], command: str) -> Iterator[RunLock]:
    """Hold an exclusive lock on a run directory for the duration of the ``with`` block.

    The directory is created (with parents) if missing. The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
    ``directory/.lock``; the file then holds ``{"pid", "host", "command", "started"}`` of this process.
    The lock is released when the block ends, and by the kernel if the process dies (``kill -9``
    included), so a later run takes it over without any clean-up.

    Parameters
    ----------
    directory : str or os.PathLike
        The run directory.
    command : str
        Shown to a second process that is refused (``"equal extract"``).

    Yields
    ------
    RunLock

    Raises
    ------
    RunLockedError
        Another process holds the lock; the message names it. Raised immediately, never waits.
    OSError
        The directory or lock file cannot be created (read-only file system, ``directory`` is a file...).
    NotImplementedError
        On Windows (no ``fcntl``).

    Notes
    -----
    The lock is per open file description, so the same process taking it twice on one directory (two
    ``run_lock`` blocks nested) is refused too, as a second process would be.

    Examples
    --------
    >>> with run_lock("runs/a", "equal extract") as lock:     # doctest: +SKIP
    ...     removed = remove_stale_temps(lock.directory)
    """
    if sys.platform == "win32":  # pragma: no cover - documented limitation
        raise NotImplementedError("equal's run-directory lock needs fcntl (POSIX); Windows is not supported")
    import fcntl

    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(20, "not a directory (a run directory must be a folder)", str(root))
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    # O_CLOEXEC: a child process (the llama.cpp server, a sandbox) must not inherit and keep the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock_holder(root)
            raise RunLockedError(
                f"{root} is in use by another run ({_describe(holder)}); wait for it or stop it",
                path=str(root), holder=holder,
            ) from None
        lock = RunLock(directory=root, path=path, pid=os.getpid(), host=socket.gethostname(), command=command,
                       started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), fd=fd)
        # Written in place (not atomically): the file must stay the inode we locked. A reader that sees
        # it half-written only loses the description, never the lock.
        data = (json.dumps(lock.holder()) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        logger.debug("locked %s (%s)", root, command)
        yield lock
    finally:
        # Closing the descriptor drops the flock; the content is left (it only says who held it last).
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike[str]) -> int:
    """Delete the temporary files and folders an interrupted writer left under ``directory``.

    Removes, at any depth, files named like :mod:`equal.data.io`'s temp files (``.NAME.<12 hex>.tmp``)
    and folders named like the staging folders of the trainer (``.tmp-NAME-*``). Nothing else is touched
    (SQLite's ``-wal``/``-journal`` files are needed for its own recovery).

    Only call it while holding :func:`run_lock` on ``directory``: a live writer's temp file is
    indistinguishable from a dead one's.

    Parameters
    ----------
    directory : str or os.PathLike
        The run directory; a missing one removes nothing.

    Returns
    -------
    int
        Number of files and folders removed.
    """
    root = Path(directory)
    if not root.is_dir():
        return 0
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if _TEMP_FILE_RE.match(name):
                p = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
                    logger.info("removed %s, left by an interrupted write", p)
        for name in list(dirnames):
            if _TEMP_DIR_RE.match(name):
                p = Path(dirpath) / name
                shutil.rmtree(p, ignore_errors=True)
                dirnames.remove(name)
                removed += 1
                logger.info("removed %s/, left by an interrupted write", p)
    return removed
