"""TLS: the embedded API served over https with a private CA made at test time.

REST and websockets must trust exactly the same thing (the CA bundle of
``PREFECT_API_SSL_CERT_FILE``, or nothing with skip-verify), and a refused
certificate must say so, naming the setting, never look like an API that is down.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trustme
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.helpers import clean_env, make_deployment, wait_for, wait_for_state
from trio_worker._client._client import PrefectClient
from trio_worker._client._subscriptions import SubscriptionClosedError, open_subscription
from trio_worker._core._exceptions import ConfigurationError, TLSError
from trio_worker._core._models import StateType
from trio_worker._core._settings import Settings
from trio_worker._process._worker import ProcessWorker
from trio_worker._server import create_app
from trio_worker._taskworker._tasks import task
from trio_worker._taskworker._worker import TaskWorker

FINAL_STATES = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
#: The verdict OpenSSL gives for a server certificate of an unknown CA.
UNKNOWN_CA = "unable to get local issuer certificate"


@attrs.frozen
class TlsApi:
    """An https embedded API and the CA bundle that verifies it."""

    url: str
    ca_file: str


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_api(ca: trustme.CA, ca_file: str, tmp_path: Path) -> AsyncIterator[TlsApi]:
    """The embedded API served by hypercorn over TLS on a free loopback port."""
    chain = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(chain))
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile = str(chain)
    config.keyfile = str(chain)
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.websocket_ping_interval = None
    app = create_app(tmp_path / "api.db")
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, app, config)
        assert binds[0].startswith("https://")
        yield TlsApi(url=f"{binds[0]}/api", ca_file=ca_file)
        nursery.cancel_scope.cancel()


async def _rest_and_websocket(url: str, settings: Settings) -> None:
    """One REST call and one authenticated websocket, both through the client's context."""
    async with PrefectClient(url, settings=settings, backoff_seconds=0.01) as client:
        assert await client.hello()
        async with open_subscription(
            url, "events/out", token=None, ssl_context=client.ssl_context
        ) as socket:
            assert socket.url.startswith("wss://")


async def test_rest_and_websocket_verify_with_the_ca_bundle_setting(tls_api: TlsApi) -> None:
    await _rest_and_websocket(tls_api.url, Settings(ssl_cert_file=tls_api.ca_file))


async def test_rest_and_websocket_work_with_skip_verify(tls_api: TlsApi) -> None:
    await _rest_and_websocket(tls_api.url, Settings(tls_insecure_skip_verify=True))


async def test_refused_certificate_says_why_for_rest_and_websocket(tls_api: TlsApi) -> None:
    async with PrefectClient(tls_api.url, backoff_seconds=0.01) as client:
        with pytest.raises(TLSError) as rest:
            await client.hello()
        with pytest.raises(SubscriptionClosedError) as websocket:
            async with open_subscription(
                tls_api.url,
                "events/out",
                token=None,
                ssl_context=client.ssl_context,
                connect_timeout_seconds=2.0,
            ):
                pass
    for message in (str(rest.value), str(websocket.value)):
        assert f"TLS certificate verify failed: {UNKNOWN_CA}" in message, message
        assert "PREFECT_API_SSL_CERT_FILE" in message, message
        assert "PREFECT_API_TLS_INSECURE_SKIP_VERIFY" in message, message
    assert rest.value.status_code is None


async def test_a_ca_bundle_of_another_ca_is_refused(tls_api: TlsApi, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    settings = Settings(ssl_cert_file=str(other))
    async with PrefectClient(tls_api.url, settings=settings, backoff_seconds=0.01) as client:
        with pytest.raises(TLSError, match="certificate verify failed"):
            await client.hello()


def test_an_unusable_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match=r"PREFECT_API_SSL_CERT_FILE=.*does not exist"):
        PrefectClient("https://api.example/api", settings=Settings(ssl_cert_file=str(missing)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="no usable PEM certificate"):
        PrefectClient("https://api.example/api", settings=Settings(ssl_cert_file=str(garbage)))
    # Plain http needs no bundle, so a wrong one does not stop it.
    assert PrefectClient("http://127.0.0.1:1/api", settings=Settings(ssl_cert_file=str(missing)))


def test_ssl_cert_file_falls_back_to_ssl_cert_file_as_prefect_does() -> None:
    assert Settings.from_env({"SSL_CERT_FILE": "/ca.pem"}).ssl_cert_file == "/ca.pem"
    both = {"SSL_CERT_FILE": "/ca.pem", "PREFECT_API_SSL_CERT_FILE": "/mine.pem"}
    assert Settings.from_env(both).ssl_cert_file == "/mine.pem"
    assert Settings.from_env({}).ssl_cert_file is None


async def _cli(url: str, **env: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "trio_worker", "work-pool", "ls"],
        env={**clean_env(), "PREFECT_API_URL": url, **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stderr.decode()


async def test_cli_names_the_setting_when_the_certificate_is_refused(tls_api: TlsApi) -> None:
    refused, stderr = await _cli(tls_api.url)
    assert refused == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert UNKNOWN_CA in lines[0]
    assert "PREFECT_API_SSL_CERT_FILE" in lines[0]
    assert "is the API at PREFECT_API_URL running" not in lines[0]
    verified, stderr = await _cli(tls_api.url, PREFECT_API_SSL_CERT_FILE=tls_api.ca_file)
    assert verified == 0, stderr


@task(key="tls-echo")
def echo(text: str) -> str:
    return text


async def test_task_worker_receives_a_task_over_wss(
    tls_api: TlsApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", tls_api.url)
    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", tls_api.ca_file)
    monkeypatch.setenv("TRIO_WORKER_TASK_STORAGE", str(tmp_path / "store"))
    settings = Settings.from_env()
    worker = TaskWorker(echo, settings=settings, client_backoff_seconds=0.05)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):  # never connected: the websocket did not trust the CA
            await nursery.start(worker.start)
        assert worker.connected
        handle = await echo.delay_async("over tls")
        assert await handle.result_async(30) == "over tls"
        nursery.cancel_scope.cancel()


async def test_https_to_a_plain_http_api_says_the_handshake_failed(api_url: str) -> None:
    url = api_url.replace("http://", "https://", 1)
    async with PrefectClient(url, backoff_seconds=0.01) as client:
        with pytest.raises(TLSError, match=r"TLS handshake failed: .*served over https"):
            await client.hello()


async def test_a_worker_streams_its_events_over_wss(tls_api: TlsApi, tmp_path: Path) -> None:
    settings = Settings(
        api_url=tls_api.url,
        ssl_cert_file=tls_api.ca_file,
        state_dir=str(tmp_path / "state"),
        query_seconds=0.2,
    )

    async def sent() -> bool:
        return worker.events.sent >= 1  # "worker started", over /events/in

    worker = ProcessWorker("tls-pool", settings=settings, client_backoff_seconds=0.05)
    async with worker, trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(worker.start, printer=lambda line: None))
        await wait_for(sent, what="an event sent over wss://")
        nursery.cancel_scope.cancel()


async def test_a_warm_run_reaches_an_https_api_with_the_zygotes_ssl_context(
    tls_api: TlsApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The zygote builds the context from the worker's environment, before any
    # fork; a run with the same TLS settings uses it in its forked child.
    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", tls_api.ca_file)
    (tmp_path / "tls_flows.py").write_text(
        "import os\n\ndef where(out):\n    open(out, 'w').write(str(os.getppid()))\n"
    )
    out = tmp_path / "parent"
    settings = Settings(
        api_url=tls_api.url,
        ssl_cert_file=tls_api.ca_file,
        state_dir=str(tmp_path / "state"),
        query_seconds=0.2,
        prefetch_seconds=0,
        warm_start=True,
    )
    worker = ProcessWorker("tls-warm", settings=settings, client_backoff_seconds=0.05)
    async with PrefectClient(tls_api.url, settings=settings) as client:
        deployment = await make_deployment(
            client,
            "tls-warm",
            entrypoint="tls_flows.py:where",
            path=str(tmp_path),
            parameters={"out": str(out)},
            job_variables={"working_dir": str(tmp_path)},
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        async with worker, trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(worker.start, printer=lambda line: None))
            done = await wait_for_state(client, run.id, FINAL_STATES)
            zygote = worker.warm_starter.zygote_pid if worker.warm_starter else None
            nursery.cancel_scope.cancel()
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert zygote is not None and int(out.read_text()) == zygote
