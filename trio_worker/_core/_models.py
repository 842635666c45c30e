"""attrs models of the API objects the worker reads and writes.

Attribute names are Prefect's JSON field names, so a model is the JSON a
Prefect 3 server sends, typed. Fields the worker does not use are not
modelled: the converter ignores them, since servers add fields over time.
Models do no I/O and never import the converter; see ``_converter.py``.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import attrs

__all__ = [
    "TERMINAL_STATE_TYPES",
    "Deployment",
    "Event",
    "Flow",
    "FlowRun",
    "Log",
    "OrchestrationResult",
    "SetStateStatus",
    "State",
    "StateDetails",
    "StateType",
    "TaskRun",
    "Variable",
    "WorkPool",
    "WorkQueue",
    "Worker",
    "WorkerFlowRunResponse",
    "now",
]


def now() -> dt.datetime:
    """Return the current time, timezone-aware in UTC (the API never sees a naive datetime)."""
    return dt.datetime.now(dt.UTC)


class StateType(enum.StrEnum):
    """The type of a run's state; the name of a state may differ (e.g. Late is SCHEDULED)."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"


TERMINAL_STATE_TYPES: frozenset[StateType] = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)

DEFAULT_STATE_NAMES: dict[StateType, str] = {
    StateType.SCHEDULED: "Scheduled",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CANCELLED: "Cancelled",
    StateType.CRASHED: "Crashed",
    StateType.PAUSED: "Paused",
    StateType.CANCELLING: "Cancelling",
}


@attrs.frozen
class StateDetails:
    """The part of a state that links it to runs and schedules."""

    flow_run_id: uuid.UUID | None = None
    task_run_id: uuid.UUID | None = None
    scheduled_time: dt.datetime | None = None
    deferred: bool | None = None
    transition_id: uuid.UUID | None = None
    task_parameters_id: uuid.UUID | None = None
    cache_key: str | None = None
    pause_key: str | None = None
    retriable: bool | None = None


@attrs.frozen
class State:
    """A run's state as the API reports it, or as a client proposes it."""

    type: StateType
    name: str | None = None
    id: uuid.UUID | None = None
    timestamp: dt.datetime | None = None
    message: str | None = None
    data: Any = None
    state_details: StateDetails = attrs.Factory(StateDetails)

    @property
    def is_final(self) -> bool:
        """Whether the run has ended (COMPLETED, FAILED, CANCELLED or CRASHED)."""
        return self.type in TERMINAL_STATE_TYPES

    @classmethod
    def of(cls, type: StateType, message: str | None = None, *, name: str | None = None) -> State:
        """Build a state to propose, with the type's default name and a fresh transition id."""
        return cls(
            type=type,
            name=name or DEFAULT_STATE_NAMES[type],
            message=message,
            state_details=StateDetails(transition_id=uuid.uuid4()),
        )


class SetStateStatus(enum.StrEnum):
    """The orchestration verdict on a proposed state."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    ABORT = "ABORT"
    WAIT = "WAIT"


@attrs.frozen
class OrchestrationResult:
    """The answer to ``set_state``: the verdict and the state the run is now in.

    ``details`` is kept as JSON: its shape depends on the verdict
    (``reason`` for REJECT/ABORT, ``delay_seconds`` for WAIT).
    """

    status: SetStateStatus
    state: State | None = None
    details: dict[str, Any] = attrs.Factory(dict)

    @property
    def reason(self) -> str:
        """The server's explanation of a REJECT, ABORT or WAIT, or an empty string."""
        return str(self.details.get("reason") or "")


@attrs.frozen
class Flow:
    """A flow: the named function deployments run."""

    id: uuid.UUID
    name: str
    tags: list[str] = attrs.Factory(list)
    labels: dict[str, Any] = attrs.Factory(dict)
    created: dt.datetime | None = None


@attrs.frozen
class Deployment:
    """A deployment: a flow's entrypoint, parameters and job variables on a pool."""

    id: uuid.UUID
    name: str
    flow_id: uuid.UUID
    entrypoint: str | None = None
    path: str | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)
    job_variables: dict[str, Any] = attrs.Factory(dict)
    tags: list[str] = attrs.Factory(list)
    labels: dict[str, Any] = attrs.Factory(dict)
    work_pool_name: str | None = None
    work_queue_name: str | None = None
    work_queue_id: uuid.UUID | None = None
    pull_steps: list[dict[str, Any]] | None = None
    paused: bool = False
    concurrency_limit: int | None = None
    enforce_parameter_schema: bool = True
    parameter_openapi_schema: dict[str, Any] | None = None
    version: str | None = None
    description: str | None = None
    created: dt.datetime | None = None
    updated: dt.datetime | None = None


@attrs.frozen
class FlowRun:
    """A flow run, as read from the API."""

    id: uuid.UUID
    name: str
    flow_id: uuid.UUID
    deployment_id: uuid.UUID | None = None
    state: State | None = None
    state_type: StateType | None = None
    state_name: str | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)
    job_variables: dict[str, Any] | None = None
    tags: list[str] = attrs.Factory(list)
    labels: dict[str, Any] = attrs.Factory(dict)
    work_queue_id: uuid.UUID | None = None
    work_queue_name: str | None = None
    work_pool_id: uuid.UUID | None = None
    work_pool_name: str | None = None
    infrastructure_pid: str | None = None
    run_count: int = 0
    expected_start_time: dt.datetime | None = None
    next_scheduled_start_time: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    created: dt.datetime | None = None
    updated: dt.datetime | None = None


@attrs.frozen
class WorkerFlowRunResponse:
    """One entry of ``get_scheduled_flow_runs``: a run and where it was found."""

    work_pool_id: uuid.UUID
    work_queue_id: uuid.UUID
    flow_run: FlowRun


@attrs.frozen
class WorkPool:
    """A work pool: the queue of runs a type of worker serves, with its job template."""

    id: uuid.UUID
    name: str
    type: str
    base_job_template: dict[str, Any] = attrs.Factory(dict)
    is_paused: bool = False
    concurrency_limit: int | None = None
    status: str | None = None
    default_queue_id: uuid.UUID | None = None
    description: str | None = None
    created: dt.datetime | None = None


@attrs.frozen
class WorkQueue:
    """A queue inside a work pool; lower ``priority`` numbers are served first."""

    id: uuid.UUID
    name: str
    priority: int = 1
    is_paused: bool = False
    concurrency_limit: int | None = None
    work_pool_id: uuid.UUID | None = None
    work_pool_name: str | None = None
    description: str | None = None
    status: str | None = None


@attrs.frozen
class Worker:
    """A worker as the API lists it for a pool (ONLINE while it heartbeats)."""

    id: uuid.UUID
    name: str
    work_pool_id: uuid.UUID
    last_heartbeat_time: dt.datetime | None = None
    heartbeat_interval_seconds: int | None = None
    status: str = "OFFLINE"


@attrs.frozen
class TaskRun:
    """A task run; background task runs carry ``deferred`` and ``task_parameters_id``."""

    id: uuid.UUID
    name: str
    task_key: str
    dynamic_key: str = ""
    flow_run_id: uuid.UUID | None = None
    state: State | None = None
    state_type: StateType | None = None
    state_name: str | None = None
    tags: list[str] = attrs.Factory(list)
    labels: dict[str, Any] = attrs.Factory(dict)
    run_count: int = 0
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    created: dt.datetime | None = None


@attrs.frozen
class Log:
    """One log line shipped to (or read back from) ``/logs/``."""

    name: str
    level: int
    message: str
    timestamp: dt.datetime
    flow_run_id: uuid.UUID | None = None
    task_run_id: uuid.UUID | None = None


@attrs.frozen
class Event:
    """An event as sent to ``/events/in`` and received from ``/events/out``."""

    event: str
    resource: dict[str, str]
    occurred: dt.datetime = attrs.Factory(now)
    id: uuid.UUID = attrs.Factory(uuid.uuid4)
    related: list[dict[str, str]] = attrs.Factory(list)
    payload: dict[str, Any] = attrs.Factory(dict)
    follows: uuid.UUID | None = None
    received: dt.datetime | None = None

    @property
    def resource_id(self) -> str:
        """The ``prefect.resource.id`` of the event's resource."""
        return self.resource.get("prefect.resource.id", "")


@attrs.frozen
class Variable:
    """A named JSON value that job templates read as ``{{ prefect.variables.NAME }}``."""

    id: uuid.UUID
    name: str
    value: Any = None
    tags: list[str] = attrs.Factory(list)
