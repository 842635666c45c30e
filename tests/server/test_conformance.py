"""Each endpoint answers with Prefect's status codes and the keys/types of the captured JSON."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.server.conftest import assert_conforms, captured, make_deployment, make_run, propose


async def test_health_version_ready_csrf(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() is True
    assert (await client.get("/ready")).json() == {"message": "OK"}
    assert (await client.get("/version")).json() == "0.8.4"
    admin = await client.get("/admin/version")
    assert admin.status_code == 200 and admin.json().startswith("3.")
    csrf = await client.get("/csrf-token", params={"client": "abc"})
    assert csrf.status_code == 422
    assert csrf.json() == {"detail": "CSRF protection is disabled."}


async def test_work_pool_create_read_update_delete(client: httpx.AsyncClient) -> None:
    template = captured("process-base-job-template.json")
    created = await client.post(
        "/work_pools/", json={"name": "pool-a", "type": "process", "base_job_template": template}
    )
    assert created.status_code == 201
    assert_conforms(created.json(), captured("work_pool.json"))
    assert created.json()["status"] == "NOT_READY"
    assert (await client.post("/work_pools/", json={"name": "pool-a"})).json() == {
        "detail": "A work pool with this name already exists."
    }
    read = await client.get("/work_pools/pool-a")
    assert read.status_code == 200
    assert read.json()["base_job_template"] == template
    patched = await client.patch(
        "/work_pools/pool-a", json={"is_paused": True, "concurrency_limit": 3, "description": "d"}
    )
    assert patched.status_code == 204 and patched.content == b""
    pool = (await client.get("/work_pools/pool-a")).json()
    assert (pool["is_paused"], pool["concurrency_limit"], pool["status"]) == (True, 3, "PAUSED")
    assert pool["description"] == "d"
    missing = await client.get("/work_pools/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": 'Work pool "nope" not found.'}
    listed = await client.post(
        "/work_pools/filter", json={"work_pools": {"name": {"any_": ["pool-a"]}}}
    )
    assert [p["name"] for p in listed.json()] == ["pool-a"]
    assert (await client.delete("/work_pools/pool-a")).status_code == 204
    assert (await client.get("/work_pools/pool-a")).status_code == 404


async def test_work_pool_rules_reserved_name_and_template(client: httpx.AsyncClient) -> None:
    reserved = await client.post("/work_pools/", json={"name": "Prefect-pool"})
    assert reserved.status_code == 403
    assert reserved.json() == {
        "detail": "Work pools starting with 'Prefect' are reserved for internal use."
    }
    bad = await client.post(
        "/work_pools/",
        json={
            "name": "p",
            "base_job_template": {
                "job_configuration": {"command": "{{ cmd }}"},
                "variables": {"properties": {}},
            },
        },
    )
    assert bad.status_code == 422
    assert "undeclared variable(s): cmd." in bad.json()["exception_detail"][0]["msg"]
    half = await client.post(
        "/work_pools/", json={"name": "p", "base_job_template": {"variables": {}}}
    )
    assert half.status_code == 422
    assert (await client.get("/work_pools/p")).status_code == 404  # nothing half written


async def test_queues_default_create_read_filter_patch(client: httpx.AsyncClient) -> None:
    pool = (await client.post("/work_pools/", json={"name": "pool-a", "type": "process"})).json()
    default = (await client.get("/work_pools/pool-a/queues/default")).json()
    assert default["id"] == pool["default_queue_id"] and default["priority"] == 1
    created = await client.post("/work_pools/pool-a/queues", json={"name": "high", "priority": 5})
    assert created.status_code == 201
    assert created.json()["work_pool_name"] == "pool-a"
    patched = await client.patch(
        "/work_pools/pool-a/queues/high",
        json={"priority": 1, "is_paused": True, "concurrency_limit": 2},
    )
    assert patched.status_code == 204
    high = (await client.get("/work_pools/pool-a/queues/high")).json()
    assert (high["priority"], high["is_paused"], high["concurrency_limit"]) == (1, True, 2)
    names = await client.post("/work_pools/pool-a/queues/filter", json={})
    assert {q["name"] for q in names.json()} == {"default", "high"}
    missing = await client.get("/work_pools/pool-a/queues/nope")
    assert missing.json() == {"detail": "Work pool queue 'pool-a/nope' not found."}


async def test_heartbeat_and_workers_filter(client: httpx.AsyncClient) -> None:
    await client.post("/work_pools/", json={"name": "pool-a", "type": "process"})
    beat = await client.post(
        "/work_pools/pool-a/workers/heartbeat",
        json={"name": "rest-worker", "heartbeat_interval_seconds": 30.0},
    )
    assert beat.status_code == 204 and beat.content == b""
    workers = (await client.post("/work_pools/pool-a/workers/filter", json={})).json()
    assert len(workers) == 1
    assert_conforms(workers[0], captured("worker.json"))
    assert workers[0]["status"] == "ONLINE"
    assert (await client.get("/work_pools/pool-a")).json()["status"] == "READY"
    gone = await client.post("/work_pools/nope/workers/heartbeat", json={"name": "w"})
    assert gone.status_code == 404


async def test_flows_idempotent_create_and_reads(client: httpx.AsyncClient) -> None:
    first = await client.post("/flows/", json={"name": "hello"})
    again = await client.post("/flows/", json={"name": "hello"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert_conforms(first.json(), captured("flow.json"))
    by_id = await client.get(f"/flows/{first.json()['id']}")
    by_name = await client.get("/flows/name/hello")
    assert by_id.json() == by_name.json() == first.json()
    missing = await client.get("/flows/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json() == {"detail": "Flow not found"}
    assert len((await client.post("/flows/filter", json={})).json()) == 1


async def test_deployments_upsert_reads_filter_delete(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(
        client,
        entrypoint="myflows.py:hello",
        parameters={"name": "dep"},
        tags=["t1"],
        job_variables={"env": {"FROM_DEPLOYMENT": "1"}},
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/srv"}}],
    )
    assert_conforms(deployment, captured("deployment.json"))
    again = await client.post(
        "/deployments/",
        json={
            "name": "hello-dep",
            "flow_id": deployment["flow_id"],
            "work_pool_name": "pool-a",
            "parameters": {"name": "new"},
        },
    )
    assert again.status_code == 200 and again.json()["id"] == deployment["id"]
    assert again.json()["parameters"] == {"name": "new"}
    by_name = await client.get("/deployments/name/hello/hello-dep")
    assert by_name.json()["id"] == deployment["id"]
    filtered = await client.post(
        "/deployments/filter", json={"work_pools": {"name": {"any_": ["pool-a"]}}}
    )
    assert [d["id"] for d in filtered.json()] == [deployment["id"]]
    unknown_flow = await client.post(
        "/deployments/", json={"name": "x", "flow_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert unknown_flow.status_code == 409
    unknown_pool = await client.post(
        "/deployments/",
        json={"name": "x", "flow_id": deployment["flow_id"], "work_pool_name": "zz"},
    )
    assert unknown_pool.status_code == 404
    assert (await client.delete(f"/deployments/{deployment['id']}")).status_code == 204
    gone = await client.get(f"/deployments/{deployment['id']}")
    assert gone.json() == {"detail": "Deployment not found"}


async def test_create_flow_run_merges_parameters_and_tags(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client, parameters={"name": "dep"}, tags=["t1"])
    run = await make_run(
        client,
        deployment["id"],
        parameters={"n": 3},
        tags=["adhoc"],
        job_variables={"env": {"FROM_RUN": "2"}},
    )
    assert run["parameters"] == {"name": "dep", "n": 3}
    assert run["tags"] == ["t1", "adhoc"]
    assert run["state_type"] == "SCHEDULED" and run["state"]["name"] == "Scheduled"
    assert run["work_pool_name"] == "pool-a" and run["work_queue_name"] == "default"
    assert sorted(run) == sorted(captured("flow_run_fields.json"))
    transition = "a95b7997-0000-4000-8000-000000000000"
    accepted = await propose(
        client, run["id"], "PENDING", state_details={"transition_id": transition}
    )
    assert accepted.status_code == 201
    assert_conforms(accepted.json()["state"], captured("state_pending.json"))
    assert (
        accepted.json()["state"]["state_details"]["scheduled_time"]
        == run["state"]["state_details"]["scheduled_time"]
    )


async def test_create_flow_run_enforces_parameter_schema(client: httpx.AsyncClient) -> None:
    # A required parameter, as `def flow(n: int)` gives: Prefect words an optional
    # one's mismatch "... is not valid under any of the given schemas".
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    deployment = await make_deployment(client, parameter_openapi_schema=schema)
    response = await client.post(
        f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"n": "notint"}}
    )
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Error creating flow run: Validation failed for field 'n'. "
        "Failure reason: 'notint' is not of type 'integer'"
    }


async def test_get_scheduled_flow_runs_shape_and_rules(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client)
    run = await make_run(client, deployment["id"])
    scheduled = await client.post(
        "/work_pools/pool-a/get_scheduled_flow_runs",
        json={"work_queue_names": [], "scheduled_before": "2999-01-01 00:00:00+00:00"},
    )
    assert scheduled.status_code == 200
    [item] = scheduled.json()
    assert_conforms(item, captured("scheduled_flow_run.json"))
    assert item["flow_run"]["id"] == run["id"]
    assert (await client.get("/work_pools/pool-a/queues/default")).json()["last_polled"]
    early = await client.post(
        "/work_pools/pool-a/get_scheduled_flow_runs",
        json={"scheduled_before": "2000-01-01T00:00:00Z"},
    )
    assert early.json() == []
    unknown = await client.post(
        "/work_pools/pool-a/get_scheduled_flow_runs", json={"work_queue_names": ["nope"]}
    )
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Work pool queue 'pool-a/nope' not found."}
    too_many = await client.post("/work_pools/pool-a/get_scheduled_flow_runs", json={"limit": 201})
    assert too_many.json() == {"detail": "Invalid limit: must be less than or equal to 200."}
    await propose(client, run["id"], "PENDING")
    after = await client.post("/work_pools/pool-a/get_scheduled_flow_runs", json={})
    assert after.json() == []  # only SCHEDULED runs are offered


async def test_flow_run_crud_labels_and_state_history(client: httpx.AsyncClient) -> None:
    flow = (await client.post("/flows/", json={"name": "adhoc"})).json()
    created = await client.post("/flow_runs/", json={"flow_id": flow["id"], "name": "r1"})
    assert created.status_code == 201
    run = created.json()
    assert run["state_type"] == "PENDING"
    patch = await client.patch(f"/flow_runs/{run['id']}", json={"infrastructure_pid": "28137"})
    assert patch.status_code == 204
    labels = await client.patch(f"/flow_runs/{run['id']}/labels", json={"prefect.worker.name": "w"})
    assert labels.status_code == 204
    read = (await client.get(f"/flow_runs/{run['id']}")).json()
    assert read["infrastructure_pid"] == "28137" and read["parameters"] == {}
    assert read["labels"]["prefect.worker.name"] == "w"
    assert "prefect.flow.id" in read["labels"]
    await propose(client, run["id"], "RUNNING")
    history = await client.get("/flow_run_states/", params={"flow_run_id": run["id"]})
    assert [s["type"] for s in history.json()] == ["PENDING", "RUNNING"]
    assert (await client.delete(f"/flow_runs/{run['id']}")).status_code == 204
    gone = await client.get(f"/flow_runs/{run['id']}")
    assert gone.status_code == 404 and gone.json() == {"detail": "Flow run not found"}
    assert (await client.get("/flow_runs/not-a-uuid")).json() == {"detail": "Not Found"}


async def test_flow_run_filter_bodies_the_worker_sends(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client)
    a = await make_run(client, deployment["id"])
    b = await make_run(client, deployment["id"])
    await client.patch(f"/flow_runs/{a['id']}", json={"infrastructure_pid": "1"})
    await client.patch(f"/flow_runs/{b['id']}", json={"infrastructure_pid": "2"})
    for run in (a, b):
        await propose(client, run["id"], "PENDING")
    await propose(client, a["id"], "CANCELLING")
    await propose(client, b["id"], "CANCELLED", name="Cancelling", force=True)
    legacy, current, per_pool = captured("cancellation_filters.json")

    def text(body: object) -> Any:
        return json.loads(json.dumps(body).replace("RUN_A", a["id"]).replace("RUN_B", b["id"]))

    found = [
        [r["id"] for r in (await client.post("/flow_runs/filter", json=text(body))).json()]
        for body in (legacy, current, per_pool)
    ]
    assert found == [[b["id"]], [a["id"]], [a["id"]]]
    by_deployment = await client.post(
        "/flow_runs/filter",
        json={
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 1,
            "offset": 1,
        },
    )
    assert [r["id"] for r in by_deployment.json()] == [b["id"]]


async def test_logs_batch_and_filter(client: httpx.AsyncClient) -> None:
    run_id = "961a7187-0000-4000-8000-000000000000"
    batch = captured("log_batch.json")
    for entry in batch:
        entry["flow_run_id"] = run_id
    created = await client.post("/logs/", json=batch)
    assert created.status_code == 201 and created.json() is None
    logs = await client.post(
        "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 3}
    )
    assert [entry["message"] for entry in logs.json()] == [e["message"] for e in batch]
    assert_conforms(logs.json()[0], captured("log.json"))
    worker_id = await client.post("/logs/", json=[{**batch[0], "worker_id": run_id}])
    assert worker_id.status_code == 422
    assert worker_id.json()["exception_detail"][0]["loc"] == ["body", 0, "worker_id"]


async def test_variables_crud(client: httpx.AsyncClient) -> None:
    created = await client.post("/variables/", json={"name": "region", "value": "eu-west-1"})
    assert created.status_code == 201
    assert_conforms(created.json(), captured("variable.json"))
    assert (
        await client.post("/variables/", json={"name": "region", "value": 1})
    ).status_code == 409
    patched = await client.patch("/variables/name/region", json={"value": {"cpu": 2}})
    assert patched.status_code == 204
    assert (await client.get("/variables/name/region")).json()["value"] == {"cpu": 2}
    assert (await client.post("/variables/filter", json={})).json()[0]["name"] == "region"
    assert (await client.delete("/variables/name/region")).status_code == 204
    missing = await client.get("/variables/name/region")
    assert missing.status_code == 404 and missing.json() == {"detail": "Variable not found."}
