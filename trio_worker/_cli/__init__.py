"""The ``trio-worker`` command line: one click group, one module per command family."""

from __future__ import annotations

import click

from trio_worker._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-worker")
def main() -> None:
    """trio-worker: a Prefect-compatible job worker on Trio.

    Start with `trio-worker server start` (an embedded API) and
    `trio-worker start --pool P` (a worker), or point PREFECT_API_URL at a
    Prefect server.
    """


def _register_commands() -> None:
    # Command modules attach themselves to ``main`` when imported; importing
    # them here, after ``main`` exists, keeps each family in its own module.
    from trio_worker._cli import (  # noqa: F401
        _demo,
        _deployment,
        _flow_run,
        _server,
        _start,
        _task_worker,
        _work_pool,
    )


_register_commands()
