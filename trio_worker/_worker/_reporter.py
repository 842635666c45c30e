"""``Reporter``: how a worker tells the API that a run ended, and counts how.

Every final-state proposal of the worker goes through here: shielded from the
cancellation that may be ending the run's task (a report given up on leaves a
run looking alive forever), bounded in time (a dead API must not hold a
shutdown), retried through an outage with the one backoff policy, and counted
by outcome for metrics. A run this worker stopped on purpose is reported
according to its typed :class:`~trio_worker._worker._context.CancelReason`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Final

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import FlowRun, OrchestrationResult, SetStateStatus, State, StateType
from trio_worker._core._patience import until_answered
from trio_worker._worker._context import RUN_LOGGER_NAME, CancelReason, RunLimits
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics

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
        report_timeout_seconds: float = REPORT_TIMEOUT_SECONDS,
        patience_seconds: float = FINAL_REPORT_PATIENCE_SECONDS,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._events = events
        self._worker_name = worker_name
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
