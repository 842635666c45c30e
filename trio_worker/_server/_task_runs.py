"""Task runs: create (``task.delay()``), read, delete, filter, state changes.

A task run created or moved into SCHEDULED with ``state_details.deferred``
becomes waiting work for the task-run subscription (see ``_task_queue``): the
``deferred`` and ``delivered`` columns are what that queue reads.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Final

from trio_worker._server._actions import StateCreate, TaskRunCreate, value_or
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    loads,
    new_id,
    not_found,
    now,
    parse_time,
)
from trio_worker._server._filters import (
    FLOW_RUN_SPEC,
    TASK_RUN_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._flow_run_states import state_columns
from trio_worker._server._orchestration import (
    TERMINAL,
    RunFacts,
    build_state,
    decide,
    result_json,
)
from trio_worker._server._records import task_run_json
from trio_worker._server._storage import Tx
from trio_worker._server._task_queue import TaskQueue

__all__ = [
    "apply_client_state",
    "create_task_run",
    "delete_task_run",
    "filter_task_runs",
    "read_task_run",
    "set_task_run_state",
    "write_rule_state",
]

DEFAULT_TASK_RUN_POLICY: Final = {
    "max_retries": 0,
    "retry_delay_seconds": 0.0,
    "retries": 0,
    "retry_delay": 0,
    "retry_jitter_factor": None,
}
_SORTS: Final = {
    "ID_DESC": "tr.id DESC",
    "EXPECTED_START_TIME_ASC": "tr.expected_start_time ASC, tr.id",
    "EXPECTED_START_TIME_DESC": "tr.expected_start_time DESC, tr.id DESC",
    "NAME_ASC": "tr.name ASC",
    "NAME_DESC": "tr.name DESC",
    "NEXT_SCHEDULED_START_TIME_ASC": "tr.next_scheduled_start_time ASC, tr.id",
    "END_TIME_DESC": "tr.end_time DESC, tr.id DESC",
}


def _row(tx: Tx, run_id: str) -> sqlite3.Row:
    row = tx.one("SELECT * FROM task_runs WHERE id = ?", (run_id,))
    if row is None:
        raise not_found("Task not found")
    return row


def read_task_run(tx: Tx, run_id: str) -> dict[str, Any]:
    """Return a task run; 404 ``Task not found``."""
    return task_run_json(_row(tx, run_id))


def _write_state(
    tx: Tx, queue: TaskQueue, row: sqlite3.Row, state: dict[str, Any], at: datetime
) -> None:
    values = state_columns(row, state, at)
    if state["type"] == "SCHEDULED" or state["type"] in TERMINAL:
        values.update(lease_holder=None, lease_expires=None)  # the lease ends with the run
    deferred = bool(state["state_details"].get("deferred"))
    if state["type"] == "SCHEDULED":
        values["deferred"] = int(deferred)
        values["delivered"] = 0
        if deferred:
            tx.after_commit.append(queue.notify)
    tx.update("task_runs", row["id"], values)
    tx.execute(
        "INSERT INTO task_run_states (id, task_run_id, timestamp, body) VALUES (?, ?, ?, ?)",
        (state["id"], row["id"], state["timestamp"], dumps(state)),
    )


def write_rule_state(tx: Tx, queue: TaskQueue, row: sqlite3.Row, state: dict[str, Any]) -> None:
    """Write a state the API's own rules chose (``_liveness``); ``row`` is a ``task_runs`` row."""
    at = parse_time(state["timestamp"])
    _write_state(tx, queue, row, state, at)


def create_task_run(tx: Tx, queue: TaskQueue, action: TaskRunCreate) -> tuple[dict[str, Any], bool]:
    """``POST /task_runs/``: a run (PENDING unless a state is given); the bool says "created"."""
    flow_run_id = value_or(action.flow_run_id, None)
    if flow_run_id is not None:
        existing = tx.one(
            "SELECT id FROM task_runs WHERE flow_run_id = ? AND task_key = ? AND dynamic_key = ?",
            (str(flow_run_id), action.task_key, action.dynamic_key),
        )
        if existing is not None:
            return read_task_run(tx, existing["id"]), False
    at = now()
    stamp = format_time(at)
    requested_id = value_or(action.id, None)
    run_id = str(requested_id) if requested_id else new_id()
    if tx.one("SELECT 1 FROM task_runs WHERE id = ?", (run_id,)):
        return read_task_run(tx, run_id), False
    expiration = value_or(action.cache_expiration, None)
    body = {
        "cache_key": value_or(action.cache_key, None),
        "cache_expiration": format_time(expiration) if expiration else None,
        "task_version": value_or(action.task_version, None),
        "empirical_policy": {**DEFAULT_TASK_RUN_POLICY, **value_or(action.empirical_policy, {})},
        "tags": value_or(action.tags, []),
        "labels": value_or(action.labels, None) or {},
        "task_inputs": value_or(action.task_inputs, {}),
        "flow_run_run_count": 0,
    }
    tx.insert("task_runs", {
        "id": run_id, "created": stamp, "updated": stamp,
        "name": value_or(action.name, None) or action.task_key,
        "flow_run_id": str(flow_run_id) if flow_run_id else None,
        "task_key": action.task_key, "dynamic_key": action.dynamic_key, "body": dumps(body),
    })  # fmt: skip
    proposal = value_or(action.state, None)
    state = build_state(
        proposal.type.value if proposal else "PENDING",
        name=value_or(proposal.name, None) if proposal else None,
        message=value_or(proposal.message, None) if proposal else None,
        data=value_or(proposal.data, None) if proposal else None,
        details=value_or(proposal.state_details, None) if proposal else None,
        timestamp=at, run_field="task_run_id", run_id=run_id,
    )  # fmt: skip
    _write_state(tx, queue, _row(tx, run_id), state, at)
    return read_task_run(tx, run_id), True


def delete_task_run(tx: Tx, run_id: str) -> None:
    """Delete a task run; 404 ``Task not found`` the second time."""
    if not tx.execute("DELETE FROM task_runs WHERE id = ?", (run_id,)):
        raise not_found("Task not found")
    tx.execute("DELETE FROM task_run_states WHERE task_run_id = ?", (run_id,))


def set_task_run_state(
    tx: Tx, queue: TaskQueue, run_id: str, proposal: StateCreate, *, force: bool
) -> tuple[dict[str, Any], int]:
    """Orchestrate a task run state; same results and status codes as for flow runs."""
    row = tx.one("SELECT * FROM task_runs WHERE id = ?", (run_id,))
    if row is None:
        raise APIProblem(404, {"exception_message": f"Task run with id {run_id} not found"})
    at = now()
    current = loads(row["state"]) if row["state"] else None
    proposed = build_state(
        proposal.type.value,
        name=value_or(proposal.name, None), message=value_or(proposal.message, None),
        data=value_or(proposal.data, None), details=value_or(proposal.state_details, None),
        timestamp=at, run_field="task_run_id", run_id=run_id,
    )  # fmt: skip
    decision = decide(RunFacts(state=current), proposed, force=force, at=at)
    if decision.new_state is None:
        return result_json(decision, current), 200
    _write_state(tx, queue, row, decision.new_state, at)
    return result_json(decision, decision.new_state), 201


def apply_client_state(tx: Tx, queue: TaskQueue, event: dict[str, Any]) -> None:
    """Apply a client-orchestrated ``prefect.task-run.*`` event to the task run it names.

    Prefect 3 task workers report task-run states as events (resource label
    ``prefect.orchestration = client``) rather than via ``set_state``; like
    Prefect's task-run recorder this writes the event's validated state.
    Unknown runs and events without a validated state are ignored.
    """
    resource = event["resource"]
    resource_id = resource.get("prefect.resource.id", "")
    validated = (event.get("payload") or {}).get("validated_state")
    if not resource_id.startswith("prefect.task-run.") or not isinstance(validated, dict):
        return
    row = tx.one(
        "SELECT * FROM task_runs WHERE id = ?", (resource_id.removeprefix("prefect.task-run."),)
    )
    if row is None or validated.get("type") not in (
        "SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED",
        "PAUSED", "CANCELLING",
    ):  # fmt: skip
        return
    at = parse_time(event["occurred"])
    current = loads(row["state"]) if row["state"] else {}
    stamp = parse_time(current.get("timestamp"))
    if stamp is not None and stamp > at:
        return  # an older event arriving late: the run has moved on (Prefect's recorder agrees)
    if row["lease_lapses"] and _run_count(resource) <= row["lapsed_run_count"]:
        # From a task worker whose lease lapsed (its run count is from before
        # the lapse): the run was taken back, and its late report must not win.
        return
    state = build_state(
        validated["type"], name=validated.get("name"), message=validated.get("message"),
        data=validated.get("data"), details=validated.get("state_details"),
        timestamp=at, run_field="task_run_id", run_id=row["id"],
    )  # fmt: skip
    _write_state(tx, queue, row, state, at)


def _run_count(resource: dict[str, Any]) -> int:
    try:
        return int(resource.get("prefect.run-count", 0))
    except (TypeError, ValueError):
        return 0


def filter_task_runs(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /task_runs/filter``."""
    errors = FilterErrors()
    where, params = compile_filter(
        body.get("task_runs"), TASK_RUN_SPEC, ["body", "task_runs"], errors
    )
    if body.get("flow_runs"):
        run_where, run_params = compile_filter(
            body["flow_runs"], FLOW_RUN_SPEC, ["body", "flow_runs"], errors
        )
        where += (
            " AND tr.flow_run_id IN (SELECT fr.id FROM flow_runs fr LEFT JOIN work_queues wq "
            f"ON wq.id = fr.work_queue_id WHERE {run_where})"
        )
        params += run_params
    limit, offset = page(body, errors)
    sort = body.get("sort") or "ID_DESC"
    if not isinstance(sort, str) or sort not in _SORTS:
        errors.add(["body", "sort"], "enum", f"Input should be one of {', '.join(_SORTS)}", sort)
    if errors:
        raise invalid(errors, body)
    rows = tx.all(
        f"SELECT * FROM task_runs tr WHERE {where} ORDER BY {_SORTS[sort]} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    current = now()
    return [task_run_json(row, current) for row in rows]
