"""HTTP plumbing shared by the route modules: the app's state, bodies, ids, answers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trio_worker._server._common import APIProblem
from trio_worker._server._events import EventBus
from trio_worker._server._guard import ApiSecurity
from trio_worker._server._json_input import JSONInputError, decode_json
from trio_worker._server._liveness import LivenessCounts, LivenessRules
from trio_worker._server._storage import Database, Tx
from trio_worker._server._task_queue import TaskQueue
from trio_worker._server._validation import RequestValidationError, structure

__all__ = [
    "ApiState",
    "empty",
    "json_body",
    "ok",
    "parse",
    "path_id",
    "read_body",
]

T = TypeVar("T")


class ApiState:
    """What every handler of one app shares: the database, the event bus, the task queue, rules.

    The database is opened by the app's lifespan; before that (and after
    shutdown) :attr:`db` is ``None`` and requests get 503. :attr:`security`
    is what the websockets check their auth frame against.
    """

    def __init__(
        self, security: ApiSecurity | None = None, liveness: LivenessRules | None = None
    ) -> None:
        self.security = security if security is not None else ApiSecurity()
        self.db: Database | None = None
        self.bus = EventBus()
        self.liveness = liveness if liveness is not None else LivenessRules()
        self.tasks = TaskQueue(lease_seconds=self.liveness.lease_seconds)
        #: What the liveness rules did since start (``/api/metrics``).
        self.liveness_counts = LivenessCounts()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(tx, *args, **kwargs)`` as one transaction."""
        db = self.db
        if db is None:
            raise APIProblem(503, {"exception_message": "Service Unavailable"})

        def call(tx: Tx) -> T:
            return fn(tx, *args, **kwargs)

        return await db.run(call)


def ok(content: Any, status_code: int = 200) -> Response:
    """Answer with JSON."""
    return JSONResponse(content, status_code=status_code)


def empty() -> Response:
    """Answer 204 with no body."""
    return Response(status_code=204)


def _invalid_body(errors: list[dict[str, Any]], body: Any) -> APIProblem:
    return APIProblem(
        422,
        {
            "exception_message": "Invalid request received.",
            "exception_detail": errors,
            "request_body": body,
        },
    )


async def read_body(request: Request, *, required: bool = True) -> Any:
    """Decode the request's JSON body (within :func:`decode_json`'s limits).

    Raises:
        APIProblem: 422 for malformed or unacceptable JSON, or a missing body
            when ``required``.
    """
    raw = await request.body()
    if not raw.strip():
        if required:
            detail = [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
            raise _invalid_body(detail, None)
        return {}
    try:
        return decode_json(raw)
    except JSONInputError as exc:
        # The body is echoed as text: the decoded value may be what cannot be encoded.
        problem = {**exc.entry, "loc": ["body", *exc.entry["loc"]]}
        raise _invalid_body([problem], raw.decode("utf-8", errors="replace")) from None
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        message = getattr(exc, "msg", str(exc))
        problem = {"type": "json_invalid", "loc": ["body", position]}
        problem.update(msg="JSON decode error", input={}, ctx={"error": message})
        raise _invalid_body([problem], raw.decode("utf-8", errors="replace")) from None


def parse(cls: type[T], data: Any) -> T:
    """Structure ``data`` as the action model ``cls``.

    Raises:
        APIProblem: 422 listing every problem, with the request body echoed.
    """
    try:
        return structure(cls, data)
    except RequestValidationError as exc:
        raise _invalid_body(exc.errors, data) from None


async def json_body(request: Request) -> dict[str, Any]:
    """Decode an optional JSON object body (filters): absent means ``{}``.

    Raises:
        APIProblem: 422 when the body is not JSON or not an object.
    """
    body = await read_body(request, required=False)
    if body is None:
        return {}
    if not isinstance(body, dict):
        detail = [{"type": "model_attributes_type", "loc": ["body"],
                   "msg": "Input should be a valid dictionary", "input": body}]  # fmt: skip
        raise _invalid_body(detail, body)
    return body


def path_id(request: Request, key: str = "id") -> str:
    """Return a path parameter as a canonical UUID string.

    Raises:
        APIProblem: 404 ``{"detail": "Not Found"}``, as FastAPI answers a path that is no UUID.
    """
    try:
        return str(uuid.UUID(request.path_params[key]))
    except ValueError:
        raise APIProblem(404, {"detail": "Not Found"}) from None
