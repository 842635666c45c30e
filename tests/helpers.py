"""Helpers shared by tests: build pools, deployments and runs; wait for conditions."""

from __future__ import annotations

import os
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import NotFoundError
from trio_worker._core._models import Deployment, FlowRun, StateType, TaskRun
from trio_worker._process._config import process_base_job_template

T = TypeVar("T")

#: Generous upper bounds: a condition that holds ends the wait at once.
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.05


def python_command(code: str, *args: str) -> str:
    """A shell-quoted command running ``code`` with this interpreter."""
    return shlex.join([sys.executable, "-c", code, *args])


async def wait_for(
    check: Callable[[], Awaitable[T | None]], *, timeout: float = WAIT_SECONDS, what: str = ""
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")


async def wait_for_state(
    client: PrefectClient,
    flow_run_id: uuid.UUID,
    types: Iterable[StateType],
    *,
    timeout: float = WAIT_SECONDS,
) -> FlowRun:
    """Wait until the run's state type is one of ``types``; return the run."""
    wanted = set(types)

    async def check() -> FlowRun | None:
        run = await client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.type in wanted else None

    return await wait_for(check, timeout=timeout, what=f"run {flow_run_id} in {wanted}")


async def make_deployment(
    client: PrefectClient,
    pool: str,
    *,
    name: str = "dep",
    flow_name: str = "flow",
    job_variables: Mapping[str, Any] | None = None,
    entrypoint: str | None = None,
    path: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    work_queue_name: str | None = None,
) -> Deployment:
    """Create a flow and a deployment of it on ``pool`` (creating the pool if needed)."""
    try:
        await client.read_work_pool(pool)
    except NotFoundError:
        await client.create_work_pool(
            pool, type="process", base_job_template=process_base_job_template()
        )
    flow = await client.create_flow(flow_name)
    fields: dict[str, Any] = {"work_pool_name": pool, "job_variables": dict(job_variables or {})}
    if entrypoint is not None:
        fields["entrypoint"] = entrypoint
    if path is not None:
        fields["path"] = path
    if parameters is not None:
        fields["parameters"] = dict(parameters)
    if work_queue_name is not None:
        fields["work_queue_name"] = work_queue_name
    return await client.create_deployment(flow_id=flow.id, name=name, **fields)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def clean_env() -> dict[str, str]:
    """This process's env without Prefect settings a developer may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def assert_ran_once_to_completion(run: TaskRun) -> None:
    """A task run that ran once and completed, with its start and end times recorded."""
    assert run.state is not None
    assert run.state.type is StateType.COMPLETED, run.state
    assert run.run_count == 1
    assert run.start_time is not None
    assert run.end_time is not None
    assert run.start_time <= run.end_time
