"""``trio-worker deployment``: create, list, inspect and run deployments.

A deployment is named ``FLOW/DEPLOYMENT``; commands also accept a bare
deployment name (looked up with the deployments filter, an error when two
flows use it) or a deployment id.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import click

from trio_worker._cli import main
from trio_worker._cli._common import (
    confirm_or_abort,
    echo_fields,
    echo_json,
    echo_table,
    get_settings,
    json_option,
    open_client,
    parse_key_values,
    parse_uuid,
    run_async,
    usage_error,
    yes_option,
)
from trio_worker._cli._signature import FlowSignature, parameter_problem, read_signature
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import NotFoundError
from trio_worker._core._models import Deployment, FlowRun, State, StateDetails, StateType, now
from trio_worker._core._settings import Settings

__all__ = ["deployment"]

# Prefect's own local deployments find their code with this pull step; sent as
# well as ``path`` so a Prefect engine runs the deployment too.
SET_WORKING_DIRECTORY_STEP: Final = "prefect.deployments.steps.set_working_directory"

_param_option = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A flow parameter; VALUE is read as JSON when it parses, else as text. Repeatable.",
)
_job_variable_option = click.option(
    "--job-variable",
    "job_variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="A job variable for the pool's template, e.g. working_dir=/srv; VALUE as for --param. "
    "Repeatable.",
)


@main.group("deployment")
def deployment() -> None:
    """Create, list, inspect, run and delete deployments."""


def _split_entrypoint(entrypoint: str) -> tuple[str, str]:
    path, sep, func = entrypoint.rpartition(":")
    if not sep or not path or not func.isidentifier():
        raise usage_error(f"--entrypoint {entrypoint!r} is not PATH:FUNCTION (e.g. flows.py:hello)")
    return path, func


async def _flow_names(client: PrefectClient, deployments: Sequence[Deployment]) -> dict[Any, str]:
    names: dict[Any, str] = {}
    for dep in deployments:
        if dep.flow_id not in names:
            try:
                names[dep.flow_id] = (await client.read_flow(dep.flow_id)).name
            except NotFoundError:
                names[dep.flow_id] = str(dep.flow_id)
    return names


async def resolve_deployment(client: PrefectClient, name: str) -> tuple[Deployment, str]:
    """Find a deployment by ``FLOW/DEPLOYMENT``, bare name or id.

    Returns:
        The deployment and its full ``FLOW/DEPLOYMENT`` name.

    Raises:
        click.ClickException: when no deployment matches, or a bare name matches several.
    """
    not_found = click.ClickException(f"deployment {name!r} not found")
    deployment_id = parse_uuid(name)
    try:
        if deployment_id is not None:
            found = await client.read_deployment(deployment_id)
        elif "/" in name:
            flow_name, _, dep_name = name.partition("/")
            found = await client.read_deployment_by_name(flow_name, dep_name)
        else:
            matches = await client.read_deployments(deployments={"name": {"any_": [name]}})
            matches = [d for d in matches if d.name == name]
            if not matches:
                raise not_found
            if len(matches) > 1:
                flows = await _flow_names(client, matches)
                full = ", ".join(sorted(f"{flows[d.flow_id]}/{d.name}" for d in matches))
                raise click.ClickException(
                    f"deployment name {name!r} is used by several flows ({full}); "
                    "use FLOW/DEPLOYMENT"
                )
            found = matches[0]
        flow_name = (await client.read_flow(found.flow_id)).name
    except NotFoundError:
        raise not_found from None
    return found, f"{flow_name}/{found.name}"


async def _create_deployment(
    settings: Settings, body: dict[str, Any], flow_name: str
) -> Deployment:
    async with open_client(settings) as client:
        pool = body["work_pool_name"]
        try:
            await client.read_work_pool(pool)
        except NotFoundError:
            raise click.ClickException(
                f"work pool {pool!r} not found; "
                f"create it with `trio-worker work-pool create {pool}`"
            ) from None
        flow = await client.create_flow(flow_name)
        return await client.create_deployment(flow_id=flow.id, **body)


@deployment.command("create")
@click.argument("name")
@click.option("--pool", "-p", required=True, help="Work pool whose workers run the deployment.")
@click.option(
    "--entrypoint",
    required=True,
    metavar="PATH:FUNCTION",
    help="Flow function, as a file relative to the current directory and a function name.",
)
@_param_option
@_job_variable_option
@click.option(
    "-q",
    "--work-queue",
    "queue",
    default=None,
    help="Work queue of the pool (default: its default).",
)
@click.option(
    "--concurrency-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Most runs of this deployment active at once; extra runs wait for a slot.",
)
@json_option
def create(
    name: str,
    pool: str,
    entrypoint: str,
    params: tuple[str, ...],
    job_variables: tuple[str, ...],
    queue: str | None,
    concurrency_limit: int | None,
    as_json: bool,
) -> None:
    """Create (or replace) the deployment NAME of the entrypoint's flow and print its id.

    The flow is named after the entrypoint's function; the current directory
    is recorded as the deployment's path, so workers on this machine find the file.
    """
    path, func = _split_entrypoint(entrypoint)
    cwd = Path.cwd().resolve()
    if not (cwd / path).is_file():
        raise usage_error(f"--entrypoint: file {path!r} not found in {cwd}")
    try:
        signature = read_signature(cwd / path, func)
    except ValueError as exc:
        raise usage_error(f"--entrypoint: {exc}") from None
    parameters = parse_key_values(params, option="--param")
    if signature is not None:
        problem = parameter_problem(signature, parameters, complete=False)
        if problem is not None:
            raise usage_error(problem)
    body: dict[str, Any] = {
        "name": name,
        "work_pool_name": pool,
        "entrypoint": entrypoint,
        "path": str(cwd),
        "pull_steps": [{SET_WORKING_DIRECTORY_STEP: {"directory": str(cwd)}}],
        "parameters": parameters,
        "job_variables": parse_key_values(job_variables, option="--job-variable"),
        # The schema holds the parameter names only (read from the source,
        # not imported): the CLI checks names, the server has no types to check.
        "enforce_parameter_schema": False,
    }
    if signature is not None:
        body["parameter_openapi_schema"] = signature.schema()
    if queue is not None:
        body["work_queue_name"] = queue
    if concurrency_limit is not None:
        body["concurrency_limit"] = concurrency_limit
    created = run_async(_create_deployment, get_settings(), body, func)
    if as_json:
        echo_json(created)
        return
    click.echo(created.id)
    click.echo(
        f"Run it with `trio-worker deployment run {func}/{created.name}`.",
        err=True,
    )


async def _list_deployments(settings: Settings) -> list[tuple[str, Deployment]]:
    async with open_client(settings) as client:
        found = await client.read_deployments()
        flows = await _flow_names(client, found)
    return sorted(((f"{flows[d.flow_id]}/{d.name}", d) for d in found), key=lambda x: x[0])


@deployment.command("ls")
@json_option
def ls(as_json: bool) -> None:
    """List the deployments."""
    found = run_async(_list_deployments, get_settings())
    if as_json:
        echo_json([d for _, d in found])
        return
    echo_table(
        ["name", "pool", "queue", "entrypoint", "id"],
        [(full, d.work_pool_name, d.work_queue_name, d.entrypoint, d.id) for full, d in found],
        empty="No deployments. Create one with `trio-worker deployment create`.",
    )


async def _inspect(settings: Settings, name: str) -> tuple[Deployment, str]:
    async with open_client(settings) as client:
        return await resolve_deployment(client, name)


@deployment.command("inspect")
@click.argument("name")
@json_option
def inspect(name: str, as_json: bool) -> None:
    """Show the deployment NAME (FLOW/DEPLOYMENT, a bare deployment name, or an id)."""
    found, full = run_async(_inspect, get_settings(), name)
    if as_json:
        echo_json(found)
        return
    echo_fields(
        [
            ("name", full),
            ("id", found.id),
            ("flow id", found.flow_id),
            ("work pool", found.work_pool_name),
            ("work queue", found.work_queue_name),
            ("entrypoint", found.entrypoint),
            ("path", found.path),
            ("parameters", found.parameters),
            ("job variables", found.job_variables),
            ("concurrency limit", found.concurrency_limit),
            ("paused", found.paused),
            ("tags", found.tags),
            ("created", found.created),
            ("updated", found.updated),
        ]
    )


async def _run(
    settings: Settings,
    name: str,
    parameters: dict[str, Any],
    job_variables: dict[str, Any],
    count: int,
    start_in: float | None,
) -> list[FlowRun]:
    async with open_client(settings) as client:
        found, full = await resolve_deployment(client, name)
        signature = FlowSignature.from_schema(found.parameter_openapi_schema)
        if signature is not None:
            problem = parameter_problem(
                signature, {**found.parameters, **parameters}, complete=True
            )
            if problem is not None:
                raise usage_error(f"{problem}, for {full}")
        runs = []
        for _ in range(count):
            state = None
            if start_in is not None:
                when = now() + dt.timedelta(seconds=start_in)
                state = State(
                    type=StateType.SCHEDULED,
                    name="Scheduled",
                    state_details=StateDetails(scheduled_time=when, transition_id=uuid.uuid4()),
                )
            runs.append(
                await client.create_flow_run_from_deployment(
                    found.id,
                    parameters=parameters or None,
                    job_variables=job_variables or None,
                    state=state,
                )
            )
    return runs


@deployment.command("run")
@click.argument("name")
@_param_option
@_job_variable_option
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many runs to create.",
)
@click.option(
    "--start-in",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Schedule the runs this many seconds from now (default: now).",
)
@json_option
def run(
    name: str,
    params: tuple[str, ...],
    job_variables: tuple[str, ...],
    count: int,
    start_in: float | None,
    as_json: bool,
) -> None:
    """Create runs of the deployment NAME and print their ids and names.

    Parameters and job variables given here are merged over the deployment's.
    """
    parameters = parse_key_values(params, option="--param")
    variables = parse_key_values(job_variables, option="--job-variable")
    runs = run_async(_run, get_settings(), name, parameters, variables, count, start_in)
    if as_json:
        echo_json(runs)
        return
    echo_table(
        ["id", "name", "state", "scheduled"],
        [
            (
                r.id,
                r.name,
                r.state_name or r.state_type,
                r.state.state_details.scheduled_time if r.state else r.expected_start_time,
            )
            for r in runs
        ],
    )


async def _delete(settings: Settings, name: str) -> str:
    async with open_client(settings) as client:
        found, full = await resolve_deployment(client, name)
        try:
            await client.delete_deployment(found.id)
        except NotFoundError:
            raise click.ClickException(f"deployment {name!r} not found") from None
    return full


@deployment.command("delete")
@click.argument("name")
@yes_option
def delete(name: str, yes: bool) -> None:
    """Delete the deployment NAME (FLOW/DEPLOYMENT, a bare name, or an id).

    Its flow runs stay, and can still be inspected.
    """
    confirm_or_abort(f"Delete deployment {name!r}?", yes)
    full = run_async(_delete, get_settings(), name)
    click.echo(f"Deleted deployment {full!r}.")
