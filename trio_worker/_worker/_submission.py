"""The submission pipeline: one flow run from SCHEDULED to a finished process.

``BaseWorker.get_and_submit_flow_runs`` borrows a limiter token for a run and
starts :func:`submit_flow_run` in the runs nursery. From then on this module's
task owns the run: it proposes PENDING (the lock that keeps two workers from
starting the same run), renders the job configuration, starts the
infrastructure, records ``infrastructure_pid``, reports how it ended, and in
its ``finally`` returns the token, whatever happened.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from trio_worker._core._exceptions import (
    APIError,
    ConfigurationError,
    InfrastructureError,
    JobVariableError,
    NotFoundError,
)
from trio_worker._core._exit_reasons import describe_exit
from trio_worker._core._jobs import merge_job_variables
from trio_worker._core._models import (
    Deployment,
    Flow,
    FlowRun,
    OrchestrationResult,
    SetStateStatus,
    State,
    StateType,
    now,
)
from trio_worker._core._patience import until_answered

if TYPE_CHECKING:
    from trio_worker._worker._base import BaseWorker, BaseWorkerResult, InFlightRun

__all__ = ["CANCELLED_MESSAGE", "propose_final_state", "submit_flow_run"]

logger = logging.getLogger("trio_worker.flow_runs")

CANCELLED_MESSAGE: Final = "Flow run was cancelled successfully."
#: How long a state report may take while the run's task is being cancelled.
REPORT_TIMEOUT_SECONDS: Final = 10.0
#: How long the worker keeps asking a busy API whether its PENDING proposal
#: landed: giving up early could leave a run PENDING that nobody starts.
CLAIM_PATIENCE_SECONDS: Final = 60.0
#: How long a run's task keeps proposing its final state through an outage.
FINAL_REPORT_PATIENCE_SECONDS: Final = 300.0
#: Deployments are read at most this often per id, so a burst of runs of one
#: deployment costs one read.
DEPLOYMENT_CACHE_SECONDS: Final = 5.0


def _log(worker: BaseWorker, flow_run: FlowRun, level: int, message: str, *args: object) -> None:
    """Log a line about one run; it is also shipped to the API under the run's id."""
    logger.log(
        level, message, *args, extra={"flow_run_id": flow_run.id, "worker_name": worker.name}
    )


async def submit_flow_run(worker: BaseWorker, flow_run: FlowRun) -> None:
    """Own ``flow_run`` from its PENDING proposal to its final state.

    The caller has borrowed a limiter token on behalf of ``flow_run.id`` and
    tracked the run in ``worker.in_flight``; this returns both in its
    ``finally``. Whatever ends the run's task, the run's final state is
    reported from a shielded, time-bounded scope: CANCELLED (or CRASHED for a
    timeout) when the worker stopped it on purpose, CRASHED with the error when
    handling it failed, and CRASHED (or SCHEDULED again) when a shutdown cut it
    short.
    """
    tracked = worker.in_flight[flow_run.id]
    interrupted = True  # until the run's own path has run to its end
    failure: Exception | None = None
    try:
        with tracked.cancel_scope:
            await _submit(worker, tracked)
        if tracked.cancel_scope.cancelled_caught and tracked.cancel_reason is None:
            # Nobody asked for it: the run's deadline passed.
            tracked.cancel_reason = f"timed out after {tracked.timeout_seconds:g} s"
        interrupted = False
    except Exception as exc:
        # An API outage longer than the retries, or a bug in a backend's run():
        # it ends this run, never the worker and the other runs.
        logger.exception("Handling flow run '%s' failed", flow_run.id)
        interrupted = False
        failure = exc
    finally:
        try:
            if tracked.owned:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + REPORT_TIMEOUT_SECONDS
                    await _report_end(worker, tracked, failure=failure, interrupted=interrupted)
        finally:
            with trio.CancelScope(shield=True):
                await worker.forget_claim(flow_run.id)
            worker._untrack(flow_run.id)


async def _report_end(
    worker: BaseWorker, tracked: InFlightRun, *, failure: Exception | None, interrupted: bool
) -> None:
    """Report the end of a run whose own path did not report it."""
    if tracked.cancel_reason is not None:
        await report_cancelled(worker, tracked)
    elif failure is not None:
        cause = _leaf(failure)
        message = f"The worker failed while handling the run: {type(cause).__name__}: {cause}"
        await propose_final_state(worker, tracked.flow_run.id, State.of(StateType.CRASHED, message))
    elif interrupted:
        await _report_interrupted(worker, tracked.flow_run)


async def _report_interrupted(worker: BaseWorker, flow_run: FlowRun) -> None:
    """Say what became of a run the worker's shutdown interrupted.

    By default it is CRASHED with the reason; with ``on_shutdown="reschedule"``
    it goes back to SCHEDULED for another worker (for idempotent flows). A run
    whose engine already reported a final state keeps it.
    """
    if worker.on_shutdown == "reschedule":
        try:
            current = await worker.client.read_flow_run(flow_run.id)
        except APIError as exc:
            logger.error("Could not read flow run '%s' to reschedule it: %s", flow_run.id, exc)
            return
        if current.state is not None and current.state.is_final:
            return
        if current.state is not None and current.state.type is StateType.CANCELLING:
            # A user asked for it to stop: it must not run again elsewhere.
            await propose_final_state(
                worker, flow_run.id, State.of(StateType.CANCELLED, CANCELLED_MESSAGE), force=True
            )
            return
        message = f"Worker {worker.name!r} shut down; the run was rescheduled."
        _log(
            worker, flow_run, logging.WARNING, "Flow run '%s' cut short: %s", flow_run.name, message
        )
        await propose_final_state(
            worker,
            flow_run.id,
            State.of(StateType.SCHEDULED, message, name="Rescheduled"),
            force=True,
        )
        return
    message = f"Worker {worker.name!r} shut down before the run finished."
    _log(worker, flow_run, logging.WARNING, "Flow run '%s' cut short: %s", flow_run.name, message)
    await propose_final_state(worker, flow_run.id, State.of(StateType.CRASHED, message))


async def _submit(worker: BaseWorker, tracked: InFlightRun) -> None:
    flow_run = tracked.flow_run
    client = worker.client
    # Shielded: a shutdown arriving between the API's commit of PENDING and
    # our reading the answer would otherwise leave the run PENDING, owned by
    # no one.
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + CLAIM_PATIENCE_SECONDS
        pending = State.of(StateType.PENDING)
        await worker.record_claim(flow_run.id, pending)
        verdict = await until_answered(
            functools.partial(client.set_flow_run_state, flow_run.id, pending),
            what=f"propose PENDING for flow run '{flow_run.id}'",
            patience=CLAIM_PATIENCE_SECONDS,
        )
        if not landed(verdict, pending) or verdict.state is None:
            # Another worker has it, or it changed under us: not ours to start.
            logger.info(
                "Aborted submission of flow run '%s': %s",
                flow_run.id,
                verdict.reason or f"server answered {verdict.status}",
            )
            worker.metrics.runs_finished.labels("aborted").inc()
            return
        if verdict.state.state_details.scheduled_time is None and await _reopened_finished_run(
            worker, flow_run, verdict.state
        ):
            worker.metrics.runs_finished.labels("aborted").inc()
            return
        tracked.owned = True
    if scope.cancelled_caught and not tracked.owned:
        logger.error(
            "The API did not answer the PENDING proposal for flow run '%s' within %.0f s; "
            "not starting it. If the proposal landed, the run stays PENDING: set it to "
            "SCHEDULED again to have it run.",
            flow_run.id,
            CLAIM_PATIENCE_SECONDS,
        )
        return
    worker.metrics.runs_submitted.inc()
    _log(
        worker,
        flow_run,
        logging.INFO,
        "Worker %r submitting flow run '%s' (%s)",
        worker.name,
        flow_run.name,
        flow_run.id,
    )

    try:
        configuration, values = await _configure(worker, flow_run)
        _apply_limits(tracked, values)
    except NotFoundError as exc:
        message = f"Deployment {flow_run.deployment_id} no longer exists, cancelled run."
        _log(worker, flow_run, logging.WARNING, "%s (%s)", message, exc)
        await propose_final_state(
            worker, flow_run.id, State.of(StateType.CANCELLED, message), force=True
        )
        return
    except ConfigurationError as exc:
        await _crash(worker, flow_run, f"Failed to configure the flow run's infrastructure: {exc}")
        return

    worker.events.submitted(flow_run)
    try:
        result = await _start_and_wait(worker, tracked, configuration)
    except InfrastructureError as exc:
        await _crash(worker, flow_run, f"Failed to submit flow run to infrastructure: {exc}")
        worker.events.executed(flow_run, None, None)
        return
    worker.events.executed(flow_run, result.identifier, result.status_code)
    _log(
        worker,
        flow_run,
        logging.INFO,
        "Flow run '%s' infrastructure %s exited with status %d",
        flow_run.name,
        result.identifier,
        result.status_code,
    )
    # The infrastructure is gone: a timeout from here on would only cut short
    # the reports below (and could overwrite the engine's final state).
    tracked.cancel_scope.deadline = math.inf
    if tracked.cancel_reason is not None:
        return
    engine = getattr(configuration, "command", None) == worker.default_command()
    if result.status_code != 0 and engine and await _engine_reported_final(worker, flow_run):
        # A flow that raised: the engine recorded FAILED and exited 1. Not a crash.
        return
    if result.status_code != 0:
        message = describe_exit(result.status_code)
        if tracked.memory_limit_mb is not None:
            message += (
                f" The run had a memory limit of {tracked.memory_limit_mb} MB"
                " (job variable memory_limit_mb); exceeding it ends a process this way."
            )
        await _crash(worker, flow_run, message)
        return
    await _complete_if_unreported(worker, flow_run, engine=engine)


async def _engine_reported_final(worker: BaseWorker, flow_run: FlowRun) -> bool:
    """Whether the engine already put the run in a final state (then it is not a crash)."""
    try:
        current = await until_answered(
            functools.partial(worker.client.read_flow_run, flow_run.id),
            what=f"read flow run '{flow_run.id}'",
            patience=FINAL_REPORT_PATIENCE_SECONDS,
        )
    except APIError:
        return False
    state = current.state
    if state is None or not state.is_final:
        return False
    _count_outcome(worker, state.type)
    _log(worker, flow_run, logging.INFO, "Flow run '%s' ended %s", flow_run.name, state.type.value)
    return True


async def _reopened_finished_run(worker: BaseWorker, flow_run: FlowRun, pending: State) -> bool:
    """Undo a PENDING that the API accepted over a run another worker already finished.

    Prefect accepts PENDING over a CRASHED, FAILED or (unpersisted) COMPLETED
    run: that is how a re-run starts. A proposal that waited behind a busy
    SQLite server can land after another worker ran the run to the end.
    Prefect copies ``scheduled_time`` into PENDING only from SCHEDULED, so its
    absence sends us here; the history tells, and the final state is put back.

    Returns:
        True when the run had finished and was restored: do not start it.
    """
    try:
        history = await worker.client.read_flow_run_states(flow_run.id)
    except APIError as exc:
        logger.warning("Could not read the history of flow run '%s': %s", flow_run.id, exc)
        return False
    earlier = [s for s in history if s.id != pending.id and s.timestamp is not None]
    finals = [s for s in earlier if s.is_final]
    if not finals or max(earlier, key=_timestamp) is not max(finals, key=_timestamp):
        return False
    last = max(finals, key=_timestamp)
    logger.info(
        "Aborted submission of flow run '%s': it had already finished %s", flow_run.id, last.type
    )
    restored = State.of(last.type, last.message, name=last.name)
    await propose_final_state(
        worker, flow_run.id, attrs.evolve(restored, data=last.data), force=True
    )
    return True


def _timestamp(state: State) -> dt.datetime:
    assert state.timestamp is not None
    return state.timestamp


async def _start_and_wait(
    worker: BaseWorker, tracked: InFlightRun, configuration: Any
) -> BaseWorkerResult:
    """Run the infrastructure; record its id the moment it exists."""
    flow_run = tracked.flow_run
    results: list[BaseWorkerResult] = []

    async def run_and_keep_result(task_status: trio.TaskStatus[str]) -> None:
        results.append(await worker.run(flow_run, configuration, task_status=task_status))

    failure: InfrastructureError | None = None
    try:
        async with trio.open_nursery() as nursery:
            identifier = await nursery.start(run_and_keep_result)
            tracked.infrastructure_pid = identifier
            worker.metrics.observe_start(flow_run, now())
            _log(
                worker,
                flow_run,
                logging.INFO,
                "Flow run '%s' submitted to infrastructure %s",
                flow_run.name,
                identifier,
            )
            try:
                await worker.client.update_flow_run(flow_run.id, infrastructure_pid=identifier)
            except APIError as exc:
                logger.warning(
                    "Could not record infrastructure %s of flow run '%s' (%s); "
                    "only this worker will be able to cancel it",
                    identifier,
                    flow_run.id,
                    exc,
                )
    except* InfrastructureError as group:
        failure = _first_leaf(group)
    if failure is not None:
        raise failure
    return results[0]


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _first_leaf(group: BaseExceptionGroup[InfrastructureError]) -> InfrastructureError:
    leaf = _leaf(group)
    assert isinstance(leaf, InfrastructureError)  # the group was split on it
    return leaf


#: Each per-run limit: the smallest and largest accepted value, and
#: what it counts. Larger values are certainly mistakes (``1e30``) and would
#: not fit the kernel's types; NaN and infinity are refused too.
LIMIT_RANGES: Final[dict[str, tuple[float, float, str]]] = {
    "timeout_seconds": (0.001, 366 * 24 * 3600.0, "seconds"),
    "memory_limit_mb": (1.0, float(2**30), "MB"),
}


def _apply_limits(tracked: InFlightRun, values: dict[str, Any]) -> None:
    """Read the per-run limits from the job variables and arm the run's deadline.

    ``timeout_seconds`` and ``memory_limit_mb`` are read from the job
    variables themselves, not the rendered template, so they work on any pool,
    including one created by Prefect whose template lacks them.

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
    if timeout is not None:
        tracked.timeout_seconds = float(timeout)
        tracked.cancel_scope.deadline = trio.current_time() + float(timeout)
    memory = values.get("memory_limit_mb")
    if memory is not None:
        tracked.memory_limit_mb = int(memory)


async def _configure(worker: BaseWorker, flow_run: FlowRun) -> tuple[Any, dict[str, Any]]:
    """Render the pool's template with the deployment's and the run's job variables."""
    assert worker.work_pool is not None
    client = worker.client
    deployment = None
    if flow_run.deployment_id is not None:
        deployment = await _read_deployment(worker, flow_run.deployment_id)
    flow = await _read_flow(worker, flow_run.flow_id)
    values = merge_job_variables(
        deployment.job_variables if deployment is not None else None, flow_run.job_variables
    )

    async def get_variable(name: str) -> object | None:
        variable = await client.read_variable_by_name(name)
        return None if variable is None else variable.value

    configuration = await worker.job_configuration.from_template_and_values(
        worker.work_pool.base_job_template, values, get_variable=get_variable
    )
    prepared = configuration.prepare_for_flow_run(
        flow_run=flow_run,
        deployment=deployment,
        flow=flow,
        worker_name=worker.name,
        work_pool=worker.work_pool,
        base_env=worker.base_env(),
        default_command=worker.default_command(),
    )
    return prepared, values


def _read_lock(worker: BaseWorker, key: tuple[str, uuid.UUID]) -> trio.Lock:
    """One lock per cached object, so runs submitted together share one read of it."""
    locks = worker.read_locks
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = trio.Lock()
    return lock


async def _read_deployment(worker: BaseWorker, deployment_id: uuid.UUID) -> Deployment:
    async with _read_lock(worker, ("deployment", deployment_id)):
        cached = worker.deployment_cache.get(deployment_id)
        if cached is not None and time.monotonic() - cached[0] < DEPLOYMENT_CACHE_SECONDS:
            return cached[1]
        deployment = await worker.client.read_deployment(deployment_id)
        worker.deployment_cache[deployment_id] = (time.monotonic(), deployment)
        return deployment


async def _read_flow(worker: BaseWorker, flow_id: uuid.UUID) -> Flow | None:
    cache = worker.flow_cache
    async with _read_lock(worker, ("flow", flow_id)):
        if flow_id not in cache:
            try:
                cache[flow_id] = await worker.client.read_flow(flow_id)
            except NotFoundError:
                return None
        return cache[flow_id]


async def _crash(worker: BaseWorker, flow_run: FlowRun, message: str) -> None:
    _log(worker, flow_run, logging.ERROR, "Flow run '%s' crashed: %s", flow_run.name, message)
    await propose_final_state(worker, flow_run.id, State.of(StateType.CRASHED, message))


async def _complete_if_unreported(worker: BaseWorker, flow_run: FlowRun, *, engine: bool) -> None:
    """A plain command that exits 0 without reporting a final state completed.

    Prefect leaves such runs PENDING forever; we say what happened instead.
    The engine is different: it exits 0 without a final state only when the
    API told it another actor decided (ABORT/REJECT), so its run is left alone.
    """
    current = await until_answered(
        functools.partial(worker.run_reader.read, flow_run.id),
        what=f"read flow run '{flow_run.id}'",
        patience=FINAL_REPORT_PATIENCE_SECONDS,
    )
    state = current.state
    if state is None:
        return
    if state.is_final:
        _count_outcome(worker, state.type)
        return
    if state.type is StateType.CANCELLING:
        await propose_final_state(
            worker, flow_run.id, State.of(StateType.CANCELLED, CANCELLED_MESSAGE), force=True
        )
        return
    if engine:
        _log(
            worker,
            flow_run,
            logging.WARNING,
            "The engine exited without a final state (the run is %s); leaving it as it is",
            state.type.value,
        )
        return
    await propose_final_state(
        worker,
        flow_run.id,
        State.of(
            StateType.COMPLETED,
            "The flow run's process exited with status 0 without reporting a final state; "
            "the worker marked it Completed.",
        ),
    )


async def report_cancelled(worker: BaseWorker, tracked: InFlightRun) -> None:
    """Report a run this worker stopped, now that its infrastructure is gone."""
    reason = tracked.cancel_reason or ""
    worker.events.cancelled(tracked.flow_run, reason)
    if reason.startswith("timed out"):
        # Not forced: an engine that reported its final state as the deadline
        # passed keeps it.
        state = State.of(StateType.CRASHED, f"Flow run {reason}.")
        await propose_final_state(worker, tracked.flow_run.id, state)
        return
    _log(worker, tracked.flow_run, logging.INFO, "Cancelled flow run '%s'", tracked.flow_run.name)
    await propose_final_state(
        worker, tracked.flow_run.id, State.of(StateType.CANCELLED, CANCELLED_MESSAGE), force=True
    )


def landed(verdict: OrchestrationResult, proposed: State) -> bool:
    """Whether the API now holds ``proposed``: accepted, or accepted before.

    A proposal whose answer was lost (a 503 or a dropped connection after the
    API had committed it) is retried by the client with the same
    ``transition_id``; the API then answers REJECT "already made this state
    transition" with the state it holds, which is ours.
    """
    if verdict.status is SetStateStatus.ACCEPT:
        return verdict.state is None or verdict.state.type is proposed.type
    ours = proposed.state_details.transition_id
    return (
        verdict.state is not None
        and ours is not None
        and verdict.state.state_details.transition_id == ours
    )


async def propose_final_state(
    worker: BaseWorker, flow_run_id: uuid.UUID, state: State, *, force: bool = False
) -> None:
    """Propose a final state; an error is logged, never raised into the worker.

    Without ``force`` the API refuses to overwrite a state the engine already
    finished with, which is what we want: a run that completed stays completed.
    Through an API outage it keeps proposing for up to
    ``FINAL_REPORT_PATIENCE_SECONDS`` (or until the caller's deadline): a
    report given up on leaves the run looking alive forever.
    """
    try:
        verdict = await until_answered(
            functools.partial(worker.client.set_flow_run_state, flow_run_id, state, force=force),
            what=f"report {state.type.value} for flow run '{flow_run_id}'",
            patience=FINAL_REPORT_PATIENCE_SECONDS,
        )
    except APIError as exc:
        logger.error("Could not report %s for flow run '%s': %s", state.type, flow_run_id, exc)
        return
    if landed(verdict, state):
        _count_outcome(worker, state.type)
        return
    logger.info("Flow run '%s' not moved to %s: %s", flow_run_id, state.type, verdict.reason)
    if verdict.state is not None and verdict.state.is_final:
        # It had ended already (the engine reported it): count how it ended.
        _count_outcome(worker, verdict.state.type)


def _count_outcome(worker: BaseWorker, state_type: StateType) -> None:
    worker.metrics.runs_finished.labels(state_type.value.lower()).inc()
