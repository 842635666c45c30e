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

import functools
import os
import shlex
import socket
import subprocess
import sys
from typing import Final

import attrs
import trio

# --8<-- [start:imports]
from trio_worker import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
    InfrastructureError,
    RunContext,
    format_infrastructure_pid,
    job_metadata,
    kill_process_group,
    parse_infrastructure_pid,
    run_process_group,
)

# --8<-- [end:imports]

__all__ = ["InlineJobConfiguration", "InlineVariables", "InlineWorker"]

#: This host's name: the first half of the ids ``format_infrastructure_pid`` makes here.
HOSTNAME: Final = socket.gethostname()

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
class InlineWorker(BaseWorker[InlineJobConfiguration, InlineVariables]):
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
        ctx: RunContext[InlineJobConfiguration],
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        """Start the script, report its id, and wait for it; stop its group if cancelled.

        Raises:
            InfrastructureError: the shell cannot be started; the message becomes
                the run's CRASHED message.
        """
        configuration = ctx.configuration  # an InlineJobConfiguration, typed
        script = configuration.script(memory_limit_mb=ctx.limits.memory_limit_mb)
        env = {**os.environ, **{k: v for k, v in configuration.env.items() if v is not None}}
        async with trio.open_nursery() as nursery:
            try:
                # A process group of its own; stopped (SIGTERM, grace, SIGKILL) when
                # the run is cancelled, and swept of leftovers once the shell exits.
                process = await nursery.start(
                    functools.partial(
                        run_process_group,
                        [configuration.shell, "-c", script],
                        grace_seconds=ctx.cancel_grace_seconds,
                        env=env,
                        stdin=subprocess.DEVNULL,
                    )
                )
            except OSError as exc:
                raise InfrastructureError(
                    f"could not start shell {configuration.shell!r}: {exc.strerror}"
                ) from None
            # The infrastructure exists: the worker records it as infrastructure_pid.
            identifier = format_infrastructure_pid(process.pid)
            task_status.started(identifier)
            ctx.logger.info(
                "Inline script of flow run %r runs as %s", ctx.flow_run.name, identifier
            )
        assert process.returncode is not None  # run_process_group waited for it
        return BaseWorkerResult(identifier=identifier, status_code=process.returncode)

    # --8<-- [end:run]

    # --8<-- [start:kill]
    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: InlineJobConfiguration,
        grace_seconds: float,
    ) -> None:
        """Stop the process group of a run a worker that has since died started here.

        Raises:
            InfrastructureError: the id is not ``"host:pid"``, or names another host
                (only that host's worker can reach it).
        """
        try:
            host, pid = parse_infrastructure_pid(infrastructure_pid)
        except ValueError:
            raise InfrastructureError(
                f"infrastructure_pid {infrastructure_pid!r} is not host:pid"
            ) from None
        if host != HOSTNAME:
            raise InfrastructureError(f"infrastructure {infrastructure_pid!r} is on another host")
        await kill_process_group(pid, grace_seconds=grace_seconds)

    # --8<-- [end:kill]
