"""Logs (batch create, filter) and variables (create, read, update, delete, filter)."""

from __future__ import annotations

import sqlite3
from typing import Any

from trio_worker._server._actions import LogCreate, VariableCreate, VariableUpdate, value_or
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    loads,
    new_id,
    not_found,
    now,
)
from trio_worker._server._filters import (
    LOG_SPEC,
    VARIABLE_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._records import variable_json
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = [
    "create_logs",
    "create_variable",
    "delete_variable",
    "filter_logs",
    "filter_variables",
    "read_variable",
    "update_variable",
]


def create_logs(tx: Tx, logs: list[LogCreate]) -> None:
    """Store a batch of log lines; unknown run ids are accepted, as by Prefect."""
    stamp = format_time(now())
    rows = []
    for log in logs:
        flow_run_id = value_or(log.flow_run_id, None)
        task_run_id = value_or(log.task_run_id, None)
        entry = {
            "name": log.name,
            "level": log.level,
            "message": log.message,
            "timestamp": format_time(log.timestamp),
            "flow_run_id": str(flow_run_id) if flow_run_id else None,
            "task_run_id": str(task_run_id) if task_run_id else None,
        }
        rows.append((new_id(), stamp, entry["flow_run_id"], entry["task_run_id"],
                     entry["timestamp"], log.level, dumps(entry)))  # fmt: skip
    tx.executemany(
        "INSERT INTO logs (id, created, flow_run_id, task_run_id, timestamp, level, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def filter_logs(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /logs/filter``, oldest first unless ``sort`` is ``TIMESTAMP_DESC``."""
    errors = FilterErrors()
    where, params = compile_filter(body.get("logs"), LOG_SPEC, ["body", "logs"], errors)
    limit, offset = page(body, errors)
    sort = body.get("sort") or "TIMESTAMP_ASC"
    if sort not in ("TIMESTAMP_ASC", "TIMESTAMP_DESC"):
        errors.add(["body", "sort"], "enum", "Input should be 'TIMESTAMP_ASC' or 'TIMESTAMP_DESC'",
                   sort)  # fmt: skip
    if errors:
        raise invalid(errors, body)
    order = "DESC" if sort == "TIMESTAMP_DESC" else "ASC"
    rows = tx.all(
        f"SELECT id, created, body FROM logs l WHERE {where} "
        f"ORDER BY l.timestamp {order}, l.rowid {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return [
        {"id": r["id"], "created": r["created"], "updated": r["created"], **loads(r["body"])}
        for r in rows
    ]


def _variable_row(tx: Tx, *, name: str | None = None, var_id: str | None = None) -> sqlite3.Row:
    if name is not None:
        row = tx.one("SELECT * FROM variables WHERE name = ?", (name,))
    else:
        row = tx.one("SELECT * FROM variables WHERE id = ?", (var_id,))
    if row is None:
        raise not_found("Variable not found.")
    return row


def create_variable(tx: Tx, action: VariableCreate) -> dict[str, Any]:
    """Create a variable; 409 when the name is taken."""
    if tx.one("SELECT 1 FROM variables WHERE name = ?", (action.name,)):
        raise APIProblem(
            409, {"detail": f"A variable with the name {action.name!r} already exists."}
        )
    stamp = format_time(now())
    var_id = new_id()
    tx.insert("variables", {
        "id": var_id, "created": stamp, "updated": stamp, "name": action.name,
        "value": dumps(value_or(action.value, None)), "tags": dumps(value_or(action.tags, [])),
    })  # fmt: skip
    return variable_json(_variable_row(tx, var_id=var_id))


def read_variable(tx: Tx, *, name: str | None = None, var_id: str | None = None) -> dict[str, Any]:
    """Return a variable by name or id; 404 ``Variable not found.``."""
    return variable_json(_variable_row(tx, name=name, var_id=var_id))


def update_variable(
    tx: Tx, action: VariableUpdate, *, name: str | None = None, var_id: str | None = None
) -> None:
    """Change the sent fields of a variable."""
    row = _variable_row(tx, name=name, var_id=var_id)
    values: dict[str, Any] = {}
    if action.name is not UNSET:
        clash = tx.one("SELECT id FROM variables WHERE name = ?", (action.name,))
        if clash is not None and clash["id"] != row["id"]:
            raise APIProblem(
                409, {"detail": f"A variable with the name {action.name!r} already exists."}
            )
        values["name"] = action.name
    if action.value is not UNSET:
        values["value"] = dumps(action.value)
    if action.tags is not UNSET:
        values["tags"] = dumps(action.tags)
    values["updated"] = format_time(now())
    tx.update("variables", row["id"], values)


def delete_variable(tx: Tx, *, name: str | None = None, var_id: str | None = None) -> None:
    """Delete a variable."""
    row = _variable_row(tx, name=name, var_id=var_id)
    tx.execute("DELETE FROM variables WHERE id = ?", (row["id"],))


def filter_variables(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /variables/filter``, by name."""
    errors = FilterErrors()
    where, params = compile_filter(
        body.get("variables"), VARIABLE_SPEC, ["body", "variables"], errors
    )
    limit, offset = page(body, errors)
    if errors:
        raise invalid(errors, body)
    rows = tx.all(
        f"SELECT * FROM variables v WHERE {where} ORDER BY v.name LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return [variable_json(row) for row in rows]
