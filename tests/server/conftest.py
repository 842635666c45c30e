"""Fixtures and helpers for the embedded API's tests: a client and a ready deployment."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

DATA = Path(__file__).parent.parent / "data" / "prefect"


def captured(name: str) -> Any:
    """Load a Prefect response captured in prefect-api-subset.md (tests/data/prefect)."""
    return json.loads((DATA / name).read_text())


def assert_conforms(actual: Any, expected: Any, path: str = "$") -> None:
    """Assert ``actual`` has every key of the captured ``expected`` with a compatible JSON type.

    A captured ``null`` accepts any value (Prefect fills it in other situations);
    nested objects are compared key by key; lists by their first item.
    """
    if expected is None:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        missing = set(expected) - set(actual)
        assert not missing, f"{path}: missing keys {sorted(missing)}"
        for key, value in expected.items():
            if isinstance(value, dict) and key in (
                "job_variables",
                "parameters",
                "labels",
                "base_job_template",
                "properties",
                "parameter_openapi_schema",
            ):
                assert isinstance(actual[key], dict), f"{path}.{key}: expected an object"
                continue
            assert_conforms(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
        if expected and actual:
            assert_conforms(actual[0], expected[0], f"{path}[0]")
    elif isinstance(expected, bool):
        assert isinstance(actual, bool), f"{path}: expected a boolean, got {actual!r}"
    elif isinstance(expected, int | float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), (
            f"{path}: expected a number, got {actual!r}"
        )
    elif isinstance(expected, str):
        assert isinstance(actual, str), f"{path}: expected a string, got {actual!r}"
        if expected.endswith("Z") and expected[:4].isdigit():
            assert actual.endswith("Z"), f"{path}: datetime {actual!r} should end with Z"


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as c:
        yield c


async def make_deployment(
    client: httpx.AsyncClient, *, pool: str = "pool-a", **extra: Any
) -> dict[str, Any]:
    """Create a process pool (if needed), a flow and a deployment on the pool."""
    response = await client.post("/work_pools/", json={"name": pool, "type": "process"})
    assert response.status_code in (201, 409), response.text
    flow = (await client.post("/flows/", json={"name": "hello"})).json()
    body = {"name": "hello-dep", "flow_id": flow["id"], "work_pool_name": pool, **extra}
    response = await client.post("/deployments/", json=body)
    assert response.status_code in (200, 201), response.text
    deployment: dict[str, Any] = response.json()
    return deployment


async def make_run(client: httpx.AsyncClient, deployment_id: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/deployments/{deployment_id}/create_flow_run", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


async def propose(
    client: httpx.AsyncClient, run_id: str, state_type: str, *, force: bool = False, **state: Any
) -> httpx.Response:
    return await client.post(
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": state_type, **state}, "force": force},
    )
