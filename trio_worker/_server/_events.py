"""Events: storage, Prefect's event filter, and the in-process bus behind ``/events/out``.

Events reach the API from clients (``/events/in``, ``POST /events``) and from the
server itself: every flow-run state change emits ``prefect.flow-run.<State name>``,
which is how a worker hears about a cancellation at once. An event is stored in
the same transaction as whatever caused it and published to live subscribers
only after that transaction commits, so a subscriber never sees an event that
was rolled back, and a backfill after a restart finds every event a live
subscriber could have seen.

Subscribers are :class:`Subscription` objects with a bounded buffer; one that
cannot keep up is dropped (its socket closed) rather than slowing the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import trio

from trio_worker._server._common import APIProblem, dumps, format_time, loads, new_id, now
from trio_worker._server._storage import Tx
from trio_worker._server._validation import parse_datetime

__all__ = [
    "EventBus",
    "Subscription",
    "event_matches",
    "flow_run_state_event",
    "normalize_event",
    "read_events",
    "store_event",
    "validate_filter",
]

SUBSCRIBER_BUFFER: Final = 1000
"""Live events one ``/events/out`` subscriber may have queued before it is dropped."""


class Subscription:
    """One live subscriber: a filter and a bounded buffer of matching events."""

    def __init__(self, event_filter: dict[str, Any]) -> None:
        self.filter = event_filter
        self.send, self.receive = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_BUFFER)
        self.overflowed = False


class EventBus:
    """Fan committed events out to live subscribers; never blocks the publisher."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    @contextmanager
    def subscribe(self, event_filter: dict[str, Any]) -> Iterator[Subscription]:
        """Register a subscriber for the duration of the ``with`` block."""
        subscription = Subscription(event_filter)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            subscription.send.close()

    def publish(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to every subscriber whose filter matches it."""
        for subscription in list(self._subscriptions):
            if subscription.overflowed or not event_matches(subscription.filter, event):
                continue
            try:
                subscription.send.send_nowait(event)
            except trio.WouldBlock:
                subscription.overflowed = True
                subscription.send.close()
            except trio.ClosedResourceError:
                pass


def normalize_event(raw: Any) -> dict[str, Any]:
    """Check a client event against Prefect's ``Event`` model and return it normalised.

    Raises:
        APIProblem: 422 naming what is wrong.
    """
    problems: list[dict[str, Any]] = []

    def fail(loc: str, msg: str, value: Any) -> None:
        problems.append({"type": "value_error", "loc": ["body", loc], "msg": msg, "input": value})

    if not isinstance(raw, dict):
        raise APIProblem(422, _invalid([], raw, "Input should be a valid dictionary"))
    occurred = raw.get("occurred")
    try:
        occurred_at = parse_datetime(occurred) if isinstance(occurred, str) else None
    except ValueError:
        occurred_at = None
    if occurred_at is None:
        fail("occurred", "Input should be a valid datetime", occurred)
    if not isinstance(raw.get("event"), str) or not raw["event"]:
        fail("event", "Input should be a valid string", raw.get("event"))
    resource = raw.get("resource")
    if not isinstance(resource, dict) or not resource.get("prefect.resource.id"):
        fail("resource", "Resources must include the prefect.resource.id label", resource)
    related = raw.get("related", [])
    if not isinstance(related, list) or not all(
        isinstance(r, dict) and r.get("prefect.resource.id") and r.get("prefect.resource.role")
        for r in related
    ):
        fail("related", "Related resources must include id and role labels", related)
    if not isinstance(raw.get("payload", {}), dict):
        fail("payload", "Input should be a valid dictionary", raw.get("payload"))
    if not isinstance(raw.get("id"), str):
        fail("id", "Field required", raw.get("id"))
    if problems:
        raise APIProblem(422, _invalid(problems, raw))
    return {
        "occurred": format_time(occurred_at),
        "event": raw["event"],
        "resource": {str(k): str(v) for k, v in resource.items()},  # type: ignore[union-attr]
        "related": [{str(k): str(v) for k, v in r.items()} for r in related],
        "payload": raw.get("payload") or {},
        "id": raw["id"],
        "follows": raw.get("follows"),
    }


def _invalid(problems: list[dict[str, Any]], body: Any, msg: str | None = None) -> dict[str, Any]:
    if msg is not None:
        problems = [{"type": "value_error", "loc": ["body"], "msg": msg, "input": body}]
    return {
        "exception_message": "Invalid request received.",
        "exception_detail": problems,
        "request_body": body,
    }


def store_event(tx: Tx, bus: EventBus, event: dict[str, Any]) -> dict[str, Any]:
    """Store a normalised event in ``tx`` and publish it once ``tx`` commits.

    Events are idempotent by id, as Prefect's: a client re-sending its
    unconfirmed buffer after a reconnect does not duplicate them.
    """
    stored = {**event, "received": format_time(now())}
    changed = tx.execute(
        "INSERT OR IGNORE INTO events (id, occurred, received, event, body) VALUES (?, ?, ?, ?, ?)",
        (stored["id"], stored["occurred"], stored["received"], stored["event"], dumps(stored)),
    )
    if changed:
        tx.after_commit.append(lambda: bus.publish(stored))
    return stored


def read_events(
    tx: Tx, event_filter: dict[str, Any], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Return up to ``limit`` stored events matching the filter, and how many match in all."""
    occurred = event_filter.get("occurred") or {}
    since = occurred.get("since")
    until = occurred.get("until")
    clauses, params = [], []
    if since:
        clauses.append("occurred >= ?")
        params.append(format_time(parse_datetime(since)))
    if until:
        clauses.append("occurred <= ?")
        params.append(format_time(parse_datetime(until)))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    order = "DESC" if event_filter.get("order", "DESC") == "DESC" else "ASC"
    rows = tx.all(f"SELECT body FROM events {where} ORDER BY occurred {order}, seq {order}", params)
    matched = [e for e in (loads(r["body"]) for r in rows) if event_matches(event_filter, e)]
    return matched[:limit], len(matched)


def validate_filter(raw: Any) -> dict[str, Any]:
    """Check an ``EventFilter`` enough to evaluate it safely.

    Raises:
        ValueError: the filter is not an object, has an unknown section, or a
            section of the wrong shape (what Prefect's ``EventFilter`` model refuses).
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("filter must be an object")
    known = {"occurred", "event", "resource", "related", "any_resource", "id", "text", "order"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown filter fields {sorted(unknown)}")
    for section, value in raw.items():
        if section == "order":
            if value not in (None, "ASC", "DESC"):
                raise ValueError("order must be 'ASC' or 'DESC'")
        elif value is not None and not isinstance(value, dict):
            raise ValueError(f"{section} must be an object")
    occurred = raw.get("occurred") or {}
    for key in ("since", "until"):
        if occurred.get(key) is not None:
            if not isinstance(occurred[key], str):
                raise ValueError(f"occurred.{key} must be a datetime")
            parse_datetime(occurred[key])
    for section in ("event", "resource", "related", "any_resource", "id"):
        for key, value in (raw.get(section) or {}).items():
            if key in _LIST_KEYS and value is not None and not _strings(value):
                raise ValueError(f"{section}.{key} must be a list of strings")
            if key == "labels" and value is not None and not _label_spec(value):
                raise ValueError(f"{section}.labels must map labels to strings or lists of them")
    query = (raw.get("text") or {}).get("query")
    if query is not None and not isinstance(query, str):
        raise ValueError("text.query must be a string")
    return raw


_LIST_KEYS: Final = frozenset(
    {"name", "prefix", "exclude_name", "exclude_prefix", "id", "id_prefix", "role"}
)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _label_spec(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, str) or _strings(v) for v in value.values()
    )


def _labels_match(resource: dict[str, str], section: dict[str, Any] | None) -> bool:
    if not section:
        return True
    rid = resource.get("prefect.resource.id", "")
    ids = section.get("id")
    if ids and rid not in ids:
        return False
    prefixes = section.get("id_prefix")
    if prefixes and not any(rid.startswith(p) for p in prefixes):
        return False
    role = section.get("role")
    if role and resource.get("prefect.resource.role") not in role:
        return False
    for label, values in (section.get("labels") or {}).items():
        wanted = values if isinstance(values, list) else [values]
        have = resource.get(label)
        positives = [v for v in wanted if not str(v).startswith("!")]
        if have is None or (positives and have not in positives):
            return False
        if any(have == str(v)[1:] for v in wanted if str(v).startswith("!")):
            return False
    return True


def event_matches(event_filter: dict[str, Any], event: dict[str, Any]) -> bool:
    """Evaluate Prefect's ``EventFilter`` (the parts clients use) against one event."""
    occurred = event_filter.get("occurred") or {}
    when = event["occurred"]
    if occurred.get("since") and when < format_time(parse_datetime(occurred["since"])):
        return False
    if occurred.get("until") and when > format_time(parse_datetime(occurred["until"])):
        return False
    names = event_filter.get("event") or {}
    name = event["event"]
    if names.get("name") and name not in names["name"]:
        return False
    if names.get("prefix") and not any(name.startswith(p) for p in names["prefix"]):
        return False
    if names.get("exclude_name") and name in names["exclude_name"]:
        return False
    if names.get("exclude_prefix") and any(name.startswith(p) for p in names["exclude_prefix"]):
        return False
    ids = (event_filter.get("id") or {}).get("id")
    if ids and event["id"] not in ids:
        return False
    if not _labels_match(event["resource"], event_filter.get("resource")):
        return False
    related = event_filter.get("related")
    if related and not any(_labels_match(r, related) for r in event["related"]):
        return False
    any_resource = event_filter.get("any_resource")
    if any_resource and not any(
        _labels_match(r, any_resource) for r in [event["resource"], *event["related"]]
    ):
        return False
    text = event_filter.get("text")
    return not (
        text
        and isinstance(text, dict)
        and text.get("query")
        and str(text["query"]).lower() not in dumps(event).lower()
    )


def flow_run_state_event(
    run: dict[str, Any],
    *,
    initial: dict[str, Any] | None,
    validated: dict[str, Any],
    related: list[dict[str, str]],
    at: datetime,
) -> dict[str, Any]:
    """Build the ``prefect.flow-run.<State name>`` event Prefect emits on a state change."""
    timestamp = validated["timestamp"]
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run['id']}",
        "prefect.resource.name": run["name"],
        "prefect.run-count": str(run["run_count"]),
        "prefect.state-message": validated.get("message") or "",
        "prefect.state-name": validated["name"],
        "prefect.state-timestamp": timestamp.replace("Z", "+00:00") if timestamp else "",
        "prefect.state-type": validated["type"],
    }
    payload: dict[str, Any] = {
        "intended": {"from": initial["type"] if initial else None, "to": validated["type"]},
        "initial_state": (
            {"type": initial["type"], "name": initial["name"], "message": initial.get("message")}
            if initial
            else None
        ),
        "validated_state": {
            "type": validated["type"],
            "name": validated["name"],
            "message": validated.get("message"),
        },
    }
    return {
        "occurred": format_time(at),
        "event": f"prefect.flow-run.{validated['name']}",
        "resource": resource,
        "related": related,
        "payload": payload,
        "id": new_id(),
        "follows": None,
    }
