"""``trio-worker work-pool`` against the embedded API, checked through the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trio_worker._client._client import PrefectClient
from trio_worker._process._config import process_base_job_template

TEMPLATE: dict[str, Any] = {
    "job_configuration": {"command": "{{ command }}"},
    "variables": {"type": "object", "properties": {"command": {"type": "string"}}},
}


async def test_create_uses_process_default_template(run_cli: Any, client: PrefectClient) -> None:
    result = await run_cli("work-pool", "create", "pool-a")
    assert result.returncode == 0, result
    pool = await client.read_work_pool("pool-a")
    assert str(pool.id) in result.stdout
    assert pool.type == "process"
    assert not pool.is_paused
    assert pool.concurrency_limit is None
    assert pool.base_job_template == process_base_job_template()


async def test_create_with_options(run_cli: Any, client: PrefectClient, tmp_path: Path) -> None:
    template_file = tmp_path / "template.json"
    template_file.write_text(json.dumps(TEMPLATE))
    result = await run_cli(
        "work-pool", "create", "pool-b", "--type", "process",
        "--base-job-template", str(template_file),
        "--concurrency-limit", "3", "--paused", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result
    printed = json.loads(result.stdout)
    assert printed["name"] == "pool-b"
    pool = await client.read_work_pool("pool-b")
    assert printed["id"] == str(pool.id)
    assert pool.is_paused
    assert pool.concurrency_limit == 3
    assert pool.base_job_template == TEMPLATE


async def test_ls_lists_pools_as_table_and_json(run_cli: Any, client: PrefectClient) -> None:
    empty = await run_cli("work-pool", "ls")
    assert empty.returncode == 0, empty
    assert "No work pools" in empty.stdout
    await client.create_work_pool("pool-a", type="process")
    await client.create_work_pool("pool-b", type="process", is_paused=True, concurrency_limit=2)

    table = await run_cli("work-pool", "ls")
    assert table.returncode == 0, table
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "TYPE", "STATUS"]
    assert [row.split()[0] for row in rows] == ["pool-a", "pool-b"]
    assert "PAUSED" in rows[1]
    # Columns are aligned: every row's TYPE starts where the header's does.
    assert all(row[header.index("TYPE") :].startswith("process") for row in rows)

    as_json = await run_cli("work-pool", "ls", "--json")
    assert as_json.returncode == 0, as_json
    pools = json.loads(as_json.stdout)
    assert [(p["name"], p["is_paused"], p["concurrency_limit"]) for p in pools] == [
        ("pool-a", False, None),
        ("pool-b", True, 2),
    ]


async def test_inspect_shows_pool_queues_and_workers(run_cli: Any, client: PrefectClient) -> None:
    pool = await client.create_work_pool("pool-a", type="process", concurrency_limit=4)
    await client.send_worker_heartbeat("pool-a", "worker-1", heartbeat_interval_seconds=30)

    text = await run_cli("work-pool", "inspect", "pool-a")
    assert text.returncode == 0, text
    assert "id:" in text.stdout
    assert str(pool.id) in text.stdout
    assert "default" in text.stdout  # the pool's default queue
    assert "worker-1" in text.stdout

    as_json = await run_cli("work-pool", "inspect", "pool-a", "--json")
    assert as_json.returncode == 0, as_json
    printed = json.loads(as_json.stdout)
    assert printed["id"] == str(pool.id)
    assert printed["concurrency_limit"] == 4


async def test_pause_and_resume(run_cli: Any, client: PrefectClient) -> None:
    await client.create_work_pool("pool-a", type="process")

    paused = await run_cli("work-pool", "pause", "pool-a")
    assert paused.returncode == 0, paused
    assert "Paused" in paused.stdout
    assert (await client.read_work_pool("pool-a")).is_paused

    resumed = await run_cli("work-pool", "resume", "pool-a")
    assert resumed.returncode == 0, resumed
    assert "Resumed" in resumed.stdout
    assert not (await client.read_work_pool("pool-a")).is_paused


async def test_unknown_pool_is_one_line_error(run_cli: Any) -> None:
    for command in ("inspect", "pause", "resume"):
        result = await run_cli("work-pool", command, "nope")
        result.assert_one_line_error("work pool 'nope' not found")


async def test_duplicate_pool_is_one_line_error(run_cli: Any, client: PrefectClient) -> None:
    await client.create_work_pool("pool-a", type="process")
    result = await run_cli("work-pool", "create", "pool-a")
    result.assert_one_line_error("work pool 'pool-a' already exists")


async def test_bad_template_file_is_one_line_error(run_cli: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    result = await run_cli("work-pool", "create", "p", "--base-job-template", "bad.json")
    result.assert_usage_error("bad.json is not JSON")
    (tmp_path / "list.json").write_text("[]")
    result = await run_cli("work-pool", "create", "p", "--base-job-template", "list.json")
    result.assert_usage_error("must hold a JSON object")


async def test_template_the_api_refuses_is_one_line_error(
    run_cli: Any, client: PrefectClient, tmp_path: Path
) -> None:
    undeclared = {"job_configuration": {"command": "{{ cmd }}"}, "variables": {"properties": {}}}
    (tmp_path / "t.json").write_text(json.dumps(undeclared))
    result = await run_cli("work-pool", "create", "p", "--base-job-template", "t.json")
    result.assert_one_line_error("422")
    assert await client.read_work_pools() == []


async def test_missing_api_url_is_one_line_error(run_cli: Any) -> None:
    result = await run_cli("work-pool", "ls", env={"PREFECT_API_URL": None})
    line = result.assert_one_line_error("PREFECT_API_URL is not set")
    assert "trio-worker server start" in line


async def test_bad_setting_is_one_line_error(run_cli: Any) -> None:
    result = await run_cli("work-pool", "ls", env={"PREFECT_API_REQUEST_TIMEOUT": "soon"})
    result.assert_one_line_error("PREFECT_API_REQUEST_TIMEOUT='soon' is not a number")


async def test_unreachable_api_is_one_line_error(run_cli: Any) -> None:
    result = await run_cli("work-pool", "ls", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    result.assert_one_line_error("is the API at PREFECT_API_URL running?")
    result = await run_cli("work-pool", "ls", env={"PREFECT_API_URL": "localhost:4200"})
    result.assert_one_line_error("is not an http(s) URL")
