"""Flows and deployments: idempotent create, reads, filters, and ``create_flow_run``."""

from __future__ import annotations

import sqlite3
from typing import Any

from trio_worker._server._actions import DeploymentCreate, FlowCreate, value_or
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
    DEPLOYMENT_SPEC,
    FLOW_RUN_SPEC,
    FLOW_SPEC,
    POOL_SPEC,
    QUEUE_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._pools import get_pool_row
from trio_worker._server._records import DEPLOYMENT_SELECT, deployment_json, flow_json
from trio_worker._server._schema_check import job_variables_problem
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = [
    "create_deployment",
    "create_flow",
    "delete_deployment",
    "filter_deployments",
    "filter_flows",
    "get_deployment_row",
    "read_deployment",
    "read_deployment_by_name",
    "read_flow",
    "read_flow_by_name",
    "resolve_queue",
]

INTEGRITY_CONFLICT = APIProblem(
    409,
    {
        "detail": "Data integrity conflict. This usually means a unique or foreign key "
        "constraint was violated. See server logs for details."
    },
)


def create_flow(tx: Tx, action: FlowCreate) -> tuple[dict[str, Any], bool]:
    """Create a flow, or return the one with that name; the bool says "created"."""
    row = tx.one("SELECT * FROM flows WHERE name = ?", (action.name,))
    if row is not None:
        return flow_json(row), False
    at = format_time(now())
    flow_id = new_id()
    tx.insert("flows", {
        "id": flow_id, "created": at, "updated": at, "name": action.name,
        "tags": dumps(value_or(action.tags, [])),
        "labels": dumps(value_or(action.labels, None) or {}),
    })  # fmt: skip
    return read_flow(tx, flow_id), True


def read_flow(tx: Tx, flow_id: str) -> dict[str, Any]:
    """Return a flow by id; 404 ``Flow not found``."""
    row = tx.one("SELECT * FROM flows WHERE id = ?", (flow_id,))
    if row is None:
        raise not_found("Flow not found")
    return flow_json(row)


def read_flow_by_name(tx: Tx, name: str) -> dict[str, Any]:
    """Return a flow by name; 404 ``Flow not found``."""
    row = tx.one("SELECT * FROM flows WHERE name = ?", (name,))
    if row is None:
        raise not_found("Flow not found")
    return flow_json(row)


def filter_flows(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /flows/filter``: flows, optionally those having matching deployments or runs."""
    errors = FilterErrors()
    where, params = compile_filter(body.get("flows"), FLOW_SPEC, ["body", "flows"], errors)
    dep_where, dep_params = compile_filter(
        body.get("deployments"), DEPLOYMENT_SPEC, ["body", "deployments"], errors
    )
    run_where, run_params = compile_filter(
        body.get("flow_runs"), FLOW_RUN_SPEC, ["body", "flow_runs"], errors
    )
    limit, offset = page(body, errors)
    if errors:
        raise invalid(errors, body)
    clauses = [where]
    if body.get("deployments"):
        clauses.append(
            "EXISTS (SELECT 1 FROM deployments d LEFT JOIN work_queues wq"
            f" ON wq.id = d.work_queue_id WHERE d.flow_id = f.id AND {dep_where})"
        )
        params += dep_params
    if body.get("flow_runs"):
        clauses.append(
            "EXISTS (SELECT 1 FROM flow_runs fr LEFT JOIN work_queues wq"
            f" ON wq.id = fr.work_queue_id WHERE fr.flow_id = f.id AND {run_where})"
        )
        params += run_params
    order = "f.name DESC" if body.get("sort") == "NAME_DESC" else "f.name"
    rows = tx.all(
        f"SELECT * FROM flows f WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    return [flow_json(row) for row in rows]


def resolve_queue(tx: Tx, pool_name: str | None, queue_name: str | None) -> str | None:
    """Find (creating it if needed) the queue a deployment or run should use.

    A named pool without a queue name means the pool's default queue; no pool
    means no queue at all (the run is not for any worker).

    Raises:
        APIProblem: 404 for an unknown pool.
    """
    if not pool_name:
        return None
    pool = get_pool_row(tx, pool_name)
    if not queue_name:
        default_queue: str | None = pool["default_queue_id"]
        return default_queue
    row = tx.one(
        "SELECT id FROM work_queues WHERE work_pool_id = ? AND name = ?", (pool["id"], queue_name)
    )
    if row is not None:
        existing: str = row["id"]
        return existing
    at = format_time(now())
    queue_id = new_id()
    priority = (tx.scalar("SELECT MAX(priority) FROM work_queues WHERE work_pool_id = ?",
                          (pool["id"],)) or 0) + 1  # fmt: skip
    tx.insert("work_queues", {
        "id": queue_id, "created": at, "updated": at, "work_pool_id": pool["id"],
        "name": queue_name, "description": "", "is_paused": 0, "concurrency_limit": None,
        "priority": priority, "last_polled": None,
    })  # fmt: skip
    return queue_id


_BODY_FIELDS = (
    "version", "description", "paused", "schedules", "concurrency_options", "job_variables",
    "parameters", "tags", "labels", "parameter_openapi_schema", "path", "pull_steps",
    "entrypoint", "storage_document_id", "infrastructure_document_id",
    "enforce_parameter_schema", "version_info",
)  # fmt: skip

_BODY_DEFAULTS: dict[str, Any] = {
    "paused": False,
    "schedules": [],
    "job_variables": {},
    "parameters": {},
    "tags": [],
    "labels": {},
    "enforce_parameter_schema": True,
    "parameter_openapi_schema": {},
    "pull_steps": None,
}


def create_deployment(tx: Tx, action: DeploymentCreate) -> tuple[dict[str, Any], bool]:
    """Create or replace the deployment ``(flow_id, name)``; the bool says "created".

    Its job variables must fit its work pool's variables schema (required
    ones excepted: a flow run may still supply them), as Prefect's server checks.
    """
    flow_id = str(action.flow_id)
    if tx.one("SELECT 1 FROM flows WHERE id = ?", (flow_id,)) is None:
        raise INTEGRITY_CONFLICT
    pool_name = value_or(action.work_pool_name, None)
    job_variables = value_or(action.job_variables, None)
    if pool_name and job_variables:
        template = loads(get_pool_row(tx, pool_name)["base_job_template"])
        problem = job_variables_problem(template, job_variables, check_required=False)
        if problem is not None:
            raise APIProblem(422, {"detail": f"Error creating deployment: {problem}"})
    queue_id = resolve_queue(tx, pool_name, value_or(action.work_queue_name, None))
    body: dict[str, Any] = {}
    for field in _BODY_FIELDS:
        value = getattr(action, field)
        body[field] = _BODY_DEFAULTS.get(field) if value is UNSET else value
    if body["labels"] is None:
        body["labels"] = {}
    body["labels"] = {"prefect.flow.id": flow_id, **body["labels"]}
    for key in ("storage_document_id", "infrastructure_document_id"):
        if body[key] is not None:
            body[key] = str(body[key])
    at = format_time(now())
    existing = tx.one(
        "SELECT id FROM deployments WHERE flow_id = ? AND name = ?", (flow_id, action.name)
    )
    values = {
        "updated": at,
        "work_queue_id": queue_id,
        "concurrency_limit": value_or(action.concurrency_limit, None),
        "body": dumps(body),
    }
    if existing is not None:
        tx.update("deployments", existing["id"], values)
        return read_deployment(tx, existing["id"]), False
    deployment_id = new_id()
    tx.insert("deployments", {
        "id": deployment_id, "created": at, "flow_id": flow_id, "name": action.name,
        "last_polled": None, **values,
    })  # fmt: skip
    return read_deployment(tx, deployment_id), True


def get_deployment_row(tx: Tx, deployment_id: str) -> sqlite3.Row:
    """Return a deployment row; 404 ``Deployment not found``."""
    row = tx.one(f"{DEPLOYMENT_SELECT} WHERE d.id = ?", (deployment_id,))
    if row is None:
        raise not_found("Deployment not found")
    return row


def read_deployment(tx: Tx, deployment_id: str) -> dict[str, Any]:
    """Return a deployment by id."""
    return deployment_json(get_deployment_row(tx, deployment_id), now())


def read_deployment_by_name(tx: Tx, flow_name: str, name: str) -> dict[str, Any]:
    """Return the deployment ``flow_name/name``."""
    row = tx.one(
        f"{DEPLOYMENT_SELECT} JOIN flows f ON f.id = d.flow_id WHERE f.name = ? AND d.name = ?",
        (flow_name, name),
    )
    if row is None:
        raise not_found("Deployment not found")
    return deployment_json(row, now())


def delete_deployment(tx: Tx, deployment_id: str) -> None:
    """Delete a deployment (its runs stay, as in Prefect)."""
    if not tx.execute("DELETE FROM deployments WHERE id = ?", (deployment_id,)):
        raise not_found("Deployment not found")


def filter_deployments(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /deployments/filter``."""
    errors = FilterErrors()
    parts = [
        compile_filter(body.get("deployments"), DEPLOYMENT_SPEC, ["body", "deployments"], errors),
        compile_filter(body.get("work_pools"), POOL_SPEC, ["body", "work_pools"], errors),
        compile_filter(
            body.get("work_pool_queues"), QUEUE_SPEC, ["body", "work_pool_queues"], errors
        ),
    ]
    flow_where, flow_params = compile_filter(
        body.get("flows"), FLOW_SPEC, ["body", "flows"], errors
    )
    limit, offset = page(body, errors)
    if errors:
        raise invalid(errors, body)
    clauses = [p[0] for p in parts]
    params = [v for p in parts for v in p[1]]
    clauses.append(f"d.flow_id IN (SELECT f.id FROM flows f WHERE {flow_where})")
    params += flow_params
    order = "d.name DESC" if body.get("sort") == "NAME_DESC" else "d.name"
    rows = tx.all(
        f"{DEPLOYMENT_SELECT} WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    current = now()
    return [deployment_json(row, current) for row in rows]
