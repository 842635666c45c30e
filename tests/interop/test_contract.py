"""The embedded API answers with the shapes a real Prefect server sends.

One scenario calls the endpoints a worker and its users rely on and collects
the raw JSON. Under ``nox -s prefect -- --refresh-contract`` (environment
variable ``TRIO_WORKER_REFRESH_CONTRACT=1``, against the real server) the
responses are trimmed and saved to ``tests/data/prefect_contract/``; otherwise
each response must have the same keys and value types as the saved one. The
default session runs it against the embedded API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_deployment, wait_for
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import NotFoundError

pytestmark = pytest.mark.prefect

CONTRACT_DIR = Path(__file__).parent.parent / "data" / "prefect_contract"
REFRESH = os.environ.get("TRIO_WORKER_REFRESH_CONTRACT") == "1"

#: Keys whose values are user data: only their JSON type is compared, not their keys.
FREE_FORM = frozenset(
    {
        "base_job_template",
        "context",
        "job_variables",
        "labels",
        "parameter_openapi_schema",
        "parameters",
        "payload",
        "related",
        "resource",
        "value",
        "data",
        "details",
        "empirical_policy",
        "storage_configuration",
        "pull_steps",
    }
)
MAX_STRING = 80

#: Where the embedded API still differs from Prefect (owned by trio_worker/_server).
#: Strict both ways: a difference not listed fails, and so does a listed one that is
#: gone, so this list only ever shrinks.
KNOWN_EMBEDDED_DIFFERENCES = frozenset(
    {
        "deployment: $.base: not sent by Prefect",
        "deployment: $.branch: not sent by Prefect",
        "deployment: $.root: not sent by Prefect",
        "deployment: $.version_id: not sent by Prefect",
        "deployment: $.version_info: not sent by Prefect",
        "scheduled_flow_runs: $[0].flow_run.work_pool_id: not sent by Prefect",
        "scheduled_flow_runs: $[0].flow_run.work_pool_name: not sent by Prefect",
        "work_queue_create: $.active_slots: missing",
        "work_queue_create: $.filter: missing",
        "work_queues: $[0].active_slots: missing",
        "work_queues: $[0].filter: missing",
    }
)


def trim(value: Any) -> Any:
    """Keep the shape, drop the bulk: first list item only, long strings cut."""
    if isinstance(value, dict):
        return {key: trim(item) for key, item in value.items()}
    if isinstance(value, list):
        return [trim(value[0])] if value else []
    if isinstance(value, str) and len(value) > MAX_STRING:
        return value[:MAX_STRING] + "…"
    return value


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Where ``actual`` does not have ``expected``'s keys and value types.

    ``null`` on either side matches any type: Prefect sends ``null`` for unset
    optional fields, and which fields are set depends on the data.
    """
    if expected is None or actual is None:
        return []
    if kind(expected) != kind(actual):
        return [f"{path}: Prefect sends {kind(expected)}, got {kind(actual)}"]
    found: list[str] = []
    if isinstance(expected, dict):
        if path.rsplit(".", 1)[-1] in FREE_FORM:
            return []
        for key in sorted(expected.keys() - actual.keys()):
            found.append(f"{path}.{key}: missing")
        for key in sorted(actual.keys() - expected.keys()):
            found.append(f"{path}.{key}: not sent by Prefect")
        for key in sorted(expected.keys() & actual.keys()):
            found += differences(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, list) and expected and actual:
        found += differences(expected[0], actual[0], f"{path}[0]")
    return found


async def collect(client: PrefectClient, pool: str) -> dict[str, Any]:
    """Call each endpoint once; return ``{name: raw JSON}``."""
    call = client.request
    seen: dict[str, Any] = {}
    seen["work_pool_create"] = await call(
        "POST", "work_pools/", json_body={"name": pool, "type": "process"}
    )
    seen["work_pool"] = await call("GET", f"work_pools/{pool}")
    seen["work_queue_create"] = await call(
        "POST", f"work_pools/{pool}/queues", json_body={"name": "contract-q"}
    )
    seen["work_queues"] = await call("POST", f"work_pools/{pool}/queues/filter", json_body={})
    await client.send_worker_heartbeat(pool, "contract-worker", heartbeat_interval_seconds=30)
    seen["workers"] = await call("POST", f"work_pools/{pool}/workers/filter", json_body={})
    seen["flow"] = await call("POST", "flows/", json_body={"name": f"contract-{pool}"})
    deployment = await make_deployment(
        client,
        pool,
        name=pool,
        flow_name=f"contract-{pool}",
        entrypoint="flows.py:hello",
        parameters={"name": "dep"},
        job_variables={"env": {"A": "1"}},
    )
    seen["deployment"] = await call("GET", f"deployments/{deployment.id}")
    seen["flow_run_create"] = await call(
        "POST", f"deployments/{deployment.id}/create_flow_run", json_body={"parameters": {"n": 1}}
    )
    run_id = seen["flow_run_create"]["id"]
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).isoformat()
    seen["scheduled_flow_runs"] = await call(
        "POST",
        f"work_pools/{pool}/get_scheduled_flow_runs",
        json_body={"work_queue_names": [], "scheduled_before": soon},
    )
    pending = {"type": "PENDING", "name": "Pending", "state_details": {}}
    seen["set_state_accept"] = await call(
        "POST", f"flow_runs/{run_id}/set_state", json_body={"state": pending, "force": False}
    )
    seen["set_state_abort"] = await call(
        "POST", f"flow_runs/{run_id}/set_state", json_body={"state": pending, "force": False}
    )
    await call("PATCH", f"flow_runs/{run_id}", json_body={"infrastructure_pid": "host:1"})
    seen["flow_run"] = await call("GET", f"flow_runs/{run_id}")
    seen["flow_runs_filter"] = await call(
        "POST", "flow_runs/filter", json_body={"flow_runs": {"id": {"any_": [run_id]}}}
    )
    seen["flow_run_states"] = await call("GET", "flow_run_states/", params={"flow_run_id": run_id})
    now = dt.datetime.now(dt.UTC).isoformat()
    log = {
        "name": "contract",
        "level": 20,
        "message": "hi",
        "timestamp": now,
        "flow_run_id": run_id,
    }
    seen["logs_create"] = await call("POST", "logs/", json_body=[log])
    seen["logs"] = await call(
        "POST", "logs/filter", json_body={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 5}
    )
    seen["variable_create"] = await call(
        "POST", "variables/", json_body={"name": f"contract_{pool}".replace("-", "_"), "value": 1}
    )
    seen["health"] = await call("GET", "health")
    try:
        await call("GET", f"work_pools/{pool}-missing")
    except NotFoundError as exc:
        seen["error_not_found"] = {"detail": exc.detail}
    event_id = str(uuid.uuid4())
    event = {
        "id": event_id,
        "occurred": now,
        "event": "contract.checked",
        "resource": {"prefect.resource.id": f"contract.{pool}"},
        "related": [],
        "payload": {"n": 1},
    }
    await call("POST", "events", json_body=[event])

    async def stored() -> Any:
        page = await call(
            "POST",
            "events/filter",
            json_body={"filter": {"event": {"name": ["contract.checked"]}}, "limit": 1},
        )
        return page if page["events"] else None

    # Prefect stores events asynchronously.
    seen["events_filter"] = await wait_for(stored, timeout=30, what="the event to be stored")
    return seen


async def test_responses_match_prefects_shapes(
    client: PrefectClient, pool_name: str, backend: str
) -> None:
    seen = await collect(client, pool_name)
    if REFRESH:
        assert backend == "prefect", "refresh the contract against a real Prefect server"
        CONTRACT_DIR.mkdir(parents=True, exist_ok=True)
        for name, value in seen.items():
            text = json.dumps(trim(value), indent=1, ensure_ascii=False, sort_keys=True)
            (CONTRACT_DIR / f"{name}.json").write_text(text + "\n", encoding="utf-8")
        return
    saved = sorted(CONTRACT_DIR.glob("*.json"))
    assert {p.stem for p in saved} == set(seen), "refresh with nox -s prefect -- --refresh-contract"
    problems = []
    for path in saved:
        expected = json.loads(path.read_text(encoding="utf-8"))
        problems += [f"{path.stem}: {d}" for d in differences(expected, seen[path.stem])]
    known = KNOWN_EMBEDDED_DIFFERENCES if backend == "embedded" else frozenset()
    assert sorted(set(problems) - known) == [], "\n".join(problems)
    assert sorted(known - set(problems)) == [], "fixed: remove from KNOWN_EMBEDDED_DIFFERENCES"
