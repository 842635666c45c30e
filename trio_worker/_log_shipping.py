"""Shipping a worker's flow-run log lines to the API's ``POST /logs/``.

Logging must never block the loop or fail the worker, so the handler only
appends to a bounded buffer (dropping, and counting, once it is full), and a
task in the loops nursery sends the buffer in batches every couple of seconds.
A failed send keeps the batch for the next try; a long outage fills the
buffer and the oldest lines are dropped, never raised.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import uuid
from typing import TYPE_CHECKING, Final

import trio

from trio_worker._exceptions import APIError, ServerUnavailableError
from trio_worker._models import Log

if TYPE_CHECKING:
    from trio_worker._client import PrefectClient

__all__ = ["APILogHandler", "ship_logs"]

logger = logging.getLogger("trio_worker.log_shipping")

DEFAULT_CAPACITY: Final = 10_000
DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_INTERVAL_SECONDS: Final = 2.0
#: Prefect's limit for one log message; longer ones are truncated.
MAX_MESSAGE_CHARS: Final = 1_000_000
TRUNCATED_SUFFIX: Final = "... [truncated]"


class APILogHandler(logging.Handler):
    """Buffer the log records of one worker's flow runs for the API.

    A record is kept when it carries a ``flow_run_id`` attribute (pass
    ``extra={"flow_run_id": ..., "worker_name": ...}``) and, when the handler
    has a ``worker_name``, the same ``worker_name``: several workers in one
    process then ship only their own lines.
    """

    def __init__(self, *, worker_name: str | None = None, capacity: int = DEFAULT_CAPACITY):
        super().__init__(level=logging.INFO)
        self.worker_name = worker_name
        self.buffer: collections.deque[Log] = collections.deque()
        self.capacity = capacity
        self.dropped = 0

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
        if len(self.buffer) >= self.capacity:
            self.dropped += 1
            return
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX
        self.buffer.append(
            Log(
                name=record.name,
                level=record.levelno,
                message=message,
                timestamp=dt.datetime.fromtimestamp(record.created, dt.UTC),
                flow_run_id=uuid.UUID(str(flow_run_id)),
            )
        )

    def take(self, limit: int) -> list[Log]:
        """Remove and return up to ``limit`` buffered lines, oldest first."""
        return [self.buffer.popleft() for _ in range(min(limit, len(self.buffer)))]

    def give_back(self, logs: list[Log]) -> None:
        """Return an unsent batch to the front of the buffer, dropping what no longer fits."""
        room = self.capacity - len(self.buffer)
        kept = logs[-room:] if room > 0 else []
        self.dropped += len(logs) - len(kept)
        self.buffer.extendleft(reversed(kept))


async def flush_logs(client: PrefectClient, handler: APILogHandler, *, batch_size: int) -> None:
    """Send everything buffered now; keep what may be sent later.

    A batch the API could not take now (unavailable, or the send was
    cancelled) goes back to the buffer; a batch it refused (4xx) never would
    be taken, so it is dropped and counted rather than blocking every later line.
    """
    while handler.buffer:
        batch = handler.take(batch_size)
        try:
            await client.create_logs(batch)
        except ServerUnavailableError:
            handler.give_back(batch)
            return
        except APIError as exc:
            handler.dropped += len(batch)
            logger.warning("The API refused %d log lines, dropped: %s", len(batch), exc)
        except BaseException:
            handler.give_back(batch)
            raise


async def ship_logs(
    client: PrefectClient,
    handler: APILogHandler,
    *,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> None:
    """Send the handler's buffer every ``interval_seconds`` until cancelled, then once more."""
    try:
        while True:
            await trio.sleep(interval_seconds)
            await flush_logs(client, handler, batch_size=batch_size)
    finally:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 5.0
            await flush_logs(client, handler, batch_size=batch_size)
