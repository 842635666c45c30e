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

The blocking methods (``delay``, ``wait``, ``result``) are for plain code (a
web app, a script) and run their own ``trio.run``; Trio code awaits
``delay_async``, ``wait_async`` and ``result_async`` instead.
"""

from __future__ import annotations

import inspect
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError, TrioWorkerError
from trio_worker._core._models import TERMINAL_STATE_TYPES, State, StateType, now
from trio_worker._core._retry import Backoff
from trio_worker._core._settings import Settings
from trio_worker._core._time import format_datetime
from trio_worker._taskworker._store import (
    TaskStore,
    check_json,
    decode_record,
    default_task_store,
    encode_record,
    parameters_key,
    result_key,
)

__all__ = [
    "Task",
    "TaskRunFailedError",
    "TaskRunHandle",
    "TaskRunTimeoutError",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

IDEMPOTENT_LABEL: Final = "trio-worker.idempotent"
"""The task-run label that lets the embedded API redeliver a run whose lease lapsed."""

POLL_MIN_SECONDS: Final = 0.01
POLL_MAX_SECONDS: Final = 0.5
POLL_BACKOFF: Final = Backoff(first_seconds=POLL_MIN_SECONDS, max_seconds=POLL_MAX_SECONDS)


class TaskRunFailedError(TrioWorkerError, RuntimeError):
    """A task run ended FAILED, CRASHED or CANCELLED and its own error cannot be re-raised.

    ``.result()`` re-raises the task's exception itself when its class can be
    found in this process; this error is for the rest (an unknown task key,
    unreadable parameters, a crash, an exception class this process never
    imported). ``state`` is the run's final state; the message is its message.
    """

    def __init__(self, message: str, *, state: State | None = None) -> None:
        super().__init__(message)
        self.state = state


class TaskRunTimeoutError(TrioWorkerError, TimeoutError):
    """The run did not reach a final state within the timeout given to ``.result()``.

    The run itself is untouched and may still finish; call ``.result()`` again.
    """


def _ensure_not_in_trio(method: str, alternative: str) -> None:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{method}() blocks and runs its own event loop, so it cannot be called from "
        f"inside Trio; use `await {alternative}(...)` instead"
    )


def _settings_with_url(settings: Settings | None) -> tuple[str, Settings]:
    settings = settings or Settings.from_env()
    if not settings.api_url:
        raise ConfigurationError(
            "PREFECT_API_URL is not set; submitting or waiting for a task run needs the API, "
            "e.g. PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return settings.api_url, settings


class TaskRunHandle(Generic[R]):
    """A submitted task run: wait for it, read its result.

    Args:
        task_run_id: the run's id.
        store: where the worker writes the result (the task's store).
        settings: how to reach the API; ``None`` reads the environment when needed.
    """

    def __init__(
        self, task_run_id: uuid.UUID, *, store: TaskStore, settings: Settings | None = None
    ) -> None:
        self.task_run_id = task_run_id
        self.store = store
        self.settings = settings
        #: The last state seen by ``wait``/``result`` (None before the first look).
        self.state: State | None = None

    def __repr__(self) -> str:
        shown = self.state.type.value if self.state else "unknown"
        return f"TaskRunHandle({self.task_run_id}, state={shown})"

    # -- async -----------------------------------------------------------------

    async def wait_async(
        self, timeout: float | None = None, *, client: PrefectClient | None = None
    ) -> State:
        """Wait until the run is final or ``timeout`` seconds pass; return its last state.

        Polls the API, starting at 10 ms and backing off to 0.5 s, so short runs
        come back fast without a busy loop on long ones. Reaching the timeout is
        not an error here (``result_async`` makes it one).
        """
        if client is None:
            api_url, settings = _settings_with_url(self.settings)
            async with PrefectClient(api_url, settings=settings) as own:
                return await self.wait_async(timeout, client=own)
        attempt = 0
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while True:
                run = await client.read_task_run(self.task_run_id)
                self.state = run.state
                if run.state is not None and run.state.type in TERMINAL_STATE_TYPES:
                    break
                await trio.sleep(POLL_BACKOFF.delay(attempt))
                attempt += 1
        if self.state is None:
            run = await client.read_task_run(self.task_run_id)
            self.state = run.state
        assert self.state is not None, "the API returned a task run without a state"
        return self.state

    async def result_async(
        self, timeout: float | None = None, *, client: PrefectClient | None = None
    ) -> R:
        """Wait for the run and return its result, or raise its error.

        Raises:
            TaskRunTimeoutError: the run was not final after ``timeout`` seconds.
            TaskRunFailedError: the run failed and its exception cannot be rebuilt here.
            Exception: the task's own exception, when its class is importable here.
        """
        state = await self.wait_async(timeout, client=client)
        if state.type not in TERMINAL_STATE_TYPES:
            raise TaskRunTimeoutError(
                f"task run {self.task_run_id} is still {state.type.value} after {timeout} s; "
                "it may still finish: call result() again to keep waiting"
            )
        key = _stored_key(state) or result_key(self.task_run_id)
        if state.type is StateType.COMPLETED:
            value: R = decode_record(await trio.to_thread.run_sync(self.store.read, key))
            return value
        raise await self._error(state, key)

    async def _error(self, state: State, key: str) -> BaseException:
        message = state.message or f"task run {self.task_run_id} ended {state.type.value}"
        try:
            error = decode_record(await trio.to_thread.run_sync(self.store.read, key))
        except (OSError, ValueError):
            return TaskRunFailedError(message, state=state)
        rebuilt = _rebuild_exception(error) if isinstance(error, dict) else None
        if rebuilt is None:
            return TaskRunFailedError(message, state=state)
        traceback = error.get("traceback")
        rebuilt.add_note(f"raised by task run {self.task_run_id}")
        if traceback:
            rebuilt.add_note(f"worker traceback:\n{traceback}")
        return rebuilt

    # -- blocking --------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> State:
        """Block until the run is final or ``timeout`` passes (plain code only)."""
        _ensure_not_in_trio("wait", "handle.wait_async")
        return trio.run(self.wait_async, timeout)

    def result(self, timeout: float | None = None) -> R:
        """Block until the run is final and return its result (plain code only).

        Raises as :meth:`result_async` does.
        """
        _ensure_not_in_trio("result", "handle.result_async")
        return trio.run(self.result_async, timeout)


def _stored_key(state: State) -> str | None:
    data = state.data
    if isinstance(data, dict) and isinstance(data.get("storage_key"), str):
        return str(data["storage_key"])
    return None


def _rebuild_exception(error: Mapping[str, Any]) -> BaseException | None:
    """Recreate the task's exception when its class is already loaded here.

    Only classes in modules this process has imported are considered: a record
    naming a module must never make us import (run) it.
    """
    module_name, _, qualname = str(error.get("type", "")).rpartition(".")
    module = sys.modules.get(module_name or "builtins")
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if not (isinstance(target, type) and issubclass(target, Exception)):
        return None
    args = error.get("args")
    try:
        exc = target(*args) if isinstance(args, list) else target(error.get("message", ""))
    except Exception:
        return None
    return exc if isinstance(exc, Exception) else None


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
        api_url, settings = _settings_with_url(None)
        async with PrefectClient(api_url, settings=settings) as client:
            return await self.enqueue(client, args, kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskRunHandle[R]:
        """Submit a run from plain (non-Trio) code and return its handle.

        Raises:
            TypeError: arguments that do not fit, or are not JSON.
            ConfigurationError: ``PREFECT_API_URL`` is not set.
            RuntimeError: called from inside Trio (use ``await delay_async()``).
        """
        _ensure_not_in_trio("delay", "task.delay_async")
        self.parameters(args, kwargs)
        _settings_with_url(None)
        return trio.run(self._delay_positional, args, kwargs)

    async def _delay_positional(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskRunHandle[R]:
        api_url, settings = _settings_with_url(None)
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
