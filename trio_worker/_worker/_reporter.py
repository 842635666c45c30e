"""``Reporter``: how a worker tells the API that a run ended, and counts how.

Every final-state proposal of the worker goes through here: shielded from the
cancellation that may be ending the run's task (a report given up on leaves a
run looking alive forever), bounded in time (a dead API must not hold a
shutdown), retried through an outage with the one backoff policy, and counted
by outcome for metrics. A run this worker stopped on purpose is reported
according to its typed :class:`~trio_worker._worker._context.CancelReason`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from typing import Final, Literal

import attrs
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._run_reads import RunReader
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import FlowRun, OrchestrationResult, SetStateStatus, State, StateType
from trio_worker._core._patience import until_answered
from trio_worker._worker._context import RUN_LOGGER_NAME, CancelReason, RunLimits
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import InFlightRun

__all__ = [
    "CANCELLED_MESSAGE",
    "FINAL_REPORT_PATIENCE_SECONDS",
    "REPORT_TIMEOUT_SECONDS",
    "Reporter",
    "landed",
]

logger = logging.getLogger(RUN_LOGGER_NAME)

CANCELLED_MESSAGE: Final = "Flow run was cancelled successfully."
#: How long a state report may take once the run's task is being cancelled.
REPORT_TIMEOUT_SECONDS: Final = 10.0
#: How long a run's task keeps proposing its final state through an outage.
FINAL_REPORT_PATIENCE_SECONDS: Final = 300.0


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


def describe_cancel(reason: CancelReason, limits: RunLimits) -> str:
    """The words for why a run was stopped (event payloads, messages)."""
    if reason is CancelReason.TIMED_OUT and limits.timeout_seconds is not None:
        return f"timed out after {limits.timeout_seconds:g} s"
    return reason.value


class Reporter:
    """Propose final states for a worker's runs and count their outcomes.

    Args:
        client: the worker's open API client.
        metrics: where outcomes are counted (``runs_finished{outcome}``).
        events: where ``cancelled-flow-run`` events go.
        worker_name: named in the log lines shipped under each run's id.
        on_shutdown: what a shutdown does to the runs it interrupts.
        report_timeout_seconds: the most a shielded report may take.
        patience_seconds: how long a proposal is retried through an outage.
    """

    def __init__(
        self,
        client: PrefectClient,
        *,
        metrics: WorkerMetrics,
        events: EventEmitter,
        worker_name: str,
        on_shutdown: Literal["crash", "reschedule"] = "crash",
        report_timeout_seconds: float = REPORT_TIMEOUT_SECONDS,
        patience_seconds: float = FINAL_REPORT_PATIENCE_SECONDS,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._events = events
        self._worker_name = worker_name
        self._on_shutdown = on_shutdown
        #: Reads of runs whose process exited, batched when they overlap.
        self._reader = RunReader(client)
        self.report_timeout_seconds = report_timeout_seconds
        self.patience_seconds = patience_seconds

    def log(self, flow_run: FlowRun, level: int, message: str, *args: object) -> None:
        """Log a line about one run; it is also shipped to the API under the run's id."""
        extra = {"flow_run_id": flow_run.id, "worker_name": self._worker_name}
        logger.log(level, message, *args, extra=extra)

    def count(self, state_type: StateType) -> None:
        """Count a run that ended in ``state_type``."""
        self._metrics.runs_finished.labels(state_type.value.lower()).inc()

    def count_aborted(self) -> None:
        """Count a run this worker did not start after all (another worker has it)."""
        self._metrics.runs_finished.labels("aborted").inc()

    async def propose(self, flow_run_id: uuid.UUID, state: State, *, force: bool = False) -> bool:
        """Propose a final state; an error is logged, never raised.

        Without ``force`` the API refuses to overwrite a state the engine
        already finished with, which is what we want: a run that completed
        stays completed. Through an API outage it keeps proposing for up to
        ``patience_seconds`` (or until the caller's deadline).

        Returns:
            Whether the API now holds ``state``.
        """
        try:
            verdict = await until_answered(
                functools.partial(self._client.set_flow_run_state, flow_run_id, state, force=force),
                what=f"report {state.type.value} for flow run '{flow_run_id}'",
                patience=self.patience_seconds,
            )
        except APIError as exc:
            logger.error("Could not report %s for flow run '%s': %s", state.type, flow_run_id, exc)
            return False
        if landed(verdict, state):
            self.count(state.type)
            return True
        logger.info("Flow run '%s' not moved to %s: %s", flow_run_id, state.type, verdict.reason)
        if verdict.state is not None and verdict.state.is_final:
            # It had ended already (the engine reported it): count how it ended.
            self.count(verdict.state.type)
        return False

    async def restore_if_finished(self, flow_run: FlowRun, pending: State) -> bool:
        """Undo a PENDING that the API accepted over a run another worker already finished.

        Prefect accepts PENDING over a CRASHED, FAILED or (unpersisted) COMPLETED
        run: that is how a re-run starts. A proposal that waited behind a busy
        SQLite server can land after another worker ran the run to the end.
        Prefect copies ``scheduled_time`` into PENDING only from SCHEDULED, so
        its absence is the sign; the history tells, and the final state is put
        back. Here (not in the submitter) because a restart settling a claim
        its dead worker left (``_process/_claims.py``) asks the same question.

        Returns:
            True when the run had finished and was restored: do not start it.
        """
        try:
            history = await self._client.read_flow_run_states(flow_run.id)
        except APIError as exc:
            logger.warning("Could not read the history of flow run '%s': %s", flow_run.id, exc)
            return False
        earlier = [s for s in history if s.id != pending.id and s.timestamp is not None]
        finals = [s for s in earlier if s.is_final]
        if not finals or max(earlier, key=_timestamp) is not max(finals, key=_timestamp):
            return False
        last = max(finals, key=_timestamp)
        logger.info(
            "Aborted submission of flow run '%s': it had already finished %s",
            flow_run.id,
            last.type,
        )
        restored = State.of(last.type, last.message, name=last.name)
        await self.propose(flow_run.id, attrs.evolve(restored, data=last.data), force=True)
        return True

    async def propose_shielded(
        self, flow_run_id: uuid.UUID, state: State, *, force: bool = False
    ) -> bool:
        """:meth:`propose` from a shielded scope bounded by ``report_timeout_seconds``.

        For reports made while the caller is being cancelled: the report is
        made (or given up on after the bound), then the cancellation goes on.
        """
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.report_timeout_seconds
            return await self.propose(flow_run_id, state, force=force)
        return False  # the bound passed first

    async def crash(self, flow_run: FlowRun, message: str) -> None:
        """Report ``flow_run`` CRASHED with ``message`` (also logged under the run)."""
        self.log(flow_run, logging.ERROR, "Flow run '%s' crashed: %s", flow_run.name, message)
        await self.propose(flow_run.id, State.of(StateType.CRASHED, message))

    async def cancelled(self, flow_run: FlowRun, reason: CancelReason, limits: RunLimits) -> None:
        """Report a run this worker stopped, now that its infrastructure is gone.

        A user's cancellation ends CANCELLED (forced: the engine may have been
        mid-way through reporting); a timeout ends CRASHED, not forced, so an
        engine that reported its final state as the deadline passed keeps it.
        """
        self._events.cancelled(flow_run, describe_cancel(reason, limits))
        if reason is CancelReason.TIMED_OUT:
            message = f"Flow run {describe_cancel(reason, limits)}."
            await self.propose(flow_run.id, State.of(StateType.CRASHED, message))
            return
        self.log(flow_run, logging.INFO, "Cancelled flow run '%s'", flow_run.name)
        await self.propose(
            flow_run.id, State.of(StateType.CANCELLED, CANCELLED_MESSAGE), force=True
        )

    async def report_end(
        self, tracked: InFlightRun, *, failure: Exception | None, interrupted: bool
    ) -> None:
        """Report the end of a run whose own path did not report it."""
        flow_run = tracked.flow_run
        if tracked.cancel_reason is not None:
            await self.cancelled(flow_run, tracked.cancel_reason, tracked.limits)
        elif failure is not None:
            cause = _leaf(failure)
            message = f"The worker failed while handling the run: {type(cause).__name__}: {cause}"
            await self.propose(flow_run.id, State.of(StateType.CRASHED, message))
        elif interrupted:
            await self._interrupted(flow_run)

    async def _interrupted(self, flow_run: FlowRun) -> None:
        """Say what became of a run the worker's shutdown interrupted.

        By default it is CRASHED with the reason; with ``on_shutdown="reschedule"``
        it goes back to SCHEDULED for another worker (for idempotent flows). A
        run whose engine already reported a final state keeps it.
        """
        reporter = self
        if self._on_shutdown == "reschedule":
            try:
                current = await self._client.read_flow_run(flow_run.id)
            except APIError as exc:
                logger.error("Could not read flow run '%s' to reschedule it: %s", flow_run.id, exc)
                return
            if current.state is not None and current.state.is_final:
                return
            if current.state is not None and current.state.type is StateType.CANCELLING:
                # A user asked for it to stop: it must not run again elsewhere.
                cancelled = State.of(StateType.CANCELLED, CANCELLED_MESSAGE)
                await reporter.propose(flow_run.id, cancelled, force=True)
                return
            message = f"Worker {self._worker_name!r} shut down; the run was rescheduled."
            reporter.log(
                flow_run, logging.WARNING, "Flow run '%s' cut short: %s", flow_run.name, message
            )
            rescheduled = State.of(StateType.SCHEDULED, message, name="Rescheduled")
            await reporter.propose(flow_run.id, rescheduled, force=True)
            return
        message = f"Worker {self._worker_name!r} shut down before the run finished."
        reporter.log(
            flow_run, logging.WARNING, "Flow run '%s' cut short: %s", flow_run.name, message
        )
        await reporter.propose(flow_run.id, State.of(StateType.CRASHED, message))

    async def engine_reported_final(self, flow_run: FlowRun) -> bool:
        """Whether the engine already put the run in a final state (then it is not a crash)."""
        try:
            current = await until_answered(
                functools.partial(self._client.read_flow_run, flow_run.id),
                what=f"read flow run '{flow_run.id}'",
                patience=self.patience_seconds,
            )
        except APIError:
            return False
        state = current.state
        if state is None or not state.is_final:
            return False
        self.count(state.type)
        self.log(flow_run, logging.INFO, "Flow run '%s' ended %s", flow_run.name, state.type.value)
        return True

    async def complete_if_unreported(self, flow_run: FlowRun, *, engine: bool) -> None:
        """A plain command that exits 0 without reporting a final state completed.

        Prefect leaves such runs PENDING forever; we say what happened instead.
        The engine is different: it exits 0 without a final state only when the
        API told it another actor decided (ABORT/REJECT), so its run is left alone.
        """
        reporter = self
        current = await until_answered(
            functools.partial(self._reader.read, flow_run.id),
            what=f"read flow run '{flow_run.id}'",
            patience=self.patience_seconds,
        )
        state = current.state
        if state is None:
            return
        if state.is_final:
            reporter.count(state.type)
            return
        if state.type is StateType.CANCELLING:
            cancelled = State.of(StateType.CANCELLED, CANCELLED_MESSAGE)
            await reporter.propose(flow_run.id, cancelled, force=True)
            return
        if engine:
            reporter.log(
                flow_run,
                logging.WARNING,
                "The engine exited without a final state (the run is %s); leaving it as it is",
                state.type.value,
            )
            return
        completed = State.of(
            StateType.COMPLETED,
            "The flow run's process exited with status 0 without reporting a final state; "
            "the worker marked it Completed.",
        )
        await reporter.propose(flow_run.id, completed)


def _timestamp(state: State) -> dt.datetime:
    assert state.timestamp is not None
    return state.timestamp


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
