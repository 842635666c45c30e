"""Small helpers every part of the embedded API shares: ids, times, JSON, errors."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

# The one formatter and parser (trio_worker._core._time), under the names the
# embedded API's modules use: fixed-width UTC with Z, sortable as stored text.
from trio_worker._core._time import format_datetime as format_time
from trio_worker._core._time import parse_datetime as parse_time

__all__ = [
    "DEFAULT_LIMIT",
    "APIProblem",
    "dumps",
    "format_time",
    "loads",
    "new_id",
    "not_found",
    "now",
    "parse_time",
]

DEFAULT_LIMIT: Final = 200
"""Prefect's ``PREFECT_SERVER_API_DEFAULT_LIMIT``: default and maximum page size."""


class APIProblem(Exception):
    """An answer other than success, raised wherever the problem is found.

    Raising it inside a storage transaction rolls the transaction back, so a
    refused request never leaves anything half written.

    Attributes:
        status_code: the HTTP status to answer with.
        body: the JSON body, in Prefect's shape for that situation.
    """

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"{status_code}: {body!r}")
        self.status_code = status_code
        self.body = body


def not_found(detail: str) -> APIProblem:
    """Build the 404 Prefect's route checks answer, e.g. ``Flow run not found``."""
    return APIProblem(404, {"detail": detail})


def new_id() -> str:
    """Return a fresh UUIDv7 string: time-ordered, as Prefect's server-generated ids."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def now() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def dumps(value: Any) -> str:
    """Encode JSON compactly, for storage and responses alike."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    """Decode JSON."""
    return json.loads(text)
