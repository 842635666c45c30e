"""The ``trio-worker`` command line: one click group, one module per command family.

One convention for every command, enforced here rather than in each command:

- a usage error (a mistyped command or option, a malformed value) is one line
  on stderr ending with where to get help, exit status 2 (:data:`EXIT_USAGE`);
- a failure (the API refused, a pool not found) is one line, exit status 1;
- Ctrl-C outside a command's own drain is one line, exit status 130.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import click

from trio_worker._core._httpx_cli import skip_httpx_cli
from trio_worker._version import __version__

# Before any command imports httpx: the worker's start-up is a feature.
skip_httpx_cli()

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "main"]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
#: 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C.
EXIT_INTERRUPTED: Final = 130

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

#: Prefect's command words that are spelled differently here.
_PREFECT_HABITS: Final = {
    "worker": "to serve a work pool (`prefect worker start`), run `trio-worker start --pool NAME`",
    "flow-runs": "the command is `trio-worker flow-run`",
    "deployments": "the command is `trio-worker deployment`",
    "work-pools": "the command is `trio-worker work-pool`",
}


#: Click (8.2+) raises this for a group called without a command; it is shown
#: as help, not as a one-line error. Older clicks print the help themselves.
_NO_ARGS_IS_HELP: Final[type[click.UsageError]] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_NeverRaised", (click.UsageError,), {})
)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the choice closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _usage_line(exc: click.UsageError) -> str:
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        message += f" (see `{exc.ctx.command_path} --help`)"
    return f"Error: {message}"


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use (start-up time is a feature).

    It also owns the CLI's exit-status convention (see the module docstring).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"trio_worker._cli.{module}")
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name in _PREFECT_HABITS and name not in _COMMAND_MODULES:
            raise click.UsageError(f"No such command {name!r}: {_PREFECT_HABITS[name]}.", ctx)
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:
            # click suggests among the commands imported so far; here every
            # command is a candidate, imported or not.
            raise click.UsageError(
                f"No such command {exc.command_name!r}."
                + did_you_mean(exc.command_name, self.list_commands(ctx)),
                ctx,
            ) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; in standalone mode, map errors to one line and an exit status."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # `trio-worker` or a group alone: its help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            _exit(_usage_line(exc), EXIT_USAGE)
        except click.ClickException as exc:
            _exit(f"Error: {' '.join(exc.format_message().split())}", exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                _exit("Interrupted.", EXIT_INTERRUPTED)
            _exit("Aborted.", EXIT_FAILURE)
        sys.exit(result if isinstance(result, int) else 0)


def _exit(line: str, status: int) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(status)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-worker")
def main() -> None:
    """trio-worker: a Prefect-compatible job worker on Trio.

    Start with `trio-worker server start` (an embedded API) and
    `trio-worker start --pool P` (a worker), or point PREFECT_API_URL at a
    Prefect server. `trio-worker start` without PREFECT_API_URL serves the
    embedded API itself. Exit status: 0 done, 1 failed, 2 usage error,
    130 interrupted.
    """
