"""The one log shipper: no line lost silently, one bad line costs one line.

A tiny starlette app stands in for ``POST /logs/`` where the test needs an API
that refuses one particular line (the embedded API refuses none); it is served
by hypercorn over loopback like the real one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.test_engine import _engine, _pending_run
from trio_worker._client._client import PrefectClient
from trio_worker._client._log_buffer import DROPPED_LOGGER_NAME, LogBuffer, repair_text
from trio_worker._client._log_shipping import LogShipper, flush_logs
from trio_worker._core._converter import structure
from trio_worker._core._models import Log

POISON = "the API refuses this line"


@attrs.define
class LogsApi:
    """What the stand-in API stored, and how many requests it answered."""

    url: str = ""
    stored: list[dict[str, Any]] = attrs.Factory(list)
    requests: int = 0


@pytest.fixture
async def logs_api() -> AsyncIterator[LogsApi]:
    api = LogsApi()

    async def create_logs(request: Request) -> Response:
        api.requests += 1
        body = json.loads(await request.body())
        if any(log["message"] == POISON for log in body):
            return JSONResponse({"detail": "a line the API will not store"}, status_code=422)
        api.stored.extend(body)
        return Response(status_code=201)

    app = Starlette(routes=[Route("/api/logs/", create_logs, methods=["POST"])])
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, app, config)
        api.url = f"{binds[0]}/api"
        yield api
        nursery.cancel_scope.cancel()


def _line(message: str, run_id: uuid.UUID, n: int = 0) -> Log:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=n)
    return Log(name="user", level=20, message=message, timestamp=when, flow_run_id=run_id)


def test_lone_surrogates_are_replaced_and_good_text_is_kept_as_is() -> None:
    assert repair_text("caf\udce9 \ud800!") == "caf\ufffd \ufffd!"
    text = "plain, accentué, 😀"
    assert repair_text(text) is text


async def test_a_refused_batch_is_split_and_only_the_bad_line_dropped(logs_api: LogsApi) -> None:
    run_id = uuid.uuid4()
    buffer = LogBuffer()
    messages = [f"line {n}" for n in range(16)]
    messages[11] = POISON
    for n, message in enumerate(messages):
        buffer.add(_line(message, run_id, n))
    async with PrefectClient(logs_api.url, backoff_seconds=0.01) as client:
        assert await flush_logs(client, buffer)
    stored = [log["message"] for log in logs_api.stored]
    *lines, notice = stored
    assert lines == [m for m in messages if m != POISON]
    assert notice == ("1 log line dropped: the API refused it (422: a line the API will not store)")
    [notice_log] = [log for log in logs_api.stored if log["name"] == DROPPED_LOGGER_NAME]
    assert notice_log["level"] == logging.WARNING
    assert notice_log["flow_run_id"] == str(run_id)
    # Timestamped at the dropped line, so the notice sorts where the gap is.
    assert notice_log["timestamp"].startswith("2026-01-01T00:00:00.011")
    # Bisection: a handful of requests, not one per line.
    assert logs_api.requests <= 1 + 2 * 4 + 1
    assert len(buffer) == 0


async def test_a_full_buffer_while_the_api_is_down_says_so_once_it_is_back(
    logs_api: LogsApi,
) -> None:
    run_id = uuid.uuid4()
    buffer = LogBuffer(capacity=10)
    buffer.add(_line("first", run_id))
    async with PrefectClient("http://127.0.0.1:9/api", backoff_seconds=0.01) as down:
        assert not await flush_logs(down, buffer)
    assert buffer.unreachable is not None and "ConnectError" in buffer.unreachable
    for n in range(1, 25):
        buffer.add(_line(f"line {n}", run_id, n))
    assert len(buffer) == 10
    async with PrefectClient(logs_api.url, backoff_seconds=0.01) as client:
        assert await flush_logs(client, buffer)
    stored = [log["message"] for log in logs_api.stored]
    assert stored[1:] == [f"line {n}" for n in range(15, 25)]
    assert stored[0].startswith(
        "15 log lines dropped: the log buffer (10 lines) filled up while the API did not answer"
    )
    assert buffer.unreachable is None


async def test_lines_faster_than_the_api_are_counted_with_that_reason(logs_api: LogsApi) -> None:
    run_id = uuid.uuid4()
    buffer = LogBuffer(capacity=3)
    for n in range(10):
        buffer.add(_line(f"line {n}", run_id, n))
    async with PrefectClient(logs_api.url, backoff_seconds=0.01) as client:
        await LogShipper(buffer, client).close()
    stored = [log["message"] for log in logs_api.stored]
    assert stored == [
        "7 log lines dropped: they came faster than the API took them and the log buffer "
        "(3 lines, TRIO_WORKER_LOG_BUFFER_LINES) was full",
        "line 7",
        "line 8",
        "line 9",
    ]


def test_the_buffer_bounds_lines_and_counts_each_run_apart() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    buffer = LogBuffer(capacity=4)
    for n in range(6):
        buffer.add(_line(f"a{n}", first, n))
    for n in range(3):
        buffer.add(_line(f"b{n}", second, 10 + n))
    assert [log.message for log in buffer.take()] == ["a5", "b0", "b1", "b2"]
    counts = {(n.flow_run_id, n.count) for n in buffer.take_notices()}
    assert counts == {(first, 5)}
    assert buffer.dropped_total == 5
    assert buffer.take_notices() == []


# -- end to end: the engine as the worker runs it, against the embedded API -------------

NOISY_FLOWS = """
import logging

log = logging.getLogger("user.flows")


def flood(lines):
    # One write of many lines: far more than the buffer holds before a flush.
    print("\\n".join(f"flood {n}" for n in range(lines)))


def surrogate():
    log.info("before")
    log.info("bad \\udcff line")
    log.info("after")


def unfinished():
    print("first")
    print("last, without a newline", end="")
"""


async def _all_logs(client: PrefectClient, run_id: uuid.UUID) -> list[Log]:
    logs: list[Log] = []
    while True:
        body = {
            "logs": {"flow_run_id": {"any_": [str(run_id)]}},
            "limit": 200,
            "offset": len(logs),
            "sort": "TIMESTAMP_ASC",
        }
        page = structure(await client.request("POST", "logs/filter", json_body=body), list[Log])
        logs += page
        if len(page) < 200:
            return logs


async def test_a_run_printing_far_more_than_the_buffer_stores_how_many_were_dropped_and_why(
    api_url: str, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text(NOISY_FLOWS)
    printed = 5_000
    async with PrefectClient(api_url) as client:
        run = await _pending_run(
            client, "flows.py:flood", parameters={"lines": printed}, defaults={}
        )
        done = await _engine(api_url, run.id, tmp_path, TRIO_WORKER_LOG_BUFFER_LINES="100")
        assert done.returncode == 0, done.stderr.decode()
        logs = await _all_logs(client, run.id)
    kept = [log for log in logs if log.message.startswith("flood ")]
    notices = [log for log in logs if log.name == DROPPED_LOGGER_NAME]
    assert notices, [log.message for log in logs]
    dropped = 0
    for notice in notices:
        count, rest = notice.message.split(" ", 1)
        assert rest.startswith("log lines dropped: they came faster than the API took them")
        assert "(100 lines, TRIO_WORKER_LOG_BUFFER_LINES) was full" in rest
        assert notice.level == logging.WARNING
        dropped += int(count)
    # Every line is either stored (once) or counted: nothing vanishes. Besides
    # the prints, the engine's own lines (also on its stderr) were buffered.
    stderr = done.stderr.decode()
    engine_lines = stderr.count(" trio_worker.flow_runs: ")
    assert engine_lines >= 2  # "Running flow run ..." and "Finished in state ..."
    stored = [log for log in logs if log.name != DROPPED_LOGGER_NAME]
    assert len(stored) + dropped == printed + engine_lines
    assert len({log.message for log in kept}) == len(kept)
    # The engine's own stderr tells the same story, and blames no outage.
    assert "dropped: they came faster than the API took them" in stderr
    assert "did not answer" not in stderr and "unreachable" not in stderr


async def test_a_line_with_a_lone_surrogate_is_stored_repaired_with_its_neighbours(
    api_url: str, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text(NOISY_FLOWS)
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:surrogate", defaults={})
        done = await _engine(api_url, run.id, tmp_path)
        assert done.returncode == 0, done.stderr.decode()
        logs = await _all_logs(client, run.id)
    user = [log.message for log in logs if log.name == "user.flows"]
    assert user == ["before", "bad \ufffd line", "after"]
    assert not [log for log in logs if log.name == DROPPED_LOGGER_NAME]


async def test_a_last_print_without_a_newline_is_stored(api_url: str, tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(NOISY_FLOWS)
    async with PrefectClient(api_url) as client:
        run = await _pending_run(client, "flows.py:unfinished", defaults={})
        done = await _engine(api_url, run.id, tmp_path)
        assert done.returncode == 0, done.stderr.decode()
        logs = await _all_logs(client, run.id)
    printed = [log.message for log in logs if log.name == "trio_worker.flow_runs.print"]
    assert printed == ["first", "last, without a newline"]
