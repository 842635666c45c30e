"""Work pools: create, read, update, delete, filter, and their base job templates.

Their queues are :mod:`._queues`'s; what workers ask of a pool (heartbeats,
``get_scheduled_flow_runs``) is :mod:`._pool_workers`'s.

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
    WorkPoolCreate,
    WorkPoolUpdate,
    value_or,
)
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    new_id,
    not_found,
    now,
)
from trio_worker._server._filters import (
    POOL_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._records import (
    pool_json,
    worker_status,
)
from trio_worker._server._schema_check import job_variables_problem, schema_error
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = [
    "DEFAULT_QUEUE_NAME",
    "create_pool",
    "delete_pool",
    "filter_pools",
    "get_pool_row",
    "read_pool",
    "update_pool",
]

DEFAULT_QUEUE_NAME: Final = "default"
_PLACEHOLDER: Final = re.compile(r"{{\s*([\w\.\-\[\]$]+)\s*}}")


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
