"""The ``inline`` worker: each flow run is a shell script written inline in its deployment.

A deployment (or a single run) sets the job variable ``setup``: shell lines such
as ``. /srv/app/.venv/bin/activate`` or ``export FEATURE_X=1``. The worker runs
``setup`` and then ``exec``-s the flow run's command in one shell, so the flow
runs in the environment the script prepared. Each run is a process group of its
own on this host; its id, ``"hostname:pid"``, is what the worker records as the
run's ``infrastructure_pid``.

It is deliberately small, to show the four things every backend provides:

1. a job configuration (and variables) class: what a pool's template renders into;
2. :meth:`InlineWorker.run`: start the infrastructure, report its id, wait for it,
   and stop it when the run is cancelled;
3. :meth:`InlineWorker.kill_infrastructure`: stop infrastructure by its id, for
   runs a worker process that has since died started;
4. an entry point in ``pyproject.toml`` so ``trio-worker start --type inline``
   finds the class.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from typing import Any, Final

import attrs
import trio

# --8<-- [start:imports]
from trio_worker import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
    InfrastructureError,
)

# job_metadata is not re-exported by ``trio_worker`` (yet); it lives here.
from trio_worker._core._jobs import job_metadata
from trio_worker.models import FlowRun

# --8<-- [end:imports]

__all__ = ["InlineJobConfiguration", "InlineVariables", "InlineWorker"]

HOSTNAME: Final = socket.gethostname()
#: How often a process group this worker did not start is checked while it stops.
GROUP_POLL_SECONDS: Final = 0.1

# --8<-- [start:configuration]
# The title and description are what a person sees when editing the pool.
_SETUP: Final = job_metadata(
    title="Setup",
    description="Shell lines run before the flow run's command, e.g. '. .venv/bin/activate'.",
)
_SHELL: Final = job_metadata(title="Shell", description="The shell that runs the script.")


@attrs.frozen(kw_only=True)
class InlineVariables(BaseVariables):
    """The job variables of an ``inline`` pool: the base ones plus ``setup`` and ``shell``."""

    setup: str | None = attrs.field(default=None, metadata=_SETUP)
    shell: str = attrs.field(default="/bin/sh", metadata=_SHELL)


@attrs.frozen(kw_only=True)
class InlineJobConfiguration(BaseJobConfiguration):
    """How the inline worker starts one flow run (rendered from the pool's template)."""

    setup: str | None = attrs.field(default=None, metadata=_SETUP)
    shell: str = attrs.field(default="/bin/sh", metadata=_SHELL)

    def script(self, *, memory_limit_mb: int | None = None) -> str:
        """Return the shell script: stop at the first error, set up, then become the flow."""
        lines = ["set -e"]
        if memory_limit_mb is not None:
            # The per-run job variable memory_limit_mb, applied the shell's way.
            lines.append(f"ulimit -v {memory_limit_mb * 1024}")
        if self.setup:
            lines.append(self.setup)
        # exec: the flow's process replaces the shell, keeping its pid and group.
        lines.append(f"exec {self.command}")
        return "\n".join(lines)


# --8<-- [end:configuration]


# --8<-- [start:worker]
class InlineWorker(BaseWorker):
    """Run each flow run as ``shell -c <setup; exec command>`` in its own process group."""

    type = "inline"
    job_configuration = InlineJobConfiguration
    job_configuration_variables = InlineVariables

    def default_command(self) -> str:
        """Run trio-worker's engine (which reports the run's states) with our interpreter."""
        return shlex.join([sys.executable, "-m", "trio_worker.engine"])

    # --8<-- [end:worker]

    # --8<-- [start:run]
    async def run(
        self,
        flow_run: FlowRun,
        configuration: Any,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        """Start the script, report its id, and wait for it; stop its group if cancelled.

        Raises:
            InfrastructureError: the shell cannot be started; the message becomes
                the run's CRASHED message.
        """
        assert isinstance(configuration, InlineJobConfiguration)
        tracked = self.in_flight.get(flow_run.id)  # the worker's record of this run
        memory_limit_mb = tracked.memory_limit_mb if tracked is not None else None
        script = configuration.script(memory_limit_mb=memory_limit_mb)
        env = {**os.environ, **{k: v for k, v in configuration.env.items() if v is not None}}
        try:
            process = await trio.lowlevel.open_process(
                [configuration.shell, "-c", script],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a process group of its own, to signal as one
            )
        except OSError as exc:
            raise InfrastructureError(
                f"could not start shell {configuration.shell!r}: {exc.strerror}"
            ) from None
        identifier = f"{HOSTNAME}:{process.pid}"
        # The infrastructure exists: the worker records it as infrastructure_pid.
        task_status.started(identifier)
        try:
            await process.wait()
        finally:
            # Runs whether the script ended or the run was cancelled (a user's
            # cancellation, its timeout_seconds, a shutdown). Shielded: the
            # group must be gone before the cancellation goes on.
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    await stop_process_group(
                        process.pid, grace_seconds=self.cancel_grace_seconds, leader=process
                    )
                else:
                    signal_process_group(process.pid, signal.SIGKILL)  # orphans, if any
        assert process.returncode is not None  # waited for above
        return BaseWorkerResult(identifier=identifier, status_code=process.returncode)

    # --8<-- [end:run]

    # --8<-- [start:kill]
    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: Any, grace_seconds: float
    ) -> None:
        """Stop the process group of a run a worker that has since died started here.

        Raises:
            InfrastructureError: the id is not ``"host:pid"``, or names another host
                (only that host's worker can reach it).
        """
        host, _, pid = infrastructure_pid.rpartition(":")
        if not pid.isdigit():
            raise InfrastructureError(f"infrastructure_pid {infrastructure_pid!r} is not host:pid")
        if host != HOSTNAME:
            raise InfrastructureError(f"infrastructure {infrastructure_pid!r} is on another host")
        await stop_process_group(int(pid), grace_seconds=grace_seconds)

    # --8<-- [end:kill]


def signal_process_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; return whether any process was there.

    Raises:
        InfrastructureError: the group belongs to another user (a reused pid?).
    """
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise InfrastructureError(f"not allowed to signal process group {pgid}") from None
    return True


async def stop_process_group(
    pgid: int, *, grace_seconds: float, leader: trio.Process | None = None
) -> None:
    """SIGTERM the group, give it ``grace_seconds`` to go, then SIGKILL what is left.

    Args:
        pgid: the process group (the pid of its leader).
        grace_seconds: how long the group may take to exit after SIGTERM.
        leader: the leader, when it is our child: it is waited for (reaped).
    """
    if not signal_process_group(pgid, signal.SIGTERM):
        return
    with trio.move_on_after(grace_seconds):
        if leader is not None:
            await leader.wait()
        # A group we are not the parent of sends no exit notification: poll it.
        while signal_process_group(pgid, 0):  # noqa: ASYNC110
            await trio.sleep(GROUP_POLL_SECONDS)
    signal_process_group(pgid, signal.SIGKILL)
    if leader is not None:
        await leader.wait()
