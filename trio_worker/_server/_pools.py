"""Work pools, work queues, worker heartbeats and ``get_scheduled_flow_runs``.

Every function takes the request's :class:`~trio_worker._server._storage.Tx`
and runs inside it; a refused request raises
:class:`~trio_worker._server._common.APIProblem`, which rolls everything back.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from typing import Any, Final

from trio_worker._server._actions import (
    GetScheduledFlowRuns,
    WorkerHeartbeat,
    WorkPoolCreate,
    WorkPoolUpdate,
    WorkQueueCreate,
    WorkQueueUpdate,
    value_or,
)
from trio_worker._server._common import (
    DEFAULT_LIMIT,
    APIProblem,
    dumps,
    format_time,
    new_id,
    not_found,
    now,
)
from trio_worker._server._filters import (
    POOL_SPEC,
    QUEUE_SPEC,
    WORKER_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._holders import check_held_ids, mark_held
from trio_worker._server._orchestration import ACTIVE
from trio_worker._server._records import (
    FLOW_RUN_SELECT,
    QUEUE_SELECT,
    flow_run_json,
    pool_json,
    queue_json,
    worker_json,
    worker_status,
)
from trio_worker._server._schema_check import job_variables_problem, schema_error
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = [
    "create_pool",
    "create_queue",
    "delete_pool",
    "filter_pools",
    "filter_queues",
    "filter_workers",
    "get_pool_row",
    "get_scheduled_flow_runs",
    "heartbeat",
    "read_pool",
    "read_queue",
    "update_pool",
    "update_queue",
]

DEFAULT_QUEUE_NAME: Final = "default"
_PLACEHOLDER: Final = re.compile(r"{{\s*([\w\.\-\[\]$]+)\s*}}")
_ACTIVE_SQL: Final = "(" + ", ".join(f"'{s}'" for s in ACTIVE) + ")"


def _pool_missing(name: str) -> APIProblem:
    return not_found(f'Work pool "{name}" not found.')


def get_pool_row(tx: Tx, name: str) -> sqlite3.Row:
    """Return the pool row named ``name``.

    Raises:
        APIProblem: 404 with Prefect's detail.
    """
    row = tx.one("SELECT * FROM work_pools WHERE name = ?", (name,))
    if row is None:
        raise _pool_missing(name)
    return row


def _pool_out(tx: Tx, row: sqlite3.Row, current: datetime) -> dict[str, Any]:
    workers = tx.all(
        "SELECT last_heartbeat_time, heartbeat_interval_seconds FROM workers "
        "WHERE work_pool_id = ?",
        (row["id"],),
    )
    online = any(worker_status(w[0], w[1], current) == "ONLINE" for w in workers)
    return pool_json(row, has_online_worker=online)


def _template_error(message: str, template: dict[str, Any], body: Any) -> APIProblem:
    """The 422 Prefect answers for a base job template it refuses."""
    problem = {
        "type": "value_error",
        "loc": ["body", "base_job_template"],
        "msg": f"Value error, {message}",
        "input": template,
    }
    return invalid([problem], body)


def _check_template(template: dict[str, Any], body: Any) -> None:
    if not template:
        return
    if "job_configuration" not in template or "variables" not in template:
        message = (
            "The `base_job_template` must contain both a `job_configuration` key "
            "and a `variables` key."
        )
        raise _template_error(message, template, body)
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for name in _PLACEHOLDER.findall(node):
                if not name.startswith(("prefect.", "$")):
                    used.add(name)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    configuration, variables = template["job_configuration"], template["variables"]
    if not isinstance(configuration, dict) or not isinstance(variables, dict):
        message = "The `job_configuration` and `variables` of a `base_job_template` are objects."
        raise _template_error(message, template, body)
    properties = variables.get("properties") or {}
    if not isinstance(properties, dict):
        message = "The `properties` of the `variables` schema must be an object."
        raise _template_error(message, template, body)
    walk(configuration)
    declared = set(properties)
    missing = used - declared
    if missing:
        message = (
            "The variables specified in the job configuration template must be present as "
            "properties in the variables schema. Your job configuration uses the following "
            f"undeclared variable(s): {', '.join(sorted(missing))}."
        )
        raise _template_error(message, template, body)
    reason = schema_error(variables)
    if reason is not None:
        raise APIProblem(422, {"detail": reason})
    problem = job_variables_problem(template, check_required=False, defaults_must_fit=True)
    if problem is not None:
        detail = f"Validation failed for work pool's job variable defaults: {problem}"
        raise APIProblem(422, {"detail": detail})


def _reserved(name: str) -> APIProblem:
    del name
    return APIProblem(
        403, {"detail": "Work pools starting with 'Prefect' are reserved for internal use."}
    )


def create_pool(tx: Tx, action: WorkPoolCreate, body: Any) -> dict[str, Any]:
    """Create a pool and its ``default`` queue; 409 if the name is taken."""
    if action.name.lower().startswith("prefect"):
        raise _reserved(action.name)
    template = value_or(action.base_job_template, {})
    _check_template(template, body)
    if tx.one("SELECT 1 FROM work_pools WHERE name = ?", (action.name,)):
        raise APIProblem(409, {"detail": "A work pool with this name already exists."})
    at = format_time(now())
    pool_id, queue_id = new_id(), new_id()
    storage = value_or(action.storage_configuration, None) or {}
    storage = {
        "bundle_upload_step": None,
        "bundle_execution_step": None,
        "default_result_storage_block_id": None,
        **storage,
    }
    tx.insert("work_pools", {
        "id": pool_id, "created": at, "updated": at, "name": action.name,
        "description": value_or(action.description, None),
        "type": value_or(action.type, "prefect-agent"),
        "base_job_template": dumps(template), "is_paused": int(value_or(action.is_paused, False)),
        "concurrency_limit": value_or(action.concurrency_limit, None),
        "default_queue_id": queue_id, "storage_configuration": dumps(storage),
    })  # fmt: skip
    tx.insert("work_queues", {
        "id": queue_id, "created": at, "updated": at, "work_pool_id": pool_id,
        "name": DEFAULT_QUEUE_NAME, "description": "The work pool's default queue.",
        "is_paused": 0, "concurrency_limit": None, "priority": 1, "last_polled": None,
    })  # fmt: skip
    return read_pool(tx, action.name)


def read_pool(tx: Tx, name: str) -> dict[str, Any]:
    """Return the pool named ``name``."""
    return _pool_out(tx, get_pool_row(tx, name), now())


def update_pool(tx: Tx, name: str, action: WorkPoolUpdate, body: Any) -> None:
    """Change only the fields the request sent."""
    row = get_pool_row(tx, name)
    values: dict[str, Any] = {}
    if action.description is not UNSET:
        values["description"] = action.description
    if action.is_paused is not UNSET and action.is_paused is not None:
        values["is_paused"] = int(action.is_paused)
    if action.base_job_template is not UNSET and action.base_job_template is not None:
        _check_template(action.base_job_template, body)
        values["base_job_template"] = dumps(action.base_job_template)
    if action.concurrency_limit is not UNSET:
        values["concurrency_limit"] = action.concurrency_limit
    if action.storage_configuration is not UNSET and action.storage_configuration is not None:
        values["storage_configuration"] = dumps(action.storage_configuration)
    if values:
        values["updated"] = format_time(now())
        tx.update("work_pools", row["id"], values)


def delete_pool(tx: Tx, name: str) -> None:
    """Delete a pool with its queues and workers."""
    row = get_pool_row(tx, name)
    tx.execute("DELETE FROM work_pools WHERE id = ?", (row["id"],))


def filter_pools(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /work_pools/filter``."""
    errors = FilterErrors()
    where, params = compile_filter(
        body.get("work_pools"), POOL_SPEC, ["body", "work_pools"], errors
    )
    limit, offset = page(body, errors)
    if errors:
        raise invalid(errors, body)
    rows = tx.all(
        f"SELECT * FROM work_pools wp WHERE {where} ORDER BY name LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    current = now()
    return [_pool_out(tx, row, current) for row in rows]


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
