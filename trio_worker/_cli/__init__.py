"""The ``trio-worker`` command line: one click group, one module per command family."""

from __future__ import annotations

import importlib

import click

from trio_worker._version import __version__

#: Which module defines each command: commands load when used, so
#: ``trio-worker start`` does not import the embedded server or the task worker.
_COMMAND_MODULES = {
    "automation": "_automation",
    "demo": "_demo",
    "deployment": "_deployment",
    "flow-run": "_flow_run",
    "server": "_server",
    "start": "_start",
    "task-run": "_task_worker",
    "task-worker": "_task_worker",
    "work-pool": "_work_pool",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (start-up time is a feature)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"trio_worker._cli.{module}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-worker")
def main() -> None:
    """trio-worker: a Prefect-compatible job worker on Trio.

    Start with `trio-worker server start` (an embedded API) and
    `trio-worker start --pool P` (a worker), or point PREFECT_API_URL at a
    Prefect server.
    """
