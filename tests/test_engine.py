"""The flow-run engine, run as the worker runs it: a real subprocess against the embedded API."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import wait_for
from trio_worker._client._client import PrefectClient
from trio_worker._client._log_buffer import MAX_MESSAGE_CHARS
from trio_worker._core._converter import structure
from trio_worker._core._models import FlowRun, State, StateType, now
from trio_worker._engine._entrypoint import (
    EntrypointError,
    is_prefect_flow,
    load_entrypoint,
    prefect_engine_argv,
)
from trio_worker._engine._logs import APILogHandler, LogShipper
from trio_worker._engine._run import _exec_prefect_engine

ENGINE = [sys.executable, "-m", "trio_worker.engine"]

FLOWS = """
import logging
import pathlib
import time

import trio

log = logging.getLogger("user.flows")


def add(a, b, out="result.txt"):
    log.info("adding %s and %s", a, b)
    print("printed", a + b)
    pathlib.Path(out).write_text(str(a + b))
    return a + b


def boom(msg):
    raise ValueError(msg)


async def async_add(a, b):
    await trio.sleep(0)
    pathlib.Path("async.txt").write_text(str(a + b))


def sleeper():
    pathlib.Path("started").write_text("")
    time.sleep(60)
    pathlib.Path("finished").write_text("")


def blocked_until(path):
    while not pathlib.Path(path).exists():
        time.sleep(0.02)
"""


def _child_env(**extra: str) -> dict[str, str]:
    # Nothing Prefect-related leaks in from the developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    env.update(extra)
    return env


async def _engine(
    api_url: str, flow_run_id: uuid.UUID, cwd: Path, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    env = _child_env(PREFECT_API_URL=api_url, PREFECT__FLOW_RUN_ID=str(flow_run_id), **extra)
    with trio.fail_after(60):
        return await trio.run_process(
            ENGINE, env=env, cwd=cwd, check=False, capture_stdout=True, capture_stderr=True
        )


async def _pending_run(
    client: PrefectClient,
    entrypoint: str,
    *,
    parameters: Mapping[str, Any] | None = None,
    path: str | None = None,
    scheduled_time: dt.datetime | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> FlowRun:
    """A flow, a process pool, a deployment of ``entrypoint``, and a run of it in PENDING.

    The deployment's parameters are ``defaults`` (``a=1, b=2`` unless given);
    the run's ``parameters`` are merged over them by the API.
    """
    suffix = uuid.uuid4().hex[:8]
    flow = await client.create_flow(f"flow-{suffix}")
    pool = await client.create_work_pool(f"pool-{suffix}", type="process")
    deployment = await client.create_deployment(
        flow_id=flow.id,
        name="dep",
        work_pool_name=pool.name,
        entrypoint=entrypoint,
        path=path,
        parameters=dict({"a": 1, "b": 2} if defaults is None else defaults),
        enforce_parameter_schema=False,
    )
    if scheduled_time is None:
        run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    else:
        # Sent as "...Z" by hand: the embedded API does not yet parse an offset
        # ("+00:00", what the client writes) in a proposed scheduled_time.
        when = scheduled_time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}}
        data = await client.request(
            "POST", f"deployments/{deployment.id}/create_flow_run", json_body=body
        )
        run = structure(data, FlowRun)
    result = await client.set_flow_run_state(run.id, State.of(StateType.PENDING))
    assert result.status == "ACCEPT", result
    return run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


# -- end to end ------------------------------------------------------------------


async def test_engine_completes_run_with_its_parameters_and_ships_logs(
    api_url: str, project: Path
) -> None:
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:add", parameters={"b": 40})
        done = await _engine(api_url, run.id, project)
        assert done.returncode == 0, done.stderr.decode()
        assert (project / "result.txt").read_text() == "41"
        final = await client.read_flow_run(run.id)
        assert final.state is not None
        assert final.state.type is StateType.COMPLETED
        assert final.state.message == "Flow run completed."
        assert final.state.data is None
        types = [s.type for s in await client.read_flow_run_states(run.id)]
        assert types[-2:] == [StateType.RUNNING, StateType.COMPLETED]
        logs = await client.read_logs(run.id)
    assert all(log.flow_run_id == run.id for log in logs)
    by_message = {log.message: log for log in logs}
    assert by_message["adding 1 and 40"].name == "user.flows"
    assert by_message["printed 41"].name == "trio_worker.flow_runs.print"
    assert any(log.name == "trio_worker.flow_runs" for log in logs)
    # User log lines also reach stderr, for the worker's stream_output, and
    # every console line starts with the run's name (issue 18, point 14).
    assert f"{run.name} | " in done.stderr.decode()
    assert "adding 1 and 40" in done.stderr.decode()
    assert done.stdout.decode() == f"{run.name} | printed 41\n"


async def test_engine_records_failed_with_exception_type_and_message(
    api_url: str, project: Path
) -> None:
    async with PrefectClient(api_url) as client:
        run = await _pending_run(
            client, "flows.py:boom", parameters={"msg": "bad input"}, defaults={}
        )
        done = await _engine(api_url, run.id, project)
        # The FAILED state tells the truth; a non-zero exit would make the worker say CRASHED.
        assert done.returncode == 0, done.stderr.decode()
        final = await client.read_flow_run(run.id)
        logs = await client.read_logs(run.id)
    assert final.state is not None
    assert final.state.type is StateType.FAILED
    assert final.state.message == "ValueError: bad input"
    assert any("Traceback" in log.message and "bad input" in log.message for log in logs)


async def test_engine_runs_async_function_under_trio(api_url: str, project: Path) -> None:
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:async_add", parameters={"a": 20, "b": 22})
        done = await _engine(api_url, run.id, project)
        assert done.returncode == 0, done.stderr.decode()
        final = await client.read_flow_run(run.id)
    assert final.state_type is StateType.COMPLETED
    assert (project / "async.txt").read_text() == "42"


async def test_engine_finds_file_under_deployment_path_when_not_in_cwd(
    api_url: str, project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:add", path=str(project))
        done = await _engine(api_url, run.id, elsewhere)
        assert done.returncode == 0, done.stderr.decode()
        final = await client.read_flow_run(run.id)
    assert final.state_type is StateType.COMPLETED
    assert (elsewhere / "result.txt").read_text() == "3"  # relative paths stay the cwd's


async def test_engine_waits_when_api_answers_wait_then_runs(api_url: str, project: Path) -> None:
    # Far enough ahead that the engine, even on a loaded machine, starts before it.
    scheduled = now() + dt.timedelta(seconds=6)
    async with PrefectClient(api_url) as client:
        # The worker prefetches: a run may be PENDING before its scheduled time.
        run = await _pending_run(client, "flows.py:add", scheduled_time=scheduled)
        done = await _engine(api_url, run.id, project)
        assert done.returncode == 0, done.stderr.decode()
        states = await client.read_flow_run_states(run.id)
    running = next(s for s in states if s.type is StateType.RUNNING)
    assert running.timestamp is not None
    assert running.timestamp >= scheduled
    assert states[-1].type is StateType.COMPLETED
    assert "The API asked to wait" in done.stderr.decode()


@pytest.mark.parametrize(
    ("entrypoint", "reason"),
    [
        ("missing.py:add", "file 'missing.py' not found"),
        ("flows.py:nope", "'flows.py' has no attribute 'nope'"),
        ("no_such_package.mod:fn", "no module named 'no_such_package'"),
    ],
)
async def test_engine_fails_run_naming_entrypoint_that_cannot_load(
    api_url: str, project: Path, entrypoint: str, reason: str
) -> None:
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, entrypoint)
        done = await _engine(api_url, run.id, project)
        final = await client.read_flow_run(run.id)
    assert done.returncode == 1
    assert final.state is not None
    assert final.state.type is StateType.FAILED
    assert final.state.message is not None
    assert final.state.message.startswith(f"Could not load entrypoint {entrypoint!r}")
    assert reason in final.state.message


async def test_engine_does_not_run_a_run_another_actor_ended(api_url: str, project: Path) -> None:
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:add")
        await client.set_flow_run_state(run.id, State.of(StateType.CANCELLED), force=True)
        done = await _engine(api_url, run.id, project)
        final = await client.read_flow_run(run.id)
    assert done.returncode == 0, done.stderr.decode()
    assert final.state_type is StateType.CANCELLED
    assert not (project / "result.txt").exists()
    assert "Not running flow run" in done.stderr.decode()


async def test_engine_dies_of_sigterm_like_any_process(api_url: str, project: Path) -> None:
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:sleeper", defaults={})
        env = _child_env(PREFECT_API_URL=api_url, PREFECT__FLOW_RUN_ID=str(run.id))
        async with trio.open_nursery() as nursery:
            start = functools.partial(trio.run_process, ENGINE, env=env, cwd=project, check=False)
            process: trio.Process = await nursery.start(start)
            with trio.fail_after(30):
                while not (project / "started").exists():
                    await trio.sleep(0.02)
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == -signal.SIGTERM
    assert not (project / "finished").exists()


# -- environment errors: one line on stderr, exit 1, no API needed ------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PREFECT__FLOW_RUN_ID": str(uuid.uuid4())}, "PREFECT_API_URL is not set"),
        ({"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "no flow run id"),
        (
            {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT__FLOW_RUN_ID": "nope"},
            "PREFECT__FLOW_RUN_ID='nope' is not a UUID",
        ),
        (
            {"PREFECT_API_URL": "localhost:4200", "PREFECT__FLOW_RUN_ID": str(uuid.uuid4())},
            "is not an http(s) URL",
        ),
    ],
)
async def test_engine_exits_1_with_one_line_when_environment_is_unusable(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    with trio.fail_after(30):
        done = await trio.run_process(
            ENGINE, env=_child_env(**env), cwd=tmp_path, check=False, capture_stderr=True
        )
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1, lines
    assert expected in lines[0]


# -- units ------------------------------------------------------------------------------


def test_load_entrypoint_prefers_cwd_then_search_dirs(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, value in ((first, 1), (second, 2)):
        folder.mkdir()
        (folder / "pick_me.py").write_text(f"def fn():\n    return {value}\n")
    fn = load_entrypoint("pick_me.py:fn", search_dirs=[tmp_path / "absent", second, first])
    assert fn() == 2


def test_load_entrypoint_reads_module_path_and_dotted_attribute() -> None:
    assert load_entrypoint("os.path:join", search_dirs=[]) is os.path.join
    assert load_entrypoint("pathlib:Path.cwd", search_dirs=[]) == Path.cwd


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("no_colon", "expected 'path/to/file.py:function'"),
        ("os:sep", "'sep' in 'os' is not callable"),
        ("os:nope", "'os' has no attribute 'nope'"),
    ],
)
def test_load_entrypoint_explains_what_is_wrong(entrypoint: str, message: str) -> None:
    with pytest.raises(EntrypointError, match=message):
        load_entrypoint(entrypoint, search_dirs=[])


def test_prefect_flow_is_recognised_by_its_type_module() -> None:
    class FakeFlow:
        def fn(self) -> None: ...

    FakeFlow.__module__ = "prefect.flows"
    assert is_prefect_flow(FakeFlow())
    FakeFlow.__module__ = "prefect_aws.flows"  # an integration, not Prefect's Flow
    assert not is_prefect_flow(FakeFlow())
    assert not is_prefect_flow(test_prefect_flow_is_recognised_by_its_type_module)
    assert prefect_engine_argv() == [sys.executable, "-m", "prefect.engine"]


def _record(name: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)


def test_log_handler_keeps_http_and_worker_internals_out_and_truncates() -> None:
    run_id = uuid.uuid4()
    handler = APILogHandler(run_id)
    for name in ("httpx", "httpcore.connection", "trio_worker.client"):
        handler.handle(_record(name, "internal"))
    handler.handle(_record("trio_worker.flow_runs", "engine"))
    handler.handle(_record("user", "x" * (MAX_MESSAGE_CHARS + 10)))
    batch = handler.buffer.take()
    assert [log.name for log in batch] == ["trio_worker.flow_runs", "user"]
    assert batch[1].message.endswith("... [truncated]")
    assert len(batch[1].message) == MAX_MESSAGE_CHARS
    assert all(log.flow_run_id == run_id for log in batch)
    assert handler.buffer.take() == []


async def test_log_shipping_failure_is_reported_in_the_log_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = APILogHandler(uuid.uuid4())
    handler.handle(_record("user", "hello"))
    async with PrefectClient("http://127.0.0.1:9/api", backoff_seconds=0.01) as client:
        shipper = LogShipper(handler.buffer, client)
        assert not await shipper.flush()
        assert len(handler.buffer) == 1  # kept for the next flush
        await shipper.close()
    assert len(handler.buffer) == 0
    [warning] = [r for r in caplog.records if r.name == "trio_worker.log_shipping"]
    message = warning.getMessage()
    assert "1 log line(s)" in message
    assert "the API did not answer before the process exited" in message
    assert "ConnectError" in message


def test_handover_asks_prefects_engine_for_30_second_heartbeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, str]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append(env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    run_id = uuid.uuid4()
    for environ, expected in (({}, "30"), ({"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"}, "60")):
        with pytest.raises(SystemExit):
            _exec_prefect_engine(run_id, environ)
        assert calls[-1]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == expected
        assert calls[-1]["PREFECT__FLOW_RUN_ID"] == str(run_id)


async def test_engine_heartbeats_in_prefects_shape_while_it_runs(
    api_url: str, project: Path
) -> None:
    release = project / "release"
    async with PrefectClient(api_url) as client:
        run = await _pending_run(
            client, "flows.py:blocked_until", parameters={"path": str(release)}, defaults={}
        )

        async def beats() -> list[Any]:
            found = await client.read_events(
                {"event": {"name": ["prefect.flow-run.heartbeat"]},
                 "resource": {"id": [f"prefect.flow-run.{run.id}"]}}
            )  # fmt: skip
            return found if len(found) >= 3 else []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    _engine, api_url, run.id, project, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="0.2"
                )
            )
            # The sync flow blocks its thread; the engine's loop keeps heartbeating.
            heartbeats = await wait_for(beats, what="three heartbeats while the flow blocks")
            release.touch()
        flow = await client.read_flow(run.flow_id)
        final = await client.read_flow_run(run.id)
    assert final.state is not None and final.state.type is StateType.COMPLETED
    beat = heartbeats[0]
    assert beat.resource["prefect.resource.name"] == run.name
    assert beat.payload == {}
    related = {r["prefect.resource.role"]: r for r in beat.related}
    assert related["flow"]["prefect.resource.id"] == f"prefect.flow.{run.flow_id}"
    assert related["flow"]["prefect.resource.name"] == flow.name
    assert related["deployment"]["prefect.resource.id"] == f"prefect.deployment.{run.deployment_id}"
