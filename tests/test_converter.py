"""The converter reads the JSON a Prefect 3 server sends and writes what it accepts.

The inputs are the captured examples of prefect-api-subset.md, kept as files
in tests/data/prefect/ (elisions filled with plausible values).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_worker import ModelError
from trio_worker._core._converter import structure, unstructure
from trio_worker._core._models import (
    Deployment,
    Event,
    Flow,
    FlowRun,
    Log,
    OrchestrationResult,
    SetStateStatus,
    State,
    StateDetails,
    StateType,
    TaskRun,
    Variable,
    Worker,
    WorkerFlowRunResponse,
    WorkPool,
)

DATA = Path(__file__).parent / "data" / "prefect"


def captured(name: str) -> Any:
    return json.loads((DATA / name).read_text())


# -- the captured examples ----------------------------------------------------------


def test_work_pool() -> None:
    pool = structure(captured("work_pool.json"), WorkPool)
    assert pool.name == "pool-a"
    assert pool.type == "process"
    assert pool.status == "NOT_READY"
    assert pool.is_paused is False
    assert pool.concurrency_limit is None
    assert pool.default_queue_id == uuid.UUID("d31f572b-0c4e-4a7d-8e21-3f9b6a2d7c10")
    assert pool.created == dt.datetime(2026, 11, 23, 0, 10, 21, 379440, tzinfo=dt.UTC)
    assert set(pool.base_job_template) == {"job_configuration", "variables"}


def test_deployment() -> None:
    deployment = structure(captured("deployment.json"), Deployment)
    assert deployment.name == "hello-dep"
    assert deployment.entrypoint == "myflows.py:hello"
    assert deployment.job_variables == {"env": {"FROM_DEPLOYMENT": "1"}}
    assert deployment.parameters == {"name": "dep"}
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/example/flows"}}
    ]
    assert deployment.work_pool_name == "pool-a"
    assert deployment.enforce_parameter_schema is True
    assert deployment.labels == {"prefect.flow.id": str(deployment.flow_id)}


def test_flow() -> None:
    flow = structure(captured("flow.json"), Flow)
    assert flow.name == "hello"
    assert (flow.tags, flow.labels) == ([], {})


def test_flow_run() -> None:
    run = structure(captured("flow_run.json"), FlowRun)
    assert run.name == "axiomatic-wolf"
    assert run.state_type is StateType.SCHEDULED
    assert run.work_queue_name == "default"
    assert run.parameters == {"name": "dep", "n": 3}
    assert run.job_variables == {"env": {"FROM_RUN": "2"}}
    assert run.infrastructure_pid is None
    assert run.state is not None
    assert run.state.type is StateType.SCHEDULED
    assert run.state.state_details.flow_run_id == run.id
    assert run.state.state_details.deferred is False
    assert run.state.state_details.scheduled_time == dt.datetime(
        2026, 11, 23, 0, 10, 34, 579822, tzinfo=dt.UTC
    )


def test_get_scheduled_flow_runs_response() -> None:
    [item] = structure(captured("get_scheduled_flow_runs.json"), list[WorkerFlowRunResponse])
    assert item.work_queue_id == item.flow_run.work_queue_id
    assert item.flow_run.work_pool_id == item.work_pool_id
    assert item.flow_run.work_queue_name is None  # null in this response, as captured
    assert item.flow_run.tags == ["t1", "adhoc"]


def test_orchestration_accept() -> None:
    result = structure(captured("set_state_accept.json"), OrchestrationResult)
    assert result.status is SetStateStatus.ACCEPT
    assert result.reason == ""
    assert result.state is not None
    assert result.state.type is StateType.PENDING
    assert result.state.name == "Pending"
    assert result.state.state_details.transition_id == uuid.UUID(
        "a95b7997-0f1e-4d2c-8b3a-495867a7b6c5"
    )


def test_orchestration_abort() -> None:
    result = structure(captured("set_state_abort.json"), OrchestrationResult)
    assert result.status is SetStateStatus.ABORT
    assert result.reason == (
        "This run is in a PENDING state and cannot transition to a PENDING state."
    )


def test_orchestration_wait() -> None:
    result = structure(captured("set_state_wait.json"), OrchestrationResult)
    assert result.status is SetStateStatus.WAIT
    assert result.details["delay_seconds"] == 2275516040
    assert result.reason == "Scheduled time is in the future"


def test_task_run() -> None:
    task_run = structure(captured("task_run.json"), TaskRun)
    assert task_run.task_key == "add-861ba364"
    assert task_run.flow_run_id is None
    assert task_run.state is not None
    details = task_run.state.state_details
    assert details.deferred is True
    assert details.task_run_id == task_run.id
    assert details.task_parameters_id == uuid.UUID("5e85ca23-bac1-44b3-946a-670db837177c")


def test_logs() -> None:
    logs = structure(captured("logs.json"), list[Log])
    assert [log.level for log in logs] == [20, 20]
    assert logs[1].message == "Flow run 'axiomatic-wolf' submitted to infrastructure"
    assert logs[0].task_run_id is None
    assert logs[0].flow_run_id == uuid.UUID("961a7187-2b3c-4d5e-8f90-a1b2c3d4e5f6")


def test_logs_unstructure_to_what_the_server_accepts() -> None:
    raw = captured("logs.json")
    written = unstructure(structure(raw, list[Log]))
    for sent, original in zip(written, raw, strict=True):
        assert set(sent) == set(original)  # no extra keys: LogCreate forbids them
        assert dt.datetime.fromisoformat(sent["timestamp"]) == dt.datetime.fromisoformat(
            original["timestamp"]
        )
        assert sent["flow_run_id"] == original["flow_run_id"]
    json.dumps(written)  # JSON-ready


def test_event_sent_to_events_in() -> None:
    event = structure(captured("event_in.json"), Event)
    assert event.event == "prefect.worker.started"
    assert event.resource_id == "prefect.worker.process.cap-worker"
    assert event.follows is None
    assert event.received is None
    assert event.related[0]["prefect.resource.role"] == "work-pool"


def test_event_received_from_events_out() -> None:
    message = captured("event_out.json")
    assert message["type"] == "event"
    event = structure(message["event"], Event)
    assert event.event == "prefect.flow-run.Cancelling"
    assert event.resource_id == "prefect.flow-run.00e0e386-4f5a-4b6c-9d7e-8f9a0b1c2d3e"
    assert event.resource["prefect.state-type"] == "CANCELLING"
    assert event.follows == uuid.UUID("01a205be-601f-7b8c-9d0e-1f2a3b4c5d6e")
    assert event.received == dt.datetime(2026, 11, 23, 0, 11, 44, 515069, tzinfo=dt.UTC)
    assert [r["prefect.resource.role"] for r in event.related] == [
        "flow",
        "deployment",
        "work-queue",
        "work-pool",
        "tag",
    ]
    assert event.payload["validated_state"]["type"] == "CANCELLING"


def test_variable_and_workers() -> None:
    variable = structure(captured("variable.json"), Variable)
    assert (variable.name, variable.value, variable.tags) == ("region", "eu-west-1", [])
    [worker] = structure(captured("workers.json"), list[Worker])
    assert (worker.name, worker.status, worker.heartbeat_interval_seconds) == ("w1", "ONLINE", 30)


# -- what servers do over time ----------------------------------------------------------


def test_extra_fields_are_ignored() -> None:
    raw = captured("flow_run.json")
    raw["a_field_from_prefect_4"] = {"anything": [1, 2]}
    raw["state"]["state_details"]["new_detail"] = "x"
    assert structure(raw, FlowRun) == structure(captured("flow_run.json"), FlowRun)


def test_missing_optional_fields_take_defaults() -> None:
    run = structure({"id": str(uuid.uuid4()), "name": "r", "flow_id": str(uuid.uuid4())}, FlowRun)
    assert run.state is None
    assert run.parameters == {}
    assert run.tags == []
    assert run.labels == {}
    assert run.run_count == 0
    assert run.job_variables is None
    state = structure({"type": "RUNNING"}, State)
    assert state.state_details == StateDetails()
    assert state.name is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T00:10:34.579822Z",
        "2026-11-23T00:10:34.579822+00:00",
        "2026-11-23T01:10:34.579822+01:00",
        "2026-11-23 00:10:34.579822+00:00",  # Python's str(datetime)
        "2026-11-23 00:10:34.579822",  # naive: the API speaks UTC
    ],
)
def test_datetimes_with_z_offset_or_space(text: str) -> None:
    state = structure({"type": "SCHEDULED", "timestamp": text}, State)
    assert state.timestamp == dt.datetime(2026, 11, 23, 0, 10, 34, 579822, tzinfo=dt.UTC)
    assert state.timestamp.tzinfo is not None


def test_unstructured_datetimes_are_the_same_instant_in_utc() -> None:
    when = dt.datetime(2026, 11, 23, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    raw = unstructure(State(type=StateType.RUNNING, timestamp=when))
    assert raw["timestamp"] == "2026-11-23T00:00:00.000000Z"
    assert structure(raw, State).timestamp == when
    assert raw["type"] == "RUNNING"


# -- errors name the field path and the value -------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path", "value"),
    [
        (lambda r: r["state"].update(type="NOT_A_STATE"), "$.state.type", "NOT_A_STATE"),
        (lambda r: r.update(flow_id="not-a-uuid"), "$.flow_id", "not-a-uuid"),
        (
            lambda r: r["state"]["state_details"].update(scheduled_time="tomorrow"),
            "$.state.state_details.scheduled_time",
            "tomorrow",
        ),
        (lambda r: r.update(run_count="many"), "$.run_count", "many"),
        (lambda r: r.update(start_time=12), "$.start_time", "12"),
    ],
)
def test_bad_value_names_field_path_and_value(mutate: Any, path: str, value: str) -> None:
    raw = copy.deepcopy(captured("flow_run.json"))
    mutate(raw)
    with pytest.raises(ModelError) as info:
        structure(raw, FlowRun)
    message = str(info.value)
    assert path in message
    assert value in message
    assert "FlowRun" in message
    assert isinstance(info.value, ValueError)


def test_missing_required_field_is_named() -> None:
    raw = captured("flow_run.json")
    del raw["flow_id"]
    with pytest.raises(ModelError, match=r"required field missing @ \$\.flow_id"):
        structure(raw, FlowRun)


def test_bad_value_inside_a_list_names_the_index() -> None:
    raw = captured("logs.json")
    raw[1]["level"] = "loud"
    with pytest.raises(ModelError) as info:
        structure(raw, list[Log])
    assert "$[1].level" in str(info.value)
    assert "'loud'" in str(info.value)
    assert "list[Log]" in str(info.value)


def test_boolean_fields_do_not_accept_strings() -> None:
    # bool("false") is True: a lenient converter would read a paused pool as paused.
    raw = captured("work_pool.json")
    raw["is_paused"] = "false"
    with pytest.raises(ModelError) as info:
        structure(raw, WorkPool)
    assert "$.is_paused" in str(info.value)
    assert "'false'" in str(info.value)


@pytest.mark.parametrize("data", [None, [], "a string", 3])
def test_not_an_object_at_all(data: Any) -> None:
    with pytest.raises(ModelError) as info:
        structure(data, FlowRun)
    message = str(info.value)
    assert "FlowRun" in message
    assert "$" in message
    assert repr(data) in message


# -- round trips ---------------------------------------------------------------------


utc_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=utc_offsets
)
json_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


state_details = st.builds(
    StateDetails,
    flow_run_id=opt(st.uuids()),
    task_run_id=opt(st.uuids()),
    scheduled_time=opt(aware_datetimes),
    deferred=opt(st.booleans()),
    transition_id=opt(st.uuids()),
    task_parameters_id=opt(st.uuids()),
    cache_key=opt(st.text()),
    pause_key=opt(st.text()),
    retriable=opt(st.booleans()),
)
states = st.builds(
    State,
    type=st.sampled_from(StateType),
    name=opt(st.text()),
    id=opt(st.uuids()),
    timestamp=opt(aware_datetimes),
    message=opt(st.text()),
    data=json_values,
    state_details=state_details,
)
flow_runs = st.builds(
    FlowRun,
    id=st.uuids(),
    name=st.text(),
    flow_id=st.uuids(),
    deployment_id=opt(st.uuids()),
    state=opt(states),
    state_type=opt(st.sampled_from(StateType)),
    state_name=opt(st.text()),
    parameters=st.dictionaries(st.text(), json_values, max_size=3),
    job_variables=opt(st.dictionaries(st.text(), json_values, max_size=3)),
    tags=st.lists(st.text(), max_size=3),
    labels=st.dictionaries(st.text(), json_scalars, max_size=3),
    work_queue_id=opt(st.uuids()),
    work_queue_name=opt(st.text()),
    work_pool_id=opt(st.uuids()),
    work_pool_name=opt(st.text()),
    infrastructure_pid=opt(st.text()),
    run_count=st.integers(min_value=0),
    expected_start_time=opt(aware_datetimes),
    next_scheduled_start_time=opt(aware_datetimes),
    start_time=opt(aware_datetimes),
    end_time=opt(aware_datetimes),
    created=opt(aware_datetimes),
    updated=opt(aware_datetimes),
)


@given(states)
def test_state_round_trips(state: State) -> None:
    raw = unstructure(state)
    assert structure(json.loads(json.dumps(raw)), State) == state


@given(flow_runs)
def test_flow_run_round_trips(run: FlowRun) -> None:
    raw = unstructure(run)
    assert structure(json.loads(json.dumps(raw)), FlowRun) == run


def test_captured_flow_run_round_trips() -> None:
    run = structure(captured("flow_run.json"), FlowRun)
    assert structure(unstructure(run), FlowRun) == run
