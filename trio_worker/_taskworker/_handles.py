"""What ``.delay()`` returns: a handle to wait on a task run and read its result.

The handle polls the API until the run is final, then reads the result (or the
error record) from the task's store, where the worker wrote it. A task's own
exception is rebuilt when its class is already loaded here, so ``result()``
raises what the task raised; otherwise :class:`TaskRunFailedError`.

The blocking methods (``wait``, ``result``) are for plain code and run their
own ``trio.run``; Trio code awaits ``wait_async`` and ``result_async``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError, TrioWorkerError
from trio_worker._core._models import TERMINAL_STATE_TYPES, State, StateType
from trio_worker._core._retry import Backoff
from trio_worker._core._settings import Settings
from trio_worker._taskworker._store import TaskStore, decode_record, result_key

__all__ = [
    "TaskRunFailedError",
    "TaskRunHandle",
    "TaskRunTimeoutError",
    "ensure_not_in_trio",
    "settings_with_url",
]

R = TypeVar("R")

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


def ensure_not_in_trio(method: str, alternative: str) -> None:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{method}() blocks and runs its own event loop, so it cannot be called from "
        f"inside Trio; use `await {alternative}(...)` instead"
    )


def settings_with_url(settings: Settings | None) -> tuple[str, Settings]:
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
            api_url, settings = settings_with_url(self.settings)
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
        ensure_not_in_trio("wait", "handle.wait_async")
        return trio.run(self.wait_async, timeout)

    def result(self, timeout: float | None = None) -> R:
        """Block until the run is final and return its result (plain code only).

        Raises as :meth:`result_async` does.
        """
        ensure_not_in_trio("result", "handle.result_async")
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
