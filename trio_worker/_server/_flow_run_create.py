"""Creating flow runs: from a flow (``POST /flow_runs/``) or a deployment.

A deployment's run takes its defaults (parameters, job variables checked
against the pool's schema, work queue, tags) before it is inserted; both
kinds honour an idempotency key and start with their first state written
through :mod:`._flow_run_states`, so the creation has its event like any
other state change.
"""

from __future__ import annotations

import random
from typing import Any, Final

from trio_worker._server._actions import (
    DeploymentFlowRunCreate,
    FlowRunCreate,
    StateCreate,
    value_or,
)
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    loads,
    new_id,
    now,
)
from trio_worker._server._deployments import INTEGRITY_CONFLICT, get_deployment_row, resolve_queue
from trio_worker._server._events import EventBus
from trio_worker._server._flow_run_states import write_state
from trio_worker._server._flow_runs import check_job_variables, read_flow_run, run_row
from trio_worker._server._orchestration import (
    build_state,
)
from trio_worker._server._schema_check import validate_parameters
from trio_worker._server._storage import Tx

__all__ = [
    "DEFAULT_FLOW_RUN_POLICY",
    "create_deployment_flow_run",
    "create_flow_run",
    "random_name",
]

_ADJECTIVES: Final = (
    "axiomatic", "brave", "calm", "daring", "eager", "fancy", "gentle", "happy", "icy",
    "jolly", "keen", "lively", "merry", "nimble", "olive", "proud", "quick", "rapid",
    "silent", "tidy", "witty", "zealous",
)  # fmt: skip
_ANIMALS: Final = (
    "wolf", "otter", "heron", "lynx", "panda", "python", "raven", "seal", "tiger", "yak",
    "badger", "crane", "dingo", "eagle", "ferret", "gecko", "hare", "ibis", "koala", "lemur",
)  # fmt: skip
DEFAULT_FLOW_RUN_POLICY: Final[dict[str, Any]] = {
    "max_retries": 0,
    "retry_delay_seconds": 0.0,
    "retries": None,
    "retry_delay": None,
    "pause_keys": [],
    "resuming": False,
    "retry_type": None,
}


def random_name() -> str:
    """Return a Prefect-style run name such as ``witty-python``."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_ANIMALS)}"


def _insert_run(
    tx: Tx, bus: EventBus, values: dict[str, Any], state: StateCreate | None, default_type: str
) -> tuple[dict[str, Any], bool]:
    key = values["idempotency_key"]
    if key is not None:
        existing = tx.one(
            "SELECT id FROM flow_runs WHERE flow_id = ? AND idempotency_key = ?",
            (values["flow_id"], key),
        )
        if existing is not None:
            return read_flow_run(tx, existing["id"]), False
    at = now()
    run_id = new_id()
    stamp = format_time(at)
    tx.insert("flow_runs", {**values, "id": run_id, "created": stamp, "updated": stamp})
    initial = build_state(
        state.type.value if state else default_type,
        name=value_or(state.name, None) if state else None,
        message=value_or(state.message, None) if state else None,
        data=value_or(state.data, None) if state else None,
        details=value_or(state.state_details, None) if state else None,
        timestamp=at, run_field="flow_run_id", run_id=run_id,
    )  # fmt: skip
    write_state(tx, bus, run_row(tx, run_id), None, initial, at)
    return read_flow_run(tx, run_id), True


def create_flow_run(tx: Tx, bus: EventBus, action: FlowRunCreate) -> tuple[dict[str, Any], bool]:
    """``POST /flow_runs/``: a run (PENDING unless a state is given); idempotent by key."""
    flow_id = str(action.flow_id)
    if tx.one("SELECT 1 FROM flows WHERE id = ?", (flow_id,)) is None:
        raise INTEGRITY_CONFLICT
    deployment_id = value_or(action.deployment_id, None)
    queue_id = resolve_queue(
        tx, value_or(action.work_pool_name, None), value_or(action.work_queue_name, None)
    )
    if deployment_id is not None and queue_id is None:
        deployment = tx.one(
            "SELECT work_queue_id FROM deployments WHERE id = ?", (str(deployment_id),)
        )
        queue_id = deployment["work_queue_id"] if deployment else None
    parent = value_or(action.parent_task_run_id, None)
    body = {
        "deployment_version": value_or(action.deployment_version, None),
        "flow_version": value_or(action.flow_version, None),
        "parameters": value_or(action.parameters, {}),
        "context": value_or(action.context, {}),
        "empirical_policy": {**DEFAULT_FLOW_RUN_POLICY, **value_or(action.empirical_policy, {})},
        "tags": value_or(action.tags, []),
        "labels": {"prefect.flow.id": flow_id, **(value_or(action.labels, None) or {})},
        "parent_task_run_id": str(parent) if parent else None,
        "infrastructure_document_id": None,
        "job_variables": value_or(action.job_variables, None) or {},
    }
    values = {
        "name": value_or(action.name, None) or random_name(),
        "flow_id": flow_id,
        "deployment_id": str(deployment_id) if deployment_id else None,
        "work_queue_id": queue_id,
        "idempotency_key": value_or(action.idempotency_key, None),
        "body": dumps(body),
    }
    state = value_or(action.state, None)
    return _insert_run(tx, bus, values, state, "PENDING")


def create_deployment_flow_run(
    tx: Tx, bus: EventBus, deployment_id: str, action: DeploymentFlowRunCreate
) -> tuple[dict[str, Any], bool]:
    """``POST /deployments/{id}/create_flow_run``: a SCHEDULED run with merged parameters."""
    deployment = get_deployment_row(tx, deployment_id)
    dep = loads(deployment["body"])
    parameters = {**dep.get("parameters", {}), **value_or(action.parameters, {})}
    enforce = value_or(action.enforce_parameter_schema, None)
    if enforce is None:
        enforce = dep.get("enforce_parameter_schema", True)
    if enforce and dep.get("parameter_openapi_schema"):
        problem = validate_parameters(parameters, dep["parameter_openapi_schema"])
        if problem is not None:
            raise APIProblem(409, {"detail": f"Error creating flow run: {problem}"})
    check_job_variables(tx, deployment, dep, action.job_variables, "creating")
    queue_id = deployment["work_queue_id"]
    queue_name = value_or(action.work_queue_name, None)
    if queue_name:
        queue_id = resolve_queue(tx, deployment["wp_name"], queue_name)
    tags = list(dict.fromkeys([*dep.get("tags", []), *value_or(action.tags, [])]))
    labels = {
        **dep.get("labels", {}),
        "prefect.deployment.id": deployment_id,
        **(value_or(action.labels, None) or {}),
    }
    parent = value_or(action.parent_task_run_id, None)
    body = {
        "deployment_version": dep.get("version"),
        "flow_version": None,
        "parameters": parameters,
        "context": value_or(action.context, {}),
        "empirical_policy": {**DEFAULT_FLOW_RUN_POLICY, **value_or(action.empirical_policy, {})},
        "tags": tags,
        "labels": labels,
        "parent_task_run_id": str(parent) if parent else None,
        "infrastructure_document_id": None,
        "job_variables": value_or(action.job_variables, None) or {},
    }
    values = {
        "name": value_or(action.name, None) or random_name(),
        "flow_id": deployment["flow_id"],
        "deployment_id": deployment_id,
        "work_queue_id": queue_id,
        "idempotency_key": value_or(action.idempotency_key, None),
        "body": dumps(body),
    }
    return _insert_run(tx, bus, values, value_or(action.state, None), "SCHEDULED")
