"""``trio-worker flow-run``: list, inspect and cancel flow runs, and read their logs.

A run is named by its id or by its name (``flow-run inspect witty-python``);
a name that several runs share is an error that lists their ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any, Final

import click

from trio_worker._cli import main
from trio_worker._cli._common import (
    confirm_or_abort,
    echo_fields,
    echo_json,
    echo_table,
    format_time,
    get_settings,
    json_option,
    open_client,
    parse_uuid,
    run_async,
    yes_option,
)
from trio_worker._cli._results import describe_result
from trio_worker._client._client import PrefectClient, state_type_filter
from trio_worker._core._converter import structure
from trio_worker._core._exceptions import NotFoundError
from trio_worker._core._models import (
    FlowRun,
    Log,
    OrchestrationResult,
    SetStateStatus,
    State,
    StateType,
)
from trio_worker._core._settings import Settings

__all__ = ["flow_run"]

#: The most rows one filter request may ask for (Prefect's server default limit).
PAGE_SIZE: Final = 200


@main.group("flow-run")
def flow_run() -> None:
    """List, inspect, cancel and delete flow runs, and read their logs."""


async def resolve_flow_run(client: PrefectClient, ref: str) -> FlowRun:
    """Read the run ``ref`` names: an id, or a name only one run has.

    Raises:
        click.ClickException: when no run matches, or several share the name.
    """
    run_id = parse_uuid(ref)
    if run_id is not None:
        try:
            return await client.read_flow_run(run_id)
        except NotFoundError:
            raise click.ClickException(f"flow run {ref!r} not found") from None
    found = await client.read_flow_runs(flow_runs={"name": {"any_": [ref]}}, limit=2)
    found = [r for r in found if r.name == ref]
    if not found:
        raise click.ClickException(f"flow run {ref!r} not found")
    if len(found) > 1:
        raise click.ClickException(f"several flow runs are named {ref!r}; use an id")
    return found[0]


def _state_label(run: FlowRun) -> str:
    if run.state_name:
        return run.state_name
    if run.state is not None:
        return run.state.name or run.state.type.value
    return run.state_type.value if run.state_type else "-"


async def _list_runs(
    settings: Settings, states: tuple[str, ...], limit: int
) -> tuple[list[FlowRun], dict[uuid.UUID, tuple[str, dt.datetime | None]]]:
    body: dict[str, Any] = {"limit": limit, "sort": "EXPECTED_START_TIME_DESC"}
    if states:
        body["flow_runs"] = {"state": state_type_filter(*(StateType(s) for s in states))}
    async with open_client(settings) as client:
        runs = await client.read_flow_runs(**body)
        # Who holds each run (embedded API only; empty against Prefect).
        holders = await client.read_holders(flow_run_ids=[r.id for r in runs])
    return runs, holders


@flow_run.command("ls")
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    type=click.Choice([t.value for t in StateType], case_sensitive=False),
    help="Only runs whose state has this type. Repeatable.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, PAGE_SIZE),
    default=20,
    show_default=True,
    help="Most runs to list, the latest first.",
)
@json_option
def ls(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List flow runs, the latest expected start first."""
    states = tuple(s.upper() for s in states)
    runs, holders = run_async(_list_runs, get_settings(), states, limit)
    if as_json:
        echo_json(runs)
        return
    echo_table(
        ["id", "name", "state", "pool", "expected start", "held by", "held since"],
        [_flow_run_row(r, holders.get(r.id, (None, None))) for r in runs],
        empty="No flow runs.",
    )


def _flow_run_row(r: FlowRun, held: tuple[str | None, dt.datetime | None]) -> tuple[object, ...]:
    # "held by": the worker whose heartbeat lists the run (embedded API only).
    return (r.id, r.name, _state_label(r), r.work_pool_name, r.expected_start_time, *held)


async def _inspect(settings: Settings, ref: str) -> tuple[FlowRun, list[State]]:
    async with open_client(settings) as client:
        run = await resolve_flow_run(client, ref)
        return run, await client.read_flow_run_states(run.id)


@flow_run.command("inspect")
@click.argument("flow_run_ref", metavar="ID")
@json_option
def inspect(flow_run_ref: str, as_json: bool) -> None:
    """Show the flow run ID (an id or a run name) and its state history."""
    run, states = run_async(_inspect, get_settings(), flow_run_ref)
    if as_json:
        echo_json(run)
        return
    state = run.state
    echo_fields(
        [
            ("name", run.name),
            ("id", run.id),
            ("state", _state_label(run)),
            ("state type", state.type.value if state else run.state_type),
            ("message", state.message if state else None),
            ("result", describe_result(state)),
            ("flow id", run.flow_id),
            ("deployment id", run.deployment_id),
            ("work pool", run.work_pool_name),
            ("work queue", run.work_queue_name),
            ("parameters", run.parameters),
            ("job variables", run.job_variables or {}),
            ("infrastructure pid", run.infrastructure_pid),
            ("run count", run.run_count),
            ("expected start", run.expected_start_time),
            ("start", run.start_time),
            ("end", run.end_time),
        ]
    )
    click.echo()
    echo_table(
        ["time", "state", "message"],
        [(s.timestamp, s.name or s.type.value, s.message) for s in states],
        empty="No state history.",
    )


async def _cancel(settings: Settings, ref: str) -> tuple[FlowRun, OrchestrationResult]:
    async with open_client(settings) as client:
        run = await resolve_flow_run(client, ref)
        state = State.of(StateType.CANCELLING, "Cancelled from the trio-worker CLI")
        return run, await client.set_flow_run_state(run.id, state)


@flow_run.command("cancel")
@click.argument("flow_run_ref", metavar="ID")
def cancel(flow_run_ref: str) -> None:
    """Cancel the flow run ID (an id or a run name).

    The run goes to Cancelling and its worker stops it; a scheduled run that no
    worker has started goes straight to Cancelled.
    """
    run, result = run_async(_cancel, get_settings(), flow_run_ref)
    new_type = result.state.type if result.state else None
    was_final = run.state is not None and run.state.is_final
    if new_type is StateType.CANCELLED and not was_final:
        click.echo(
            f"Flow run {run.name!r} ({run.id}) had not started on any infrastructure, "
            "so it is now Cancelled."
        )
    elif result.status is SetStateStatus.ACCEPT and new_type is StateType.CANCELLING:
        click.echo(
            f"Flow run {run.name!r} ({run.id}) is Cancelling; its worker will stop it "
            "and mark it Cancelled."
        )
    else:
        reason = result.reason or f"it is {new_type.value if new_type else 'in another state'}"
        raise click.ClickException(f"flow run {run.name!r} ({run.id}) was not cancelled: {reason}")


async def _read_all_logs(client: PrefectClient, run_id: uuid.UUID) -> list[Log]:
    logs: list[Log] = []
    while True:
        body = {
            "logs": {"flow_run_id": {"any_": [str(run_id)]}},
            "limit": PAGE_SIZE,
            "offset": len(logs),
            "sort": "TIMESTAMP_ASC",
        }
        page = structure(await client.request("POST", "logs/filter", json_body=body), list[Log])
        logs.extend(page)
        if len(page) < PAGE_SIZE:
            return logs


async def _logs(settings: Settings, ref: str) -> list[Log]:
    async with open_client(settings) as client:
        run = await resolve_flow_run(client, ref)
        return await _read_all_logs(client, run.id)


@flow_run.command("logs")
@click.argument("flow_run_ref", metavar="ID")
@json_option
def logs(flow_run_ref: str, as_json: bool) -> None:
    """Print the logs of the flow run ID (an id or a run name), oldest first."""
    lines = run_async(_logs, get_settings(), flow_run_ref)
    if as_json:
        echo_json(lines)
        return
    for line in lines:
        level = logging.getLevelName(line.level)
        # The worker's own line format (trio_worker._core._logging.TEXT_FORMAT).
        click.echo(f"{format_time(line.timestamp)} {level} {line.name}: {line.message}")


async def _delete(settings: Settings, ref: str) -> FlowRun:
    async with open_client(settings) as client:
        run = await resolve_flow_run(client, ref)
        try:
            await client.delete_flow_run(run.id)
        except NotFoundError:
            raise click.ClickException(f"flow run {ref!r} not found") from None
        return run


@flow_run.command("delete")
@click.argument("flow_run_ref", metavar="ID")
@yes_option
def delete(flow_run_ref: str, yes: bool) -> None:
    """Delete the flow run ID (an id or a run name) with its states and logs.

    A run still going is not stopped: cancel it first (`flow-run cancel`).
    """
    confirm_or_abort(f"Delete flow run {flow_run_ref!r}?", yes)
    run = run_async(_delete, get_settings(), flow_run_ref)
    click.echo(f"Deleted flow run {run.name!r} ({run.id}).")
