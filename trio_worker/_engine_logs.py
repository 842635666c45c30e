"""Ship a flow run's log lines and prints to ``POST /logs/``, as Prefect's engine does.

Records are buffered by :class:`APILogHandler` (safe from any thread, never
blocking on the network) and sent in batches by :class:`LogShipper`, a Trio
task of the engine, every couple of seconds and once more before exit.
Shipping is best effort: a failure is written to stderr, never raised, so a
run never fails because its logs could not be sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final, TextIO, cast

import trio

from trio_worker._client import PrefectClient
from trio_worker._exceptions import APIError, ModelError
from trio_worker._logging import TEXT_FORMAT
from trio_worker._models import Log

__all__ = ["LOGGER_NAME", "APILogHandler", "LogShipper", "logging_to_api"]

LOGGER_NAME: Final = "trio_worker.flow_runs"
PRINT_LOGGER_NAME: Final = "trio_worker.flow_runs.print"

LOG_BATCH_INTERVAL_SECONDS: Final = 2.0
"""Prefect's PREFECT_LOGGING_TO_API_BATCH_INTERVAL default."""
LOG_FLUSH_TIMEOUT_SECONDS: Final = 10.0
"""Longest one flush may take, the last one included: logs never hold the exit up for long."""
MAX_LOG_MESSAGE_CHARS: Final = 900_000
"""Prefect's server refuses a log above 1,000,000 bytes of JSON; keep room for the rest."""
MAX_BATCH_CHARS: Final = 2_900_000
"""Prefect batches at most 4,000,000 - 1,000,000 - 1 bytes; count ~200 per record for the rest."""
MAX_BUFFERED_LOGS: Final = 50_000
"""Records kept while the API is unreachable; older ones are dropped beyond this."""

_NOT_SHIPPED: Final = ("httpx", "httpcore", "hpack", "h11", "h2", "trio_worker")
"""Loggers whose records never go to the API: shipping them would log the shipping itself."""


def _ships(record: logging.LogRecord) -> bool:
    if getattr(record, "send_to_api", True) is False:  # Prefect's opt-out, honoured too
        return False
    name = record.name
    if name == LOGGER_NAME or name.startswith(LOGGER_NAME + "."):
        return True
    return not any(name == n or name.startswith(n + ".") for n in _NOT_SHIPPED)


class APILogHandler(logging.Handler):
    """Buffer records as :class:`Log` lines of one flow run, for :class:`LogShipper` to send.

    ``emit`` only appends under the handler's lock, so it is safe from the
    user's thread and never blocks on the network.
    """

    def __init__(self, flow_run_id: uuid.UUID) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id
        #: ``"<run name> | "`` once the run is read: what starts each line this
        #: process writes to the console, so a worker streaming several runs'
        #: output shows which run printed what.
        self.console_prefix = ""
        self.setFormatter(logging.Formatter("%(message)s"))  # + traceback when exc_info
        self.addFilter(_ships)
        self._buffer: deque[Log] = deque(maxlen=MAX_BUFFERED_LOGS)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if len(message) > MAX_LOG_MESSAGE_CHARS:
                message = message[:MAX_LOG_MESSAGE_CHARS] + "... [truncated]"
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(
                Log(
                    name=record.name,
                    level=record.levelno,
                    message=message,
                    timestamp=_record_time(record),
                    flow_run_id=self.flow_run_id,
                )
            )
        except Exception:
            self.handleError(record)

    def take_batch(self) -> list[Log]:
        """Remove and return the oldest records, up to one request's worth."""
        batch: list[Log] = []
        size = 0
        self.acquire()
        try:
            while self._buffer and (not batch or size < MAX_BATCH_CHARS):
                size += len(self._buffer[0].message) + 200
                batch.append(self._buffer.popleft())
        finally:
            self.release()
        return batch

    def put_back(self, batch: Sequence[Log]) -> None:
        """Return an unsent batch to the front of the buffer, to try again later."""
        self.acquire()
        try:
            self._buffer.extendleft(reversed(batch))
        finally:
            self.release()


def _record_time(record: logging.LogRecord) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.created, dt.UTC)


class LogShipper:
    """Send the handler's records every couple of seconds, and once more before exit."""

    def __init__(self, handler: APILogHandler, client: PrefectClient) -> None:
        self._handler = handler
        self._client = client

    async def serve(self) -> None:
        """Flush every :data:`LOG_BATCH_INTERVAL_SECONDS` until cancelled."""
        while True:
            await trio.sleep(LOG_BATCH_INTERVAL_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        """Send what is buffered, within :data:`LOG_FLUSH_TIMEOUT_SECONDS`; never raise.

        Shielded, so cancelling :meth:`serve` never cuts a request in half
        (a half-sent batch would be lost or sent twice).
        """
        with trio.move_on_after(LOG_FLUSH_TIMEOUT_SECONDS, shield=True):
            while batch := self._handler.take_batch():
                try:
                    await self._client.create_logs(batch)
                except (APIError, ModelError) as exc:
                    # stderr, not logging: a log line about shipping would be shipped too.
                    print(
                        f"trio_worker.engine: could not ship {len(batch)} log line(s): {exc}",
                        file=sys.stderr,
                    )
                    return
                except trio.Cancelled:
                    self._handler.put_back(batch)
                    raise
        if self._handler.dropped:
            print(
                f"trio_worker.engine: dropped {self._handler.dropped} log line(s) "
                "while the API was unreachable",
                file=sys.stderr,
            )
            self._handler.dropped = 0


class _LinePrefix:
    """Puts the run's console prefix at the start of every line written through it."""

    def __init__(self, handler: APILogHandler) -> None:
        self._handler = handler
        self._at_line_start = True

    def apply(self, text: str) -> str:
        prefix = self._handler.console_prefix
        if not prefix:
            return text
        pieces = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                pieces.append(prefix)
            pieces.append(piece)
            self._at_line_start = piece.endswith("\n")
        return "".join(pieces)


class _PrefixedStream:
    """Stand-in for ``sys.stderr``: what user code writes there carries the run's name too."""

    def __init__(self, stream: TextIO, handler: APILogHandler) -> None:
        self._stream = stream
        self._prefix = _LinePrefix(handler)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._stream.write(self._prefix.apply(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _PrintTee:
    """Stand-in for ``sys.stdout`` that also sends each printed line to the API handler.

    Output still reaches the real stdout (the worker may stream it); the copy
    goes to the API handler only, so a console handler does not repeat it.
    """

    def __init__(self, stream: TextIO, handler: APILogHandler) -> None:
        self._stream = stream
        self._handler = handler
        self._partial = ""
        self._prefix = _LinePrefix(handler)
        self._lock = threading.Lock()  # print() may come from the user's worker thread

    def write(self, text: str) -> int:
        with self._lock:
            self._stream.write(self._prefix.apply(text))
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def close_line(self) -> None:
        """Ship a last line that did not end with a newline."""
        with self._lock:
            line, self._partial = self._partial, ""
        if line:
            self._emit(line)

    def _emit(self, line: str) -> None:
        record = logging.LogRecord(PRINT_LOGGER_NAME, logging.INFO, "", 0, line, None, None)
        self._handler.handle(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # encoding, fileno, isatty, buffer, ...


class _ConsoleFormatter(logging.Formatter):
    """The worker's own line format (``_logging.TEXT_FORMAT``), after the run's prefix."""

    def __init__(self, handler: APILogHandler) -> None:
        super().__init__(TEXT_FORMAT)
        self._handler = handler

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as the worker formats its own, prefixed with the run's name."""
        return self._handler.console_prefix + super().format(record)


@contextlib.contextmanager
def logging_to_api(handler: APILogHandler) -> Iterator[None]:
    """Route this process's log records (INFO and up) and prints to ``handler`` and stderr.

    The engine is the process's main program, so configuring the root logger
    is its business; everything is restored on exit for in-process callers.
    """
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_ConsoleFormatter(handler))
    quiet = {name: logging.getLogger(name) for name in ("httpx", "httpcore")}
    saved = (root.level, {name: lg.level for name, lg in quiet.items()}, sys.stdout, sys.stderr)
    root.setLevel(logging.INFO)
    for lg in quiet.values():
        lg.setLevel(logging.WARNING)  # one INFO line per request would drown the user's
    root.addHandler(console)
    root.addHandler(handler)
    tee = _PrintTee(sys.stdout, handler)
    sys.stdout = cast(TextIO, tee)
    sys.stderr = cast(TextIO, _PrefixedStream(sys.stderr, handler))
    try:
        yield
    finally:
        tee.close_line()
        sys.stdout = saved[2]
        sys.stderr = saved[3]
        root.removeHandler(handler)
        root.removeHandler(console)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            quiet[name].setLevel(level)
