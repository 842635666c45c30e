"""``BackendContract``: what a backend provides, typed in its own configuration.

The half of :class:`~trio_worker.BaseWorker` a backend author overrides:
the type name, the configuration and variables classes, :meth:`run` (given a
:class:`~trio_worker._worker._context.RunContext` of the backend's own
configuration type), :meth:`kill_infrastructure` (given the run's
configuration), and the optional hooks (``setup``/``teardown``, ``base_env``,
``get_flow_run_logger``), and the :class:`~trio_worker._worker._context.Backend`
through which the parts call them. Kept apart from the worker's lifecycle so
each reads alone. A ``run(flow_run, configuration,
task_status)`` of the old form still works, with a ``DeprecationWarning``
when the class is defined.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import uuid
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

import trio

from trio_worker._core._job_prepare import prepare_for_flow_run
from trio_worker._core._jobs import BaseJobConfiguration, default_base_job_template
from trio_worker._core._models import Deployment, Flow, FlowRun, State, WorkPool
from trio_worker._core._settings import Settings
from trio_worker._worker._context import (
    RUN_LOGGER_NAME,
    Backend,
    BaseWorkerResult,
    C,
    RunContext,
    V,
)

__all__ = ["BackendContract"]


class BackendContract(Generic[C, V]):
    """The methods and class attributes a backend supplies (see ``BaseWorker``)."""

    #: The worker type's name, as in a pool's ``type``.
    type: ClassVar[str] = ""
    #: The job configuration class (``C``) that the pool's template renders into.
    job_configuration: ClassVar[builtins.type[BaseJobConfiguration]] = BaseJobConfiguration
    #: The variables class (``V``) the default template's schema comes from; when
    #: ``None`` (the default) the schema is derived from :attr:`job_configuration`
    #: itself, as Prefect does, so a worker that sets only its configuration
    #: class publishes its own fields.
    job_configuration_variables: ClassVar[builtins.type[Any] | None] = None
    #: Whether :meth:`run` has the deprecated ``(flow_run, configuration, task_status)`` form.
    _legacy_run: ClassVar[bool] = False

    if TYPE_CHECKING:  # set by BaseWorker.__init__; read by the hooks below
        name: str
        work_pool_name: str
        api_url: str | None
        settings: Settings

        @property
        def work_pool(self) -> WorkPool | None: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None:
            cls._legacy_run = "flow_run" in inspect.signature(run).parameters
            if cls._legacy_run:
                warnings.warn(
                    f"{cls.__qualname__}.run(flow_run, configuration, task_status) is "
                    "deprecated: take run(ctx: RunContext, task_status) instead "
                    "(ctx.flow_run, ctx.configuration, ctx.limits)",
                    DeprecationWarning,
                    stacklevel=2,
                )

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        """Return the base job template a new pool of this type gets."""
        return default_base_job_template(cls.job_configuration, cls.job_configuration_variables)

    async def reconcile_infrastructure(self) -> None:
        """Deal with infrastructure an earlier worker of this name left behind.

        Called once at start, before the first poll. The base class keeps no
        record of what it started, so there is nothing to do.
        """

    async def record_claim(self, flow_run_id: uuid.UUID, pending: State) -> None:
        """Note, before ``pending`` is proposed, that this worker claims the run.

        A backend that keeps records across restarts (the process worker)
        writes one, so a restart after a death between the claim and the
        process can settle the run. The base class keeps none.
        """

    async def forget_claim(self, flow_run_id: uuid.UUID) -> None:
        """Drop the claim of a run this worker is done with (a no-op without one)."""

    def default_command(self) -> str | None:
        """Return the command a run gets when its configuration sets none (the engine)."""
        return None

    async def run(
        self, ctx: RunContext[C], task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> BaseWorkerResult:
        """Start ``ctx.flow_run``'s infrastructure and wait for it to exit.

        Call ``task_status.started(identifier)`` the moment the infrastructure
        exists; the worker records it as the run's ``infrastructure_pid``.
        When cancelled (a user's cancellation, ``timeout_seconds``, a
        shutdown), stop the infrastructure before returning (or raising).

        Raises:
            InfrastructureError: the infrastructure could not be started; its
                message becomes the run's CRASHED message.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def infrastructure_is_abandoned(self, flow_run: FlowRun, infrastructure_pid: str) -> bool:
        """Whether this worker should stop a cancelled run it did not start.

        Called for a cancelling run of this pool that is not in flight here.
        The base class says yes and lets :meth:`kill_infrastructure` decide
        (raising ``NotImplementedError`` when it cannot); a backend whose
        infrastructure has an owner that may still be alive (the process
        worker: a worker on the same host) says no for those.
        """
        return True

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: C, grace_seconds: float
    ) -> None:
        """Stop infrastructure that this worker process did not start (e.g. before a restart).

        ``configuration`` is the run's job configuration, rendered as for a start.

        Raises:
            InfrastructureError: when it cannot be reached or stopped.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot kill infrastructure")

    async def _start_run(
        self, ctx: RunContext[C], task_status: trio.TaskStatus[str]
    ) -> BaseWorkerResult:
        if self._legacy_run:
            legacy = cast("Callable[..., Any]", self.run)
            result: BaseWorkerResult = await legacy(
                ctx.flow_run, ctx.configuration, task_status=task_status
            )
            return result
        return await self.run(ctx, task_status)

    async def setup(self) -> None:
        """Prepare what the backend needs, once the worker is open (a hook; does nothing).

        Called by ``async with worker`` (and so by :meth:`start`) after the API
        client and the runs nursery exist, before any run is taken. Open the
        backend's own resources here (a container client, a cloud session).
        As in Prefect, an override may call ``await super().setup()``. When it
        raises, :meth:`teardown` is still called, with the exception, so a
        setup that failed half-way can close what it had opened.
        """

    async def teardown(self, *exc_info: Any) -> None:
        """Release what :meth:`setup` opened (a hook; does nothing).

        Called once when the worker closes, after every run has ended and
        before the API client closes; also when :meth:`setup` failed.

        Args:
            *exc_info: ``(type, value, traceback)`` of the exception closing the
                worker, or three ``None``.
        """

    def get_flow_run_logger(self, flow_run: FlowRun) -> logging.LoggerAdapter[logging.Logger]:
        """Return a logger whose lines are shipped to ``flow_run``'s logs, as Prefect's.

        Its records carry the run's id and this worker's name, so the worker's
        log handler (attached while :meth:`start` runs) sends them to the API
        with the worker's own lines about the run; they also reach the usual
        Python handlers under ``trio_worker.flow_runs.worker``.
        """
        extra = {
            "flow_run_id": flow_run.id,
            "flow_run_name": flow_run.name,
            "worker_name": self.name,
            "work_pool_name": self.work_pool_name,
            "work_pool_id": str(self.work_pool.id) if self.work_pool is not None else "unknown",
        }
        return logging.LoggerAdapter(logging.getLogger(f"{RUN_LOGGER_NAME}.worker"), extra)

    def base_env(self) -> dict[str, str]:
        """Return the env a run's infrastructure needs to reach the API (lowest layer)."""
        env = {"PREFECT_API_URL": self.api_url or ""}
        if self.settings.api_key:
            env["PREFECT_API_KEY"] = self.settings.api_key
        if self.settings.api_auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.settings.api_auth_string
        return env

    def _backend(self) -> Backend[C]:
        """What the parts may ask of this backend: bound methods, typed in ``C``."""
        return Backend(
            job_configuration=cast("builtins.type[C]", self.job_configuration),
            prepare=self._prepare,
            run=self._start_run,
            default_command=self.default_command(),
            is_abandoned=self.infrastructure_is_abandoned,
            kill=self.kill_infrastructure,
            record_claim=self.record_claim,
            forget_claim=self.forget_claim,
        )

    def _prepare(
        self, configuration: C, flow_run: FlowRun, deployment: Deployment | None, flow: Flow | None
    ) -> C:
        return prepare_for_flow_run(
            configuration,
            flow_run=flow_run,
            deployment=deployment,
            flow=flow,
            worker_name=self.name,
            work_pool=self.work_pool,
            base_env=self.base_env(),
            default_command=self.default_command(),
        )
