"""One embedded API per database file: a lock beside the file, held while serving.

Two APIs on one SQLite file (say ``server start --port 4300`` and a
``trio-worker start`` that serves its own on 4200) would each hand out the
other's runs. So the CLI takes an exclusive ``flock`` on ``<db>.serving``
before it serves a database, and writes the API's URL into it: a second
server on the same file is refused with the URL of the first. The lock goes
with the process, so a crash never leaves a stale claim behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

import attrs

from trio_worker._core._exceptions import ConfigurationError

__all__ = ["DatabaseClaim", "claim_database", "serving_url"]

SUFFIX: Final = ".serving"


def _lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + SUFFIX)


def _read_url(lock: Path) -> str | None:
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


@attrs.define
class DatabaseClaim:
    """The claim on one database file; :meth:`release` (or process exit) ends it."""

    db_path: Path
    _fd: int | None

    def publish(self, url: str) -> None:
        """Record the URL of the API serving the database, for a second server's error."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{url}\n".encode(), 0)

    def release(self) -> None:
        """Give the database up (closing the file drops the lock)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def claim_database(db_path: Path) -> DatabaseClaim:
    """Claim ``db_path`` for an API this process is about to serve.

    Raises:
        ConfigurationError: another process serves this database; the message
            names its URL and how to use it instead.
    """
    lock = _lock_path(db_path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        url = _read_url(lock)
        where = f"the API at {url}" if url else "another process"
        use = f"export PREFECT_API_URL={url}" if url else "set PREFECT_API_URL to it"
        raise ConfigurationError(
            f"database {db_path} is already served by {where}; to use that API, {use}; "
            "to serve another database file, set TRIO_WORKER_DB"
        ) from None
    return DatabaseClaim(db_path, fd)


def serving_url(db_path: Path) -> str | None:
    """Return the URL of the API serving ``db_path`` right now, if one does."""
    lock = _lock_path(db_path)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_url(lock)  # held: someone serves it
    finally:
        os.close(fd)
    return None
