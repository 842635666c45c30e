"""The one datetime formatter and parser: what goes out, what comes in, and round trips."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_worker._core._time import format_datetime, parse_datetime

UTC = dt.UTC
PLUS_ONE = dt.timezone(dt.timedelta(hours=1))
MINUS_FIVE_THIRTY = dt.timezone(-dt.timedelta(hours=5, minutes=30))


def test_format_is_fixed_width_utc_with_z() -> None:
    assert format_datetime(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.000000Z"
    )
    assert format_datetime(dt.datetime(2026, 1, 2, 4, 4, 5, 678, tzinfo=PLUS_ONE)) == (
        "2026-01-02T03:04:05.000678Z"
    )
    # Fixed width: stored times sort as text in time order.
    early = format_datetime(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    later = format_datetime(dt.datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC))
    assert len(early) == len(later) and early < later


def test_format_takes_naive_as_utc_and_none_as_none() -> None:
    assert format_datetime(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"
    assert format_datetime(None) is None


def test_compact_format_is_prefects_label_text() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_datetime(when, compact=True) == "2026-01-02T03:04:05Z"
    assert format_datetime(when.replace(microsecond=678000), compact=True) == (
        "2026-01-02T03:04:05.678000Z"
    )


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("2026-11-23T00:10:34.579822Z", UTC),
        ("2026-11-23T00:10:34.579822z", UTC),
        ("2026-11-23T00:10:34.579822+00:00", UTC),
        ("2026-11-23T01:10:34.579822+01:00", PLUS_ONE),
        ("2026-11-22T18:40:34.579822-05:30", MINUS_FIVE_THIRTY),
        ("2026-11-23 00:10:34.579822+00:00", UTC),  # Python's str(datetime)
        ("2026-11-23 00:10:34.579822", UTC),  # naive: the API speaks UTC
        (" 2026-11-23T00:10:34.579822Z ", UTC),
    ],
)
def test_parse_reads_z_offsets_spaces_and_naive(text: str, offset: dt.tzinfo) -> None:
    parsed = parse_datetime(text)
    assert parsed == dt.datetime(2026, 11, 23, 0, 10, 34, 579822, tzinfo=UTC)
    assert parsed.utcoffset() == offset.utcoffset(None)  # the offset it was written with


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "Z"])
def test_parse_refuses_what_is_not_a_datetime(text: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO-8601 datetime"):
        parse_datetime(text)


def test_parse_passes_datetimes_and_none_through() -> None:
    aware = dt.datetime(2026, 1, 1, tzinfo=PLUS_ONE)
    assert parse_datetime(aware) is aware
    assert parse_datetime(dt.datetime(2026, 1, 1)) == dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_datetime(None) is None


@given(
    st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, PLUS_ONE, MINUS_FIVE_THIRTY]),
    )
)
def test_round_trip_keeps_the_instant_to_the_microsecond(when: dt.datetime) -> None:
    text = format_datetime(when)
    assert parse_datetime(text) == when
    assert format_datetime(parse_datetime(text)) == text
    assert parse_datetime(format_datetime(when, compact=True)) == when
