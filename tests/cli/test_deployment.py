"""``trio-worker deployment`` against the embedded API, checked through the client."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType, now

FLOW_SOURCE = "def hello(name='world', n=1, quoted=None):\n    print('hello', name, n)\n"


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "flows.py"
    path.write_text(FLOW_SOURCE)
    return path


@pytest.fixture
async def pool(client: PrefectClient) -> str:
    await client.create_work_pool("pool-a", type="process")
    return "pool-a"


async def _create(run_cli: Any, *extra: str, name: str = "dep") -> Any:
    return await run_cli(
        "deployment", "create", name, "--pool", "pool-a", "--entrypoint", "flows.py:hello", *extra
    )


@pytest.mark.usefixtures("flow_file")
async def test_create_records_flow_path_params_and_job_variables(
    pool: str, run_cli: Any, client: PrefectClient, tmp_path: Path
) -> None:
    result = await _create(
        run_cli,
        "--param", "name=people", "--param", "n=3", "--param", 'quoted="3"',
        "--job-variable", 'env={"A": "1"}', "--job-variable", "stream_output=false",
        "--work-queue", "fast", "--concurrency-limit", "2",
    )  # fmt: skip
    assert result.returncode == 0, result
    deployment_id = uuid.UUID(result.stdout.strip())
    deployment = await client.read_deployment(deployment_id)
    flow = await client.read_flow(deployment.flow_id)
    assert flow.name == "hello"
    assert deployment.name == "dep"
    assert deployment.entrypoint == "flows.py:hello"
    assert deployment.path == str(tmp_path.resolve())
    assert deployment.work_pool_name == "pool-a"
    assert deployment.work_queue_name == "fast"
    assert deployment.concurrency_limit == 2
    assert deployment.parameters == {"name": "people", "n": 3, "quoted": "3"}
    assert deployment.job_variables == {"env": {"A": "1"}, "stream_output": False}


@pytest.mark.usefixtures("flow_file")
async def test_create_again_replaces_the_deployment(
    pool: str, run_cli: Any, client: PrefectClient
) -> None:
    first = await _create(run_cli, "--param", "n=1")
    second = await _create(run_cli, "--param", "n=2", "--json")
    assert first.returncode == 0, first
    assert second.returncode == 0, second
    printed = json.loads(second.stdout)
    assert printed["id"] == first.stdout.strip()
    deployment = await client.read_deployment(uuid.UUID(printed["id"]))
    assert deployment.parameters == {"n": 2}


@pytest.mark.usefixtures("flow_file")
async def test_create_on_unknown_pool_is_one_line_error(
    run_cli: Any, client: PrefectClient
) -> None:
    result = await _create(run_cli)
    result.assert_one_line_error("work pool 'pool-a' not found")
    assert await client.read_deployments() == []


@pytest.mark.usefixtures("flow_file")
async def test_bad_param_is_one_line_error(pool: str, run_cli: Any, client: PrefectClient) -> None:
    result = await _create(run_cli, "--param", "novalue")
    result.assert_usage_error("--param 'novalue' is not KEY=VALUE")
    result = await _create(run_cli, "--job-variable", "=1")
    result.assert_usage_error("--job-variable '=1' is not KEY=VALUE")
    assert await client.read_deployments() == []


async def test_bad_entrypoint_is_one_line_error(pool: str, run_cli: Any, flow_file: Path) -> None:
    result = await _create(run_cli)
    assert result.returncode == 0, result  # flows.py exists
    flow_file.unlink()
    missing = await _create(run_cli)
    missing.assert_usage_error("file 'flows.py' not found")
    malformed = await run_cli(
        "deployment", "create", "d", "--pool", "pool-a", "--entrypoint", "flows.py"
    )
    malformed.assert_usage_error("is not PATH:FUNCTION")


@pytest.mark.usefixtures("flow_file")
async def test_ls_and_inspect(pool: str, run_cli: Any) -> None:
    empty = await run_cli("deployment", "ls")
    assert "No deployments" in empty.stdout
    created = await _create(run_cli, "--param", "n=3")
    deployment_id = created.stdout.strip()

    table = await run_cli("deployment", "ls")
    assert table.returncode == 0, table
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "POOL", "QUEUE", "ENTRYPOINT", "ID"]
    assert row.split() == ["hello/dep", "pool-a", "default", "flows.py:hello", deployment_id]

    listed = json.loads((await run_cli("deployment", "ls", "--json")).stdout)
    assert [d["id"] for d in listed] == [deployment_id]

    for ref in ("hello/dep", "dep", deployment_id):
        text = await run_cli("deployment", "inspect", ref)
        assert text.returncode == 0, text
        assert "hello/dep" in text.stdout
        assert '{"n": 3}' in text.stdout
        as_json = await run_cli("deployment", "inspect", ref, "--json")
        assert json.loads(as_json.stdout)["id"] == deployment_id


@pytest.mark.usefixtures("flow_file")
async def test_bare_name_used_by_two_flows_is_ambiguous(
    pool: str, run_cli: Any, client: PrefectClient
) -> None:
    assert (await _create(run_cli)).returncode == 0
    other = await client.create_flow("other")
    await client.create_deployment(flow_id=other.id, name="dep", work_pool_name="pool-a")
    result = await run_cli("deployment", "inspect", "dep")
    result.assert_one_line_error("hello/dep", "other/dep", "FLOW/DEPLOYMENT")
    assert (await run_cli("deployment", "inspect", "other/dep")).returncode == 0


async def test_unknown_deployment_is_one_line_error(run_cli: Any) -> None:
    for ref in ("nope", "hello/nope", str(uuid.uuid4())):
        for command in ("inspect", "run"):
            result = await run_cli("deployment", command, ref)
            result.assert_one_line_error(f"deployment {ref!r} not found")


@pytest.mark.usefixtures("flow_file")
async def test_run_creates_count_runs_with_params(
    pool: str, run_cli: Any, client: PrefectClient
) -> None:
    deployment_id = uuid.UUID((await _create(run_cli, "--param", "name=dep")).stdout.strip())
    result = await run_cli(
        "deployment", "run", "hello/dep", "--param", "n=5",
        "--job-variable", "working_dir=/tmp", "--count", "3",
    )  # fmt: skip
    assert result.returncode == 0, result
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATE"]
    assert len(rows) == 3
    runs = await client.read_flow_runs(deployments={"id": {"any_": [str(deployment_id)]}})
    assert sorted(str(r.id) for r in runs) == sorted(row.split()[0] for row in rows)
    for run in runs:
        assert run.parameters == {"name": "dep", "n": 5}
        assert run.job_variables == {"working_dir": "/tmp"}
        assert run.state is not None
        assert run.state.type is StateType.SCHEDULED


@pytest.mark.usefixtures("flow_file")
async def test_run_start_in_schedules_later(pool: str, run_cli: Any, client: PrefectClient) -> None:
    assert (await _create(run_cli)).returncode == 0
    before = now()
    result = await run_cli("deployment", "run", "dep", "--start-in", "3600", "--json")
    assert result.returncode == 0, result
    (printed,) = json.loads(result.stdout)
    run = await client.read_flow_run(uuid.UUID(printed["id"]))
    assert run.state is not None
    assert run.state.type is StateType.SCHEDULED
    scheduled = run.state.state_details.scheduled_time
    assert scheduled is not None
    assert before + dt.timedelta(seconds=3590) < scheduled < now() + dt.timedelta(seconds=3610)
    # Nothing is due now, so a worker polling the pool sees no run.
    assert await client.get_scheduled_flow_runs("pool-a", scheduled_before=now()) == []


@pytest.mark.usefixtures("flow_file")
async def test_run_with_bad_param_creates_nothing(
    pool: str, run_cli: Any, client: PrefectClient
) -> None:
    assert (await _create(run_cli)).returncode == 0
    result = await run_cli("deployment", "run", "dep", "--param", "oops")
    result.assert_usage_error("--param 'oops' is not KEY=VALUE")
    assert await client.read_flow_runs() == []


async def test_missing_api_url_is_one_line_error(run_cli: Any) -> None:
    result = await run_cli("deployment", "ls", env={"PREFECT_API_URL": None})
    result.assert_one_line_error("PREFECT_API_URL is not set")
