"""The logging handler that keeps a worker's lines about its flow runs for the API.

The worker logs about each run through :mod:`logging` (with ``flow_run_id`` in
``extra``); this handler picks those records out and buffers them as
:class:`~trio_worker._core._models.Log` lines, which the shipper
(:mod:`._log_shipping`) sends. Kept apart from the shipper: the handler is
the :mod:`logging` side (sync, any thread), the shipper the Trio side.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from trio_worker._client._log_buffer import LogBuffer
from trio_worker._core._models import Log
from trio_worker._core._settings import DEFAULT_LOG_BUFFER_LINES

__all__ = ["APILogHandler"]


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
