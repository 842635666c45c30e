"""The embedded API's front door: credentials, hosts, origins and content types.

Every test talks to a real API over loopback; the refusals are the ones a web
page in a browser (cross-site, DNS rebinding) or a client without the auth
string would meet.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from tests.helpers import wait_for
from trio_worker._client._client import PrefectClient
from trio_worker._client._subscriptions import open_subscription
from trio_worker._core._exceptions import UnauthorizedError
from trio_worker._core._settings import Settings
from trio_worker._server import ApiSecurity, is_loopback_host, serve_api
from trio_worker.testing import open_embedded_api

SECRET = "admin:s3cret-pass"
POOL = {"name": "p", "type": "process"}

ApiFactory = Callable[..., AbstractAsyncContextManager[str]]


def basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def ws_url(api_url: str, path: str) -> str:
    return api_url.replace("http://", "ws://", 1) + path


@pytest.fixture
def serve(tmp_path: Path) -> ApiFactory:
    """``async with serve(**security) as url``: an API with that ``ApiSecurity``."""

    @asynccontextmanager
    async def start(**security: Any) -> AsyncIterator[str]:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(
                lambda task_status: serve_api(
                    port=0,
                    db_path=tmp_path / "secure.db",
                    security=ApiSecurity(**security),
                    task_status=task_status,
                )
            )
            yield url
            nursery.cancel_scope.cancel()

    return start


@pytest.fixture
async def secured() -> AsyncIterator[str]:
    async with open_embedded_api(auth_string=SECRET) as url:
        yield url


async def pools(api_url: str) -> list[str]:
    async with httpx.AsyncClient(headers=basic(SECRET)) as http:
        answer = await http.post(f"{api_url}/work_pools/filter", json={})
    assert answer.status_code == 200, answer.text
    return [pool["name"] for pool in answer.json()]


# -- authentication -------------------------------------------------------------


async def test_requests_without_the_auth_string_get_401_with_one_line(secured: str) -> None:
    async with httpx.AsyncClient() as http:
        cases = {
            "missing": {},
            "wrong": basic("admin:guess"),
            "bearer": {"Authorization": f"Bearer {SECRET}"},
            "malformed": {"Authorization": "Basic not*base64"},
            "raw": {"Authorization": f"Basic {SECRET}"},
        }
        for case, headers in cases.items():
            for method, path in (("GET", "/version"), ("POST", "/work_pools/")):
                answer = await http.request(method, secured + path, headers=headers, json=POOL)
                assert answer.status_code == 401, (case, method, answer.text)
                body = answer.json()
                assert body["exception_message"] == "Unauthorized"
                assert "\n" not in body["detail"] and body["detail"], body
                assert SECRET not in answer.text
    assert await pools(secured) == []  # nothing was created


async def test_the_auth_string_opens_every_route(secured: str) -> None:
    async with httpx.AsyncClient(headers=basic(SECRET)) as http:
        assert (await http.get(f"{secured}/version")).status_code == 200
        created = await http.post(f"{secured}/work_pools/", json=POOL)
        assert created.status_code == 201, created.text
        # Prefect's optional CSRF flow: the token route answers as before.
        csrf = await http.get(f"{secured}/csrf-token", params={"client": "c"})
        assert csrf.status_code == 422
        assert csrf.json() == {"detail": "CSRF protection is disabled."}
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{secured}/csrf-token", params={"client": "c"})).status_code == 401


async def test_health_and_ready_stay_open_for_probes_only_with_get(secured: str) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{secured}/health")).json() is True
        assert (await http.get(f"{secured}/ready")).json() == {"message": "OK"}
        # Exact paths only, as in Prefect: nothing else rides on the exemption.
        assert (await http.post(f"{secured}/health", json={})).status_code == 401
        assert (await http.get(f"{secured}/health/")).status_code == 401
        assert (await http.get(f"{secured}/hello")).status_code == 401


async def test_client_with_the_auth_string_works_and_a_wrong_one_names_the_setting(
    secured: str,
) -> None:
    settings = Settings(api_url=secured, api_auth_string=SECRET)
    async with PrefectClient(secured, settings=settings) as client:
        await client.create_work_pool("ok", type="process")
    for settings in (
        Settings(api_url=secured, api_auth_string="admin:guess"),
        Settings(api_url=secured),
        Settings(api_url=secured, api_key="some-key"),
    ):
        async with PrefectClient(secured, settings=settings) as client:
            with pytest.raises(UnauthorizedError) as info:
                await client.read_work_pool("ok")
        message = str(info.value)
        assert info.value.status_code == 401
        assert "PREFECT_API_AUTH_STRING" in message, message
        assert "\n" not in message and SECRET not in message


async def test_websockets_check_the_auth_frame_as_prefect_does(secured: str) -> None:
    url = ws_url(secured, "/events/out")
    for token, reason in (
        ("admin:guess", "Invalid token"),
        (base64.b64encode(SECRET.encode()).decode(), "Invalid token"),
        (None, "Auth required but no token provided"),
    ):
        async with open_websocket_url(url, subprotocols=["prefect"]) as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
        assert info.value.reason.code == 1008
        assert info.value.reason.reason == reason
    # Without the prefect subprotocol there is no auth frame: refused at the upgrade.
    for path in ("/events/in", "/events/out", "/task_runs/subscriptions/scheduled"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(ws_url(secured, path)):
                pass
        assert rejected.value.status_code == 403
    # The raw auth string, as Prefect's clients send it, is accepted.
    async with open_subscription(secured, "events/out", token=SECRET) as socket:
        await socket.send_json({"type": "filter", "filter": {}, "backfill": False})
    with pytest.raises(UnauthorizedError, match="PREFECT_API_AUTH_STRING"):
        async with open_subscription(secured, "task_runs/subscriptions/scheduled", token="x:y"):
            pass


async def test_a_wrong_token_on_events_in_stores_nothing(secured: str) -> None:
    event = {
        "id": "11111111-2222-4333-8444-555555555555",
        "occurred": "2026-01-01T00:00:00Z",
        "event": "evil.injected",
        "resource": {"prefect.resource.id": "evil"},
    }
    async with open_websocket_url(ws_url(secured, "/events/in"), subprotocols=["prefect"]) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": "admin:guess"}))
        await ws.send_message(json.dumps(event))
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    async with open_subscription(secured, "events/in", token=SECRET) as socket:
        await socket.send_json({**event, "id": "11111111-2222-4333-8444-666666666666"})
    async with httpx.AsyncClient(headers=basic(SECRET)) as http:

        async def stored() -> list[str]:
            answer = await http.post(f"{secured}/events/filter", json={"limit": 50})
            return [e["id"] for e in answer.json()["events"] if e["event"] == "evil.injected"]

        ids = await wait_for(stored, what="the authenticated event")
    assert ids == ["11111111-2222-4333-8444-666666666666"]


# -- browser-borne requests -------------------------------------------------------


async def test_cross_site_and_non_json_changes_are_refused(api_url: str) -> None:
    port = httpx.URL(api_url).port
    async with httpx.AsyncClient() as http:
        evil = await http.post(
            f"{api_url}/work_pools/", json=POOL, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403
        assert "evil.example" in evil.json()["detail"]
        for origin in ("null", f"http://127.0.0.1:{port}.evil.example", "http://127.0.0.1:1"):
            refused = await http.post(
                f"{api_url}/work_pools/", json=POOL, headers={"Origin": origin}
            )
            assert refused.status_code == 403, origin
        deleted = await http.delete(
            f"{api_url}/work_pools/p", headers={"Origin": "http://evil.example"}
        )
        assert deleted.status_code == 403
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            plain = await http.post(
                f"{api_url}/work_pools/", content=json.dumps(POOL).encode(), headers=headers
            )
            assert plain.status_code == 415, content_type
            assert "application/json" in plain.json()["detail"]
        assert (await http.post(f"{api_url}/work_pools/filter", json={})).json() == []
        # The API's own origin, and JSON, pass.
        same = await http.post(
            f"{api_url}/work_pools/",
            content=json.dumps(POOL).encode(),
            headers={"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json"},
        )
        assert same.status_code == 201, same.text
        # A cross-site read is harmless (no CORS headers: the page cannot read it).
        read = await http.get(f"{api_url}/work_pools/p", headers={"Origin": "http://evil.example"})
        assert read.status_code == 200


async def test_unknown_host_names_are_refused_on_loopback(api_url: str) -> None:
    port = httpx.URL(api_url).port
    async with httpx.AsyncClient() as http:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.:1"):
            answer = await http.get(f"{api_url}/work_pools/filter", headers={"Host": host})
            assert answer.status_code == 403, host
            assert "TRIO_WORKER_API_ALLOWED_HOSTS" in answer.json()["detail"]
            posted = await http.post(f"{api_url}/work_pools/", json=POOL, headers={"Host": host})
            assert posted.status_code == 403
        for host in ("localhost", f"localhost:{port}", "127.0.0.1:9", "[::1]:4200", "LOCALHOST"):
            answer = await http.get(f"{api_url}/version", headers={"Host": host})
            assert answer.status_code == 200, host
        # A websocket upgrade naming a foreign host is refused too.
        upgrade = {
            "Host": "evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        }
        answer = await http.get(f"{api_url}/events/out", headers=upgrade)
        assert answer.status_code == 403
        assert "evil.example" in answer.json()["detail"]


async def test_cross_site_websockets_are_refused(api_url: str) -> None:
    for path in ("/events/in", "/events/out", "/task_runs/subscriptions/scheduled"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(
                ws_url(api_url, path),
                subprotocols=["prefect"],
                extra_headers=[(b"Origin", b"http://evil.example")],
            ):
                pass
        assert rejected.value.status_code == 403
        assert b"evil.example" in (rejected.value.body or b"")


async def test_configured_hosts_and_origins_are_accepted(serve: ApiFactory) -> None:
    async with (
        serve(allowed_hosts=["API.internal"], allowed_origins=["https://ui.example/"]) as url,
        httpx.AsyncClient() as http,
    ):
        ok = await http.post(
            f"{url}/work_pools/",
            json=POOL,
            headers={"Host": "api.internal:4200", "Origin": "https://ui.example"},
        )
        assert ok.status_code == 201, ok.text
        other = await http.post(
            f"{url}/work_pools/", json=POOL, headers={"Origin": "https://other.example"}
        )
        assert other.status_code == 403
        assert (await http.get(f"{url}/version", headers={"Host": "x.internal"})).status_code == 403


def test_allowed_hosts_and_origins_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TRIO_WORKER_API_ALLOWED_HOSTS": " api.internal, ,Other.Example ",
            "TRIO_WORKER_API_ALLOWED_ORIGINS": "https://ui.example/,http://x:8080",
        }
    )
    assert settings.api_allowed_hosts == ("api.internal", "Other.Example")
    security = ApiSecurity.from_settings(settings)
    assert security.allowed_hosts == {"api.internal", "other.example"}
    assert security.allowed_origins == {"https://ui.example", "http://x:8080"}
    assert security.host_problem("other.example:1", loopback_connection=True) is None
    assert security.origin_problem("https://UI.example", "127.0.0.1:4200") is None


def test_loopback_means_this_machine_only() -> None:
    loopback = ["localhost", "127.0.0.1", "127.0.0.5", "::1", "[::1]", "::ffff:127.0.0.1"]
    assert all(is_loopback_host(host) for host in loopback)
    others = ["0.0.0.0", "::", "10.0.0.1", "192.0.2.10", "evil.example", "localhost.evil"]
    assert not any(is_loopback_host(host) for host in others)


async def test_a_token_with_a_lone_surrogate_is_just_invalid(secured: str) -> None:
    url = ws_url(secured, "/task_runs/subscriptions/scheduled")
    async with open_websocket_url(url, subprotocols=["prefect"]) as ws:
        await ws.send_message('{"type": "auth", "token": "admin:\\ud800"}')
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
    # A frame holding text that is not UTF-8 is not a valid auth message at all
    # (the API's JSON limits refuse lone surrogates): refused, never a crash.
    assert (info.value.reason.code, info.value.reason.reason) == (1008, "Expected 'auth' message")
