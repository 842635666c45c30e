"""``Submitter``: one flow run from SCHEDULED to a finished process.

The poller hands a run to :meth:`Submitter.submit` in the runs nursery. From
then on the submitter's task owns it: it holds the run's slot in the
:class:`~trio_worker._worker._run_table.RunTable` (the token is borrowed and
returned by the table), proposes PENDING (the lock that keeps two workers from
starting the same run), renders the job configuration, starts the
infrastructure through the backend, records ``infrastructure_pid``, and has
the :class:`~trio_worker._worker._reporter.Reporter` say how it ended. The
deployments and flows it reads are cached, bounded, and read once per burst.

Before proposing PENDING it calls the backend's ``record_claim`` and, once
the run's end is reported (or the claim did not land), ``forget_claim``: the
process worker keeps the claim in its run records, so a restart after a kill
anywhere in between can settle the run (``_process/_claims.py``).
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Callable
from typing import Final, Generic

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import (
    APIError,
    ConfigurationError,
    InfrastructureError,
    NotFoundError,
)
from trio_worker._core._exit_reasons import describe_exit
from trio_worker._core._jobs import merge_job_variables
from trio_worker._core._models import Deployment, Flow, FlowRun, State, StateType, WorkPool, now
from trio_worker._core._patience import until_answered
from trio_worker._worker._caches import BoundedCache, KeyedLocks
from trio_worker._worker._context import (
    Backend,
    BaseWorkerResult,
    C,
    CancelReason,
    RunContext,
    StartedOnce,
    read_limits,
    run_logger,
)
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._reporter import Reporter, landed
from trio_worker._worker._run_table import InFlightRun, RunTable

__all__ = ["Submitter"]

logger = logging.getLogger("trio_worker.flow_runs")

#: How long the worker keeps asking a busy API whether its PENDING proposal
#: landed: giving up early could leave a run PENDING that nobody starts.
CLAIM_PATIENCE_SECONDS: Final = 60.0
#: Deployments are read at most this often per id, so a burst of runs of one
#: deployment costs one read.
DEPLOYMENT_CACHE_SECONDS: Final = 5.0
#: Flows change only their name; a day-long cache is fresh enough.
FLOW_CACHE_SECONDS: Final = 24 * 3600.0
#: The most deployments (and flows) a worker keeps in memory.
CACHE_ENTRIES: Final = 1024


class Submitter(Generic[C]):
    """Run the submission pipeline for each run the poller hands over.

    Args:
        client: the worker's open API client.
        table: where each run holds its slot.
        reporter: says how runs ended.
        events: ``submitted-flow-run`` and ``executed-flow-run`` go here.
        metrics: submissions and start latency are counted here.
        backend: renders, prepares, and runs the infrastructure.
        work_pool: returns the pool as last read.
        worker_name: named in log lines and shutdown messages.
        cancel_grace_seconds: handed to the backend in each run's context.
    """

    def __init__(
        self,
        client: PrefectClient,
        *,
        table: RunTable,
        reporter: Reporter,
        events: EventEmitter,
        metrics: WorkerMetrics,
        backend: Backend[C],
        work_pool: Callable[[], WorkPool | None],
        worker_name: str,
        cancel_grace_seconds: float,
    ) -> None:
        self._client = client
        self._table = table
        self._reporter = reporter
        self._events = events
        self._metrics = metrics
        self._backend = backend
        self._work_pool = work_pool
        self._name = worker_name
        self._grace = cancel_grace_seconds
        self.deployments: BoundedCache[uuid.UUID, Deployment] = BoundedCache(
            max_entries=CACHE_ENTRIES, ttl_seconds=DEPLOYMENT_CACHE_SECONDS
        )
        self.flows: BoundedCache[uuid.UUID, Flow] = BoundedCache(
            max_entries=CACHE_ENTRIES, ttl_seconds=FLOW_CACHE_SECONDS
        )
        #: One read of a deployment (or flow) for runs submitted together.
        self.read_locks: KeyedLocks[tuple[str, uuid.UUID]] = KeyedLocks()

    async def submit(
        self, flow_run: FlowRun, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own ``flow_run`` from its slot to its final state (start with ``nursery.start``).

        ``started`` is called once the run holds its slot. Whatever ends the
        task, the run's end is reported from a shielded, time-bounded scope:
        CANCELLED (or CRASHED for a timeout) when the worker stopped it on
        purpose, CRASHED with the error when handling it failed, and CRASHED
        (or SCHEDULED again) when a shutdown cut it short.

        Raises:
            trio.WouldBlock: no slot is free (before ``started``).
        """
        async with self._table.slot(flow_run) as tracked:
            task_status.started()
            await self._own(tracked)

    async def _own(self, tracked: InFlightRun) -> None:
        interrupted = True  # until the run's own path has run to its end
        failure: Exception | None = None
        try:
            with tracked.cancel_scope:
                await self._submit(tracked)
            if tracked.cancel_scope.cancelled_caught and tracked.cancel_reason is None:
                tracked.cancel_reason = CancelReason.TIMED_OUT  # nobody asked: the deadline
            interrupted = False
        except Exception as exc:
            # An API outage longer than the retries, or a bug in a backend's run():
            # it ends this run, never the worker and the other runs.
            logger.exception("Handling flow run '%s' failed", tracked.flow_run.id)
            interrupted = False
            failure = exc
        finally:
            if tracked.owned:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self._reporter.report_timeout_seconds
                    await self._reporter.report_end(
                        tracked, failure=failure, interrupted=interrupted
                    )
            with trio.CancelScope(shield=True):
                await self._backend.forget_claim(tracked.flow_run.id)

    async def _claim(self, tracked: InFlightRun) -> bool:
        """Propose PENDING; True when the run is now this worker's to start."""
        flow_run = tracked.flow_run
        # A shutdown already under way: nothing was asked yet, so the run stays
        # SCHEDULED for another worker (claimed, it would be reported CRASHED).
        await trio.lowlevel.checkpoint_if_cancelled()
        # Shielded: a shutdown arriving between the API's commit of PENDING and
        # our reading the answer would otherwise leave the run PENDING, owned by
        # no one.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLAIM_PATIENCE_SECONDS
            pending = State.of(StateType.PENDING)
            # Recorded first: a worker killed once the proposal landed leaves
            # a claim its restart can settle (the process backend's records).
            await self._backend.record_claim(flow_run.id, pending)
            verdict = await until_answered(
                functools.partial(self._client.set_flow_run_state, flow_run.id, pending),
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
                self._reporter.count_aborted()
                return False
            if (
                verdict.state.state_details.scheduled_time is None
                and await self._reporter.restore_if_finished(flow_run, verdict.state)
            ):
                self._reporter.count_aborted()
                return False
            tracked.owned = True
        if scope.cancelled_caught and not tracked.owned:
            logger.error(
                "The API did not answer the PENDING proposal for flow run '%s' within %.0f s; "
                "not starting it. If the proposal landed, the run stays PENDING: set it to "
                "SCHEDULED again to have it run.",
                flow_run.id,
                CLAIM_PATIENCE_SECONDS,
            )
        return tracked.owned

    async def _submit(self, tracked: InFlightRun) -> None:
        flow_run = tracked.flow_run
        reporter = self._reporter
        if not await self._claim(tracked):
            return
        self._metrics.runs_submitted.inc()
        reporter.log(
            flow_run,
            logging.INFO,
            "Worker %r submitting flow run '%s' (%s)",
            self._name,
            flow_run.name,
            flow_run.id,
        )
        try:
            ctx = await self.configure(flow_run)
        except NotFoundError as exc:
            message = f"Deployment {flow_run.deployment_id} no longer exists, cancelled run."
            reporter.log(flow_run, logging.WARNING, "%s (%s)", message, exc)
            await reporter.propose(flow_run.id, State.of(StateType.CANCELLED, message), force=True)
            return
        except ConfigurationError as exc:
            await reporter.crash(
                flow_run, f"Failed to configure the flow run's infrastructure: {exc}"
            )
            return
        tracked.limits = ctx.limits
        if ctx.limits.timeout_seconds is not None:
            tracked.cancel_scope.deadline = trio.current_time() + ctx.limits.timeout_seconds

        submitted = self._events.submitted(flow_run)
        try:
            result = await self._start_and_wait(tracked, ctx)
        except InfrastructureError as exc:
            await reporter.crash(flow_run, f"Failed to submit flow run to infrastructure: {exc}")
            self._events.executed(flow_run, None, None, follows=submitted)
            return
        self._events.executed(flow_run, result.identifier, result.status_code, follows=submitted)
        reporter.log(
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
        if (
            result.status_code != 0
            and ctx.runs_engine
            and await self._reporter.engine_reported_final(flow_run)
        ):
            # A flow that raised: the engine recorded FAILED and exited 1. Not a crash.
            return
        if result.status_code != 0:
            message = describe_exit(result.status_code)
            if ctx.limits.memory_limit_mb is not None:
                message += (
                    f" The run had a memory limit of {ctx.limits.memory_limit_mb} MB"
                    " (job variable memory_limit_mb); exceeding it ends a process this way."
                )
            await reporter.crash(flow_run, message)
            return
        await self._reporter.complete_if_unreported(flow_run, engine=ctx.runs_engine)

    async def _start_and_wait(self, tracked: InFlightRun, ctx: RunContext[C]) -> BaseWorkerResult:
        """Run the infrastructure; record its id the moment it exists."""
        flow_run = tracked.flow_run
        results: list[BaseWorkerResult] = []

        async def run_and_keep_result(task_status: trio.TaskStatus[str]) -> None:
            status = StartedOnce(task_status)
            result = await self._backend.run(ctx, status)
            results.append(result)
            if not status.called:
                # Prefect tolerates a run() that never said it started (its
                # task_status is optional there): the run did happen, so its
                # result decides, not "child exited without calling started()".
                self._reporter.log(
                    flow_run,
                    logging.ERROR,
                    "Infrastructure returned without reporting flow run '%s' as started "
                    "(task_status.started was not called)",
                    flow_run.id,
                )
                status.started(result.identifier)

        failure: InfrastructureError | None = None
        try:
            async with trio.open_nursery() as nursery:
                identifier = await nursery.start(run_and_keep_result)
                tracked.infrastructure_pid = identifier
                self._metrics.observe_start(flow_run, now())
                self._reporter.log(
                    flow_run,
                    logging.INFO,
                    "Flow run '%s' submitted to infrastructure %s",
                    flow_run.name,
                    identifier,
                )
                try:
                    await self._client.update_flow_run(flow_run.id, infrastructure_pid=identifier)
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

    # -- configuration ----------------------------------------------------------

    async def configure(self, flow_run: FlowRun) -> RunContext[C]:
        """Render the pool's template with the deployment's and the run's job variables.

        Raises:
            NotFoundError: the run's deployment no longer exists.
            ConfigurationError: the template or the variables do not render
                (``JobVariableError`` for a limit out of range).
        """
        pool = self._work_pool()
        if pool is None:
            raise ConfigurationError("the work pool is not known yet")
        deployment = None
        if flow_run.deployment_id is not None:
            deployment = await self._read_deployment(flow_run.deployment_id)
        flow = await self._read_flow(flow_run.flow_id)
        values = merge_job_variables(
            deployment.job_variables if deployment is not None else None, flow_run.job_variables
        )
        limits = read_limits(values)

        async def get_variable(name: str) -> object | None:
            variable = await self._client.read_variable_by_name(name)
            return None if variable is None else variable.value

        backend = self._backend
        rendered = await backend.job_configuration.from_template_and_values(
            pool.base_job_template,
            values,
            get_variable=get_variable,
            # Block references are resolved through the API before the backend
            # sees the configuration; a missing block is a TemplateError naming it.
            get_block=self._client.read_block_document_data_by_name,
            get_block_document=self._client.read_block_document_data,
        )
        # The engine runs when the job set no command and the worker has one:
        # said by the job, not guessed by comparing command lines.
        runs_engine = not rendered.command and backend.default_command is not None
        return RunContext(
            flow_run=flow_run,
            configuration=backend.prepare(rendered, flow_run, deployment, flow),
            logger=run_logger(flow_run, worker_name=self._name),
            limits=limits,
            cancel_grace_seconds=self._grace,
            runs_engine=runs_engine,
        )

    async def _read_deployment(self, deployment_id: uuid.UUID) -> Deployment:
        async with self.read_locks.hold(("deployment", deployment_id)):
            cached = self.deployments.get(deployment_id)
            if cached is not None:
                return cached
            deployment = await self._client.read_deployment(deployment_id)
            self.deployments.put(deployment_id, deployment)
            return deployment

    async def _read_flow(self, flow_id: uuid.UUID) -> Flow | None:
        async with self.read_locks.hold(("flow", flow_id)):
            cached = self.flows.get(flow_id)
            if cached is not None:
                return cached
            try:
                flow = await self._client.read_flow(flow_id)
            except NotFoundError:
                return None
            self.flows.put(flow_id, flow)
            return flow


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _first_leaf(group: BaseExceptionGroup[InfrastructureError]) -> InfrastructureError:
    leaf = _leaf(group)
    assert isinstance(leaf, InfrastructureError)  # the group was split on it
    return leaf
