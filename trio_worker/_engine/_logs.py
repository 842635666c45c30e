"""A flow run's log lines and prints, buffered for ``POST /logs/`` as Prefect's engine does.

:class:`APILogHandler` turns the records of the flow-run process (and, through
:func:`logging_to_api`, its prints) into :class:`Log` lines of one run in a
:class:`~trio_worker._client._log_shipping.LogBuffer`; the engine sends it with the
one :class:`~trio_worker._client._log_shipping.LogShipper`, every couple of seconds
and once more before exit. Shipping is best effort but never silent: a run
that prints faster than the API stores, or whose lines the API refuses, gets
``N log lines dropped: <reason>`` in its logs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Final, TextIO, cast

from trio_worker._client._log_shipping import LogBuffer, LogShipper
from trio_worker._core._logging import TEXT_FORMAT
from trio_worker._core._models import Log
from trio_worker._core._settings import DEFAULT_LOG_BUFFER_LINES

__all__ = ["LOGGER_NAME", "APILogHandler", "LogShipper", "logging_to_api"]

LOGGER_NAME: Final = "trio_worker.flow_runs"
PRINT_LOGGER_NAME: Final = "trio_worker.flow_runs.print"

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
    """Buffer records as :class:`Log` lines of one flow run, for a ``LogShipper`` to send.

    ``emit`` only appends to :attr:`buffer` (under its lock), so it is safe
    from the user's thread and never blocks on the network.

    Args:
        flow_run_id: the run every line belongs to.
        capacity: lines kept while they wait (``TRIO_WORKER_LOG_BUFFER_LINES``).
    """

    def __init__(self, flow_run_id: uuid.UUID, *, capacity: int = DEFAULT_LOG_BUFFER_LINES) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id
        #: ``"<run name> | "`` once the run is read: what starts each line this
        #: process writes to the console, so a worker streaming several runs'
        #: output shows which run printed what.
        self.console_prefix = ""
        self.setFormatter(logging.Formatter("%(message)s"))  # + traceback when exc_info
        self.addFilter(_ships)
        self.buffer = LogBuffer(capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.add(
                Log(
                    name=record.name,
                    level=record.levelno,
                    message=self.format(record),
                    timestamp=dt.datetime.fromtimestamp(record.created, dt.UTC),
                    flow_run_id=self.flow_run_id,
                )
            )
        except Exception:
            self.handleError(record)


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
def logging_to_api(handler: APILogHandler) -> Iterator[Callable[[], None]]:
    """Route this process's log records (INFO and up) and prints to ``handler`` and stderr.

    The engine is the process's main program, so configuring the root logger
    is its business; everything is restored on exit for in-process callers.

    Yields:
        A function that buffers a last printed line without a newline: call
        it before the last flush, or that line would never be sent.
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
        yield tee.close_line
    finally:
        tee.close_line()
        sys.stdout = saved[2]
        sys.stderr = saved[3]
        root.removeHandler(handler)
        root.removeHandler(console)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            quiet[name].setLevel(level)
