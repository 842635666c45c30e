"""``trio-worker flow-run`` against the embedded API, checked through the client."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import FlowRun, Log, SetStateStatus, State, StateType, now


@pytest.fixture
async def deployment_id(client: PrefectClient) -> uuid.UUID:
    await client.create_work_pool("pool-a", type="process")
    flow = await client.create_flow("hello")
    deployment = await client.create_deployment(
        flow_id=flow.id, name="dep", work_pool_name="pool-a", entrypoint="flows.py:hello"
    )
    return deployment.id


async def _new_run(client: PrefectClient, deployment_id: uuid.UUID, **kw: Any) -> FlowRun:
    return await client.create_flow_run_from_deployment(deployment_id, **kw)


async def _move(client: PrefectClient, run: FlowRun, *types: StateType) -> None:
    for state_type in types:
        result = await client.set_flow_run_state(run.id, State.of(state_type), force=True)
        assert result.status is SetStateStatus.ACCEPT, result


async def test_ls_filters_by_state_and_limits(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    empty = await run_cli("flow-run", "ls")
    assert empty.returncode == 0, empty
    assert "No flow runs" in empty.stdout
    scheduled = await _new_run(client, deployment_id, name="run-scheduled")
    running = await _new_run(client, deployment_id, name="run-running")
    await _move(client, running, StateType.PENDING, StateType.RUNNING)

    table = await run_cli("flow-run", "ls")
    assert table.returncode == 0, table
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATE"]
    assert sorted(row.split()[1] for row in rows) == ["run-running", "run-scheduled"]

    only = await run_cli("flow-run", "ls", "--state", "scheduled", "--json")
    assert only.returncode == 0, only
    assert [r["id"] for r in json.loads(only.stdout)] == [str(scheduled.id)]

    both = await run_cli("flow-run", "ls", "--state", "SCHEDULED", "--state", "RUNNING", "--json")
    assert len(json.loads(both.stdout)) == 2

    limited = await run_cli("flow-run", "ls", "--limit", "1", "--json")
    assert len(json.loads(limited.stdout)) == 1


async def test_inspect_by_id_and_name(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    run = await _new_run(client, deployment_id, name="witty-python", parameters={"n": 3})
    for ref in (str(run.id), "witty-python"):
        text = await run_cli("flow-run", "inspect", ref)
        assert text.returncode == 0, text
        assert str(run.id) in text.stdout
        assert "Scheduled" in text.stdout
        assert '{"n": 3}' in text.stdout
        as_json = await run_cli("flow-run", "inspect", ref, "--json")
        assert as_json.returncode == 0, as_json
        printed = json.loads(as_json.stdout)
        assert printed["id"] == str(run.id)
        assert printed["parameters"] == {"n": 3}


async def test_cancel_scheduled_run_without_infrastructure_is_cancelled_at_once(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    run = await _new_run(client, deployment_id)
    result = await run_cli("flow-run", "cancel", str(run.id))
    assert result.returncode == 0, result
    assert "now Cancelled" in result.stdout
    after = await client.read_flow_run(run.id)
    assert after.state is not None
    assert after.state.type is StateType.CANCELLED

    again = await run_cli("flow-run", "cancel", str(run.id))
    again.assert_one_line_error("was not cancelled", "CANCELLED")


async def test_cancel_started_run_goes_to_cancelling(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    run = await _new_run(client, deployment_id, name="busy-run")
    await _move(client, run, StateType.PENDING, StateType.RUNNING)
    await client.update_flow_run(run.id, infrastructure_pid="4242")
    result = await run_cli("flow-run", "cancel", "busy-run")
    assert result.returncode == 0, result
    assert "Cancelling" in result.stdout
    after = await client.read_flow_run(run.id)
    assert after.state is not None
    assert after.state.type is StateType.CANCELLING


async def test_cancel_finished_run_is_one_line_error(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    run = await _new_run(client, deployment_id)
    await _move(client, run, StateType.PENDING, StateType.RUNNING, StateType.COMPLETED)
    result = await run_cli("flow-run", "cancel", str(run.id))
    result.assert_one_line_error("was not cancelled")
    after = await client.read_flow_run(run.id)
    assert after.state is not None
    assert after.state.type is StateType.COMPLETED


async def test_logs_prints_lines_oldest_first(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    run = await _new_run(client, deployment_id)
    other = await _new_run(client, deployment_id)
    start = now()
    await client.create_logs(
        [
            Log("prefect.flow_runs", 40, "second line", start + dt.timedelta(seconds=1), run.id),
            Log("prefect.flow_runs", 20, "first line", start, run.id),
            Log("prefect.flow_runs", 20, "not this run", start, other.id),
        ]
    )
    text = await run_cli("flow-run", "logs", str(run.id))
    assert text.returncode == 0, text
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    assert "INFO" in lines[0]
    assert lines[0].endswith(" INFO prefect.flow_runs: first line")
    assert "ERROR" in lines[1]
    assert lines[1].endswith("second line")

    as_json = await run_cli("flow-run", "logs", str(run.id), "--json")
    assert [entry["message"] for entry in json.loads(as_json.stdout)] == [
        "first line",
        "second line",
    ]


async def test_logs_page_through_more_than_one_request(
    run_cli: Any, client: PrefectClient, deployment_id: uuid.UUID
) -> None:
    run = await _new_run(client, deployment_id)
    start = now()
    await client.create_logs(
        [
            Log("l", 20, f"line {i}", start + dt.timedelta(milliseconds=i), run.id)
            for i in range(250)
        ]
    )
    result = await run_cli("flow-run", "logs", str(run.id), "--json")
    assert result.returncode == 0, result
    assert [e["message"] for e in json.loads(result.stdout)] == [f"line {i}" for i in range(250)]


async def test_unknown_run_is_one_line_error(run_cli: Any, deployment_id: uuid.UUID) -> None:
    for ref in (str(uuid.uuid4()), "no-such-run"):
        for command in ("inspect", "cancel", "logs"):
            result = await run_cli("flow-run", command, ref)
            result.assert_one_line_error(f"flow run {ref!r} not found")


async def test_missing_api_url_is_one_line_error(run_cli: Any) -> None:
    result = await run_cli("flow-run", "ls", env={"PREFECT_API_URL": None})
    result.assert_one_line_error("PREFECT_API_URL is not set")
