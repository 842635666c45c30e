"""Work queues of a pool: create, read, update and filter them.

Every function takes the request's :class:`~trio_worker._server._storage.Tx`;
a refused request raises :class:`~trio_worker._server._common.APIProblem`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from trio_worker._server._actions import (
    WorkQueueCreate,
    WorkQueueUpdate,
    value_or,
)
from trio_worker._server._common import (
    APIProblem,
    format_time,
    new_id,
    not_found,
    now,
)
from trio_worker._server._filters import (
    QUEUE_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._pools import get_pool_row
from trio_worker._server._records import (
    QUEUE_SELECT,
    queue_json,
)
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = ["create_queue", "filter_queues", "read_queue", "update_queue"]


def _queue_row(tx: Tx, pool_name: str, queue_name: str) -> sqlite3.Row:
    row = tx.one(f"{QUEUE_SELECT} WHERE wp.name = ? AND wq.name = ?", (pool_name, queue_name))
    if row is None:
        get_pool_row(tx, pool_name)
        raise not_found(f"Work pool queue '{pool_name}/{queue_name}' not found.")
    return row


def create_queue(tx: Tx, pool_name: str, action: WorkQueueCreate) -> dict[str, Any]:
    """Create a queue in a pool; priority defaults to after the last one."""
    pool = get_pool_row(tx, pool_name)
    if tx.one(
        "SELECT 1 FROM work_queues WHERE work_pool_id = ? AND name = ?", (pool["id"], action.name)
    ):
        raise APIProblem(409, {"detail": "A work queue with this name already exists."})
    priority = value_or(action.priority, None)
    if priority is None:
        highest = tx.scalar(
            "SELECT MAX(priority) FROM work_queues WHERE work_pool_id = ?", (pool["id"],)
        )
        priority = (highest or 0) + 1
    at = format_time(now())
    tx.insert("work_queues", {
        "id": new_id(), "created": at, "updated": at, "work_pool_id": pool["id"],
        "name": action.name, "description": value_or(action.description, None) or "",
        "is_paused": int(value_or(action.is_paused, False)),
        "concurrency_limit": value_or(action.concurrency_limit, None),
        "priority": priority, "last_polled": None,
    })  # fmt: skip
    return read_queue(tx, pool_name, action.name)


def read_queue(tx: Tx, pool_name: str, queue_name: str) -> dict[str, Any]:
    """Return one queue of a pool."""
    return queue_json(_queue_row(tx, pool_name, queue_name), now())


def update_queue(tx: Tx, pool_name: str, queue_name: str, action: WorkQueueUpdate) -> None:
    """Change only the fields the request sent."""
    row = _queue_row(tx, pool_name, queue_name)
    values: dict[str, Any] = {}
    for field in ("name", "description", "concurrency_limit", "priority"):
        value = getattr(action, field)
        if value is not UNSET and (value is not None or field == "concurrency_limit"):
            values[field] = value
    if action.is_paused is not UNSET and action.is_paused is not None:
        values["is_paused"] = int(action.is_paused)
    if values:
        values["updated"] = format_time(now())
        tx.update("work_queues", row["id"], values)


def filter_queues(tx: Tx, pool_name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /work_pools/{pool}/queues/filter``, ordered by priority."""
    pool = get_pool_row(tx, pool_name)
    errors = FilterErrors()
    where, params = compile_filter(
        body.get("work_queues"), QUEUE_SPEC, ["body", "work_queues"], errors
    )
    limit, offset = page(body, errors)
    if errors:
        raise invalid(errors, body)
    rows = tx.all(
        f"{QUEUE_SELECT} WHERE wq.work_pool_id = ? AND {where} "
        "ORDER BY wq.priority, wq.name LIMIT ? OFFSET ?",
        [pool["id"], *params, limit, offset],
    )
    current = now()
    return [queue_json(row, current) for row in rows]
