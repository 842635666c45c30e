"""``@task``, ``.delay()``, the run handle and the JSON task store."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._models import StateType
from trio_worker._core._settings import Settings
from trio_worker._taskworker._handles import TaskRunTimeoutError
from trio_worker._taskworker._store import (
    LocalTaskStore,
    check_json,
    decode_record,
    default_storage_path,
    encode_record,
    parameters_key,
)
from trio_worker._taskworker._tasks import Task, task


@task
def plain(x: int, y: int = 2) -> int:
    return x + y


@task(key="custom-key", name="renamed")
async def keyed(*values: int, scale: int = 1, **extra: Any) -> int:
    return sum(values) * scale


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalTaskStore:
    monkeypatch.setenv("TRIO_WORKER_TASK_STORAGE", str(tmp_path / "store"))
    return LocalTaskStore(tmp_path / "store")


def test_task_key_is_module_and_qualname_unless_given() -> None:
    assert plain.key == f"{__name__}.plain"
    assert plain.name == "plain"
    assert not plain.is_async
    assert keyed.key == "custom-key"
    assert keyed.name == "renamed"
    assert keyed.is_async


def test_calling_a_task_runs_the_function_here() -> None:
    assert plain(1) == 3


def test_parameters_bind_names_and_reject_what_does_not_fit() -> None:
    assert plain.parameters((1,), {}) == {"x": 1}
    with pytest.raises(TypeError, match=r"plain.*missing a required argument: 'x'"):
        plain.parameters((), {})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (object(), "builtins.object, which is not JSON"),
        ({1: "a"}, "key 1; JSON object keys must be strings"),
        ([1, {"a": math.nan}], "nan, which JSON cannot represent"),
        (b"bytes", "builtins.bytes"),
    ],
)
def test_non_json_parameter_names_the_parameter(value: Any, fragment: str) -> None:
    with pytest.raises(TypeError, match="parameter 'x'") as info:
        plain.parameters((value,), {})
    assert fragment in str(info.value)


def test_call_arguments_round_trip_through_json() -> None:
    stored = json.loads(json.dumps(keyed.parameters((1, 2, 3), {"scale": 2, "tag": "t"})))
    args, kwargs = keyed.call_arguments(stored)
    assert args == [1, 2, 3]
    assert kwargs == {"scale": 2, "tag": "t"}
    assert plain.call_arguments({"y": 5, "x": 1}) == ([1, 5], {})


def test_call_arguments_reject_parameters_the_function_lacks() -> None:
    with pytest.raises(TypeError, match="has no parameter"):
        plain.call_arguments({"x": 1, "zzz": 2})
    with pytest.raises(TypeError, match="do not fit"):
        plain.call_arguments({"y": 1})


def test_check_json_accepts_nested_plain_values() -> None:
    check_json({"a": [1, 2.5, None, True, "s", (1, 2)]}, "v")


def test_store_layout_and_record_format_match_prefect(tmp_path: Path) -> None:
    store = LocalTaskStore(tmp_path)
    parameters_id = uuid.uuid4()
    key = parameters_key(parameters_id)
    store.write(key, encode_record(key, {"context": {}, "parameters": {"x": 40}}))
    path = tmp_path / "parameters" / str(parameters_id)
    record = json.loads(path.read_text())
    assert record["metadata"]["serializer"]["type"] == "json"
    assert record["metadata"]["storage_key"] == key
    # Prefect 3.9's ResultRecordMetadata requires a string (None made it delete the run).
    assert isinstance(record["metadata"]["prefect_version"], str)
    assert json.loads(record["result"]) == {"context": {}, "parameters": {"x": 40}}
    assert decode_record(store.read(key)) == {"context": {}, "parameters": {"x": 40}}


def test_store_refuses_keys_that_escape_its_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid task store key"):
        LocalTaskStore(tmp_path).write("../evil", b"")


def test_pickled_records_are_refused_with_a_reason() -> None:
    record = {"metadata": {"serializer": {"type": "pickle"}}, "result": "gAVLDC4=\n"}
    with pytest.raises(ValueError, match="'pickle' serializer"):
        decode_record(json.dumps(record).encode())


def test_default_storage_path_follows_prefect_then_our_override(tmp_path: Path) -> None:
    def path(env: dict[str, str]) -> Path:
        return default_storage_path(Settings.from_env(env))

    assert path({"PREFECT_HOME": "/h"}) == Path("/h/storage")
    assert path({}) == Path("~/.prefect/storage").expanduser()
    env = {"PREFECT_HOME": "/h", "PREFECT_RESULTS_LOCAL_STORAGE_PATH": "/r"}
    assert path(env) == Path("/r")
    assert path({"PREFECT_HOME": "/h", "PREFECT_LOCAL_STORAGE_PATH": "/alias"}) == Path("/alias")
    env["TRIO_WORKER_TASK_STORAGE"] = "/shared"
    assert path(env) == Path("/shared")


async def test_delay_with_non_json_argument_fails_before_anything_is_stored(
    api_url: str, store: LocalTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    with pytest.raises(TypeError, match="parameter 'x'"):
        await trio.to_thread.run_sync(plain.delay, {1, 2})
    assert not store.base.exists()
    async with PrefectClient(api_url) as client:
        assert await client.read_task_runs() == []


async def test_delay_stores_parameters_and_creates_a_deferred_scheduled_run(
    api_url: str, store: LocalTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    handle = await trio.to_thread.run_sync(plain.delay, 40)
    async with PrefectClient(api_url) as client:
        run = await client.read_task_run(handle.task_run_id)
    assert run.task_key == plain.key
    assert run.state is not None
    assert run.state.type is StateType.SCHEDULED
    details = run.state.state_details
    assert details.deferred is True
    assert details.task_parameters_id is not None
    payload = decode_record(store.read(parameters_key(details.task_parameters_id)))
    assert payload["parameters"] == {"x": 40}


async def test_blocking_methods_refuse_to_run_inside_trio(api_url: str) -> None:
    with pytest.raises(RuntimeError, match=r"inside Trio; use `await task.delay_async"):
        plain.delay(1)


async def test_result_times_out_with_a_clear_error_when_no_worker_serves(
    api_url: str, store: LocalTaskStore
) -> None:
    async with PrefectClient(api_url) as client:
        handle = await plain.enqueue(client, (1,))
        with pytest.raises(TaskRunTimeoutError, match=r"still SCHEDULED after 0\.2 s"):
            await handle.result_async(0.2, client=client)


def test_delay_without_api_url_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ConfigurationError, match="PREFECT_API_URL is not set"):
        plain.delay(1)


def test_task_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="needs a function"):
        Task(42)  # type: ignore[arg-type]
