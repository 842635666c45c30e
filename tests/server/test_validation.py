"""Bad input gets Prefect's 4xx answers, nothing is half written, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import make_deployment, make_run


async def test_unknown_field_is_422_extra_forbidden(client: httpx.AsyncClient) -> None:
    response = await client.post("/work_pools/", json={"name": "p", "bogus": 1})
    assert response.status_code == 422
    assert response.json() == {
        "exception_message": "Invalid request received.",
        "exception_detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", "bogus"],
                "msg": "Extra inputs are not permitted",
                "input": 1,
            }
        ],
        "request_body": {"name": "p", "bogus": 1},
    }
    assert (await client.get("/work_pools/p")).status_code == 404


@pytest.mark.parametrize(
    ("body", "kind", "loc"),
    [
        ({"state": {"type": "BOGUS"}}, "enum", ["body", "state", "type"]),
        ({"state": {"type": "PENDING", "typo": 1}}, "extra_forbidden", ["body", "state", "typo"]),
        ({"state": {"name": "x"}}, "missing", ["body", "state", "type"]),
        ({"state": {"type": "PENDING"}, "force": "yes"}, "bool_type", ["body", "force"]),
        ({"state": {"type": "PENDING", "message": 5}}, "string_type", ["body", "state", "message"]),
    ],
)
async def test_set_state_bad_bodies(
    client: httpx.AsyncClient, body: object, kind: str, loc: list[str]
) -> None:
    deployment = await make_deployment(client)
    run = await make_run(client, deployment["id"])
    response = await client.post(f"/flow_runs/{run['id']}/set_state", json=body)
    assert response.status_code == 422
    [error] = response.json()["exception_detail"]
    assert (error["type"], error["loc"]) == (kind, loc)
    assert (await client.get(f"/flow_runs/{run['id']}")).json()["state_type"] == "SCHEDULED"


async def test_malformed_json_is_422_and_server_keeps_serving(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/flows/", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["exception_detail"][0]["type"] == "json_invalid"
    missing = await client.post("/flows/")
    assert missing.status_code == 422
    assert missing.json()["exception_detail"][0]["type"] == "missing"
    assert (await client.get("/health")).json() is True


async def test_wrong_types_and_bad_filter_fields(client: httpx.AsyncClient) -> None:
    response = await client.post("/work_pools/", json={"name": 7, "concurrency_limit": -1})
    assert response.status_code == 422
    kinds = {(e["type"], tuple(e["loc"])) for e in response.json()["exception_detail"]}
    assert kinds == {
        ("string_type", ("body", "name")),
        ("greater_than_equal", ("body", "concurrency_limit")),
    }
    bad_filter = await client.post("/flow_runs/filter", json={"flow_runs": {"nope": {}}})
    assert bad_filter.status_code == 422
    assert bad_filter.json()["exception_detail"][0]["loc"] == ["body", "flow_runs", "nope"]
    bad_uuid = await client.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": ["x"]}}})
    assert bad_uuid.status_code == 422
    too_many = await client.post("/flow_runs/filter", json={"limit": 500})
    assert too_many.json() == {"detail": "Invalid limit: must be less than or equal to 200."}
    bad_heartbeat = await client.post("/work_pools/x/workers/heartbeat", json={})
    assert bad_heartbeat.status_code == 422


async def test_non_uuid_path_ids_are_plain_404(client: httpx.AsyncClient) -> None:
    for path in ("/flow_runs/abc", "/deployments/abc", "/flows/abc", "/task_runs/abc"):
        response = await client.get(path)
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})


async def test_failed_request_writes_nothing(client: httpx.AsyncClient) -> None:
    flow = (await client.post("/flows/", json={"name": "f"})).json()
    response = await client.post(
        "/deployments/", json={"name": "d", "flow_id": flow["id"], "work_pool_name": "missing"}
    )
    assert response.status_code == 404
    assert (await client.post("/deployments/filter", json={})).json() == []
