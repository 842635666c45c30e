"""The buffer of flow-run log lines waiting for the API, and what it counts when it drops.

Worker and engine alike append :class:`~trio_worker._core._models.Log` lines
to a :class:`LogBuffer`; the shipper (:mod:`._log_shipping`) sends it. The
buffer's own rules:

- **Never block, never fail the caller.** :meth:`LogBuffer.add` appends under
  a lock (the engine's lines come from the user's thread); memory stays
  bounded: beyond ``capacity`` lines (or :data:`MAX_BUFFERED_CHARS`) the
  oldest line is dropped.
- **Never lose a line silently.** Every dropped line is counted for its run
  with the real reason, and :class:`DropNotice` is the line
  ``N log lines dropped: <reason>`` stored in the run's logs, timestamped at
  the last line dropped, so it sorts where the gap is.
- **One bad line costs one line.** Text that cannot be encoded as UTF-8
  (lone surrogates) is repaired with U+FFFD before it is buffered.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Final

import attrs

from trio_worker._core._models import Log
from trio_worker._core._settings import DEFAULT_LOG_BUFFER_LINES

__all__ = [
    "DROPPED_LOGGER_NAME",
    "MAX_BATCH_CHARS",
    "MAX_MESSAGE_CHARS",
    "DropNotice",
    "LogBuffer",
    "repair_text",
]

DROPPED_LOGGER_NAME: Final = "trio_worker.log_shipping"
"""The logger name of the ``N log lines dropped`` lines stored in a run's logs."""
MAX_MESSAGE_CHARS: Final = 900_000
"""Prefect's server refuses a log above 1,000,000 bytes of JSON; keep room for the rest."""
TRUNCATED_SUFFIX: Final = "... [truncated]"
MAX_BATCH_CHARS: Final = 1_000_000
"""About the most characters one request carries (Prefect's server takes up to 4 MB): small
enough for the embedded API to store in about a second, so a request is rarely cut at exit."""
LINE_OVERHEAD_CHARS: Final = 200
MAX_BUFFERED_CHARS: Final = 64_000_000
"""Characters kept at most, whatever ``capacity`` says: a bound on memory, not only on lines."""

_SURROGATES: Final = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> str:
    """Return ``text`` with every lone surrogate replaced by U+FFFD.

    Such a string cannot be encoded as UTF-8 (it comes from bytes decoded with
    ``surrogateescape``, or from a careless ``chr``); sent as is, the API
    cannot store it and the whole batch would fail.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


def _truncated(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX


@attrs.define
class _Drops:
    """Lines of one run dropped for one reason since the last notice."""

    count: int
    last: dt.datetime


_DropKey = tuple[uuid.UUID | None, uuid.UUID | None, str]  # flow run, task run, reason


@attrs.frozen
class DropNotice:
    """``count`` lines of one run dropped for ``reason``; :meth:`log` is the stored line."""

    flow_run_id: uuid.UUID | None
    task_run_id: uuid.UUID | None
    reason: str
    count: int
    last: dt.datetime

    def log(self) -> Log:
        """The line that tells the run's logs what is missing, timestamped at the gap."""
        lines = "line" if self.count == 1 else "lines"
        return Log(
            name=DROPPED_LOGGER_NAME,
            level=logging.WARNING,
            message=f"{self.count} log {lines} dropped: {self.reason}",
            timestamp=self.last,
            flow_run_id=self.flow_run_id,
            task_run_id=self.task_run_id,
        )


class LogBuffer:
    """A bounded, thread-safe queue of log lines waiting for the API, that counts what it drops.

    Args:
        capacity: lines kept at most (``TRIO_WORKER_LOG_BUFFER_LINES``);
            beyond it, the oldest line is dropped and counted.
    """

    def __init__(self, capacity: int = DEFAULT_LOG_BUFFER_LINES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._lines: collections.deque[Log] = collections.deque()
        self._chars = 0
        self._drops: dict[_DropKey, _Drops] = {}
        self._lock = threading.Lock()
        #: Why the last send failed (the API did not answer); None once one succeeds.
        self.unreachable: str | None = None
        #: Lines dropped since the buffer was made, for statistics.
        self.dropped_total = 0

    def __repr__(self) -> str:
        return f"LogBuffer({len(self._lines)}/{self.capacity} lines)"

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, log: Log) -> None:
        """Queue ``log`` (repaired and truncated as needed); never blocks, never raises."""
        message = _truncated(repair_text(log.message))
        name = repair_text(log.name)
        if message is not log.message or name is not log.name:
            log = attrs.evolve(log, message=message, name=name)
        with self._lock:
            self._lines.append(log)
            self._chars += len(log.message)
            self._evict(self._full_reason())

    def _full_reason(self) -> str:
        if self.unreachable is not None:
            return (
                f"the log buffer ({self.capacity:,} lines) filled up while the API "
                f"did not answer ({self.unreachable})"
            )
        return (
            "they came faster than the API took them and the log buffer "
            f"({self.capacity:,} lines, TRIO_WORKER_LOG_BUFFER_LINES) was full"
        )

    def _evict(self, reason: str) -> None:
        """Drop the oldest lines until the bounds hold again (called with the lock held)."""
        while len(self._lines) > self.capacity or (
            self._chars > MAX_BUFFERED_CHARS and len(self._lines) > 1
        ):
            oldest = self._lines.popleft()
            self._chars -= len(oldest.message)
            self._count(oldest, reason)

    def _count(self, log: Log, reason: str) -> None:
        key = (log.flow_run_id, log.task_run_id, reason)
        drops = self._drops.get(key)
        if drops is None:
            self._drops[key] = _Drops(1, log.timestamp)
        else:
            drops.count += 1
            drops.last = max(drops.last, log.timestamp)
        self.dropped_total += 1

    def drop(self, logs: Sequence[Log], reason: str) -> None:
        """Count ``logs`` (already taken out) as dropped for ``reason``."""
        with self._lock:
            for log in logs:
                self._count(log, reason)

    def drop_all(self, reason: str) -> int:
        """Drop every queued line for ``reason``; return how many there were."""
        with self._lock:
            lines, self._lines = self._lines, collections.deque()
            self._chars = 0
            for log in lines:
                self._count(log, reason)
        return len(lines)

    def take(self, *, max_chars: int = MAX_BATCH_CHARS) -> list[Log]:
        """Remove and return the oldest lines, up to about ``max_chars`` (one at least)."""
        batch: list[Log] = []
        size = 0
        with self._lock:
            while self._lines and (not batch or size < max_chars):
                log = self._lines.popleft()
                self._chars -= len(log.message)
                size += len(log.message) + LINE_OVERHEAD_CHARS
                batch.append(log)
        return batch

    def give_back(self, logs: Sequence[Log]) -> None:
        """Return unsent lines to the front of the buffer; what no longer fits is dropped."""
        with self._lock:
            self._lines.extendleft(reversed(logs))
            self._chars += sum(len(log.message) for log in logs)
            self._evict(self._full_reason())

    def take_notices(self) -> list[DropNotice]:
        """Remove and return what was dropped since the last call, one notice per run and reason."""
        with self._lock:
            drops, self._drops = self._drops, {}
        return [DropNotice(*key, d.count, d.last) for key, d in drops.items()]

    def restore_notices(self, notices: Sequence[DropNotice]) -> None:
        """Put back notices that could not be sent, merging them with newer drops."""
        with self._lock:
            for notice in notices:
                key = (notice.flow_run_id, notice.task_run_id, notice.reason)
                drops = self._drops.get(key)
                if drops is None:
                    self._drops[key] = _Drops(notice.count, notice.last)
                else:
                    drops.count += notice.count
                    drops.last = max(drops.last, notice.last)
