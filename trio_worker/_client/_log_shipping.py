"""Shipping a :class:`~trio_worker._client._log_buffer.LogBuffer` to the API's ``POST /logs/``.

One shipper for the worker (its own lines about each run) and the engine (the
run's log records and prints). The rules of sending (the buffer has its own):

- **Never lose a line silently.** Lines dropped here are counted in the
  buffer with the real reason (the API did not answer; the API refused the
  line; the process exited first) and end up as a notice in the run's logs.
- **One bad line costs one line.** A batch the API refuses (4xx) is split in
  halves until only the refused lines are left; those are dropped and
  counted. A batch the API cannot take now (unreachable, 5xx after retries,
  credentials refused) goes back to the front of the buffer for the next flush.
- **Never hold an exit up for long.** Each request is bounded, and the last
  flush takes new batches only for ``flush_timeout_seconds``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from trio_worker._client._log_buffer import MAX_BATCH_CHARS, LogBuffer
from trio_worker._core._exceptions import APIError, ServerUnavailableError, UnauthorizedError
from trio_worker._core._models import Log

if TYPE_CHECKING:
    from trio_worker._client._client import PrefectClient

# LogBuffer is listed because the engine imports the buffer with the shipper it feeds.
__all__ = ["LogBuffer", "LogShipper", "flush_logs", "ship_logs"]

logger = logging.getLogger("trio_worker.log_shipping")

MAX_SPLITS: Final = 64
"""Most extra requests one refused batch may cost before its refused parts are dropped whole."""
DEFAULT_INTERVAL_SECONDS: Final = 2.0
"""Prefect's PREFECT_LOGGING_TO_API_BATCH_INTERVAL default."""
DEFAULT_FLUSH_TIMEOUT_SECONDS: Final = 10.0
"""How long the last flush takes new batches, and the bound on one request: logs never hold
an exit up for long."""
LAST_NOTICE_SECONDS: Final = 2.0
"""Extra time, after the last flush, to store the notice of what it could not send."""


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
