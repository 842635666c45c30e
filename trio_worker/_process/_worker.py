"""``ProcessWorker``: runs each flow run as a local subprocess.

The child is started with ``trio.run_process`` in a new session (its own
process group) inside the run's nursery. Cancelling the run's scope makes
trio call :func:`~trio_worker._process._group.terminate_process_group`: SIGTERM
to the group, the grace period, SIGKILL; once the leader has exited the group
is swept with SIGKILL, so nothing the run spawned survives it. A memory
ceiling is set by an exec wrapper before the command's first instruction
(:mod:`trio_worker._process._memory_cap`).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from types import TracebackType
from typing import Any, Final, Self

import trio

from trio_worker._core._exceptions import InfrastructureError
from trio_worker._core._models import FlowRun, State, now
from trio_worker._core._settings import parse_bool, process_environment
from trio_worker._core._time import format_datetime
from trio_worker._process._claims import record_claim, record_exited, record_starting
from trio_worker._process._config import ProcessJobConfiguration, ProcessVariables
from trio_worker._process._group import (
    HOSTNAME,
    WORKER_PID_ENV,
    format_infrastructure_pid,
    is_orphaned,
    kill_process_group,
    parent_pid,
    parse_infrastructure_pid,
    process_env_value,
    process_running,
    process_start_time,
    run_process_group,
    sweep_process_group,
    terminate_process_group,
)
from trio_worker._process._memory_cap import capped_command, effective_limit
from trio_worker._process._reconcile import Reconciler
from trio_worker._process._run_records import RunRecord, RunRecords
from trio_worker._process._warm_start import WarmStarter, open_warm_starter
from trio_worker._worker._base import BaseWorker
from trio_worker._worker._context import BaseWorkerResult, RunContext

__all__ = ["ProcessWorker"]

logger = logging.getLogger("trio_worker.process")

ENGINE_COMMAND: Final = (sys.executable, "-m", "trio_worker.engine")
#: In a job's env, ``0``/``false`` opts that run out of warm start.
WARM_START_ENV: Final = "TRIO_WORKER_WARM_START"
#: How long a killed warm run's exit may take to be reported by its zygote.
EXIT_REPORT_SECONDS: Final = 5.0
#: How often a warm run whose zygote died is checked for its end.
ORPHAN_POLL_SECONDS: Final = 1.0


def _log_cold(flow_run: FlowRun) -> None:
    logger.info("Flow run '%s' starts cold: no warm-start zygote is available", flow_run.id)


class ProcessWorker(BaseWorker[ProcessJobConfiguration, ProcessVariables]):
    """Run flow runs as subprocesses of the worker, each in its own process group."""

    type = "process"
    job_configuration = ProcessJobConfiguration
    job_configuration_variables = ProcessVariables

    def __init__(self, work_pool_name: str, **kwargs: Any) -> None:
        super().__init__(work_pool_name, **kwargs)
        self.run_records = RunRecords(self.name, self.settings.state_dir)
        #: Forks engine runs while the worker is open with warm start on.
        self.warm_starter: WarmStarter | None = None
        self._warm_stack = contextlib.AsyncExitStack()

    async def reconcile_infrastructure(self) -> None:
        """Adopt or kill the processes an earlier worker of this name left running."""
        loops = self.loops
        reconciler = Reconciler(
            loops.client,
            records=self.run_records,
            table=self.table,
            reporter=loops.reporter,
            runs_nursery=loops.runs,
            worker_name=self.name,
            mode=self.reconcile,
            cancel_grace_seconds=self.cancel_grace_seconds,
        )
        await reconciler.reconcile()

    async def record_claim(self, flow_run_id: uuid.UUID, pending: State) -> None:
        """Record the claim in the run records before PENDING is proposed (``_claims.py``)."""
        await record_claim(self.run_records, flow_run_id, pending)

    async def forget_claim(self, flow_run_id: uuid.UUID) -> None:
        """Drop the run's record once its end is reported (or it was never started)."""
        await self.run_records.remove(str(flow_run_id))

    def default_command(self) -> str:
        """Run trio-worker's engine with the worker's own interpreter."""
        return shlex.join(ENGINE_COMMAND)

    async def __aenter__(self) -> Self:
        # The warm starter is opened around the base worker (and so around its
        # runs nursery): it outlives every run, whose exits it reports.
        async with contextlib.AsyncExitStack() as stack:
            if self.settings.warm_start:
                self.warm_starter = await stack.enter_async_context(
                    open_warm_starter(
                        self.settings.preload,
                        max_forks=self.settings.warm_start_max_forks,
                        max_rss_growth_mb=self.settings.warm_start_max_growth_mb,
                    )
                )
            await super().__aenter__()
            self._warm_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await super().__aexit__(exc_type, exc, tb)
        finally:
            stack, self._warm_stack = self._warm_stack, contextlib.AsyncExitStack()
            self.warm_starter = None
            await stack.aclose()

    def _warm_eligible(self, ctx: RunContext[ProcessJobConfiguration]) -> bool:
        """Only the engine itself is forked, and only when the deployment does not opt out."""
        if self.warm_starter is None or not ctx.runs_engine:
            return False
        configuration = ctx.configuration
        job_env = {k: v for k, v in configuration.env.items() if v is not None}
        if WARM_START_ENV in job_env:
            try:
                if not parse_bool(job_env[WARM_START_ENV]):
                    return False
            except ValueError:
                return False
        # Variables read by the interpreter at start-up would not take effect in a fork.
        return not any(k.startswith("PYTHON") and k != "PYTHONPATH" for k in job_env)

    async def run(
        self,
        ctx: RunContext[ProcessJobConfiguration],
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        """Start the configured command, report its pid, and wait for it to exit.

        Engine runs are forked from the warm-start zygote when one is
        available (:mod:`trio_worker._process._warm_start`); anything else, or when no
        zygote can be had, starts a fresh process.

        Raises:
            InfrastructureError: the working directory is missing or the command
                cannot be executed.
        """
        configuration = ctx.configuration
        command = shlex.split(configuration.command or self.default_command())
        if not command:
            raise InfrastructureError("the job's command is empty")
        temporary_dir = None
        if configuration.working_dir:
            cwd = os.fspath(configuration.working_dir)
            if not await trio.Path(cwd).is_dir():
                raise InfrastructureError(f"working directory {cwd!r} does not exist")
        else:
            temporary_dir = cwd = tempfile.mkdtemp(prefix="trio-worker-", suffix="-run")
        env = {
            **process_environment(),
            **{k: v for k, v in configuration.env.items() if v is not None},
        }
        # Recorded in the run itself: a later worker tells an orphan by it.
        env[WORKER_PID_ENV] = str(os.getpid())
        memory_limit_mb = ctx.limits.memory_limit_mb
        limit_bytes = None if memory_limit_mb is None else effective_limit(memory_limit_mb)
        # A restart after a death from here on cannot tell whether the process
        # was spawned: the record says so (``_claims.py``).
        await record_starting(self.run_records, flow_run_id=ctx.flow_run.id)
        try:
            result = None
            # A memory ceiling starts cold: RLIMIT_AS counts the address space a
            # fork inherits (the zygote's imports, Prefect's included), so the
            # same limit would be tighter warm than cold.
            if limit_bytes is None and self._warm_eligible(ctx):
                result = await self._run_warm(ctx, env, cwd, limit_bytes, task_status)
            if result is None:
                result = await self._run_cold(ctx, command, env, cwd, limit_bytes, task_status)
            return result
        finally:
            if temporary_dir is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, temporary_dir, True)

    async def _run_cold(
        self,
        ctx: RunContext[ProcessJobConfiguration],
        command: list[str],
        env: dict[str, str],
        cwd: str,
        limit_bytes: int | None,
        task_status: trio.TaskStatus[str],
    ) -> BaseWorkerResult:
        """Start the command as a fresh child process of the worker."""
        flow_run, configuration = ctx.flow_run, ctx.configuration
        grace_seconds = ctx.cancel_grace_seconds
        output = None if configuration.stream_output else subprocess.DEVNULL
        argv = command if limit_bytes is None else capped_command(command, limit_bytes)
        spawn = functools.partial(
            run_process_group,
            argv,
            grace_seconds=grace_seconds,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
        spawn_error: OSError | None = None
        process: trio.Process | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    process = await nursery.start(spawn)
                except OSError as exc:
                    spawn_error = exc
                else:
                    task_status.started(format_infrastructure_pid(process.pid))
                    await self._record(flow_run, process.pid)
        finally:
            if process is not None:
                with trio.CancelScope(shield=True):
                    # Kept until the run's end is reported (``forget_claim``).
                    await record_exited(self.run_records, flow_run.id, process.returncode)
        if spawn_error is not None or process is None:
            reason = spawn_error.strerror if spawn_error else "no process"
            raise InfrastructureError(f"could not start {command[0]!r}: {reason}")
        assert process.returncode is not None
        return BaseWorkerResult(
            identifier=format_infrastructure_pid(process.pid), status_code=process.returncode
        )

    async def _run_warm(
        self,
        ctx: RunContext[ProcessJobConfiguration],
        env: dict[str, str],
        cwd: str,
        limit_bytes: int | None,
        task_status: trio.TaskStatus[str],
    ) -> BaseWorkerResult | None:
        """Fork the engine run from the zygote; ``None`` when it must start cold instead."""
        assert self.warm_starter is not None
        flow_run, configuration = ctx.flow_run, ctx.configuration
        with contextlib.ExitStack() as fds:
            devnull = os.open(os.devnull, os.O_RDWR)
            fds.callback(os.close, devnull)
            out = 1 if configuration.stream_output else devnull
            err = 2 if configuration.stream_output else devnull
            child = await self.warm_starter.spawn(
                argv0=ENGINE_COMMAND[0],
                env=env,
                cwd=cwd,
                fds=(devnull, out, err),
                memory_limit_bytes=limit_bytes,
            )
        if child is None:
            _log_cold(flow_run)
            return None
        try:
            task_status.started(format_infrastructure_pid(child.pid))
            started = process_start_time(child.pid)
            await self._record(flow_run, child.pid)
            await child.wait()
            if child.returncode is None:
                # Its zygote died first: the run lives on (its parent is now init
                # or a subreaper), as a cold start's would. Wait for it to end;
                # polled, since a process that is not our child cannot be awaited.
                logger.warning(
                    "The warm-start zygote of flow run '%s' (pid %d) died; watching the run"
                    " until it ends",
                    flow_run.id,
                    child.pid,
                )
                while process_running(child.pid, started):  # noqa: ASYNC110
                    await trio.sleep(ORPHAN_POLL_SECONDS)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await terminate_process_group(child, grace_seconds=ctx.cancel_grace_seconds)
                with trio.move_on_after(ctx.cancel_grace_seconds + EXIT_REPORT_SECONDS):
                    await child.wait()
            raise
        finally:
            sweep_process_group(child.pid)
            with trio.CancelScope(shield=True):
                await record_exited(self.run_records, flow_run.id, child.returncode)
        if child.returncode is None:
            logger.warning(
                "The exit status of flow run '%s' (pid %d) is unknown: its zygote died first;"
                " the run's own states tell how it ended",
                flow_run.id,
                child.pid,
            )
        return BaseWorkerResult(
            identifier=format_infrastructure_pid(child.pid),
            status_code=0 if child.returncode is None else child.returncode,
        )

    async def _record(self, flow_run: FlowRun, pid: int) -> None:
        await self.run_records.add(
            RunRecord(
                flow_run_id=str(flow_run.id),
                pid=pid,
                start_ticks=process_start_time(pid),
                started_at=format_datetime(now()),
            )
        )

    def infrastructure_is_abandoned(self, flow_run: FlowRun, infrastructure_pid: str) -> bool:
        """Only a process on this host whose worker died is ours to stop.

        A process on another host belongs to that host's worker (a bare pid,
        as Prefect 3.9 writes, has an unknown host). A process whose parent
        is still alive belongs to the live worker that started it. A pid that
        now belongs to another program (reused) is never signalled: the
        process must carry the run's ``PREFECT__FLOW_RUN_ID``.
        """
        try:
            host, pid = parse_infrastructure_pid(infrastructure_pid)
        except ValueError:
            logger.warning(
                "Flow run '%s' has an unreadable infrastructure_pid %r",
                flow_run.id,
                infrastructure_pid,
            )
            return False
        if host != HOSTNAME:
            self.warn_once(
                f"foreign-{flow_run.id}",
                "Flow run '%s' runs on %s; leaving its cancellation to that host's worker",
                flow_run.id,
                host or "an unknown host",
            )
            return False
        if parent_pid(pid) is None:
            # The leader is gone; a group with its id can only hold its leftovers
            # (a new group of that id would need a leader with that pid).
            return True
        if process_env_value(pid, "PREFECT__FLOW_RUN_ID") != str(flow_run.id):
            return False
        recorded = process_env_value(pid, WORKER_PID_ENV)
        worker_pid = int(recorded) if recorded and recorded.isdigit() else None
        return is_orphaned(pid, worker_pid=worker_pid)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: ProcessJobConfiguration,
        grace_seconds: float,
    ) -> None:
        """Stop the process group of a run an earlier worker on this host started.

        Raises:
            InfrastructureError: the pid belongs to another host or is not a number.
        """
        try:
            host, pid = parse_infrastructure_pid(infrastructure_pid)
        except ValueError:
            raise InfrastructureError(
                f"infrastructure_pid {infrastructure_pid!r} is not 'host:pid' or a pid"
            ) from None
        if host is not None and host != HOSTNAME:
            raise InfrastructureError(
                f"flow run infrastructure {infrastructure_pid!r} runs on another host"
            )
        await kill_process_group(pid, grace_seconds=grace_seconds)
