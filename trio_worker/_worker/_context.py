"""What a backend is handed for one run, and what it hands back.

The typed half of the backend contract: :meth:`BaseWorker.run` receives a
:class:`RunContext` whose ``configuration`` is of the backend's own
configuration class (no ``assert isinstance``), with the run's limits, the
cancel grace and a logger whose lines reach the API under the run's id; it
returns a :class:`BaseWorkerResult`. Nothing here knows the worker: the
context is built by the submitter from what it was handed.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs
import trio

from trio_worker._core._exceptions import JobVariableError
from trio_worker._core._jobs import BaseJobConfiguration, BaseVariables
from trio_worker._core._models import Deployment, Flow, FlowRun, State

__all__ = [
    "LIMIT_RANGES",
    "RUN_LOGGER_NAME",
    "Backend",
    "BaseWorkerResult",
    "C",
    "CancelReason",
    "RunContext",
    "RunLimits",
    "StartedOnce",
    "V",
    "read_limits",
    "run_logger",
]

#: The job configuration type of a backend.
C = TypeVar("C", bound=BaseJobConfiguration)
#: The job variables type of a backend.
V = TypeVar("V", bound=BaseVariables)

#: The logger of flow-run lines; records with a ``flow_run_id`` reach the API.
RUN_LOGGER_NAME: Final = "trio_worker.flow_runs"

#: Each per-run limit: the smallest and largest accepted value, and what it
#: counts. Larger values are certainly mistakes (``1e30``) and would not fit
#: the kernel's types; NaN and infinity are refused too.
LIMIT_RANGES: Final[dict[str, tuple[float, float, str]]] = {
    "timeout_seconds": (0.001, 366 * 24 * 3600.0, "seconds"),
    "memory_limit_mb": (1.0, float(2**30), "MB"),
}


@attrs.frozen
class BaseWorkerResult:
    """What :meth:`BaseWorker.run` returns once the infrastructure has exited.

    Attributes:
        identifier: the infrastructure id also recorded as ``infrastructure_pid``.
        status_code: the exit status; 0 is success, negative is a signal number.
    """

    identifier: str
    status_code: int

    def __bool__(self) -> bool:
        return self.status_code == 0


class CancelReason(enum.Enum):
    """Why the worker stopped a run of its own: what it reports depends on it.

    A typed reason rather than a message matched by prefix: the reporter
    branches on the member, and the text is made only for people.
    """

    #: Someone asked for it (the run went CANCELLING): it ends CANCELLED.
    CANCELLED = "cancelled"
    #: Its ``timeout_seconds`` passed: it ends CRASHED, saying so.
    TIMED_OUT = "timed out"


@attrs.frozen
class RunLimits:
    """The per-run limits read from the job variables.

    Attributes:
        timeout_seconds: the run is stopped (and CRASHED) after this long;
            the worker arms the deadline, the backend need do nothing.
        memory_limit_mb: the backend must cap the run's memory to this.
    """

    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None


def read_limits(values: Mapping[str, Any]) -> RunLimits:
    """Read the per-run limits from the job variables themselves.

    Read from the variables, not the rendered template, so they work on any
    pool, a Prefect-made one whose template lacks them included.

    Raises:
        JobVariableError: a limit is not a number within :data:`LIMIT_RANGES`.
    """
    for key, (low, high, unit) in LIMIT_RANGES.items():
        value = values.get(key)
        if value is None:
            continue
        number = not isinstance(value, bool) and isinstance(value, int | float)
        # The comparison is False for NaN, so NaN is refused too.
        if not number or not low <= value <= high:
            raise JobVariableError(
                f"job variable {key}={value!r} must be a number of {unit}"
                f" from {low:g} to {high:.0f}"
            )
    timeout = values.get("timeout_seconds")
    memory = values.get("memory_limit_mb")
    return RunLimits(
        timeout_seconds=None if timeout is None else float(timeout),
        memory_limit_mb=None if memory is None else int(memory),
    )


@attrs.frozen
class RunContext(Generic[C]):
    """Everything a backend's :meth:`~BaseWorker.run` needs to know about one run.

    Attributes:
        flow_run: the run, as the poll returned it.
        configuration: the run's job configuration, of the backend's own class,
            rendered from the pool's template and completed for this run.
        limits: the run's limits; apply ``memory_limit_mb`` (the worker
            enforces ``timeout_seconds`` by cancelling ``run``).
        cancel_grace_seconds: how long the infrastructure may take to stop
            after the polite signal, before it is killed.
        logger: lines logged here are shipped to the API as the run's logs.
        runs_engine: the job set no command, so the worker's default command
            (an engine that reports the run's states itself) runs.
    """

    flow_run: FlowRun
    configuration: C
    logger: logging.LoggerAdapter[logging.Logger]
    limits: RunLimits = attrs.field(factory=RunLimits)
    cancel_grace_seconds: float = 30.0
    runs_engine: bool = False


class StartedOnce:
    """A ``task_status`` that remembers whether the backend called ``started``.

    The identifier is recorded as text: a Prefect-style backend hands over
    ``process.pid``, an int, which the API refuses as an ``infrastructure_pid``
    (Prefect's worker records ``str()`` of it too).
    """

    def __init__(self, inner: trio.TaskStatus[str]) -> None:
        self._inner = inner
        self.called = False

    def started(self, value: Any = None) -> None:
        self.called = True
        identifier: Any = None if value is None else str(value)
        self._inner.started(identifier)


def run_logger(flow_run: FlowRun, *, worker_name: str) -> logging.LoggerAdapter[logging.Logger]:
    """Return a logger whose lines reach the API as ``flow_run``'s logs.

    The worker's log handler ships a record when it carries the run's id and
    this worker's name (several workers may share one process).
    """
    extra = {"flow_run_id": flow_run.id, "worker_name": worker_name}
    return logging.LoggerAdapter(logging.getLogger(RUN_LOGGER_NAME), extra)


async def _record_no_claim(flow_run_id: uuid.UUID, pending: State) -> None:
    """The claim hook of a backend that keeps no records across restarts."""


async def _forget_no_claim(flow_run_id: uuid.UUID) -> None:
    """The matching no-op: nothing was recorded."""


@attrs.frozen
class Backend(Generic[C]):
    """What the worker's parts may ask of its backend: bound methods, not the worker.

    The submitter and the cancellation watcher are handed this instead of the
    worker, so neither can reach (or import) the object that composes them.

    Attributes:
        job_configuration: the backend's configuration class (renders templates).
        prepare: completes a rendered configuration for one run
            (``prepare_for_flow_run`` with the worker's env, name and pool).
        run: starts a run's infrastructure and waits for it (the contract of
            :meth:`BaseWorker.run`).
        default_command: the command of a job that sets none (the engine), or None.
        is_abandoned: whether a cancelling run not in flight here is ours to stop.
        kill: stops infrastructure by its id, given the run's configuration.
        record_claim: notes, before PENDING is proposed, that the run is being
            claimed (the process backend writes it to its run records).
        forget_claim: drops that note once the run's end is reported.
    """

    job_configuration: type[C]
    prepare: Callable[[C, FlowRun, Deployment | None, Flow | None], C]
    run: Callable[[RunContext[C], trio.TaskStatus[str]], Awaitable[BaseWorkerResult]]
    default_command: str | None
    is_abandoned: Callable[[FlowRun, str], bool]
    kill: Callable[[str, C, float], Awaitable[None]]
    record_claim: Callable[[uuid.UUID, State], Awaitable[None]] = _record_no_claim
    forget_claim: Callable[[uuid.UUID], Awaitable[None]] = _forget_no_claim
