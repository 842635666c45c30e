"""A client's mistake is a 422 naming the field, never a 500, and nothing is written.

JSON the server could not store or answer (lone surrogates, NaN, deep
nesting, integers beyond 64 bits), names Prefect refuses, malformed base job
templates, and job variables that do not fit the pool's variables schema.
The wording of job-variable and parameter failures was checked against
Prefect 3.9.1's own validator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.server.conftest import make_deployment, make_run

JSON = {"content-type": "application/json"}
PROCESS_TEMPLATE = json.loads(
    (Path(__file__).parents[1] / "data" / "process-base-job-template.json").read_text()
)


async def _process_deployment(client: httpx.AsyncClient, **extra: Any) -> dict[str, Any]:
    """A deployment on ``pool-a``, a pool with the process worker's base job template."""
    pool = {"name": "pool-a", "type": "process", "base_job_template": PROCESS_TEMPLATE}
    assert (await client.post("/work_pools/", json=pool)).status_code == 201
    return await make_deployment(client, **extra)


async def _raw(client: httpx.AsyncClient, path: str, text: str) -> httpx.Response:
    return await client.post(path, content=text.encode(), headers=JSON)


def _only_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    [error] = response.json()["exception_detail"]
    return dict(error)


async def test_a_lone_surrogate_in_a_name_is_422_and_the_answer_is_valid_utf8(
    client: httpx.AsyncClient,
) -> None:
    response = await _raw(client, "/flows/", '{"name": "bad\\ud800name"}')
    error = _only_error(response)
    assert (error["type"], error["loc"]) == ("string_unicode", ["body", "name"])
    assert error["input"] == "bad\ufffdname"
    assert response.json()["request_body"] == '{"name": "bad\\ud800name"}'
    assert (await client.post("/flows/filter", json={})).json() == []


async def test_a_lone_surrogate_in_one_log_line_refuses_the_batch_with_its_index(
    client: httpx.AsyncClient,
) -> None:
    line = {"name": "n", "level": 20, "message": "fine", "timestamp": "2024-01-01T00:00:00Z"}
    body = json.dumps([line, {**line, "message": "broken \udc80 line"}])
    error = _only_error(await _raw(client, "/logs/", body))
    assert (error["type"], error["loc"]) == ("string_unicode", ["body", 1, "message"])
    assert (await client.post("/logs/filter", json={})).json() == []
    # A surrogate pair is a proper character and is stored as such.
    good = json.dumps([{**line, "message": "smile \ud83d\ude00"}])
    assert (await _raw(client, "/logs/", good)).status_code == 201
    [stored] = (await client.post("/logs/filter", json={})).json()
    assert stored["message"] == "smile 😀"


async def test_a_lone_surrogate_in_a_key_is_422(client: httpx.AsyncClient) -> None:
    error = _only_error(await _raw(client, "/flows/", '{"name": "f", "labels": {"\\udfff": 1}}'))
    assert (error["type"], error["loc"]) == ("string_unicode", ["body", "labels", "\ufffd"])


@pytest.mark.parametrize("depth", [101, 5000, 200_000])
async def test_deep_nesting_is_422_at_any_depth(client: httpx.AsyncClient, depth: int) -> None:
    text = '{"name": "f", "labels": {"k": ' + "[" * depth + "]" * depth + "}}"
    error = _only_error(await _raw(client, "/flows/", text))
    assert error["type"] == "json_invalid"
    assert error["ctx"] == {"error": "nested deeper than 100 levels"}
    assert (await client.get("/health")).json() is True


async def test_nesting_up_to_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client)
    nested = "[" * 97 + "]" * 97  # body > parameters > x > 97 arrays = 100 levels
    text = '{"parameters": {"x": ' + nested + "}}"
    response = await _raw(client, f"/deployments/{deployment['id']}/create_flow_run", text)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_numbers_json_cannot_carry_are_422(client: httpx.AsyncClient, number: str) -> None:
    error = _only_error(await _raw(client, "/variables/", f'{{"name": "v", "value": {number}}}'))
    assert error["type"] == "finite_number"
    assert (await client.post("/variables/filter", json={})).json() == []


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/flows/filter", {"offset": 10**30}, ["body", "offset"]),
        ("/work_pools/", {"name": "p", "concurrency_limit": 2**63}, ["body", "concurrency_limit"]),
        ("/logs/filter", {"logs": {"level": {"ge_": -(10**30)}}}, ["body", "logs", "level", "ge_"]),
        (
            "/logs/",
            [{"name": "n", "level": 10**30, "message": "m", "timestamp": "2024-01-01T00:00:00Z"}],
            ["body", 0, "level"],
        ),
    ],
)
async def test_integers_beyond_64_bits_are_422(
    client: httpx.AsyncClient, path: str, body: Any, loc: list[Any]
) -> None:
    error = _only_error(await client.post(path, json=body))
    assert error["loc"] == loc
    assert error["type"] in ("less_than_equal", "greater_than_equal")


@pytest.mark.parametrize("path", ["/flow_runs/filter", "/task_runs/filter", "/logs/filter"])
async def test_a_sort_that_is_no_string_is_422(client: httpx.AsyncClient, path: str) -> None:
    error = _only_error(await client.post(path, json={"sort": [None]}))
    assert (error["type"], error["loc"]) == ("enum", ["body", "sort"])


async def test_datetimes_at_the_ends_of_the_range_are_422(client: httpx.AsyncClient) -> None:
    for stamp in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"):
        line = {"name": "n", "level": 20, "message": "m", "timestamp": stamp}
        error = _only_error(await client.post("/logs/", json=[line]))
        assert (error["type"], error["loc"]) == ("datetime_parsing", ["body", 0, "timestamp"])


async def test_a_huge_heartbeat_interval_is_stored_and_the_worker_still_reads(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/work_pools/", json={"name": "p"})).status_code == 201
    beat = {"name": "w", "heartbeat_interval_seconds": 2**62}
    assert (await client.post("/work_pools/p/workers/heartbeat", json=beat)).status_code == 204
    [worker] = (await client.post("/work_pools/p/workers/filter", json={})).json()
    assert worker["status"] == "ONLINE"


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/work_pools/", {"name": "a/b"}, "string_pattern_mismatch"),
        ("/work_pools/", {"name": " '' "}, "value_error"),
        ("/flows/", {"name": "x%y"}, "string_pattern_mismatch"),
        ("/flows/", {"name": ""}, "string_pattern_mismatch"),
        ("/work_pools/pool-a/queues", {"name": "a<b"}, "string_pattern_mismatch"),
        ("/variables/", {"name": "Bad Name", "value": 1}, "value_error"),
        ("/variables/", {"name": "v" * 256, "value": 1}, "too_long"),
    ],
)
async def test_names_prefect_refuses_are_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], kind: str
) -> None:
    await client.post("/work_pools/", json={"name": "pool-a"})
    error = _only_error(await client.post(path, json=body))
    assert (error["type"], error["loc"]) == (kind, ["body", "name"])
    if kind == "string_pattern_mismatch":
        assert "^[^/%&><]" in error["msg"]
    assert [p["name"] for p in (await client.post("/work_pools/filter", json={})).json()] == [
        "pool-a"
    ]


async def test_deployment_and_queue_names_prefect_refuses_are_422(
    client: httpx.AsyncClient,
) -> None:
    deployment = await make_deployment(client)
    flow_id = deployment["flow_id"]
    bad_name = await client.post("/deployments/", json={"name": "a&b", "flow_id": flow_id})
    assert _only_error(bad_name)["loc"] == ["body", "name"]
    bad_queue = {"name": "d2", "flow_id": flow_id, "work_pool_name": "pool-a",
                 "work_queue_name": "q/1"}  # fmt: skip
    assert _only_error(await client.post("/deployments/", json=bad_queue))["loc"] == [
        "body",
        "work_queue_name",
    ]
    run = await client.post(
        f"/deployments/{deployment['id']}/create_flow_run", json={"work_queue_name": "q>2"}
    )
    assert _only_error(run)["loc"] == ["body", "work_queue_name"]
    rename = await client.patch("/work_pools/pool-a/queues/default", json={"name": "x/y"})
    assert _only_error(rename)["loc"] == ["body", "name"]
    queues = (await client.post("/work_pools/pool-a/queues/filter", json={})).json()
    assert [q["name"] for q in queues] == ["default"]
    long_value = await client.post("/variables/", json={"name": "v", "value": "x" * 5000})
    assert _only_error(long_value)["loc"] == ["body", "value"]


@pytest.mark.parametrize(
    "template",
    [
        {"job_configuration": {"a": "{{ x }}"}, "variables": {"properties": [1]}},
        {"job_configuration": {"a": "x"}, "variables": [1]},
        {"job_configuration": [1], "variables": {"properties": {}}},
    ],
)
async def test_malformed_base_job_templates_are_422(
    client: httpx.AsyncClient, template: dict[str, Any]
) -> None:
    error = _only_error(
        await client.post("/work_pools/", json={"name": "p", "base_job_template": template})
    )
    assert (error["type"], error["loc"]) == ("value_error", ["body", "base_job_template"])
    assert (await client.post("/work_pools/", json={"name": "p"})).status_code == 201
    patched = await client.patch("/work_pools/p", json={"base_job_template": template})
    assert _only_error(patched)["loc"] == ["body", "base_job_template"]


async def test_invalid_variables_schemas_and_defaults_are_422_with_prefects_detail(
    client: httpx.AsyncClient,
) -> None:
    bad_type = {"job_configuration": {"a": "{{ x }}"},
                "variables": {"properties": {"x": {"type": 5}}}}  # fmt: skip
    response = await client.post("/work_pools/", json={"name": "p", "base_job_template": bad_type})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "Invalid schema: 5 is not valid under any of the given schemas"
    }
    bad_default = {"job_configuration": {"env": "{{ env }}"}, "variables": {"properties": {
        "env": {"type": "object", "additionalProperties": {"type": "string"},
                "default": {"A": 1}}}}}  # fmt: skip
    response = await client.post(
        "/work_pools/", json={"name": "p", "base_job_template": bad_default}
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": "Validation failed for work pool's job variable defaults: "
        "Validation failed for field 'env.A'. Failure reason: 1 is not of type 'string'"
    }


async def test_deployment_job_variables_must_fit_the_pool(client: httpx.AsyncClient) -> None:
    deployment = await _process_deployment(client)
    body = {"name": "d2", "flow_id": deployment["flow_id"], "work_pool_name": "pool-a"}
    for job_variables, field, reason in [
        ({"env": {"N": 5}}, "env.N", "5 is not valid under any of the given schemas"),
        ({"stream_output": "yes"}, "stream_output",
         "'yes' is not valid under any of the given schemas"),
        ({"labels": {"a": 1}}, "labels.a", "1 is not of type 'string'"),
    ]:  # fmt: skip
        response = await client.post("/deployments/", json={**body, "job_variables": job_variables})
        assert response.status_code == 422
        assert response.json() == {
            "detail": f"Error creating deployment: Validation failed for field '{field}'. "
            f"Failure reason: {reason}"
        }
    fine = {"env": {"N": "5", "GONE": None}, "command": "echo hi", "name": None, "custom": [1]}
    response = await client.post("/deployments/", json={**body, "job_variables": fine})
    assert response.status_code == 201, response.text


async def test_create_flow_run_refuses_job_variables_that_do_not_fit(
    client: httpx.AsyncClient,
) -> None:
    deployment = await _process_deployment(client, job_variables={"env": {"A": "1"}})
    url = f"/deployments/{deployment['id']}/create_flow_run"
    response = await client.post(url, json={"job_variables": {"env": {"N": 5}}})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "Error creating flow run: Validation failed for field 'env.N'. "
        "Failure reason: 5 is not valid under any of the given schemas"
    }
    response = await client.post(url, json={"job_variables": {"command": ["echo", "hi"]}})
    assert response.status_code == 422
    assert "'command'" in response.json()["detail"]
    assert (await client.post("/flow_runs/filter", json={})).json() == []
    run = await make_run(client, deployment["id"], job_variables={"env": {"N": "5"}})
    patched = await client.patch(f"/flow_runs/{run['id']}", json={"job_variables": {"env": 5}})
    assert patched.status_code == 422
    assert patched.json()["detail"].startswith("Error updating flow run: Validation failed")
    read = (await client.get(f"/flow_runs/{run['id']}")).json()
    assert read["job_variables"] == {"env": {"N": "5"}}


async def test_required_job_variables_are_checked_at_the_flow_run_only(
    client: httpx.AsyncClient,
) -> None:
    template = {"job_configuration": {"image": "{{ image }}"},
                "variables": {"properties": {"image": {"type": "string"}},
                              "required": ["image"]}}  # fmt: skip
    pool = {"name": "needs-image", "type": "process", "base_job_template": template}
    assert (await client.post("/work_pools/", json=pool)).status_code == 201
    flow = (await client.post("/flows/", json={"name": "f"})).json()
    deployment = await client.post(
        "/deployments/", json={"name": "d", "flow_id": flow["id"], "work_pool_name": "needs-image"}
    )
    assert deployment.status_code == 201  # a flow run may still supply it
    url = f"/deployments/{deployment.json()['id']}/create_flow_run"
    missing = await client.post(url, json={})
    assert missing.status_code == 422
    assert missing.json() == {
        "detail": "Error creating flow run: Validation failed. "
        "Failure reason: 'image' is a required property"
    }
    assert (await client.post(url, json={"job_variables": {"image": "x"}})).status_code == 201


async def test_optional_parameters_accept_null_and_mismatches_use_prefects_words(
    client: httpx.AsyncClient,
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    deployment = await make_deployment(client, parameter_openapi_schema=schema)
    url = f"/deployments/{deployment['id']}/create_flow_run"
    assert (await client.post(url, json={"parameters": {"n": None}})).status_code == 201
    wrong = await client.post(url, json={"parameters": {"n": "x"}})
    assert wrong.status_code == 409
    assert wrong.json() == {
        "detail": "Error creating flow run: Validation failed for field 'n'. "
        "Failure reason: 'x' is not valid under any of the given schemas"
    }


@pytest.mark.parametrize(
    "frame",
    [
        '{"id": "\\ud800", "event": "e", "occurred": "2024-01-01T00:00:00Z",'
        ' "resource": {"prefect.resource.id": "r"}}',
        '{"id": "i", "event": "e", "occurred": "2024-01-01T00:00:00Z",'
        ' "resource": {"prefect.resource.id": "r"}, "payload": {"x": NaN}}',
        '{"id": "i", "event": "e", "occurred": "2024-01-01T00:00:00Z",'
        ' "resource": {"prefect.resource.id": "r"}, "payload": {"x": '
        + "[" * 500
        + "]" * 500
        + "}}",
    ],
)
async def test_an_event_frame_the_server_cannot_store_closes_with_1007(
    api_url: str, client: httpx.AsyncClient, frame: str
) -> None:
    async with open_websocket_url(api_url.replace("http://", "ws://") + "/events/in") as ws:
        await ws.send_message(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1007
    assert (await client.post("/events/filter", json={})).json()["events"] == []
