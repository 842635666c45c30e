"""The async API client: typed methods over httpx for the Prefect REST subset.

:class:`PrefectClient` is a single-use async context manager that owns one
``httpx.AsyncClient``. Each method sends one request and returns models from
``_models.py``; an error status becomes an exception from ``_exceptions.py``
carrying the server's ``detail``. Retries happen below, in
:class:`~trio_worker._client._transport.RetryTransport`. The API key is sent only in a
header and appears in no message, repr or log line.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import ssl
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import attrs
import httpx

from trio_worker._client._csrf import CsrfTransport
from trio_worker._client._tls import create_ssl_context, describe_tls_failure
from trio_worker._client._transport import RetryTransport
from trio_worker._core._converter import structure, unstructure
from trio_worker._core._exceptions import (
    APIError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ModelError,
    NotFoundError,
    ServerUnavailableError,
    TLSError,
    UnauthorizedError,
)
from trio_worker._core._models import (
    Deployment,
    Event,
    Flow,
    FlowRun,
    Log,
    OrchestrationResult,
    State,
    StateType,
    TaskRun,
    Variable,
    Worker,
    WorkerFlowRunResponse,
    WorkPool,
    WorkQueue,
)
from trio_worker._core._settings import Settings
from trio_worker._core._time import parse_datetime
from trio_worker._version import __version__

MAX_HELD_RUN_IDS: Final = 10_000
"""Most run ids one heartbeat names (the embedded API refuses longer lists)."""

__all__ = ["API_VERSION", "PrefectClient"]

API_VERSION: Final = "0.8.4"
USER_AGENT: Final = f"trio-worker/{__version__} (API {API_VERSION})"
DEFAULT_MAX_CONNECTIONS: Final = 16
MOST_CONNECTIONS: Final = 100
"""What a caller sizing its pool by its concurrency is held to."""

T = TypeVar("T")


class _ClientState(enum.Enum):
    UNOPENED = "unopened"  # constructed, not yet entered
    OPENED = "opened"  # inside ``async with``
    CLOSED = "closed"  # exited; a client is not reusable


def _detail(response: httpx.Response) -> object:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        for key in ("detail", "exception_detail", "exception_message"):
            if key in body:
                return body[key]
    return body


def _credentials_hint(request: httpx.Request) -> str:
    """Name the setting to fix, from the credentials the refused request carried."""
    scheme = request.headers.get("Authorization", "").partition(" ")[0].lower()
    if scheme == "basic":
        return " (check PREFECT_API_AUTH_STRING: it must be the server's user:password)"
    if scheme == "bearer":
        return " (check PREFECT_API_KEY; a server with basic auth wants PREFECT_API_AUTH_STRING)"
    return " (set PREFECT_API_AUTH_STRING to the server's user:password, or PREFECT_API_KEY)"


def _error_for(response: httpx.Response) -> APIError:
    request = response.request
    url = str(request.url.copy_with(query=None))
    detail = _detail(response)
    status = response.status_code
    message = f"{request.method} {url} answered {status}: {detail}"
    cls: type[APIError]
    if status in (400, 422):
        cls = BadRequestError
    elif status in (401, 403):
        cls = UnauthorizedError
        if not any(name in str(detail) for name in ("PREFECT_", "TRIO_WORKER_")):
            message += _credentials_hint(request)  # trio-worker's API names the setting itself
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status in (408, 429) or status >= 500:
        cls = ServerUnavailableError
    else:
        cls = APIError
    return cls(message, method=request.method, url=url, status_code=status, detail=detail)


def _json_ready(value: Any) -> Any:
    """Unstructure models and make datetimes/UUIDs JSON strings."""
    return unstructure(value)


def state_body(
    state: State,
    *,
    flow_run_id: uuid.UUID | None = None,
    task_run_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """A ``StateCreate`` body; like Prefect, name the run in ``state_details``."""
    state_details = state.state_details
    if flow_run_id is not None and state_details.flow_run_id is None:
        state_details = attrs.evolve(state_details, flow_run_id=flow_run_id)
    if task_run_id is not None and state_details.task_run_id is None:
        state_details = attrs.evolve(state_details, task_run_id=task_run_id)
    details = {k: v for k, v in unstructure(state_details).items() if v is not None}
    return {
        "type": state.type.value,
        "name": state.name,
        "message": state.message,
        "data": state.data,
        "state_details": details,
    }


class PrefectClient:
    """Talk to a Prefect 3 API (or trio-worker's embedded one).

    Use it as ``async with PrefectClient(url) as client:``; it is single-use.

    Args:
        api_url: the API's base URL, e.g. ``http://127.0.0.1:4200/api``.
        settings: credentials, TLS and timeout settings (defaults when None).
        backoff_seconds: first retry wait; tests make it small.
        max_connections: connections kept open to the API. A caller with many
            requests in flight at once (a task worker at a high limit) wants
            about one each: requests queued for a connection cost the pool far
            more CPU than an idle connection does.
        ssl_context: a context already built from these settings' TLS fields
            (:func:`~trio_worker._client._tls.create_ssl_context`), used for an
            https URL instead of building one: loading the CA bundle costs tens
            of ms, which a warm-started engine run should not pay.
        transport: the innermost transport, below retries and CSRF; tests pass
            an ``httpx.MockTransport`` standing in for another host (a Prefect
            server). Default: a pooled HTTP transport.

    Raises:
        ConfigurationError: the URL is not http(s), or the CA bundle of an
            https URL (``PREFECT_API_SSL_CERT_FILE``) cannot be used.
    """

    def __init__(
        self,
        api_url: str,
        *,
        settings: Settings | None = None,
        backoff_seconds: float = 1.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"PREFECT_API_URL={api_url!r} is not an http(s) URL; "
                "expected something like http://127.0.0.1:4200/api"
            )
        self.api_url = api_url.rstrip("/")
        self.settings = settings or Settings()
        #: The one context that verifies the API for REST and for every
        #: websocket opened on behalf of this client (None for plain http).
        self.ssl_context: ssl.SSLContext | None = None
        if api_url.startswith("https://"):
            self.ssl_context = ssl_context or create_ssl_context(self.settings)
        self._backoff_seconds = backoff_seconds
        self._max_connections = max_connections
        self._transport = transport
        self._state = _ClientState.UNOPENED
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"PrefectClient({self.api_url!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "X-PREFECT-API-VERSION": API_VERSION}
        auth = self.settings.api_auth_string
        if auth:
            import base64

            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        elif self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        return headers

    async def __aenter__(self) -> Self:
        if self._state is not _ClientState.UNOPENED:
            raise RuntimeError(
                f"cannot open a PrefectClient that is {self._state.value}; create a new one"
            )
        settings = self.settings
        # Plain http needs no CA bundle (loading one costs tens of ms per
        # client); a context without one still refuses a redirect to https.
        verify = self.ssl_context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # As many idle connections kept as may be open: with fewer, a burst of
        # concurrent submissions closed and reopened a connection per request.
        limits = httpx.Limits(
            max_connections=self._max_connections, max_keepalive_connections=self._max_connections
        )
        inner = self._transport or httpx.AsyncHTTPTransport(verify=verify, limits=limits)
        retrying = RetryTransport(
            inner, max_retries=settings.max_retries, backoff_seconds=self._backoff_seconds
        )
        transport = CsrfTransport(retrying, self.api_url)
        self._http = httpx.AsyncClient(
            base_url=self.api_url + "/",
            headers=self._headers(),
            timeout=settings.api_request_timeout,
            transport=transport,
            follow_redirects=True,
        )
        self._state = _ClientState.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _ClientState.CLOSED
        if self._http is not None:
            await self._http.aclose()

    # -- plumbing ---------------------------------------------------------

    async def request(self, method: str, path: str, *, json_body: Any = None, **kw: Any) -> Any:
        """Send one request; return the decoded JSON body (None when empty).

        Raises:
            APIError: a subclass matching the status, with the server's detail.
            ServerUnavailableError: when no response arrived after retries.
        """
        if self._http is None or self._state is not _ClientState.OPENED:
            raise RuntimeError(
                "PrefectClient is not open; use it as 'async with PrefectClient(...)'"
            )
        content = None if json_body is None else json.dumps(_json_ready(json_body))
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = await self._http.request(
                method, path.lstrip("/"), content=content, headers=headers, **kw
            )
        except httpx.TransportError as exc:
            url = f"{self.api_url}/{path.lstrip('/')}"
            tls_failure = describe_tls_failure(exc)
            if tls_failure is not None:
                raise TLSError(
                    f"{method} {url} failed: {tls_failure}", method=method, url=url
                ) from exc
            raise ServerUnavailableError(
                f"{method} {url} failed: {type(exc).__name__}: {exc or 'no response'}",
                method=method,
                url=url,
            ) from exc
        if response.status_code >= 400:
            raise _error_for(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            url = str(response.request.url.copy_with(query=None))
            raise APIError(
                f"{method} {url} answered {response.status_code} with a body that is not JSON: "
                f"{response.text[:200]!r}",
                method=method,
                url=url,
                status_code=response.status_code,
                detail=response.text[:500],
            ) from None

    async def _get(self, path: str, cls: type[T]) -> T:
        return structure(await self.request("GET", path), cls)

    # -- health -------------------------------------------------------------

    async def hello(self) -> bool:
        """Return True when the API answers ``/health``."""
        return bool(await self.request("GET", "health"))

    # -- work pools, queues, workers ----------------------------------------

    async def read_work_pool(self, name: str) -> WorkPool:
        """Read a work pool by name (NotFoundError when it does not exist)."""
        return await self._get(f"work_pools/{name}", WorkPool)

    async def read_work_pools(self) -> list[WorkPool]:
        """List every work pool."""
        data = await self.request("POST", "work_pools/filter", json_body={})
        return structure(data, list[WorkPool])

    async def create_work_pool(
        self,
        name: str,
        *,
        type: str,
        base_job_template: Mapping[str, Any] | None = None,
        description: str | None = None,
        concurrency_limit: int | None = None,
        is_paused: bool = False,
    ) -> WorkPool:
        """Create a work pool; ConflictError when the name is taken."""
        body: dict[str, Any] = {"name": name, "type": type, "is_paused": is_paused}
        if base_job_template is not None:
            body["base_job_template"] = dict(base_job_template)
        if description is not None:
            body["description"] = description
        if concurrency_limit is not None:
            body["concurrency_limit"] = concurrency_limit
        return structure(await self.request("POST", "work_pools/", json_body=body), WorkPool)

    async def update_work_pool(self, name: str, **changes: Any) -> None:
        """Change only the given fields: is_paused, base_job_template, concurrency_limit..."""
        await self.request("PATCH", f"work_pools/{name}", json_body=changes)

    async def delete_work_pool(self, name: str) -> None:
        """Delete a work pool and its queues."""
        await self.request("DELETE", f"work_pools/{name}")

    async def create_work_queue(
        self, pool: str, name: str, *, priority: int | None = None, **extra: Any
    ) -> WorkQueue:
        """Create a queue in ``pool``."""
        body: dict[str, Any] = {"name": name, **extra}
        if priority is not None:
            body["priority"] = priority
        data = await self.request("POST", f"work_pools/{pool}/queues", json_body=body)
        return structure(data, WorkQueue)

    async def read_work_queues(self, pool: str) -> list[WorkQueue]:
        """List the queues of ``pool``."""
        data = await self.request("POST", f"work_pools/{pool}/queues/filter", json_body={})
        return structure(data, list[WorkQueue])

    async def send_worker_heartbeat(
        self,
        pool: str,
        worker_name: str,
        *,
        heartbeat_interval_seconds: float,
        flow_run_ids: Sequence[uuid.UUID] = (),
    ) -> None:
        """Tell the API this worker is alive (it turns OFFLINE after 3 missed intervals).

        ``flow_run_ids`` are the runs the worker holds; the embedded API keeps
        them alive while it heartbeats (a field Prefect's server ignores).
        """
        body: dict[str, Any] = {
            "name": worker_name,
            # An integer for Prefect's schema (a fraction is a 422 there).
            "heartbeat_interval_seconds": max(1, math.ceil(heartbeat_interval_seconds)),
        }
        if flow_run_ids:
            body["flow_run_ids"] = [str(i) for i in flow_run_ids[:MAX_HELD_RUN_IDS]]
        await self.request("POST", f"work_pools/{pool}/workers/heartbeat", json_body=body)

    async def read_workers(self, pool: str) -> list[Worker]:
        """List the workers that heartbeat for ``pool``."""
        data = await self.request("POST", f"work_pools/{pool}/workers/filter", json_body={})
        return structure(data, list[Worker])

    async def get_scheduled_flow_runs(
        self,
        pool: str,
        *,
        work_queue_names: Sequence[str] = (),
        scheduled_before: dt.datetime | None = None,
        limit: int | None = None,
    ) -> list[WorkerFlowRunResponse]:
        """Read the SCHEDULED runs of ``pool`` due before ``scheduled_before``.

        This claims nothing: two workers may see the same run. Proposing
        PENDING is the lock.
        """
        body: dict[str, Any] = {"work_queue_names": list(work_queue_names)}
        if scheduled_before is not None:
            body["scheduled_before"] = scheduled_before
        if limit is not None:
            body["limit"] = limit
        data = await self.request(
            "POST", f"work_pools/{pool}/get_scheduled_flow_runs", json_body=body
        )
        return structure(data, list[WorkerFlowRunResponse])

    # -- flows and deployments ----------------------------------------------

    async def create_flow(self, name: str) -> Flow:
        """Create a flow, or return the existing one of that name."""
        return structure(await self.request("POST", "flows/", json_body={"name": name}), Flow)

    async def read_flow(self, flow_id: uuid.UUID) -> Flow:
        """Read a flow by id."""
        return await self._get(f"flows/{flow_id}", Flow)

    async def create_deployment(
        self, *, flow_id: uuid.UUID, name: str, **fields: Any
    ) -> Deployment:
        """Create a deployment, or replace the one with the same flow and name."""
        body = {"flow_id": flow_id, "name": name, **fields}
        return structure(await self.request("POST", "deployments/", json_body=body), Deployment)

    async def read_deployment(self, deployment_id: uuid.UUID) -> Deployment:
        """Read a deployment by id."""
        return await self._get(f"deployments/{deployment_id}", Deployment)

    async def read_deployment_by_name(self, flow_name: str, name: str) -> Deployment:
        """Read a deployment by ``flow_name`` and deployment ``name``."""
        return await self._get(f"deployments/name/{flow_name}/{name}", Deployment)

    async def delete_deployment(self, deployment_id: uuid.UUID) -> None:
        """Delete a deployment (its flow runs stay)."""
        await self.request("DELETE", f"deployments/{deployment_id}")

    async def read_deployments(self, **filter_body: Any) -> list[Deployment]:
        """List deployments matching a Prefect filter body."""
        data = await self.request("POST", "deployments/filter", json_body=filter_body)
        return structure(data, list[Deployment])

    async def create_flow_run_from_deployment(
        self,
        deployment_id: uuid.UUID,
        *,
        parameters: Mapping[str, Any] | None = None,
        job_variables: Mapping[str, Any] | None = None,
        state: State | None = None,
        name: str | None = None,
        tags: Iterable[str] | None = None,
        work_queue_name: str | None = None,
    ) -> FlowRun:
        """Create a run of a deployment (SCHEDULED now unless ``state`` says otherwise)."""
        body: dict[str, Any] = {}
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if job_variables is not None:
            body["job_variables"] = dict(job_variables)
        if state is not None:
            body["state"] = state_body(state)
        if name is not None:
            body["name"] = name
        if tags is not None:
            body["tags"] = list(tags)
        if work_queue_name is not None:
            body["work_queue_name"] = work_queue_name
        data = await self.request(
            "POST", f"deployments/{deployment_id}/create_flow_run", json_body=body
        )
        return structure(data, FlowRun)

    # -- flow runs -----------------------------------------------------------

    async def read_flow_run(self, flow_run_id: uuid.UUID) -> FlowRun:
        """Read a flow run by id."""
        return await self._get(f"flow_runs/{flow_run_id}", FlowRun)

    async def read_flow_runs(self, **filter_body: Any) -> list[FlowRun]:
        """List flow runs matching a Prefect filter body (``flow_runs=``, ``work_pools=``...)."""
        data = await self.request("POST", "flow_runs/filter", json_body=filter_body)
        return structure(data, list[FlowRun])

    async def update_flow_run(self, flow_run_id: uuid.UUID, **changes: Any) -> None:
        """Change only the given fields of a flow run (e.g. ``infrastructure_pid``)."""
        await self.request("PATCH", f"flow_runs/{flow_run_id}", json_body=changes)

    async def update_flow_run_labels(
        self, flow_run_id: uuid.UUID, labels: Mapping[str, Any]
    ) -> None:
        """Merge ``labels`` into the run's labels."""
        await self.request("PATCH", f"flow_runs/{flow_run_id}/labels", json_body=dict(labels))

    async def delete_flow_run(self, flow_run_id: uuid.UUID) -> None:
        """Delete a flow run."""
        await self.request("DELETE", f"flow_runs/{flow_run_id}")

    async def set_flow_run_state(
        self, flow_run_id: uuid.UUID, state: State, *, force: bool = False
    ) -> OrchestrationResult:
        """Propose ``state`` for a run and return the orchestration verdict.

        ABORT and REJECT are answers, not errors: read ``result.status``.
        """
        body = {"state": state_body(state, flow_run_id=flow_run_id), "force": force}
        data = await self.request("POST", f"flow_runs/{flow_run_id}/set_state", json_body=body)
        return structure(data, OrchestrationResult)

    async def read_flow_run_states(self, flow_run_id: uuid.UUID) -> list[State]:
        """Read a run's state history, oldest first."""
        data = await self.request(
            "GET", "flow_run_states/", params={"flow_run_id": str(flow_run_id)}
        )
        return structure(data, list[State])

    # -- logs, variables, events ---------------------------------------------

    async def create_logs(self, logs: Sequence[Log]) -> None:
        """Ship a batch of log lines."""
        await self.request("POST", "logs/", json_body=list(logs))

    async def read_logs(self, flow_run_id: uuid.UUID, *, limit: int = 200) -> list[Log]:
        """Read a flow run's log lines, oldest first."""
        body = {
            "logs": {"flow_run_id": {"any_": [str(flow_run_id)]}},
            "limit": limit,
            "sort": "TIMESTAMP_ASC",
        }
        return structure(await self.request("POST", "logs/filter", json_body=body), list[Log])

    async def read_variable_by_name(self, name: str) -> Variable | None:
        """Read a variable, or None when it does not exist."""
        try:
            return await self._get(f"variables/name/{name}", Variable)
        except NotFoundError:
            return None

    async def read_block_document_data(self, block_document_id: str) -> dict[str, Any] | None:
        """Read a block document's ``data`` (secrets included) by id; None when missing.

        For ``{"$ref": {"block_document_id": ...}}`` in a pool's job template.
        """
        path = f"block_documents/{urllib.parse.quote(block_document_id, safe='')}"
        return await self._block_data(path)

    async def read_block_document_data_by_name(
        self, block_type_slug: str, name: str
    ) -> dict[str, Any] | None:
        """Read a block document's ``data`` (secrets included) by type slug and name.

        For ``{{ prefect.blocks.<type-slug>.<name> }}`` in a pool's job template;
        None when the API answers 404 (no such block, or an API without blocks,
        such as the embedded one).
        """
        slug, quoted = (urllib.parse.quote(part, safe="") for part in (block_type_slug, name))
        return await self._block_data(f"block_types/slug/{slug}/block_documents/name/{quoted}")

    async def _block_data(self, path: str) -> dict[str, Any] | None:
        try:
            body = await self.request("GET", path, params={"include_secrets": "true"})
        except NotFoundError:
            return None
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, Mapping):
            raise ModelError(f"GET {path} answered without a block document's 'data' object")
        return dict(data)

    async def create_variable(self, name: str, value: Any) -> Variable:
        """Create a variable."""
        body = {"name": name, "value": value}
        return structure(await self.request("POST", "variables/", json_body=body), Variable)

    async def emit_events(self, events: Sequence[Event]) -> None:
        """Send events over HTTP (the websocket is preferred for a stream)."""
        body = [{k: v for k, v in unstructure(e).items() if k != "received"} for e in events]
        await self.request("POST", "events", json_body=body)

    async def read_events(self, event_filter: Mapping[str, Any], *, limit: int = 50) -> list[Event]:
        """Read stored events matching a Prefect event filter."""
        data = await self.request(
            "POST", "events/filter", json_body={"filter": dict(event_filter), "limit": limit}
        )
        return structure(data["events"], list[Event])

    # -- task runs -------------------------------------------------------------

    async def create_task_run(self, body: Mapping[str, Any]) -> TaskRun:
        """Create a task run from a Prefect ``TaskRunCreate`` body."""
        return structure(await self.request("POST", "task_runs/", json_body=dict(body)), TaskRun)

    async def read_task_run(self, task_run_id: uuid.UUID) -> TaskRun:
        """Read a task run by id."""
        return await self._get(f"task_runs/{task_run_id}", TaskRun)

    async def read_task_runs(self, **filter_body: Any) -> list[TaskRun]:
        """List task runs matching a Prefect filter body."""
        data = await self.request("POST", "task_runs/filter", json_body=filter_body)
        return structure(data, list[TaskRun])

    async def set_task_run_state(
        self, task_run_id: uuid.UUID, state: State, *, force: bool = False
    ) -> OrchestrationResult:
        """Propose ``state`` for a task run."""
        body = {"state": state_body(state, task_run_id=task_run_id), "force": force}
        data = await self.request("POST", f"task_runs/{task_run_id}/set_state", json_body=body)
        return structure(data, OrchestrationResult)

    async def read_holders(
        self,
        *,
        flow_run_ids: Sequence[uuid.UUID] = (),
        task_run_ids: Sequence[uuid.UUID] = (),
    ) -> dict[uuid.UUID, tuple[str, dt.datetime | None]]:
        """Who holds each run that is not final, and since when (the embedded API's own call).

        A flow run is held by the worker whose heartbeat lists it, a task run by
        the task worker holding its lease. Runs nobody holds are left out; a
        Prefect server, which has no such call (404/405), gives an empty answer.
        """
        body = {
            "flow_run_ids": [str(i) for i in flow_run_ids][:MAX_HELD_RUN_IDS],
            "task_run_ids": [str(i) for i in task_run_ids][:MAX_HELD_RUN_IDS],
        }
        try:
            data = await self.request("POST", "liveness/holders", json_body=body)
        except APIError as exc:
            if exc.status_code in (404, 405):
                return {}
            raise
        holders: dict[uuid.UUID, tuple[str, dt.datetime | None]] = {}
        try:
            for kind in ("flow_runs", "task_runs"):
                for run_id, held in (data.get(kind) or {}).items():
                    since = held.get("held_since")
                    when = parse_datetime(since) if since else None
                    holders[uuid.UUID(run_id)] = (str(held["held_by"]), when)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"unexpected holders answer: {exc}") from None
        return holders

    async def renew_task_run_leases(
        self, client_id: str, task_run_ids: Sequence[uuid.UUID]
    ) -> tuple[float, list[uuid.UUID]] | None:
        """Renew a task worker's leases on the runs it holds (the embedded API's own call).

        Returns how long the leases now last (seconds) and the runs whose lease
        was lost (to stop running them), or ``None`` when the API has no leases
        (a Prefect server answers 404 or 405): then there is nothing to renew.
        """
        body = {"client_id": client_id, "task_run_ids": [str(i) for i in task_run_ids]}
        try:
            data = await self.request("POST", "task_runs/renew_leases", json_body=body)
        except APIError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        if not isinstance(data, dict):
            raise ModelError(f"unexpected lease renewal answer: {data!r}")
        try:
            lost = [uuid.UUID(str(i)) for i in data.get("lost") or []]
            return float(data.get("lease_seconds") or 0.0), lost
        except (TypeError, ValueError) as exc:
            raise ModelError(f"unexpected lease renewal answer: {exc}") from None

    async def delete_task_run(self, task_run_id: uuid.UUID) -> None:
        """Delete a task run."""
        await self.request("DELETE", f"task_runs/{task_run_id}")


def state_type_filter(*types: StateType) -> dict[str, Any]:
    """Build the ``state`` part of a flow-run filter for these state types."""
    return {"type": {"any_": [t.value for t in types]}}
