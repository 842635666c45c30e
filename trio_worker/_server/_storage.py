"""SQLite storage for the embedded API: one connection, one owner, one transaction per request.

SQLite allows one writer at a time, and a second connection that tries to
write while another holds the lock gets "database is locked". The embedded
API therefore never has two: a single :class:`sqlite3.Connection` is used only
from inside ``trio.to_thread.run_sync`` calls guarded by a
``trio.CapacityLimiter(1)``, so exactly one worker thread touches it at a time
and the trio loop never blocks on disk. Each request hands the owner one
function, which runs as its own savepoint inside a ``BEGIN IMMEDIATE … COMMIT``
(requests that arrive together share the commit): it either all happens or,
when it raises (an :class:`~trio_worker._server._common.APIProblem` for a
refused request), none of it does.

Durability: the database is in WAL mode with ``synchronous=NORMAL``; a commit
is in the WAL file (the OS page cache) before the API answers, so an
acknowledged write survives a SIGKILL of the server. Only a power loss may lose
the last commits.
"""

from __future__ import annotations

import sqlite3
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from trio_worker._server._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Database", "Tx", "open_database"]

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS: Final = 30.0
"""How long SQLite waits for another process's lock (e.g. a CLI reading the file)."""


class Tx:
    """One transaction, as seen by the function a request hands to the owner.

    Besides running SQL it collects *after-commit* callbacks: work that must
    only happen once the transaction is durable (publishing events to live
    subscribers, waking task-run subscribers), run on the trio side.
    """

    __slots__ = ("_conn", "after_commit")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.after_commit: list[Callable[[], None]] = []

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """Return the first row of a query, or ``None``."""
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Return every row of a query."""
        return self._conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Return the first column of the first row, or ``None``."""
        row = self._conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per parameter row."""
        self._conn.executemany(sql, rows)

    def insert(self, table: str, values: dict[str, Any]) -> None:
        """Insert one row from a column -> value mapping."""
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self._conn.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(values.values())
        )

    def update(self, table: str, row_id: str, values: dict[str, Any]) -> None:
        """Update columns of the row with primary key ``row_id``."""
        if not values:
            return
        assignments = ", ".join(f"{column} = ?" for column in values)
        self._conn.execute(
            f"UPDATE {table} SET {assignments} WHERE id = ?", [*values.values(), row_id]
        )


class _Job:
    """One request's transaction function, waiting for (or done by) a batch."""

    __slots__ = ("error", "finished", "fn", "result", "turn", "tx")

    def __init__(self, fn: Callable[[Tx], Any], tx: Tx) -> None:
        self.fn = fn
        self.tx = tx
        self.turn = trio.Event()
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None


class Database:
    """The single owner of the API's SQLite connection. Build it with :func:`open_database`.

    Requests that arrive while a transaction is running are batched: the next
    thread call runs all of them, each inside its own ``SAVEPOINT`` (so each
    still commits or rolls back on its own) and one ``COMMIT`` makes the whole
    batch durable before any of them is answered. With many concurrent
    clients this turns N thread hand-offs and N commits into one of each,
    which is what lets one SQLite connection keep up.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._limiter = trio.CapacityLimiter(1)
        self._queue: list[_Job] = []
        self._busy = False
        self._closed = False

    async def run(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` as one transaction in the owner thread and return its result.

        After the commit, the callbacks ``fn`` registered in ``tx.after_commit``
        run on the trio side, in commit order. If ``fn`` raises, its changes
        are rolled back and the exception propagates. Waiting for the commit
        is shielded from cancellation: a transaction always finishes (or rolls
        back) before its caller moves on, so a client that hangs up cannot
        leave a half write, and the batch leader never abandons the others.

        Raises:
            RuntimeError: the database is closed.
        """
        if self._closed:
            raise RuntimeError("the embedded API database is closed")
        job = _Job(fn, Tx(self._conn))
        self._queue.append(job)
        with trio.CancelScope(shield=True):
            if self._busy:
                await job.turn.wait()
            if not job.finished:
                # Nobody was running a batch, or the previous leader handed us the turn.
                await self._lead()
        if job.error is not None:
            raise job.error
        return typing.cast(T, job.result)

    async def _lead(self) -> None:
        self._busy = True
        batch, self._queue = self._queue, []
        try:
            await trio.to_thread.run_sync(self._transact, batch, limiter=self._limiter)
        finally:
            for job in batch:
                job.finished = True
                if job.error is None:
                    for callback in job.tx.after_commit:
                        callback()
                job.turn.set()
            if self._queue:
                self._queue[0].turn.set()  # the oldest waiter leads the next batch
            else:
                self._busy = False

    def _transact(self, batch: list[_Job]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for job in batch:
                conn.execute("SAVEPOINT request")
                try:
                    job.result = job.fn(job.tx)
                except Exception as exc:
                    conn.execute("ROLLBACK TO request")
                    job.error = exc
                conn.execute("RELEASE request")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.result = None

    async def aclose(self) -> None:
        """Close the connection once every transaction in flight is done."""
        if self._closed:
            return
        self._closed = True
        async with self._limiter:
            await trio.to_thread.run_sync(self._conn.close)


def _connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
    )
    conn.row_factory = sqlite3.Row
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if path != ":memory:" and str(mode).lower() != "wal":
        conn.close()
        raise RuntimeError(f"could not put {path} in WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA temp_store=MEMORY")
    _migrate(conn, path)
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} has schema version {version}, newer than this trio-worker "
                f"understands ({SCHEMA_VERSION}); upgrade trio-worker or use another --db"
            )
        for script in MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@asynccontextmanager
async def open_database(path: str | Path) -> AsyncIterator[Database]:
    """Open (creating and migrating as needed) the API database at ``path``.

    Raises:
        RuntimeError: the file's schema is newer than this code, or WAL is unavailable.
        sqlite3.Error: the file cannot be opened.
    """
    conn = await trio.to_thread.run_sync(_connect, str(path))
    db = Database(conn)
    try:
        yield db
    finally:
        with trio.CancelScope(shield=True):
            await db.aclose()
