"""PrefectClient against a real ASGI app served by hypercorn on a loopback port.

Nothing here mocks httpx: every request crosses a real socket, so retries,
dropped connections and connection refusals are the ones a worker meets.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import attrs
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from trio_worker import (
    APIError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PrefectClient,
    ServerUnavailableError,
    Settings,
    UnauthorizedError,
)
from trio_worker._core._models import SetStateStatus, State, StateType

API_KEY = "pnu_s3cr3t-key-that-must-never-leak"
POOL_ID = "1754ce2e-4e4c-4b4a-9a43-3c2b2f0d2a10"
QUEUE_ID = "d31f572b-8f0e-4a55-8c38-0a6fd1f7a2c1"

#: Any test still waiting after this long has hit a real backoff, not a test one.
FAST_SECONDS = 5.0


def work_pool_json(name: str) -> dict[str, Any]:
    return {
        "id": POOL_ID,
        "created": "2026-11-23T00:10:21.379440Z",
        "updated": "2026-11-23T00:10:21.398000Z",
        "name": name,
        "description": None,
        "type": "process",
        "base_job_template": {},
        "is_paused": False,
        "concurrency_limit": None,
        "status": "NOT_READY",
        "default_queue_id": QUEUE_ID,
        "storage_configuration": {
            "bundle_upload_step": None,
            "bundle_execution_step": None,
            "default_result_storage_block_id": None,
        },
        "active_slots": None,
    }


@attrs.define
class Recorder:
    """What the fake API saw: hits per route key, and each request's headers and body."""

    hits: Counter[str] = attrs.Factory(Counter)
    headers: list[dict[str, str]] = attrs.Factory(list)
    bodies: list[Any] = attrs.Factory(list)


class DropConnection:
    """ASGI response that promises a body, sends none and ends: the server hangs up.

    hypercorn closes a connection whose response ended early, so the client
    sees the peer close the socket mid-response (httpx ``RemoteProtocolError``).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})


def make_app(recorder: Recorder) -> Starlette:
    """A tiny stand-in for the Prefect API whose work pool names pick a behaviour."""

    async def read_work_pool(request: Request) -> Response:
        name = request.path_params["name"]
        recorder.hits[name] += 1
        recorder.headers.append(dict(request.headers))
        attempt = recorder.hits[name]
        if name == "flaky" and attempt == 1:
            return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
        if name == "busy" and attempt == 1:
            return JSONResponse(
                {"detail": "Too many requests"}, status_code=429, headers={"Retry-After": "0"}
            )
        if name == "busy-date" and attempt == 1:
            # An HTTP date in the past means "now".
            return JSONResponse(
                {"detail": "Too many requests"},
                status_code=429,
                headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
            )
        if name == "busy-garbage" and attempt == 1:
            return JSONResponse(
                {"detail": "Too many requests"},
                status_code=429,
                headers={"Retry-After": "soon-ish"},
            )
        if name == "dropped" and attempt == 1:
            return DropConnection()  # type: ignore[return-value]
        if name == "down":
            return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
        if name == "nope":
            return JSONResponse({"detail": 'Work pool "nope" not found.'}, status_code=404)
        if name == "locked":
            return JSONResponse({"exception_message": "Unauthorized"}, status_code=401)
        return JSONResponse(work_pool_json(name))

    async def create_work_pool(request: Request) -> Response:
        recorder.hits["create"] += 1
        recorder.bodies.append(await request.json())
        return JSONResponse(
            {"detail": "A work pool with this name already exists."}, status_code=409
        )

    async def set_state(request: Request) -> Response:
        recorder.hits["set_state"] += 1
        body = await request.json()
        recorder.bodies.append(body)
        if request.path_params["id"] == str(uuid.UUID(int=0)):
            return JSONResponse(
                {
                    "exception_message": "Invalid request received.",
                    "exception_detail": [
                        {
                            "type": "extra_forbidden",
                            "loc": ["body", "bogus"],
                            "msg": "Extra inputs are not permitted",
                            "input": 1,
                        }
                    ],
                    "request_body": body,
                },
                status_code=422,
            )
        state = dict(body["state"])
        state.update(id=str(uuid.uuid4()), timestamp="2026-11-23T00:10:44.122394Z")
        return JSONResponse(
            {"state": state, "status": "ACCEPT", "details": {"type": "accept_details"}},
            status_code=201,
        )

    async def health(request: Request) -> Response:
        return Response("<html>a proxy's login page</html>", media_type="text/html")

    return Starlette(
        routes=[
            Route("/api/health", health, methods=["GET"]),
            Route("/api/work_pools/", create_work_pool, methods=["POST"]),
            Route("/api/work_pools/{name}", read_work_pool, methods=["GET"]),
            Route("/api/flow_runs/{id}/set_state", set_state, methods=["POST"]),
        ]
    )


async def serve_app(
    app: Starlette, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on a loopback port chosen by the OS; report its API URL."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.hypercorn")
    config.graceful_timeout = 0.1

    async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn.trio.serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve)
        task_status.started(binds[0] + "/api")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def api_url(nursery: trio.Nursery, recorder: Recorder) -> str:
    url: str = await nursery.start(serve_app, make_app(recorder))
    return url


def settings(**changes: Any) -> Settings:
    return Settings(**{"api_key": API_KEY, "max_retries": 3, **changes})


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(api_url, settings=settings(), backoff_seconds=0.01) as client:
        yield client


def assert_no_secret(*objects: object) -> None:
    for obj in objects:
        assert API_KEY not in str(obj)
        assert API_KEY not in repr(obj)


# -- retries --------------------------------------------------------------------


async def test_503_then_200_is_retried_and_succeeds(
    client: PrefectClient, recorder: Recorder
) -> None:
    with trio.fail_after(FAST_SECONDS):
        pool = await client.read_work_pool("flaky")
    assert pool.name == "flaky"
    assert str(pool.id) == POOL_ID
    assert recorder.hits["flaky"] == 2


@pytest.mark.parametrize("name", ["busy", "busy-date", "busy-garbage"])
async def test_429_retry_after_is_honoured(api_url: str, recorder: Recorder, name: str) -> None:
    # A backoff of 10 s would blow the deadline: only Retry-After (0 s, or a
    # date in the past) lets the retry happen at once. An unreadable
    # Retry-After falls back to the (here tiny) exponential backoff.
    backoff = 0.01 if name == "busy-garbage" else 10.0
    async with PrefectClient(api_url, settings=settings(), backoff_seconds=backoff) as client:
        with trio.fail_after(FAST_SECONDS):
            pool = await client.read_work_pool(name)
    assert pool.name == name
    assert recorder.hits[name] == 2


async def test_dropped_connection_mid_request_is_retried(
    client: PrefectClient, recorder: Recorder
) -> None:
    with trio.fail_after(FAST_SECONDS):
        pool = await client.read_work_pool("dropped")
    assert pool.name == "dropped"
    assert recorder.hits["dropped"] == 2


async def test_retries_are_bounded_by_max_retries(api_url: str, recorder: Recorder) -> None:
    async with PrefectClient(
        api_url, settings=settings(max_retries=2), backoff_seconds=0.01
    ) as client:
        with trio.fail_after(FAST_SECONDS), pytest.raises(ServerUnavailableError) as info:
            await client.read_work_pool("down")
    assert recorder.hits["down"] == 3  # the first try and two retries
    assert info.value.status_code == 503
    assert info.value.detail == "Service Unavailable"


async def test_max_retries_zero_means_a_single_try(api_url: str, recorder: Recorder) -> None:
    async with PrefectClient(
        api_url, settings=settings(max_retries=0), backoff_seconds=0.01
    ) as client:
        with pytest.raises(ServerUnavailableError):
            await client.read_work_pool("flaky")
    assert recorder.hits["flaky"] == 1


async def test_retries_are_logged_without_the_key(
    client: PrefectClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="trio_worker"):
        await client.read_work_pool("flaky")
    assert "answered 503; retry 1 of 3" in caplog.text
    assert API_KEY not in caplog.text


# -- error mapping ----------------------------------------------------------------


async def test_404_raises_not_found_with_server_detail(client: PrefectClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.read_work_pool("nope")
    err = info.value
    assert err.status_code == 404
    assert err.detail == 'Work pool "nope" not found.'
    assert 'Work pool "nope" not found.' in str(err)
    assert err.method == "GET"
    assert err.url.endswith("/api/work_pools/nope")
    assert isinstance(err, LookupError)
    assert_no_secret(err)


async def test_422_raises_bad_request_and_is_never_retried(
    client: PrefectClient, recorder: Recorder
) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.set_flow_run_state(uuid.UUID(int=0), State.of(StateType.PENDING))
    assert recorder.hits["set_state"] == 1
    err = info.value
    assert err.status_code == 422
    assert isinstance(err.detail, list)
    assert err.detail[0]["loc"] == ["body", "bogus"]
    assert "Extra inputs are not permitted" in str(err)
    assert_no_secret(err)


async def test_409_raises_conflict(client: PrefectClient, recorder: Recorder) -> None:
    with pytest.raises(ConflictError) as info:
        await client.create_work_pool("pool-a", type="process")
    assert recorder.hits["create"] == 1
    assert info.value.status_code == 409
    assert info.value.detail == "A work pool with this name already exists."
    assert recorder.bodies == [{"name": "pool-a", "type": "process", "is_paused": False}]


async def test_401_raises_unauthorized_mentioning_the_api_key_setting(
    client: PrefectClient, recorder: Recorder
) -> None:
    with pytest.raises(UnauthorizedError) as info:
        await client.read_work_pool("locked")
    assert recorder.hits["locked"] == 1
    assert info.value.status_code == 401
    assert "PREFECT_API_KEY" in str(info.value)
    assert_no_secret(info.value)


async def test_connection_refused_on_first_request_fails_fast() -> None:
    # Find a loopback port nobody listens on.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/api"
    # A single retry would wait ~10 s and blow the deadline.
    async with PrefectClient(url, settings=settings(), backoff_seconds=10.0) as client:
        with trio.fail_after(FAST_SECONDS), pytest.raises(ServerUnavailableError) as info:
            await client.read_work_pool("pool-a")
    err = info.value
    assert err.status_code is None
    assert "ConnectError" in str(err)
    assert err.url == f"{url}/work_pools/pool-a"
    assert_no_secret(err, client)


async def test_connection_refused_after_a_success_is_retried(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    server_scope = trio.CancelScope()
    server_gone = trio.Event()

    async def run_server(*, task_status: trio.TaskStatus[str]) -> None:
        with server_scope:
            await serve_app(make_app(recorder), task_status=task_status)
        server_gone.set()

    async with trio.open_nursery() as nursery:
        url = await nursery.start(run_server)
        async with PrefectClient(
            url, settings=settings(max_retries=2), backoff_seconds=0.01
        ) as client:
            await client.read_work_pool("pool-a")
            server_scope.cancel()
            await server_gone.wait()
            with (
                caplog.at_level(logging.INFO, logger="trio_worker"),
                trio.fail_after(FAST_SECONDS),
                pytest.raises(ServerUnavailableError),
            ):
                await client.read_work_pool("pool-a")
    assert "retry 2 of 2" in caplog.text
    assert recorder.hits["pool-a"] == 1


async def test_success_with_a_body_that_is_not_json_raises_api_error(
    client: PrefectClient,
) -> None:
    with pytest.raises(APIError, match="not JSON") as info:
        await client.hello()
    assert info.value.status_code == 200
    assert "login page" in str(info.value.detail)


# -- credentials ------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer_and_never_shown(
    client: PrefectClient, recorder: Recorder
) -> None:
    await client.read_work_pool("pool-a")
    headers = recorder.headers[0]
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["x-prefect-api-version"] == "0.8.4"
    with pytest.raises(ServerUnavailableError) as info:
        await client.read_work_pool("down")
    assert_no_secret(client, client.settings, info.value, info.value.__cause__)


async def test_auth_string_wins_over_api_key(api_url: str, recorder: Recorder) -> None:
    async with PrefectClient(
        api_url, settings=settings(api_auth_string="admin:pass"), backoff_seconds=0.01
    ) as client:
        await client.read_work_pool("pool-a")
        assert_no_secret(client)
        assert "admin:pass" not in repr(client.settings)
    assert recorder.headers[0]["authorization"] == "Basic YWRtaW46cGFzcw=="


# -- request bodies -----------------------------------------------------------------


async def test_set_flow_run_state_body_shape(client: PrefectClient, recorder: Recorder) -> None:
    run_id = uuid.uuid4()
    state = State.of(StateType.PENDING, "submitting")
    transition_id = state.state_details.transition_id
    result = await client.set_flow_run_state(run_id, state, force=True)
    assert recorder.bodies == [
        {
            "state": {
                "type": "PENDING",
                "name": "Pending",
                "message": "submitting",
                "data": None,
                "state_details": {
                    "transition_id": str(transition_id),
                    "flow_run_id": str(run_id),
                },
            },
            "force": True,
        }
    ]
    assert result.status is SetStateStatus.ACCEPT
    assert result.state is not None
    assert result.state.type is StateType.PENDING
    assert result.state.state_details.transition_id == transition_id


async def test_set_flow_run_state_force_defaults_to_false(
    client: PrefectClient, recorder: Recorder
) -> None:
    await client.set_flow_run_state(uuid.uuid4(), State.of(StateType.CRASHED, "boom"))
    assert recorder.bodies[0]["force"] is False
    assert recorder.bodies[0]["state"]["type"] == "CRASHED"
    assert recorder.bodies[0]["state"]["name"] == "Crashed"


# -- lifecycle -------------------------------------------------------------------


async def test_closed_client_refuses_to_reopen(api_url: str) -> None:
    client = PrefectClient(api_url, settings=settings(), backoff_seconds=0.01)
    async with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass  # pragma: no cover


async def test_open_client_refuses_to_open_twice(api_url: str) -> None:
    async with PrefectClient(api_url, settings=settings()) as client:
        with pytest.raises(RuntimeError, match="opened"):
            await client.__aenter__()


async def test_unopened_client_refuses_requests(api_url: str) -> None:
    client = PrefectClient(api_url, settings=settings())
    with pytest.raises(RuntimeError, match="not open"):
        await client.read_work_pool("pool-a")
