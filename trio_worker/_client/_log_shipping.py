"""Shipping flow-run log lines to the API's ``POST /logs/``: one buffer, one shipper.

The worker (its own lines about each run) and the engine (the run's log
records and prints) both append :class:`~trio_worker._core._models.Log` lines to a
:class:`LogBuffer` and send it with a :class:`LogShipper`. The rules:

- **Never block, never fail the caller.** :meth:`LogBuffer.add` appends under
  a lock (the engine's lines come from the user's thread); memory stays
  bounded: beyond ``capacity`` lines (or :data:`MAX_BUFFERED_CHARS`) the
  oldest line is dropped.
- **Never lose a line silently.** Every dropped line is counted for its run
  with the real reason (lines came faster than the API took them; the API
  did not answer; the API refused the line; the process exited first), and
  the run's stored logs get a line ``N log lines dropped: <reason>``,
  timestamped at the last line dropped, so it sorts where the gap is.
- **One bad line costs one line.** Text that cannot be encoded as UTF-8
  (lone surrogates) is repaired with U+FFFD before it is buffered. A batch
  the API refuses (4xx) is split in halves until only the refused lines are
  left; those are dropped and counted. A batch the API cannot take now
  (unreachable, 5xx after retries, credentials refused) goes back to the
  front of the buffer for the next flush.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import attrs
import trio

from trio_worker._core._exceptions import APIError, ServerUnavailableError, UnauthorizedError
from trio_worker._core._models import Log
from trio_worker._core._settings import DEFAULT_LOG_BUFFER_LINES

if TYPE_CHECKING:
    from trio_worker._client._client import PrefectClient

__all__ = [
    "DROPPED_LOGGER_NAME",
    "APILogHandler",
    "DropNotice",
    "LogBuffer",
    "LogShipper",
    "flush_logs",
    "repair_text",
    "ship_logs",
]

logger = logging.getLogger("trio_worker.log_shipping")

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
MAX_SPLITS: Final = 64
"""Most extra requests one refused batch may cost before its refused parts are dropped whole."""
DEFAULT_INTERVAL_SECONDS: Final = 2.0
"""Prefect's PREFECT_LOGGING_TO_API_BATCH_INTERVAL default."""
DEFAULT_FLUSH_TIMEOUT_SECONDS: Final = 10.0
"""How long the last flush takes new batches, and the bound on one request: logs never hold
an exit up for long."""
LAST_NOTICE_SECONDS: Final = 2.0
"""Extra time, after the last flush, to store the notice of what it could not send."""

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


def _refused(exc: APIError) -> bool:
    """Whether the API refused these lines for what they are (sending them again would fail)."""
    status = exc.status_code
    return (
        status is not None
        and 400 <= status < 500
        and not isinstance(exc, UnauthorizedError | ServerUnavailableError)
    )


def _refusal_reason(exc: APIError, count: int) -> str:
    detail = " ".join(str(exc.detail).split())[:300]
    them = "it" if count == 1 else "them"
    return f"the API refused {them} ({exc.status_code}: {detail})"


class _NoAnswerError(Exception):
    """A request to ``POST /logs/`` ran past its bound; its lines may or may not be stored."""


async def _create_logs(client: PrefectClient, logs: list[Log], deadline: float) -> None:
    """Send one request, shielded until ``deadline``: cancellation waits for the answer.

    A request cut in half may have been stored or not; cutting one only when
    it runs past its bound keeps duplicates (and losses) to API outages.
    """
    await trio.lowlevel.checkpoint_if_cancelled()  # cancelled between requests, never during
    with trio.CancelScope(shield=True, deadline=deadline) as scope:
        await client.create_logs(logs)
    if scope.cancelled_caught:
        raise _NoAnswerError("no answer in time")


async def _deliver(
    client: PrefectClient,
    logs: list[Log],
    *,
    deadline: float,
    on_refused: Callable[[list[Log], str], None],
    give_back: Callable[[list[Log]], None],
) -> None:
    """Send ``logs``; split a refused batch until only the refused lines are left.

    What means "not now" (:class:`ServerUnavailableError`,
    :class:`UnauthorizedError`, no answer before ``deadline``, cancellation)
    propagates after the lines not yet sent were handed to ``give_back``, in
    order, so none is sent twice.
    """
    pending = [logs]  # a stack of parts still to send; the last is next
    splits = 0
    try:
        while pending:
            part = pending[-1]
            try:
                await _create_logs(client, part, deadline)
            except APIError as exc:
                if not _refused(exc):
                    raise
                pending.pop()
                if len(part) == 1 or splits >= MAX_SPLITS:
                    on_refused(part, _refusal_reason(exc, len(part)))
                else:
                    splits += 1
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]
            else:
                pending.pop()
    except BaseException:
        give_back([log for part in reversed(pending) for log in part])
        raise


async def _deliver_notices(client: PrefectClient, buffer: LogBuffer, deadline: float) -> None:
    notices = buffer.take_notices()
    if not notices:
        return
    lines = [notice.log() for notice in notices]
    by_line = {id(line): notice for line, notice in zip(lines, notices, strict=True)}
    await _deliver(
        client,
        lines,
        deadline=deadline,
        on_refused=_notice_refused,
        give_back=lambda unsent: buffer.restore_notices([by_line[id(u)] for u in unsent]),
    )
    for notice in notices:
        logger.warning(
            "%d log line(s) of flow run %s dropped: %s",
            notice.count,
            notice.flow_run_id,
            notice.reason,
        )


def _notice_refused(logs: list[Log], reason: str) -> None:
    for log in logs:
        logger.warning("could not store %r: %s", log.message, reason)


async def flush_logs(
    client: PrefectClient,
    buffer: LogBuffer,
    *,
    request_seconds: float = DEFAULT_FLUSH_TIMEOUT_SECONDS,
    stop_at: float = math.inf,
    max_chars: int = MAX_BATCH_CHARS,
) -> bool:
    """Send what is buffered, oldest first, each batch after the notices of what was dropped.

    Args:
        client: an open API client.
        buffer: the lines to send.
        request_seconds: the bound on one request; one that runs past it is
            taken as unanswered and its lines go back to the buffer.
        stop_at: take no new batch after this ``trio.current_time()``; the
            request in flight may run on until ``stop_at + request_seconds / 2``.
        max_chars: about the most characters of one request.

    Returns:
        True when the buffer was sent empty; False when the API could not take
        it now (``buffer.unreachable`` says why) or ``stop_at`` came first.
    """
    try:
        while True:
            now = trio.current_time()
            deadline = min(now + request_seconds, stop_at + request_seconds / 2)
            await _deliver_notices(client, buffer, deadline)
            if now >= stop_at:
                return not buffer
            batch = buffer.take(max_chars=max_chars)
            if not batch:
                break
            await _deliver(
                client, batch, deadline=deadline, on_refused=buffer.drop, give_back=buffer.give_back
            )
    except (ServerUnavailableError, UnauthorizedError, _NoAnswerError) as exc:
        if buffer.unreachable is None:
            buffer.unreachable = " ".join(str(exc).split())[:300]
        return False
    buffer.unreachable = None
    return True


class LogShipper:
    """Send a :class:`LogBuffer` every couple of seconds, and once more before exit.

    Args:
        buffer: what to send.
        client: an open API client.
        interval_seconds: the wait between two flushes.
        flush_timeout_seconds: how long the last flush takes new batches (and
            the bound on one request). What it could not send by then is
            dropped and counted, and one more short try stores the notice.
    """

    def __init__(
        self,
        buffer: LogBuffer,
        client: PrefectClient,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        flush_timeout_seconds: float = DEFAULT_FLUSH_TIMEOUT_SECONDS,
    ) -> None:
        self._buffer = buffer
        self._client = client
        self._interval_seconds = interval_seconds
        self._flush_timeout_seconds = flush_timeout_seconds

    async def serve(self) -> None:
        """Flush every ``interval_seconds`` until cancelled, then :meth:`close`.

        A flush runs as long as there are lines (a run printing without pause
        keeps it sending); cancelling it waits for the request in flight.
        """
        try:
            while True:
                await trio.sleep(self._interval_seconds)
                await flush_logs(
                    self._client, self._buffer, request_seconds=self._flush_timeout_seconds
                )
        finally:
            await self.close()

    async def flush(self) -> bool:
        """Send what is buffered, taking new batches for ``flush_timeout_seconds``; never raise.

        Shielded: it runs to its end even in a cancelled task. Returns whether
        everything was sent.
        """
        with trio.CancelScope(shield=True):
            sent = await flush_logs(
                self._client,
                self._buffer,
                request_seconds=self._flush_timeout_seconds,
                stop_at=trio.current_time() + self._flush_timeout_seconds,
            )
        return sent

    async def close(self) -> None:
        """The last flush: what it cannot send is dropped, counted, and said in the logs.

        When the API was taking lines but not all of them in time, the rest
        is dropped and one more short try stores the notice in the run's logs;
        when it did not answer, the notice goes to this process's log instead.
        """
        if await self.flush():
            return
        buffer = self._buffer
        if buffer.unreachable is None:
            buffer.drop_all(
                f"the process was exiting and its last flush "
                f"({self._flush_timeout_seconds:g} s) ended before the API took them"
            )
            with trio.CancelScope(shield=True):
                if await flush_logs(self._client, buffer, request_seconds=LAST_NOTICE_SECONDS):
                    return
        why = buffer.unreachable or "no answer in time"
        buffer.drop_all(f"the API did not answer before the process exited ({why})")
        for notice in buffer.take_notices():
            logger.warning(
                "%d log line(s) of flow run %s could not be sent and were dropped: %s",
                notice.count,
                notice.flow_run_id,
                notice.reason,
            )


async def ship_logs(
    client: PrefectClient,
    buffer: LogBuffer,
    *,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    flush_timeout_seconds: float = DEFAULT_FLUSH_TIMEOUT_SECONDS,
) -> None:
    """Send ``buffer`` every ``interval_seconds`` until cancelled, then once more."""
    shipper = LogShipper(
        buffer,
        client,
        interval_seconds=interval_seconds,
        flush_timeout_seconds=flush_timeout_seconds,
    )
    await shipper.serve()


class APILogHandler(logging.Handler):
    """Buffer the log records of one worker's flow runs for the API.

    A record is kept when it carries a ``flow_run_id`` attribute (pass
    ``extra={"flow_run_id": ..., "worker_name": ...}``) and, when the handler
    has a ``worker_name``, the same ``worker_name``: several workers in one
    process then ship only their own lines.
    """

    def __init__(self, *, worker_name: str | None = None, capacity: int = DEFAULT_LOG_BUFFER_LINES):
        super().__init__(level=logging.INFO)
        self.worker_name = worker_name
        self.buffer = LogBuffer(capacity)

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` for shipping if it belongs to one of our flow runs."""
        flow_run_id = getattr(record, "flow_run_id", None)
        if flow_run_id is None:
            return
        if (
            self.worker_name is not None
            and getattr(record, "worker_name", None) != self.worker_name
        ):
            return
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        self.buffer.add(
            Log(
                name=record.name,
                level=record.levelno,
                message=message,
                timestamp=dt.datetime.fromtimestamp(record.created, dt.UTC),
                flow_run_id=uuid.UUID(str(flow_run_id)),
            )
        )
