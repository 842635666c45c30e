"""Turn stored rows into the JSON objects Prefect answers with.

Every response shape lives here, next to the SELECTs that feed it, so a field
Prefect adds is added in one place. Shapes follow the captures in
``prefect-api-subset.md``: every documented field is present (clients ignore
extras, but a missing one breaks them), times end in ``Z``.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Any, Final

from trio_worker._server._common import format_time, loads, now, parse_time

__all__ = [
    "DEPLOYMENT_SELECT",
    "FLOW_RUN_SELECT",
    "QUEUE_SELECT",
    "STATE_NAMES",
    "default_state_details",
    "deployment_json",
    "flow_json",
    "flow_run_json",
    "pool_json",
    "queue_json",
    "task_run_json",
    "variable_json",
    "worker_json",
    "worker_status",
]

STATE_NAMES: Final = {
    "SCHEDULED": "Scheduled",
    "PENDING": "Pending",
    "RUNNING": "Running",
    "COMPLETED": "Completed",
    "FAILED": "Failed",
    "CANCELLED": "Cancelled",
    "CRASHED": "Crashed",
    "PAUSED": "Paused",
    "CANCELLING": "Cancelling",
}
"""The default state name of each state type."""

READY_WINDOW: Final = timedelta(seconds=60)
_CENTURY_SECONDS: Final = 100 * 366 * 24 * 3600
"""A queue or deployment polled within this window reports ``READY`` (Prefect's default)."""

FLOW_RUN_SELECT: Final = (
    "SELECT fr.*, wq.name AS wq_name, wp.id AS wp_id, wp.name AS wp_name "
    "FROM flow_runs fr LEFT JOIN work_queues wq ON wq.id = fr.work_queue_id "
    "LEFT JOIN work_pools wp ON wp.id = wq.work_pool_id"
)
DEPLOYMENT_SELECT: Final = (
    "SELECT d.*, wq.name AS wq_name, wp.name AS wp_name "
    "FROM deployments d LEFT JOIN work_queues wq ON wq.id = d.work_queue_id "
    "LEFT JOIN work_pools wp ON wp.id = wq.work_pool_id"
)
QUEUE_SELECT: Final = (
    "SELECT wq.*, wp.name AS wp_name FROM work_queues wq "
    "JOIN work_pools wp ON wp.id = wq.work_pool_id"
)


def default_state_details() -> dict[str, Any]:
    """Return every ``state_details`` key Prefect emits, all unset."""
    return {
        "flow_run_id": None,
        "task_run_id": None,
        "child_flow_run_id": None,
        "scheduled_time": None,
        "cache_key": None,
        "cache_expiration": None,
        "deferred": None,
        "untrackable_result": False,
        "pause_timeout": None,
        "pause_reschedule": False,
        "pause_key": None,
        "run_input_keyset": None,
        "refresh_cache": None,
        "retriable": None,
        "transition_id": None,
        "task_parameters_id": None,
        "traceparent": None,
        "deployment_concurrency_lease_id": None,
    }


def _ready(last_polled: str | None, current: datetime) -> bool:
    polled = parse_time(last_polled)
    return polled is not None and current - polled <= READY_WINDOW


def flow_json(row: sqlite3.Row) -> dict[str, Any]:
    """Build a ``Flow``."""
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "tags": loads(row["tags"]),
        "labels": loads(row["labels"]),
    }


def worker_status(last_heartbeat: str, interval: int | None, current: datetime) -> str:
    """``ONLINE`` unless more than three heartbeat intervals went by without one."""
    seen = parse_time(last_heartbeat)
    # A client may send any interval; beyond a century is "never offline" all the same.
    window = timedelta(seconds=3 * max(0, min(interval or 30, _CENTURY_SECONDS)))
    return "ONLINE" if seen is not None and current - seen <= window else "OFFLINE"


def worker_json(row: sqlite3.Row, current: datetime) -> dict[str, Any]:
    """Build a ``WorkerResponse``."""
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "work_pool_id": row["work_pool_id"],
        "last_heartbeat_time": row["last_heartbeat_time"],
        "heartbeat_interval_seconds": row["heartbeat_interval_seconds"],
        "status": worker_status(
            row["last_heartbeat_time"], row["heartbeat_interval_seconds"], current
        ),
    }


def pool_json(row: sqlite3.Row, *, has_online_worker: bool) -> dict[str, Any]:
    """Build a ``WorkPool``; ``status`` is derived, as Prefect's effectively is."""
    status = "READY" if has_online_worker else "NOT_READY"
    if row["is_paused"]:
        status = "PAUSED"
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "description": row["description"],
        "type": row["type"],
        "base_job_template": loads(row["base_job_template"]),
        "is_paused": bool(row["is_paused"]),
        "concurrency_limit": row["concurrency_limit"],
        "status": status,
        "default_queue_id": row["default_queue_id"],
        "storage_configuration": loads(row["storage_configuration"]),
        "active_slots": None,
    }


def queue_json(row: sqlite3.Row, current: datetime) -> dict[str, Any]:
    """Build a ``WorkQueueResponse`` from a :data:`QUEUE_SELECT` row."""
    if row["is_paused"]:
        status = "PAUSED"
    else:
        status = "READY" if _ready(row["last_polled"], current) else "NOT_READY"
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "description": row["description"],
        "is_paused": bool(row["is_paused"]),
        "concurrency_limit": row["concurrency_limit"],
        "priority": row["priority"],
        "work_pool_id": row["work_pool_id"],
        "last_polled": row["last_polled"],
        "work_pool_name": row["wp_name"],
        "status": status,
    }


def deployment_json(row: sqlite3.Row, current: datetime) -> dict[str, Any]:
    """Build a ``DeploymentResponse`` from a :data:`DEPLOYMENT_SELECT` row."""
    body = loads(row["body"])
    result: dict[str, Any] = {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "version": body.get("version"),
        "version_id": None,
        "version_info": body.get("version_info"),
        "branch": None,
        "base": None,
        "root": None,
        "description": body.get("description"),
        "flow_id": row["flow_id"],
        "paused": body.get("paused", False),
        "schedules": body.get("schedules", []),
        "concurrency_limit": row["concurrency_limit"],
        "global_concurrency_limit": None,
        "concurrency_options": body.get("concurrency_options"),
        "job_variables": body.get("job_variables", {}),
        "parameters": body.get("parameters", {}),
        "tags": body.get("tags", []),
        "labels": body.get("labels", {}),
        "work_queue_name": row["wq_name"],
        "work_queue_id": row["work_queue_id"],
        "last_polled": row["last_polled"],
        "parameter_openapi_schema": body.get("parameter_openapi_schema"),
        "path": body.get("path"),
        "pull_steps": body.get("pull_steps"),
        "entrypoint": body.get("entrypoint"),
        "storage_document_id": body.get("storage_document_id"),
        "infrastructure_document_id": body.get("infrastructure_document_id"),
        "created_by": None,
        "updated_by": None,
        "work_pool_name": row["wp_name"],
        "status": "READY" if _ready(row["last_polled"], current) else "NOT_READY",
        "enforce_parameter_schema": body.get("enforce_parameter_schema", True),
    }
    return result


def _run_times(row: sqlite3.Row, current: datetime) -> tuple[float, float]:
    """Return ``(estimated_run_time, estimated_start_time_delta)`` in seconds."""
    run_time = float(row["total_run_time"])
    start = parse_time(row["start_time"])
    if row["state_type"] == "RUNNING" and start is not None:
        run_time += (current - start).total_seconds()
    expected = parse_time(row["expected_start_time"])
    delta = 0.0
    if expected is not None:
        if start is not None:
            delta = max(0.0, (start - expected).total_seconds())
        elif row["state_type"] in ("SCHEDULED", "PENDING") and expected < current:
            delta = (current - expected).total_seconds()
    return run_time, delta


def flow_run_json(row: sqlite3.Row, current: datetime | None = None) -> dict[str, Any]:
    """Build a ``FlowRun`` from a :data:`FLOW_RUN_SELECT` row."""
    current = current or now()
    body = loads(row["body"])
    run_time, delta = _run_times(row, current)
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "flow_id": row["flow_id"],
        "state_id": row["state_id"],
        "deployment_id": row["deployment_id"],
        "deployment_version": body.get("deployment_version"),
        "work_queue_id": row["work_queue_id"],
        "work_queue_name": row["wq_name"],
        "flow_version": body.get("flow_version"),
        "parameters": body.get("parameters", {}),
        "idempotency_key": row["idempotency_key"],
        "context": body.get("context", {}),
        "empirical_policy": body.get("empirical_policy", {}),
        "tags": body.get("tags", []),
        "labels": body.get("labels", {}),
        "parent_task_run_id": body.get("parent_task_run_id"),
        "state_type": row["state_type"],
        "state_name": row["state_name"],
        "run_count": row["run_count"],
        "expected_start_time": row["expected_start_time"],
        "next_scheduled_start_time": row["next_scheduled_start_time"],
        "start_time": row["start_time"],
        "end_time": row["end_time"],
        "total_run_time": float(row["total_run_time"]),
        "estimated_run_time": run_time,
        "estimated_start_time_delta": delta,
        "auto_scheduled": body.get("auto_scheduled", False),
        "infrastructure_document_id": body.get("infrastructure_document_id"),
        "infrastructure_pid": row["infrastructure_pid"],
        "created_by": None,
        "work_pool_id": row["wp_id"],
        "work_pool_name": row["wp_name"],
        "state": loads(row["state"]) if row["state"] else None,
        "job_variables": body.get("job_variables", {}),
    }


def task_run_json(row: sqlite3.Row, current: datetime | None = None) -> dict[str, Any]:
    """Build a ``TaskRun``."""
    current = current or now()
    body = loads(row["body"])
    run_time, delta = _run_times(row, current)
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "flow_run_id": row["flow_run_id"],
        "task_key": row["task_key"],
        "dynamic_key": row["dynamic_key"],
        "cache_key": body.get("cache_key"),
        "cache_expiration": body.get("cache_expiration"),
        "task_version": body.get("task_version"),
        "empirical_policy": body.get("empirical_policy", {}),
        "tags": body.get("tags", []),
        "labels": body.get("labels", {}),
        "state_id": row["state_id"],
        "task_inputs": body.get("task_inputs", {}),
        "state_type": row["state_type"],
        "state_name": row["state_name"],
        "run_count": row["run_count"],
        "flow_run_run_count": body.get("flow_run_run_count", 0),
        "expected_start_time": row["expected_start_time"],
        "next_scheduled_start_time": row["next_scheduled_start_time"],
        "start_time": row["start_time"],
        "end_time": row["end_time"],
        "total_run_time": float(row["total_run_time"]),
        "estimated_run_time": run_time,
        "estimated_start_time_delta": delta,
        "state": loads(row["state"]) if row["state"] else None,
    }


def variable_json(row: sqlite3.Row) -> dict[str, Any]:
    """Build a ``Variable``."""
    return {
        "id": row["id"],
        "created": row["created"],
        "updated": row["updated"],
        "name": row["name"],
        "value": loads(row["value"]),
        "tags": loads(row["tags"]),
    }


iso = format_time
"""Alias of :func:`format_time` for response building."""
