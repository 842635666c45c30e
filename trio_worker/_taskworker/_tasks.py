"""Background tasks: the ``@task`` decorator, ``.delay()`` and the run handle.

``.delay()`` is the submitting half of the task worker protocol: it checks and
stores the arguments as JSON in the task store (``parameters/<id>``), then
creates a task run that is SCHEDULED and *deferred* (``task_parameters_id`` in
its state details). The API pushes such runs to a task worker subscribed to the
task's key; the worker reads the parameters back from the same store.

Everything that can be wrong with the arguments is found here, in the caller's
process, while the caller can still do something about it: arguments that do
not fit the signature raise ``TypeError`` and non-JSON values raise
``TypeError`` naming the parameter, before anything is written.

The blocking ``delay`` is for plain code (a web app, a script) and runs its
own ``trio.run``; Trio code awaits ``delay_async`` instead. What ``delay``
returns, the handle to wait on and read the result from, is :mod:`._handles`'s.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import now
from trio_worker._core._time import format_datetime
from trio_worker._taskworker._handles import TaskRunHandle, ensure_not_in_trio, settings_with_url
from trio_worker._taskworker._store import (
    TaskStore,
    check_json,
    default_task_store,
    encode_record,
    parameters_key,
)

__all__ = ["IDEMPOTENT_LABEL", "Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")

IDEMPOTENT_LABEL: Final = "trio-worker.idempotent"
"""The task-run label that lets the embedded API redeliver a run whose lease lapsed."""


class Task(Generic[P, R]):
    """A function that can run in the background on a task worker.

    Made by :func:`task`. Calling it runs the function here, directly;
    ``.delay()`` submits a run for a task worker serving ``key``.

    Attributes:
        fn: the wrapped function (sync or async).
        key: the task key workers subscribe to; ``module.qualname`` unless given.
        name: the name given to its runs.
        store: where parameters and results go; ``None`` = the default store at submit time.
        idempotent: running it twice does no harm, so a run whose task worker died
            (its lease lapsed) is delivered again instead of being CRASHED.
    """

    def __init__(
        self,
        fn: Callable[P, Any],
        *,
        key: str | None = None,
        name: str | None = None,
        store: TaskStore | None = None,
        idempotent: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {fn!r}")
        self.fn = fn
        self.key = key or f"{fn.__module__}.{fn.__qualname__}"
        self.name = name or getattr(fn, "__name__", self.key)
        self.store = store
        self.idempotent = idempotent
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)

    def __repr__(self) -> str:
        return f"Task({self.key!r})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function here and now (a coroutine for an async task)."""
        return self.fn(*args, **kwargs)

    def resolved_store(self) -> TaskStore:
        """Return this task's store, or the default one from the environment."""
        return self.store if self.store is not None else default_task_store()

    def parameters(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments to parameter names, checking they are JSON.

        Raises:
            TypeError: the arguments do not fit the signature, or one is not JSON.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.key}: {exc}") from None
        for name, value in bound.arguments.items():
            check_json(value, f"{self.key}: parameter {name!r}")
        return dict(bound.arguments)

    def call_arguments(self, parameters: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Turn stored parameters back into ``(args, kwargs)`` for :attr:`fn`.

        Raises:
            TypeError: the parameters do not fit the signature (e.g. a run
                submitted by an older version of the task).
        """
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        positional = True
        for name, param in self.signature.parameters.items():
            if name not in parameters:
                positional = positional and param.kind is param.VAR_POSITIONAL
                continue
            value = parameters[name]
            if param.kind is param.VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is param.VAR_KEYWORD:
                kwargs.update(value)
            elif positional and param.kind is not param.KEYWORD_ONLY:
                args.append(value)
            else:
                kwargs[name] = value
        unknown = set(parameters) - set(self.signature.parameters)
        if unknown:
            raise TypeError(f"{self.key} has no parameter(s) {', '.join(sorted(unknown))}")
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"stored parameters do not fit {self.key}: {exc}") from None
        return args, kwargs

    # -- submitting --------------------------------------------------------------

    async def enqueue(
        self,
        client: PrefectClient,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> TaskRunHandle[R]:
        """Submit a run through an open ``client`` (what ``delay_async`` uses).

        Useful when submitting many runs: one client, one connection pool.
        """
        parameters = self.parameters(args, kwargs or {})
        store = self.resolved_store()
        parameters_id: uuid.UUID | None = None
        if self.signature.parameters:
            parameters_id = uuid.uuid4()
            key = parameters_key(parameters_id)
            data = encode_record(key, {"context": {}, "parameters": parameters})
            await trio.to_thread.run_sync(store.write, key, data)
        # Prefect's own submitters write ``...Z``; so do we.
        scheduled = format_datetime(now())
        details: dict[str, Any] = {"scheduled_time": scheduled, "deferred": True}
        if parameters_id is not None:
            details["task_parameters_id"] = str(parameters_id)
        body: dict[str, Any] = {
            "name": self.name,
            "task_key": self.key,
            "dynamic_key": f"{self.key}-{uuid.uuid4().hex}",
            "flow_run_id": None,
            "tags": [],
            "labels": {IDEMPOTENT_LABEL: "true"} if self.idempotent else {},
            "task_inputs": {name: [] for name in parameters},
            "empirical_policy": {"max_retries": 0, "retry_delay_seconds": 0.0, "retries": 0},
            "state": {
                "type": "SCHEDULED",
                "name": "Scheduled",
                "message": None,
                "data": None,
                "state_details": details,
            },
        }
        run = await client.create_task_run(body)
        handle: TaskRunHandle[R] = TaskRunHandle(run.id, store=store, settings=client.settings)
        handle.state = run.state
        return handle

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> TaskRunHandle[R]:
        """Submit a run from Trio code; the API comes from ``PREFECT_API_URL``."""
        self.parameters(args, kwargs)  # fail on bad arguments before any I/O
        api_url, settings = settings_with_url(None)
        async with PrefectClient(api_url, settings=settings) as client:
            return await self.enqueue(client, args, kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskRunHandle[R]:
        """Submit a run from plain (non-Trio) code and return its handle.

        Raises:
            TypeError: arguments that do not fit, or are not JSON.
            ConfigurationError: ``PREFECT_API_URL`` is not set.
            RuntimeError: called from inside Trio (use ``await delay_async()``).
        """
        ensure_not_in_trio("delay", "task.delay_async")
        self.parameters(args, kwargs)
        settings_with_url(None)
        return trio.run(self._delay_positional, args, kwargs)

    async def _delay_positional(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskRunHandle[R]:
        api_url, settings = settings_with_url(None)
        async with PrefectClient(api_url, settings=settings) as client:
            return await self.enqueue(client, args, kwargs)


@overload
def task(fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    key: str | None = None,
    name: str | None = None,
    store: TaskStore | None = None,
    idempotent: bool = False,
) -> Callable[[Callable[P, Any]], Task[P, Any]]: ...
def task(
    fn: Callable[P, Any] | None = None,
    /,
    *,
    key: str | None = None,
    name: str | None = None,
    store: TaskStore | None = None,
    idempotent: bool = False,
) -> Task[P, Any] | Callable[[Callable[P, Any]], Task[P, Any]]:
    """Make a function servable by a task worker: ``@task`` or ``@task(key=...)``.

    The key defaults to ``module.qualname``: stable across restarts and hosts
    as long as both sides import the function from the same module (a task
    defined in a script run as ``__main__`` gets a ``__main__.`` key; give
    such tasks an explicit ``key``).

    Args:
        fn: the function (sync or async).
        key: the task key; override it to rename a function without orphaning queued runs.
        name: the name of its runs (the function's name by default).
        store: where parameters and results go (default: the env-configured directory).
        idempotent: a run whose task worker died is delivered again rather than CRASHED.
    """
    if fn is not None:
        return Task(fn, key=key, name=name, store=store, idempotent=idempotent)

    def decorate(inner: Callable[P, Any]) -> Task[P, Any]:
        return Task(inner, key=key, name=name, store=store, idempotent=idempotent)

    return decorate
