"""``trio-worker work-pool``: list, create, inspect, pause, resume and delete work pools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from trio_worker._cli import did_you_mean, main
from trio_worker._cli._common import (
    confirm_or_abort,
    echo_fields,
    echo_json,
    echo_table,
    get_settings,
    json_option,
    open_client,
    run_async,
    usage_error,
    yes_option,
)
from trio_worker._cli._registry import get_worker_class, installed_worker_types
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConflictError, NotFoundError, WorkerTypeNotFoundError
from trio_worker._core._models import Worker, WorkPool, WorkQueue
from trio_worker._core._settings import Settings

__all__ = ["work_pool"]

_DEFAULT_TYPE = "process"


def _default_base_job_template(pool_type: str) -> dict[str, Any]:
    """Return the default base job template of ``pool_type`` (``{}`` when it is not installed).

    The installed worker type provides it (a ``process`` pool gets the one a
    Prefect server gives, so a pool created by either tool works with the
    other's workers); a type not installed here gets ``{}``, and its worker
    fills it in when it first serves the pool.
    """
    try:
        return get_worker_class(pool_type).get_default_base_job_template()
    except WorkerTypeNotFoundError:
        return {}


def _read_template(path: Path) -> dict[str, Any]:
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise usage_error(f"--base-job-template: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise usage_error(f"--base-job-template: {path} is not JSON: {exc}") from None
    if not isinstance(template, dict):
        raise usage_error(
            f"--base-job-template: {path} must hold a JSON object, not {type(template).__name__}"
        )
    return template


def _not_found(name: str) -> click.ClickException:
    return click.ClickException(f"work pool {name!r} not found")


def _status(pool: WorkPool) -> str:
    return "PAUSED" if pool.is_paused else pool.status or "-"


@main.group("work-pool")
def work_pool() -> None:
    """Create, inspect, pause, resume and delete work pools."""


async def _list_pools(settings: Settings) -> list[WorkPool]:
    async with open_client(settings) as client:
        return await client.read_work_pools()


@work_pool.command("ls")
@json_option
def ls(as_json: bool) -> None:
    """List the work pools."""
    pools = sorted(run_async(_list_pools, get_settings()), key=lambda p: p.name)
    if as_json:
        echo_json(pools)
        return
    echo_table(
        ["name", "type", "status", "concurrency limit", "id"],
        [(p.name, p.type, _status(p), p.concurrency_limit, p.id) for p in pools],
        empty="No work pools. Create one with `trio-worker work-pool create NAME`.",
    )


async def _create_pool(
    settings: Settings,
    name: str,
    pool_type: str,
    template: dict[str, Any],
    concurrency_limit: int | None,
    paused: bool,
) -> WorkPool:
    async with open_client(settings) as client:
        try:
            return await client.create_work_pool(
                name,
                type=pool_type,
                base_job_template=template,
                concurrency_limit=concurrency_limit,
                is_paused=paused,
            )
        except ConflictError:
            raise click.ClickException(f"work pool {name!r} already exists") from None


@work_pool.command("create")
@click.argument("name")
@click.option(
    "-t",
    "--type",
    "pool_type",
    default=_DEFAULT_TYPE,
    show_default=True,
    help="Worker type that serves the pool.",
)
@click.option(
    "--base-job-template",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON file with the pool's base job template (default: the worker type's own).",
)
@click.option(
    "--concurrency-limit",
    type=click.IntRange(min=0),
    default=None,
    help="Most runs of this pool allowed in PENDING or RUNNING at once.",
)
@click.option("--paused", is_flag=True, default=False, help="Create the pool paused.")
@json_option
def create(
    name: str,
    pool_type: str,
    base_job_template: Path | None,
    concurrency_limit: int | None,
    paused: bool,
    as_json: bool,
) -> None:
    """Create the work pool NAME.

    A type not installed here is accepted (its workers may run elsewhere),
    unless it is close to one that is: then it is surely a typo.
    """
    installed = installed_worker_types()
    if pool_type not in installed:
        hint = did_you_mean(pool_type, installed)
        if hint:
            raise usage_error(
                f"--type {pool_type!r} is not an installed worker type.{hint} "
                f"(installed: {', '.join(installed)})"
            )
    if base_job_template is not None:
        template = _read_template(base_job_template)
    else:
        template = _default_base_job_template(pool_type)
    pool = run_async(
        _create_pool, get_settings(), name, pool_type, template, concurrency_limit, paused
    )
    if as_json:
        echo_json(pool)
        return
    state = " (paused)" if pool.is_paused else ""
    click.echo(f"Created work pool {pool.name!r} of type {pool.type!r}{state}: {pool.id}")
    click.echo(f"Start a worker for it with `trio-worker start --pool {pool.name}`.")


async def _read_pool(client: PrefectClient, name: str) -> WorkPool:
    try:
        return await client.read_work_pool(name)
    except NotFoundError:
        raise _not_found(name) from None


async def _inspect_pool(
    settings: Settings, name: str
) -> tuple[WorkPool, list[WorkQueue], list[Worker]]:
    async with open_client(settings) as client:
        pool = await _read_pool(client, name)
        queues = await client.read_work_queues(name)
        workers = await client.read_workers(name)
    return pool, queues, workers


@work_pool.command("inspect")
@click.argument("name")
@json_option
def inspect(name: str, as_json: bool) -> None:
    """Show the work pool NAME with its queues and workers."""
    pool, queues, workers = run_async(_inspect_pool, get_settings(), name)
    if as_json:
        echo_json(pool)
        return
    echo_fields(
        [
            ("name", pool.name),
            ("id", pool.id),
            ("type", pool.type),
            ("status", _status(pool)),
            ("paused", pool.is_paused),
            ("concurrency limit", pool.concurrency_limit),
            ("description", pool.description),
            ("created", pool.created),
            (
                "template variables",
                sorted(pool.base_job_template.get("variables", {}).get("properties", {})),
            ),
        ]
    )
    click.echo()
    echo_table(
        ["queue", "priority", "paused", "concurrency limit"],
        [(q.name, q.priority, q.is_paused, q.concurrency_limit) for q in queues],
        empty="No queues.",
    )
    click.echo()
    echo_table(
        ["worker", "status", "last heartbeat"],
        [(w.name, w.status, w.last_heartbeat_time) for w in workers],
        empty="No workers have polled this pool.",
    )


async def _set_paused(settings: Settings, name: str, paused: bool) -> None:
    async with open_client(settings) as client:
        try:
            await client.update_work_pool(name, is_paused=paused)
        except NotFoundError:
            raise _not_found(name) from None


@work_pool.command("pause")
@click.argument("name")
def pause(name: str) -> None:
    """Pause the work pool NAME: workers get no runs from it until it is resumed."""
    run_async(_set_paused, get_settings(), name, True)
    click.echo(f"Paused work pool {name!r}.")


@work_pool.command("resume")
@click.argument("name")
def resume(name: str) -> None:
    """Resume the paused work pool NAME."""
    run_async(_set_paused, get_settings(), name, False)
    click.echo(f"Resumed work pool {name!r}.")


async def _delete_pool(settings: Settings, name: str) -> None:
    async with open_client(settings) as client:
        try:
            await client.delete_work_pool(name)
        except NotFoundError:
            raise _not_found(name) from None


@work_pool.command("delete")
@click.argument("name")
@yes_option
def delete(name: str, yes: bool) -> None:
    """Delete the work pool NAME and its queues.

    Its workers stop getting runs from it; deployments that name it stay.
    """
    confirm_or_abort(f"Delete work pool {name!r}?", yes)
    run_async(_delete_pool, get_settings(), name)
    click.echo(f"Deleted work pool {name!r}.")
