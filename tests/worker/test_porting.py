"""What a Prefect custom worker relies on, against the real embedded API.

Each test uses a small backend written the way a Prefect user writes one:
``setup``/``teardown`` hooks, ``start()`` without ``async with``, only a
``job_configuration`` class, a ``prepare_for_flow_run`` override with Prefect's
signature, ``get_flow_run_logger``. Its ``run`` starts no process: the backend
is what is under test here, and the worker around it is the real one.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import pytest
import trio

from tests.helpers import make_deployment, wait_for_state
from tests.worker.conftest import fast_settings
from trio_worker import (
    BaseJobConfiguration,
    BaseWorker,
    BaseWorkerResult,
    ConfigurationError,
    PrefectClient,
    RunContext,
    job_metadata,
)
from trio_worker.models import Deployment, Flow, FlowRun, StateType

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@attrs.frozen(kw_only=True)
class EchoConfiguration(BaseJobConfiguration):
    """A configuration with a field of its own, filled per run by a Prefect-style override."""

    image: str = attrs.field(default="python:3.12", metadata=job_metadata(title="Image"))
    tag: str | None = None

    # Prefect's signature: narrower than ours, hence the ignore, as under pyright with Prefect's.
    def prepare_for_flow_run(  # type: ignore[override]
        self, flow_run: FlowRun, deployment: Deployment | None = None, flow: Flow | None = None
    ) -> EchoConfiguration:
        prepared = super().prepare_for_flow_run(flow_run, deployment, flow)
        return attrs.evolve(prepared, tag=f"{flow.name if flow else '?'}/{flow_run.name}")


@attrs.frozen(kw_only=True)
class MutatingConfiguration(BaseJobConfiguration):
    """Prefect's habit: change ``self`` and return nothing."""

    def prepare_for_flow_run(  # type: ignore[override]
        self, flow_run: FlowRun, deployment: Deployment | None = None, flow: Flow | None = None
    ) -> None:
        super().prepare_for_flow_run(flow_run, deployment, flow)


class EchoWorker(BaseWorker):
    """A backend that records what it was given and 'runs' by exiting 0 at once."""

    type = "echo"
    job_configuration = EchoConfiguration

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.configurations: list[Any] = []
        self.teardown_exc_info: tuple[Any, ...] = ()

    async def setup(self) -> None:
        await super().setup()
        self.calls.append("setup")

    async def teardown(self, *exc_info: Any) -> None:
        self.calls.append("teardown")
        self.teardown_exc_info = exc_info
        await super().teardown(*exc_info)

    async def run(
        self,
        ctx: RunContext[Any],
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        self.configurations.append(ctx.configuration)
        self.get_flow_run_logger(ctx.flow_run).info("echo backend ran %s", ctx.flow_run.name)
        task_status.started("echo:1")
        return BaseWorkerResult(identifier="echo:1", status_code=0)


def _worker(api_url: str, pool: str, tmp_path: Path, **kwargs: Any) -> EchoWorker:
    return EchoWorker(
        pool,
        settings=fast_settings(api_url, tmp_path / "state"),
        client_backoff_seconds=0.05,
        **kwargs,
    )


async def _run_once(worker: BaseWorker, client: PrefectClient, pool: str) -> FlowRun:
    """Create a pool of the worker's type (as the worker would), a deployment and a run."""
    template = worker.get_default_base_job_template()
    await client.create_work_pool(pool, type=worker.type, base_job_template=template)
    deployment = await make_deployment(
        client, pool, job_variables={"image": "busybox", "command": "echo"}
    )
    flow_run = await client.create_flow_run_from_deployment(deployment.id)
    with trio.fail_after(30):
        await worker.start(run_once=True, printer=lambda _: None)
    return await wait_for_state(client, flow_run.id, FINAL)


async def test_start_opens_the_worker_calls_the_hooks_and_runs_all_queues(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    worker = _worker(api_url, pool_name, tmp_path, work_queues=None)
    done = await _run_once(worker, client, pool_name)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert worker.calls == ["setup", "teardown"]
    assert worker.teardown_exc_info == (None, None, None)
    assert worker.work_queues == ()


async def test_prefect_style_prepare_for_flow_run_override_gets_the_worker_part_too(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    worker = _worker(api_url, pool_name, tmp_path)
    done = await _run_once(worker, client, pool_name)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    (configuration,) = worker.configurations
    assert isinstance(configuration, EchoConfiguration)
    assert configuration.image == "busybox"  # the job variable, rendered
    assert configuration.tag == f"flow/{done.name}"  # the override ran, with the flow read
    # What only the worker knows was applied although the override did not take it.
    assert configuration.env["PREFECT_API_URL"] == api_url
    assert configuration.env["PREFECT__WORKER_NAME"] == worker.name
    assert configuration.labels["prefect.io/work-pool-name"] == pool_name
    assert configuration.name == done.name


async def test_an_override_that_returns_none_crashes_the_run_naming_the_class(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    class MutatingWorker(EchoWorker):
        job_configuration = MutatingConfiguration  # type: ignore[assignment]

    worker = MutatingWorker(
        pool_name, settings=fast_settings(api_url, tmp_path / "state"), client_backoff_seconds=0.05
    )
    done = await _run_once(worker, client, pool_name)
    assert done.state is not None and done.state.type is StateType.CRASHED, done.state
    assert "MutatingConfiguration.prepare_for_flow_run returned None" in (done.state.message or "")
    assert worker.configurations == []


async def test_get_flow_run_logger_lines_reach_the_runs_logs(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    worker = _worker(api_url, pool_name, tmp_path)
    done = await _run_once(worker, client, pool_name)
    messages = [log.message for log in await client.read_logs(done.id)]
    assert f"echo backend ran {done.name}" in messages
    logger = worker.get_flow_run_logger(done)
    assert logger.extra is not None
    assert logger.extra["flow_run_id"] == done.id
    assert logger.extra["worker_name"] == worker.name


async def test_a_worker_that_sets_only_its_configuration_publishes_its_fields(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    worker = _worker(api_url, pool_name, tmp_path)
    with trio.fail_after(30):
        await worker.start(run_once=True, printer=lambda _: None)  # creates the pool
    pool = await client.read_work_pool(pool_name)
    properties = pool.base_job_template["variables"]["properties"]
    assert properties["image"] == {"default": "python:3.12", "title": "Image", "type": "string"}
    assert pool.base_job_template["job_configuration"]["image"] == "{{ image }}"


async def test_teardown_runs_with_the_error_when_setup_fails_half_way(
    api_url: str, tmp_path: Path
) -> None:
    opened: list[str] = []

    class HalfSetUp(EchoWorker):
        async def setup(self) -> None:
            opened.append("session")
            raise ConfigurationError("no credentials for the cloud")

        async def teardown(self, *exc_info: Any) -> None:
            await super().teardown(*exc_info)
            opened.remove("session")

    worker = HalfSetUp("pool", settings=fast_settings(api_url, tmp_path / "state"))
    with pytest.raises(ConfigurationError, match="no credentials"):
        async with worker:
            raise AssertionError("the body must not run when setup fails")
    assert opened == []
    exc_type, exc, tb = worker.teardown_exc_info
    assert exc_type is ConfigurationError and isinstance(exc, ConfigurationError)
    assert isinstance(tb, TracebackType)


async def test_a_block_the_api_does_not_have_crashes_the_run_naming_it(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    worker = _worker(api_url, pool_name, tmp_path)
    template = worker.get_default_base_job_template()
    template["job_configuration"]["env"] = {"TOKEN": "{{ prefect.blocks.secret.api-token }}"}
    await client.create_work_pool(pool_name, type=worker.type, base_job_template=template)
    deployment = await make_deployment(client, pool_name, name=f"d-{uuid.uuid4().hex[:6]}")
    flow_run = await client.create_flow_run_from_deployment(deployment.id)
    with trio.fail_after(30):
        await worker.start(run_once=True, printer=lambda _: None)
    done = await wait_for_state(client, flow_run.id, FINAL)
    assert done.state is not None and done.state.type is StateType.CRASHED, done.state
    assert "Block not found: 'api-token' of type 'secret'" in (done.state.message or "")
    assert worker.configurations == []  # the literal placeholder never reached run()


async def test_a_run_that_never_calls_started_is_not_crashed(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    """Prefect's worker tolerates a ``run`` that never calls ``task_status.started``.

    Many Prefect custom workers never call it (``task_status`` is optional there);
    the worker logs an error and goes on with the result. Here the run exited 0,
    so it must end COMPLETED, not CRASHED with "child exited without calling
    task_status.started()".
    """
    with pytest.warns(DeprecationWarning, match=r"Silent.run\(flow_run"):

        class Silent(EchoWorker):
            async def run(  # type: ignore[override]
                self,
                flow_run: FlowRun,
                configuration: Any,
                task_status: trio.TaskStatus[str] | None = None,
            ) -> BaseWorkerResult:
                self.configurations.append(configuration)
                return BaseWorkerResult(identifier="silent:1", status_code=0)

    worker = Silent(
        pool_name, settings=fast_settings(api_url, tmp_path / "state"), client_backoff_seconds=0.05
    )
    done = await _run_once(worker, client, pool_name)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert len(worker.configurations) == 1
    assert done.infrastructure_pid == "silent:1"


async def test_a_prefect_style_int_identifier_is_recorded_as_the_infrastructure_pid(
    api_url: str, client: PrefectClient, pool_name: str, tmp_path: Path
) -> None:
    """Prefect's own process worker calls ``task_status.started(process.pid)``, an int.

    Prefect records ``str(...)`` of it; so must we, or the PATCH is refused and
    no other worker can ever cancel the run.
    """
    with pytest.warns(DeprecationWarning, match=r"IntPid.run\(flow_run"):

        class IntPid(EchoWorker):
            async def run(  # type: ignore[override]
                self,
                flow_run: FlowRun,
                configuration: Any,
                task_status: Any = None,
            ) -> BaseWorkerResult:
                task_status.started(4242)
                return BaseWorkerResult(identifier="4242", status_code=0)

    worker = IntPid(
        pool_name, settings=fast_settings(api_url, tmp_path / "state"), client_backoff_seconds=0.05
    )
    done = await _run_once(worker, client, pool_name)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert done.infrastructure_pid == "4242"
