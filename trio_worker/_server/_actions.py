"""Request bodies the embedded API accepts, one attrs class per Prefect action model.

Prefect's action models (``WorkPoolCreate``, ``StateCreate``, ...) forbid unknown
fields, and so do these: a client that sends a field Prefect would refuse must
be refused here too. Bodies that FastAPI assembles from several ``Body()``
parameters (heartbeat, ``get_scheduled_flow_runs``, ``set_state``, filters)
ignore unknown top-level keys in Prefect, so their classes set
``__forbid_extra__ = False``. Defaults equal to :data:`UNSET` mark fields an
update only changes when sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, Final

import attrs

from trio_worker._core._models import StateType
from trio_worker._server._common import dumps
from trio_worker._server._validation import UNSET, UnsetType

__all__ = [
    "DeploymentCreate",
    "DeploymentFlowRunCreate",
    "FlowCreate",
    "FlowRunCreate",
    "FlowRunUpdate",
    "GetScheduledFlowRuns",
    "HoldersQuery",
    "LeaseRenewal",
    "LogCreate",
    "SetStateBody",
    "StateCreate",
    "StateType",
    "TaskRunCreate",
    "VariableCreate",
    "VariableUpdate",
    "WorkPoolCreate",
    "WorkPoolUpdate",
    "WorkQueueCreate",
    "WorkQueueUpdate",
    "WorkerHeartbeat",
]

Problem = tuple[str, str] | None


# The state types, in Prefect's order (it shows in 422 messages), are the
# models' own: the server stands on the models layer.


def _at_least(bound: int) -> Callable[[Any], Problem]:
    def check(value: Any) -> Problem:
        if isinstance(value, int | float) and value < bound:
            return "greater_than_equal", f"Input should be greater than or equal to {bound}"
        return None

    return check


BANNED_CHARACTERS: Final = "/%&><"
"""Characters Prefect refuses in names: they would break the name-based URLs."""

_NAME_PATTERN: Final = f"^[^{BANNED_CHARACTERS}]+$"
_NAME_OR_EMPTY_PATTERN: Final = f"^[^{BANNED_CHARACTERS}]*$"
MAX_VARIABLE_NAME_LENGTH: Final = 255
MAX_VARIABLE_VALUE_LENGTH: Final = 5000


def _name(*, empty_ok: bool = False, non_emptyish: bool = False) -> Callable[[Any], Problem]:
    """Prefect's ``Name`` (``NameOrEmpty`` with ``empty_ok``; ``NonEmptyishName``)."""
    pattern = _NAME_OR_EMPTY_PATTERN if empty_ok else _NAME_PATTERN

    def check(value: Any) -> Problem:
        if not isinstance(value, str):
            return None
        if non_emptyish and not value.strip("' \""):
            return "value_error", "Value error, name cannot be an empty string"
        if (not value and not empty_ok) or any(c in BANNED_CHARACTERS for c in value):
            return "string_pattern_mismatch", f"String should match pattern '{pattern}'"
        return None

    return check


def _variable_name(value: Any) -> Problem:
    """Prefect's ``VariableName``: lowercase letters, digits, ``-`` and ``_``; 255 at most."""
    if not isinstance(value, str):
        return None
    if len(value) > MAX_VARIABLE_NAME_LENGTH:
        return "too_long", (
            f"Value should have at most {MAX_VARIABLE_NAME_LENGTH} items after validation, "
            f"not {len(value)}"
        )
    if not all(c in _VARIABLE_NAME_CHARACTERS for c in value):
        return "value_error", (
            "Value error, Variable name must only contain lowercase letters, numbers, "
            "and dashes or underscores."
        )
    return None


_VARIABLE_NAME_CHARACTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _variable_value(value: Any) -> Problem:
    """Prefect's ``StrictVariableValue``: at most 5000 characters as JSON."""
    if value is not None and len(dumps(value)) > MAX_VARIABLE_VALUE_LENGTH:
        return "value_error", (
            f"Value error, Variable value must be less than {MAX_VARIABLE_VALUE_LENGTH} characters"
        )
    return None


Opt = UnsetType  # shorthand in annotations: ``X | Opt`` means "may be left out"

# A queue named in a deployment or run is created when missing: it must be a
# name the queue could be created with ("" means the pool's default queue).
_QUEUE_REF: Final = {"check": _name(empty_ok=True)}


@attrs.frozen(kw_only=True)
class StateCreate:
    """A proposed state (``StateCreate``): only ``type`` is required."""

    type: StateType = attrs.field()
    name: str | Opt | None = attrs.field(default=UNSET)
    message: str | Opt | None = attrs.field(default=UNSET)
    data: Any = attrs.field(default=UNSET)
    state_details: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    timestamp: datetime | Opt | None = attrs.field(default=UNSET)
    id: uuid.UUID | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class SetStateBody:
    """``POST /flow_runs/{id}/set_state``: the proposal and whether to bypass the rules."""

    __forbid_extra__: ClassVar[bool] = False
    state: StateCreate = attrs.field()
    force: bool | Opt = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class WorkPoolCreate:
    """``POST /work_pools/``."""

    name: str = attrs.field(metadata={"check": _name(non_emptyish=True)})
    description: str | Opt | None = attrs.field(default=UNSET)
    type: str | Opt = attrs.field(default=UNSET)
    base_job_template: dict[str, Any] | Opt = attrs.field(default=UNSET)
    is_paused: bool | Opt = attrs.field(default=UNSET)
    concurrency_limit: int | Opt | None = attrs.field(
        default=UNSET, metadata={"check": _at_least(0)}
    )
    storage_configuration: dict[str, Any] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class WorkPoolUpdate:
    """``PATCH /work_pools/{name}``: only sent fields change."""

    description: str | Opt | None = attrs.field(default=UNSET)
    is_paused: bool | Opt | None = attrs.field(default=UNSET)
    base_job_template: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    concurrency_limit: int | Opt | None = attrs.field(
        default=UNSET, metadata={"check": _at_least(0)}
    )
    storage_configuration: dict[str, Any] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class WorkQueueCreate:
    """``POST /work_pools/{pool}/queues``."""

    name: str = attrs.field(metadata={"check": _name()})
    description: str | Opt | None = attrs.field(default=UNSET)
    is_paused: bool | Opt = attrs.field(default=UNSET)
    concurrency_limit: int | Opt | None = attrs.field(
        default=UNSET, metadata={"check": _at_least(0)}
    )
    priority: int | Opt | None = attrs.field(default=UNSET, metadata={"check": _at_least(1)})


@attrs.frozen(kw_only=True)
class WorkQueueUpdate:
    """``PATCH /work_pools/{pool}/queues/{name}``."""

    # Prefect accepts any name here, then cannot serve the queue by its name: refused.
    name: str | Opt = attrs.field(default=UNSET, metadata={"check": _name()})
    description: str | Opt | None = attrs.field(default=UNSET)
    is_paused: bool | Opt | None = attrs.field(default=UNSET)
    concurrency_limit: int | Opt | None = attrs.field(
        default=UNSET, metadata={"check": _at_least(0)}
    )
    priority: int | Opt | None = attrs.field(default=UNSET, metadata={"check": _at_least(1)})


@attrs.frozen(kw_only=True)
class WorkerHeartbeat:
    """``POST /work_pools/{pool}/workers/heartbeat``."""

    __forbid_extra__: ClassVar[bool] = False
    name: str = attrs.field()
    heartbeat_interval_seconds: int | Opt | None = attrs.field(default=UNSET)
    return_id: bool | Opt = attrs.field(default=UNSET)
    metadata: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    #: trio-worker's own field: the flow runs this worker holds (Prefect ignores it).
    flow_run_ids: list[uuid.UUID] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class HoldersQuery:
    """``POST /liveness/holders`` (trio-worker's own): who holds these runs."""

    flow_run_ids: list[uuid.UUID] | Opt = attrs.field(default=UNSET)
    task_run_ids: list[uuid.UUID] | Opt = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class LeaseRenewal:
    """``POST /task_runs/renew_leases`` (trio-worker's own): a task worker's leases."""

    client_id: str = attrs.field()
    task_run_ids: list[uuid.UUID] = attrs.field()


@attrs.frozen(kw_only=True)
class GetScheduledFlowRuns:
    """``POST /work_pools/{pool}/get_scheduled_flow_runs``."""

    __forbid_extra__: ClassVar[bool] = False
    work_queue_names: list[str] | Opt | None = attrs.field(default=UNSET)
    scheduled_before: datetime | Opt | None = attrs.field(default=UNSET)
    scheduled_after: datetime | Opt | None = attrs.field(default=UNSET)
    limit: int | Opt | None = attrs.field(default=UNSET, metadata={"check": _at_least(0)})


@attrs.frozen(kw_only=True)
class FlowCreate:
    """``POST /flows/``."""

    name: str = attrs.field(metadata={"check": _name()})
    tags: list[str] | Opt = attrs.field(default=UNSET)
    labels: dict[str, Any] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class DeploymentCreate:
    """``POST /deployments/``: upsert by ``(flow_id, name)``."""

    name: str = attrs.field(metadata={"check": _name(empty_ok=True)})
    flow_id: uuid.UUID = attrs.field()
    paused: bool | Opt = attrs.field(default=UNSET)
    schedules: list[dict[str, Any]] | Opt = attrs.field(default=UNSET)
    concurrency_limit: int | Opt | None = attrs.field(
        default=UNSET, metadata={"check": _at_least(1)}
    )
    concurrency_options: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    global_concurrency_limit_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    enforce_parameter_schema: bool | Opt = attrs.field(default=UNSET)
    parameter_openapi_schema: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    parameters: dict[str, Any] | Opt = attrs.field(default=UNSET)
    tags: list[str] | Opt = attrs.field(default=UNSET)
    labels: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    pull_steps: list[dict[str, Any]] | Opt | None = attrs.field(default=UNSET)
    work_queue_name: str | Opt | None = attrs.field(default=UNSET, metadata=_QUEUE_REF)
    work_pool_name: str | Opt | None = attrs.field(default=UNSET)
    storage_document_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    infrastructure_document_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    description: str | Opt | None = attrs.field(default=UNSET)
    path: str | Opt | None = attrs.field(default=UNSET)
    version: str | Opt | None = attrs.field(default=UNSET)
    version_info: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    entrypoint: str | Opt | None = attrs.field(default=UNSET)
    job_variables: dict[str, Any] | Opt = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class DeploymentFlowRunCreate:
    """``POST /deployments/{id}/create_flow_run``: everything optional."""

    state: StateCreate | Opt | None = attrs.field(default=UNSET)
    name: str | Opt | None = attrs.field(default=UNSET)
    parameters: dict[str, Any] | Opt = attrs.field(default=UNSET)
    enforce_parameter_schema: bool | Opt | None = attrs.field(default=UNSET)
    context: dict[str, Any] | Opt = attrs.field(default=UNSET)
    infrastructure_document_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    empirical_policy: dict[str, Any] | Opt = attrs.field(default=UNSET)
    tags: list[str] | Opt = attrs.field(default=UNSET)
    labels: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    idempotency_key: str | Opt | None = attrs.field(default=UNSET)
    parent_task_run_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    work_queue_name: str | Opt | None = attrs.field(default=UNSET, metadata=_QUEUE_REF)
    job_variables: dict[str, Any] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class FlowRunCreate:
    """``POST /flow_runs/``."""

    flow_id: uuid.UUID = attrs.field()
    state: StateCreate | Opt | None = attrs.field(default=UNSET)
    name: str | Opt | None = attrs.field(default=UNSET)
    flow_version: str | Opt | None = attrs.field(default=UNSET)
    parameters: dict[str, Any] | Opt = attrs.field(default=UNSET)
    context: dict[str, Any] | Opt = attrs.field(default=UNSET)
    parent_task_run_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    infrastructure_document_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    empirical_policy: dict[str, Any] | Opt = attrs.field(default=UNSET)
    tags: list[str] | Opt = attrs.field(default=UNSET)
    labels: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    idempotency_key: str | Opt | None = attrs.field(default=UNSET)
    deployment_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    deployment_version: str | Opt | None = attrs.field(default=UNSET)
    work_pool_name: str | Opt | None = attrs.field(default=UNSET)
    work_queue_name: str | Opt | None = attrs.field(default=UNSET, metadata=_QUEUE_REF)
    job_variables: dict[str, Any] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class FlowRunUpdate:
    """``PATCH /flow_runs/{id}``: only sent fields change."""

    name: str | Opt | None = attrs.field(default=UNSET)
    flow_version: str | Opt | None = attrs.field(default=UNSET)
    parameters: dict[str, Any] | Opt = attrs.field(default=UNSET)
    empirical_policy: dict[str, Any] | Opt = attrs.field(default=UNSET)
    tags: list[str] | Opt = attrs.field(default=UNSET)
    infrastructure_pid: str | Opt | None = attrs.field(default=UNSET)
    job_variables: dict[str, Any] | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class LogCreate:
    """One entry of ``POST /logs/``; ``worker_id`` is refused, as by the OSS server."""

    name: str = attrs.field()
    level: int = attrs.field()
    message: str = attrs.field()
    timestamp: datetime = attrs.field()
    flow_run_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    task_run_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class VariableCreate:
    """``POST /variables/``."""

    name: str = attrs.field(metadata={"check": _variable_name})
    value: Any = attrs.field(default=UNSET, metadata={"check": _variable_value})
    tags: list[str] | Opt = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class VariableUpdate:
    """``PATCH /variables/name/{name}`` and ``PATCH /variables/{id}``."""

    name: str | Opt = attrs.field(default=UNSET, metadata={"check": _variable_name})
    value: Any = attrs.field(default=UNSET, metadata={"check": _variable_value})
    tags: list[str] | Opt = attrs.field(default=UNSET)


@attrs.frozen(kw_only=True)
class TaskRunCreate:
    """``POST /task_runs/`` as ``task.delay()`` sends it."""

    task_key: str = attrs.field()
    dynamic_key: str = attrs.field()
    id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    state: StateCreate | Opt | None = attrs.field(default=UNSET)
    name: str | Opt | None = attrs.field(default=UNSET)
    flow_run_id: uuid.UUID | Opt | None = attrs.field(default=UNSET)
    cache_key: str | Opt | None = attrs.field(default=UNSET)
    cache_expiration: datetime | Opt | None = attrs.field(default=UNSET)
    task_version: str | Opt | None = attrs.field(default=UNSET)
    empirical_policy: dict[str, Any] | Opt = attrs.field(default=UNSET)
    tags: list[str] | Opt = attrs.field(default=UNSET)
    labels: dict[str, Any] | Opt | None = attrs.field(default=UNSET)
    task_inputs: dict[str, Any] | Opt = attrs.field(default=UNSET)


def value_or(value: Any, default: Any) -> Any:
    """Return ``value`` when the request sent it, else ``default``."""
    return default if value is UNSET else value
