"""The worker's own log output: human text, or one JSON object per line.

Only the CLI calls :func:`configure_logging`; the library leaves the root
logger alone. JSON lines carry the worker's name and the flow run's id when
a record has them, so a log pipeline can follow one run across workers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Final, Literal

from trio_worker._core._time import format_datetime

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, worker, run id."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON."""
        entry: dict[str, object] = {
            "time": format_datetime(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        worker = getattr(record, "worker_name", None)
        if worker is not None:
            entry["worker"] = worker
        flow_run_id = getattr(record, "flow_run_id", None)
        if flow_run_id is not None:
            entry["flow_run_id"] = str(flow_run_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: Literal["text", "json"], *, level: int = logging.INFO) -> None:
    """Send log records to stderr in ``log_format``, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    # Loggers below may be more verbose (the run logger feeds the API at
    # INFO); what reaches the terminal is decided here.
    handler.setLevel(level)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per HTTP request drowns what the worker says; its own logs
    # already name failed calls.
    for chatty in ("httpx", "httpcore", "hpack"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
