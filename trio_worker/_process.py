"""``ProcessWorker``: runs each flow run as a local subprocess.

The child is started with ``trio.run_process`` in a new session (its own
process group) inside the run's nursery. Cancelling the run's scope makes
trio call :func:`~trio_worker._process_group.terminate_process_group`: SIGTERM
to the group, the grace period, SIGKILL; once the leader has exited the group
is swept with SIGKILL, so nothing the run spawned survives it. A memory
ceiling is set by an exec wrapper before the command's first instruction
(:mod:`trio_worker._memory_cap`).
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Final

import trio

from trio_worker._exceptions import InfrastructureError
from trio_worker._memory_cap import capped_command, effective_limit
from trio_worker._models import FlowRun, now
from trio_worker._process_config import ProcessJobConfiguration, ProcessVariables
from trio_worker._process_group import (
    kill_process_group,
    parent_pid,
    process_env_value,
    process_start_time,
    signal_process_group,
    terminate_process_group,
)
from trio_worker._run_records import RunRecord, RunRecords
from trio_worker._worker import HOSTNAME, BaseWorker, BaseWorkerResult

__all__ = ["ProcessWorker", "format_infrastructure_pid", "parse_infrastructure_pid"]

logger = logging.getLogger("trio_worker.process")

ENGINE_COMMAND: Final = (sys.executable, "-m", "trio_worker.engine")


def format_infrastructure_pid(pid: int) -> str:
    """Return ``"hostname:pid"``: no worker on another host will ever signal it."""
    return f"{HOSTNAME}:{pid}"


def parse_infrastructure_pid(value: str) -> tuple[str | None, int]:
    """Split ``"host:pid"`` (ours, Prefect 3.0) or a bare ``"pid"`` (Prefect 3.9).

    Returns:
        ``(host, pid)``; ``host`` is None for a bare pid, whose host is unknown.

    Raises:
        ValueError: when the pid part is not a number.
    """
    host, _, pid = value.rpartition(":")
    return (host or None), int(pid)


class ProcessWorker(BaseWorker):
    """Run flow runs as subprocesses of the worker, each in its own process group."""

    type = "process"
    job_configuration = ProcessJobConfiguration
    job_configuration_variables = ProcessVariables

    def __init__(self, work_pool_name: str, **kwargs: Any) -> None:
        super().__init__(work_pool_name, **kwargs)
        self.run_records = RunRecords(self.name, self.settings.state_dir)

    async def reconcile_infrastructure(self) -> None:
        """Adopt or kill the processes an earlier worker of this name left running."""
        from trio_worker._reconcile import reconcile_process_runs

        await reconcile_process_runs(self)

    def default_command(self) -> str:
        """Run trio-worker's engine with the worker's own interpreter."""
        return shlex.join(ENGINE_COMMAND)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: Any,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        """Start the configured command, report its pid, and wait for it to exit.

        Raises:
            InfrastructureError: the working directory is missing or the command
                cannot be executed.
        """
        assert isinstance(configuration, ProcessJobConfiguration)
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
        env = {**os.environ, **{k: v for k, v in configuration.env.items() if v is not None}}
        output = None if configuration.stream_output else subprocess.DEVNULL
        tracked = self.in_flight.get(flow_run.id)
        memory_limit_mb = tracked.memory_limit_mb if tracked is not None else None
        argv = command
        if memory_limit_mb is not None:
            argv = capped_command(command, effective_limit(memory_limit_mb))
        spawn = functools.partial(
            trio.run_process,
            argv,
            check=False,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            deliver_cancel=functools.partial(
                terminate_process_group, grace_seconds=self.cancel_grace_seconds
            ),
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
                    await self.run_records.add(
                        RunRecord(
                            flow_run_id=str(flow_run.id),
                            pid=process.pid,
                            start_ticks=process_start_time(process.pid),
                            started_at=now().isoformat(),
                        )
                    )
        finally:
            if process is not None:
                # The leader is gone; anything left in its group is an orphan.
                signal_process_group(process.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await self.run_records.remove(str(flow_run.id))
            if temporary_dir is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, temporary_dir, True)
        if spawn_error is not None or process is None:
            reason = spawn_error.strerror if spawn_error else "no process"
            raise InfrastructureError(f"could not start {command[0]!r}: {reason}")
        assert process.returncode is not None
        return BaseWorkerResult(
            identifier=format_infrastructure_pid(process.pid), status_code=process.returncode
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
            self._warn_once(
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
        return is_orphaned(pid)

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: Any, grace_seconds: float
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


def is_orphaned(pid: int) -> bool:
    """Whether ``pid`` exists and its worker died (it was re-parented to init)."""
    parent = parent_pid(pid)
    return parent is not None and parent == 1
