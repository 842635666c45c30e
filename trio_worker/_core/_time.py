"""The one datetime formatter and the one parser, for every time that crosses a wire.

The API, the embedded API's database, run records, events and logs all carry
times as ISO 8601 text. One format goes out: UTC, microseconds always shown,
``Z`` (``2026-11-23T00:10:34.579822Z``). Its fixed width keeps stored times
sortable as text, and it is what Prefect's clients send. What comes in is read
as Prefect's server reads it: ``Z`` or ``z``, any offset, a space instead of
``T`` (Python's ``str(datetime)``), and a naive time meaning UTC (the API
speaks nothing else). Both functions are total over ``None`` so optional
fields need no branch at each call.
"""

from __future__ import annotations

import datetime as dt
from typing import overload

__all__ = ["format_datetime", "parse_datetime"]


@overload
def format_datetime(value: dt.datetime, *, compact: bool = False) -> str: ...
@overload
def format_datetime(value: None, *, compact: bool = False) -> None: ...
def format_datetime(value: dt.datetime | None, *, compact: bool = False) -> str | None:
    """Format ``value`` in UTC with a ``Z``; a naive value is taken as UTC.

    Args:
        value: the time; ``None`` gives ``None``.
        compact: leave out zero microseconds, as pydantic (so Prefect) writes
            them; only for text that must equal Prefect's, such as labels.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    utc = value.astimezone(dt.UTC).replace(tzinfo=None)
    timespec = "auto" if compact else "microseconds"
    return utc.isoformat(timespec=timespec) + "Z"


@overload
def parse_datetime(value: str | dt.datetime) -> dt.datetime: ...
@overload
def parse_datetime(value: None) -> None: ...
def parse_datetime(value: str | dt.datetime | None) -> dt.datetime | None:
    """Read an ISO 8601 time; the result is always aware (naive input means UTC).

    The offset it was written with is kept (callers that compare or store
    convert as they need); ``None`` gives ``None``.

    Raises:
        ValueError: the text is not an ISO 8601 datetime; the message quotes it.
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif not isinstance(value, str):
        raise ValueError(f"{value!r} is not an ISO-8601 datetime")
    else:
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 datetime") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
