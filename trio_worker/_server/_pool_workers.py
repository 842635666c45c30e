"""What workers ask of a pool: heartbeats, the workers list, and the due runs.

``get_scheduled_flow_runs`` is the poll every worker makes: it offers SCHEDULED
runs queue by queue, within the pool's and queues' concurrency limits, without
claiming them (a worker claims a run by proposing PENDING). Every function takes
the request's :class:`~trio_worker._server._storage.Tx`.
"""

from __future__ import annotations

from typing import Any, Final

from trio_worker._server._actions import (
    GetScheduledFlowRuns,
    WorkerHeartbeat,
    value_or,
)
from trio_worker._server._common import (
    DEFAULT_LIMIT,
    APIProblem,
    format_time,
    new_id,
    not_found,
    now,
)
from trio_worker._server._filters import (
    WORKER_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._holders import check_held_ids, mark_held
from trio_worker._server._orchestration import ACTIVE
from trio_worker._server._pools import get_pool_row
from trio_worker._server._records import (
    FLOW_RUN_SELECT,
    flow_run_json,
    worker_json,
)
from trio_worker._server._storage import Tx

__all__ = ["filter_workers", "get_scheduled_flow_runs", "heartbeat"]

_ACTIVE_SQL: Final = "(" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"


def heartbeat(tx: Tx, pool_name: str, action: WorkerHeartbeat) -> None:
    """Record that the worker ``action.name`` of the pool is alive."""
    pool = get_pool_row(tx, pool_name)
    at = format_time(now())
    interval = value_or(action.heartbeat_interval_seconds, None)
    row = tx.one(
        "SELECT id, heartbeat_interval_seconds FROM workers WHERE work_pool_id = ? AND name = ?",
        (pool["id"], action.name),
    )
    if row is None:
        tx.insert("workers", {
            "id": new_id(), "created": at, "updated": at, "work_pool_id": pool["id"],
            "name": action.name, "last_heartbeat_time": at, "heartbeat_interval_seconds": interval,
        })  # fmt: skip
    else:
        values: dict[str, Any] = {"updated": at, "last_heartbeat_time": at}
        if interval is not None:
            values["heartbeat_interval_seconds"] = interval
        tx.update("workers", row["id"], values)
    held = value_or(action.flow_run_ids, None)
    if held:
        check_held_ids(held, "flow_run_ids")
        mark_held(tx, action.name, [str(run_id) for run_id in held], now())


def filter_workers(tx: Tx, pool_name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /work_pools/{pool}/workers/filter``, most recent heartbeat first."""
    pool = get_pool_row(tx, pool_name)
    errors = FilterErrors()
    where, params = compile_filter(body.get("workers"), WORKER_SPEC, ["body", "workers"], errors)
    limit, offset = page(body, errors)
    if errors:
        raise invalid(errors, body)
    rows = tx.all(
        f"SELECT * FROM workers w WHERE w.work_pool_id = ? AND {where} "
        "ORDER BY w.last_heartbeat_time DESC LIMIT ? OFFSET ?",
        [pool["id"], *params, limit, offset],
    )
    current = now()
    return [worker_json(row, current) for row in rows]


def _active_count(tx: Tx, where: str, params: list[Any]) -> int:
    return int(
        tx.scalar(
            f"SELECT COUNT(*) FROM flow_runs fr WHERE fr.state_type IN {_ACTIVE_SQL} AND {where}",
            params,
        )
    )


def get_scheduled_flow_runs(
    tx: Tx, pool_name: str, action: GetScheduledFlowRuns
) -> list[dict[str, Any]]:
    """Return SCHEDULED runs a worker of the pool may submit, without claiming them.

    Queues are visited in priority order; within a queue runs come by
    ``next_scheduled_start_time``. Paused pools and queues give nothing, and
    pool and queue concurrency limits cap how many runs are offered. The call
    marks the polled queues and their deployments as polled (READY).
    """
    pool = get_pool_row(tx, pool_name)
    limit = value_or(action.limit, None)
    if limit is None:
        limit = DEFAULT_LIMIT
    if limit > DEFAULT_LIMIT:
        raise APIProblem(
            422, {"detail": f"Invalid limit: must be less than or equal to {DEFAULT_LIMIT}."}
        )
    names = value_or(action.work_queue_names, None) or []
    queues = tx.all(
        "SELECT * FROM work_queues WHERE work_pool_id = ? ORDER BY priority, name", (pool["id"],)
    )
    if names:
        by_name = {q["name"]: q for q in queues}
        for name in names:
            if name not in by_name:
                raise not_found(f"Work pool queue '{pool_name}/{name}' not found.")
        queues = [q for q in queues if q["name"] in names]
    current = now()
    stamp = format_time(current)
    queue_ids = [q["id"] for q in queues]
    if queue_ids:
        marks = ", ".join("?" for _ in queue_ids)
        tx.execute(
            f"UPDATE work_queues SET last_polled = ? WHERE id IN ({marks})", [stamp, *queue_ids]
        )
        tx.execute(
            f"UPDATE deployments SET last_polled = ? WHERE work_queue_id IN ({marks})",
            [stamp, *queue_ids],
        )
    if pool["is_paused"]:
        return []
    remaining = limit
    if pool["concurrency_limit"] is not None:
        all_ids = tx.all("SELECT id FROM work_queues WHERE work_pool_id = ?", (pool["id"],))
        ids = [r[0] for r in all_ids]
        marks = ", ".join("?" for _ in ids) or "NULL"
        active = _active_count(tx, f"fr.work_queue_id IN ({marks})", ids)
        remaining = min(remaining, max(0, pool["concurrency_limit"] - active))
    clauses, params = ["fr.state_type = 'SCHEDULED'"], []
    before = value_or(action.scheduled_before, None)
    after = value_or(action.scheduled_after, None)
    if before is not None:
        clauses.append("fr.next_scheduled_start_time <= ?")
        params.append(format_time(before))
    if after is not None:
        clauses.append("fr.next_scheduled_start_time >= ?")
        params.append(format_time(after))
    clauses.append(
        "COALESCE(json_extract(fr.body, '$.empirical_policy.retry_type'), '') != 'in_process'"
    )
    result: list[dict[str, Any]] = []
    for queue in queues:
        if remaining <= 0:
            break
        if queue["is_paused"]:
            continue
        take = remaining
        if queue["concurrency_limit"] is not None:
            active = _active_count(tx, "fr.work_queue_id = ?", [queue["id"]])
            take = min(take, max(0, queue["concurrency_limit"] - active))
        if take <= 0:
            continue
        rows = tx.all(
            f"{FLOW_RUN_SELECT} WHERE fr.work_queue_id = ? AND {' AND '.join(clauses)} "
            "ORDER BY fr.next_scheduled_start_time LIMIT ?",
            [queue["id"], *params, take],
        )
        for row in rows:
            result.append({
                "work_pool_id": pool["id"],
                "work_queue_id": queue["id"],
                "flow_run": flow_run_json(row, current),
            })  # fmt: skip
        remaining -= len(rows)
    return result
