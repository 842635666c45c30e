"""``trio-worker task-worker serve`` and ``trio-worker task-run ls|inspect``.

``serve`` imports each ``module:task`` (or ``path/to/file.py:task``), then
runs a :class:`~trio_worker.TaskWorker` in a nursery beside the shared signal
watcher: the first SIGINT/SIGTERM drains (no new runs, in-flight runs get
``--drain-timeout``), the second cancels, and the runs still going are
recorded CRASHED.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import click
import trio

from trio_worker._cli import did_you_mean, main
from trio_worker._cli._common import (
    MISSING_API_URL_MESSAGE,
    echo_fields,
    echo_json,
    echo_table,
    get_settings,
    json_option,
    open_client,
    parse_uuid,
    run_async,
)
from trio_worker._cli._results import describe_result
from trio_worker._core._exceptions import NotFoundError
from trio_worker._core._logging import configure_logging
from trio_worker._core._models import StateType, TaskRun
from trio_worker._core._settings import Settings
from trio_worker._core._signals import watch_shutdown_signals
from trio_worker._taskworker._tasks import Task
from trio_worker._taskworker._worker import DEFAULT_DRAIN_TIMEOUT_SECONDS, DEFAULT_LIMIT, TaskWorker

__all__ = ["load_task", "task_run", "task_worker"]


def load_task(spec: str) -> Task[..., Any]:
    """Import ``module:name`` or ``file.py:name`` and return it as a :class:`Task`.

    The current directory is importable, as with ``python -m``, so
    ``tasks:add`` finds ``./tasks.py`` however the command was started.

    Raises:
        click.BadParameter: the spec is malformed, or nothing callable is there.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise click.BadParameter(
            f"{spec!r} is not module:task (e.g. tasks:add)", param_hint="MODULE:TASK"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if module_part.endswith(".py"):
            path = Path(module_part).resolve()
            # Importing by the file's stem keeps the task key (module.qualname)
            # the one a submitter that does `import <stem>` computes.
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            module = importlib.import_module(path.stem)
        else:
            module = importlib.import_module(module_part)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_part!r} (from {spec!r}): {exc}", param_hint="MODULE:TASK"
        ) from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if isinstance(target, Task):
        return target
    if callable(target):
        return Task(target)
    names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
    raise click.BadParameter(
        f"{spec!r}: {module_part} has no function or task {attr!r}.{did_you_mean(attr, names)}",
        param_hint="MODULE:TASK",
    )


@main.group("task-worker")
def task_worker() -> None:
    """Serve background tasks submitted with .delay()."""


@task_worker.command("serve")
@click.argument("tasks", nargs=-1, required=True, metavar="MODULE:TASK...")
@click.option(
    "-l",
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Most task runs at once.",
)
@click.option(
    "--status-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /status, /health and /metrics on this port (0 = any free port).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_DRAIN_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds runs in flight get to finish after the first SIGINT/SIGTERM.",
)
@click.option(
    "--delete-failed-submissions",
    is_flag=True,
    help="Delete runs with an unknown task or unreadable parameters (after marking them FAILED).",
)
def serve_command(
    tasks: tuple[str, ...],
    limit: int,
    status_port: int | None,
    drain_timeout: float,
    delete_failed_submissions: bool,
) -> None:
    """Serve MODULE:TASK (e.g. tasks:add) until SIGINT/SIGTERM."""
    settings = get_settings()
    if not settings.api_url:
        raise click.ClickException(MISSING_API_URL_MESSAGE)
    loaded = [load_task(spec) for spec in tasks]
    configure_logging("text")
    worker = TaskWorker(
        *loaded,
        limit=limit,
        settings=settings,
        drain_timeout_seconds=drain_timeout,
        delete_failed_submissions=delete_failed_submissions,
        status_server_port=status_port,
    )
    run_async(_serve, worker)
    click.echo(f"Task worker {worker.client_id} stopped.")


async def _serve(worker: TaskWorker) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_shutdown_signals, worker.stop, nursery.cancel_scope)
        await worker.start()
        # Drained: the signal watcher has nothing left to guard.
        nursery.cancel_scope.cancel()


@main.group("task-run")
def task_run() -> None:
    """List and inspect background task runs."""


def _state_label(run: TaskRun) -> str:
    if run.state_name:
        return run.state_name
    return run.state_type.value if run.state_type else "-"


async def _list(settings: Settings, states: tuple[str, ...], key: str | None, limit: int) -> Any:
    body: dict[str, Any] = {}
    if states:
        body["state"] = {"type": {"any_": [s.upper() for s in states]}}
    if key:
        body["task_key"] = {"any_": [key]}
    async with open_client(settings) as client:
        filters: dict[str, Any] = {"limit": limit, "sort": "ID_DESC"}
        if body:
            filters["task_runs"] = body
        runs = await client.read_task_runs(**filters)
        # Who holds each run's lease (embedded API only; empty against Prefect).
        return runs, await client.read_holders(task_run_ids=[r.id for r in runs])


@task_run.command("ls")
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    type=click.Choice([t.value for t in StateType], case_sensitive=False),
    help="Only runs in this state type (repeatable).",
)
@click.option("-k", "--task-key", help="Only runs of this task key.")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@json_option
def ls_command(states: tuple[str, ...], task_key: str | None, limit: int, as_json: bool) -> None:
    """List task runs, newest first."""
    runs, holders = run_async(_list, get_settings(), states, task_key, limit)
    if as_json:
        echo_json(runs)
        return
    echo_table(
        ["id", "name", "task key", "state", "created", "held by", "held since"],
        [
            (r.id, r.name, r.task_key, _state_label(r), r.created, *holders.get(r.id, (None, None)))
            for r in runs
        ],
        empty="No task runs found.",
    )


async def _read(settings: Settings, ref: str) -> TaskRun:
    """Read the task run ``ref`` names: an id, or a name only one run has."""
    run_id = parse_uuid(ref)
    async with open_client(settings) as client:
        if run_id is not None:
            try:
                return await client.read_task_run(run_id)
            except NotFoundError:
                raise click.ClickException(f"task run {ref!r} not found") from None
        found = await client.read_task_runs(task_runs={"name": {"any_": [ref]}}, limit=2)
    found = [r for r in found if r.name == ref]
    if not found:
        raise click.ClickException(f"task run {ref!r} not found")
    if len(found) > 1:
        raise click.ClickException(f"several task runs are named {ref!r}; use an id")
    return found[0]


@task_run.command("inspect")
@click.argument("task_run_ref", metavar="ID")
@json_option
def inspect_command(task_run_ref: str, as_json: bool) -> None:
    """Show the task run ID (an id or a run name): state, message, result, times.

    The result is read from the task store when this machine shares it.
    """
    run = run_async(functools.partial(_read, get_settings(), task_run_ref))
    if as_json:
        echo_json(run)
        return
    state = run.state
    details = state.state_details if state else None
    echo_fields(
        [
            ("id", run.id),
            ("name", run.name),
            ("task key", run.task_key),
            ("state", _state_label(run)),
            ("message", state.message if state else None),
            ("parameters id", details.task_parameters_id if details else None),
            ("result", describe_result(state)),
            ("created", run.created),
            ("started", run.start_time),
            ("ended", run.end_time),
        ]
    )
