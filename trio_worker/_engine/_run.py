"""The flow-run engine: run a deployment's entrypoint in this process and report its states.

The worker starts ``python -m trio_worker.engine`` for each flow run, in a
process group of its own, with ``PREFECT__FLOW_RUN_ID`` and ``PREFECT_API_URL``
in the environment. The engine then does what Prefect's engine does for a
deployment run, without Prefect:

1. read the run and its deployment; import the entrypoint
   (``path/to/file.py:func`` or ``package.module:func``);
2. propose RUNNING; an ABORT or REJECT means another actor decided, so exit 0
   without running; a WAIT is honoured, within bounds;
3. call the function with the run's parameters: a sync function in a worker
   thread (so log lines keep flowing to the API while it runs), an async one
   on this process's Trio loop;
4. propose COMPLETED, or FAILED with ``"<ExceptionType>: <message>"``.

From RUNNING to the final state the engine emits ``prefect.flow-run.heartbeat``
events every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 by default), as
Prefect's engine does, from its Trio loop (``_engine_heartbeats``).

Exit codes are for the worker: 0 whenever a final state was recorded (a FAILED
run included, since the state tells the truth), 1 when the engine could not do
its job (bad environment, unloadable entrypoint, state not recorded). The engine
installs no signal handlers: the worker cancels a run by SIGTERM to its process
group, and the default action (die at once) is exactly what it expects; it then
records CANCELLED itself.

Log records of the engine and of the user's code, and lines the user's code
prints, are shipped to ``POST /logs/`` in batches with the run's id. Shipping
is best effort: a failure is written to stderr and never fails the run.

When the entrypoint is a Prefect ``@flow`` and Prefect is installed, the engine
replaces itself with ``python -m prefect.engine``, so Prefect deployments run
unmodified under a trio-worker.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import ssl
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NoReturn

import attrs
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError, ConfigurationError, ModelError, NotFoundError
from trio_worker._core._models import (
    Deployment,
    FlowRun,
    OrchestrationResult,
    SetStateStatus,
    State,
    StateType,
)
from trio_worker._core._settings import Settings
from trio_worker._engine._entrypoint import (
    EntrypointError,
    is_prefect_flow,
    load_entrypoint,
    prefect_available,
    prefect_engine_argv,
)
from trio_worker._engine._heartbeats import emitting_heartbeats
from trio_worker._engine._logs import LOGGER_NAME, APILogHandler, LogShipper, logging_to_api

__all__ = ["FLOW_RUN_ID_ENV", "main", "prefect_engine_env"]

FLOW_RUN_ID_ENV: Final = "PREFECT__FLOW_RUN_ID"
HEARTBEAT_FREQUENCY_ENV: Final = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
PREFECT_MIN_HEARTBEAT_SECONDS: Final = 30
COMPLETED_MESSAGE: Final = "Flow run completed."

MAX_PROPOSALS: Final = 20
"""How many times RUNNING is proposed when the API keeps answering WAIT."""
MAX_WAIT_SECONDS: Final = 600.0
"""Total WAIT the engine honours before it gives up (the worker prefetches 10 s by default)."""
MIN_WAIT_SECONDS: Final = 0.5

logger = logging.getLogger(LOGGER_NAME)


@attrs.frozen
class _Handover:
    """Outcome asking :func:`main` to exec Prefect's engine once the client is closed."""

    flow_run_id: uuid.UUID


# -- orchestration ----------------------------------------------------------------


def _recorded(result: OrchestrationResult, proposed: State) -> bool:
    """ACCEPT, or a REJECT because our own retried request had already been recorded."""
    if result.status is SetStateStatus.ACCEPT:
        return True
    current = result.state
    return (
        current is not None
        and current.type is proposed.type
        and current.state_details.transition_id == proposed.state_details.transition_id
    )


async def _propose(
    client: PrefectClient, flow_run_id: uuid.UUID, state: State
) -> OrchestrationResult:
    """Propose ``state``, honouring WAIT answers up to :data:`MAX_WAIT_SECONDS` in all.

    Returns the first answer that is not WAIT, or the last WAIT when the bound is reached.
    """
    waited = 0.0
    for _ in range(MAX_PROPOSALS):
        result = await client.set_flow_run_state(flow_run_id, state)
        if result.status is not SetStateStatus.WAIT:
            return result
        delay = max(float(result.details.get("delay_seconds") or 0), MIN_WAIT_SECONDS)
        if waited + delay > MAX_WAIT_SECONDS:
            break
        logger.info("The API asked to wait %.1f s before %s: %s", delay, state.type, result.reason)
        await trio.sleep(delay)
        waited += delay
    return result


async def _record_final(client: PrefectClient, run: FlowRun, state: State) -> int:
    """Propose a final state; 1 only when it could not be sent (REJECT: another actor's call)."""
    try:
        result = await _propose(client, run.id, state)
    except (APIError, ModelError) as exc:
        logger.error("Could not record state %s for flow run %r: %s", state.type, run.name, exc)
        return 1
    if _recorded(result, state):
        logger.info("Finished in state %s(%r)", state.name, state.message)
    else:
        current = result.state.type if result.state else "unknown"
        logger.warning(
            "The API answered %s to %s (%s); the run stays %s",
            result.status,
            state.type,
            result.reason,
            current,
        )
    return 0


def _user_traceback(exc: BaseException) -> TracebackType | None:
    """Drop the leading frames of the engine, trio and outcome: the user wants their own."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module != __name__ and not module.startswith(("trio.", "outcome.")):
            break
        tb = tb.tb_next
    return tb


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _call(fn: Any, parameters: Mapping[str, Any]) -> Any:
    """Call the user's function: async on this loop, sync in a worker thread.

    The thread keeps the loop free to ship log lines while a long function
    runs; ``abandon_on_cancel`` lets Ctrl-C end the engine without waiting for it.
    """
    if inspect.iscoroutinefunction(fn):
        return await fn(**parameters)
    result = await trio.to_thread.run_sync(
        functools.partial(fn, **parameters), abandon_on_cancel=True
    )
    if inspect.isawaitable(result):  # e.g. a partial of an async function
        result = await result
    return result


async def _execute(
    client: PrefectClient,
    flow_run_id: uuid.UUID,
    heartbeat_seconds: float,
    handler: APILogHandler | None = None,
) -> int | _Handover:
    """Take one flow run from PENDING to a final state; return the exit code.

    From RUNNING until the final state is recorded, heartbeats go out every
    ``heartbeat_seconds`` (``_engine_heartbeats``). With ``handler``, the
    console lines of this process start with the run's name once it is read.
    """
    try:
        run = await client.read_flow_run(flow_run_id)
    except (APIError, ModelError) as exc:
        logger.error("Could not read flow run %s: %s", flow_run_id, exc)
        return 1
    if handler is not None:
        handler.console_prefix = f"{run.name} | "
    if run.deployment_id is None:
        return await _fail_to_load(client, run, "the flow run has no deployment to run")
    try:
        deployment: Deployment = await client.read_deployment(run.deployment_id)
    except NotFoundError:
        return await _fail_to_load(client, run, f"deployment {run.deployment_id} not found")
    except (APIError, ModelError) as exc:
        logger.error("Could not read deployment %s: %s", run.deployment_id, exc)
        return 1
    entrypoint = deployment.entrypoint
    if not entrypoint:
        return await _fail_to_load(client, run, f"deployment {deployment.name!r} has no entrypoint")

    search_dirs = [Path.cwd()] + ([Path(deployment.path)] if deployment.path else [])
    try:
        # In the main thread, on purpose: module-level code may install signal
        # handlers or otherwise expect it. Imports are short; the loop can wait.
        fn = load_entrypoint(entrypoint, search_dirs=search_dirs)
    except EntrypointError as exc:
        if deployment.pull_steps and prefect_available():
            # Prefect deployments (e.g. ``flow.from_source(...).deploy()``) put their
            # code in place with pull steps, which prefect.engine runs and we do not.
            logger.info("Entrypoint %r needs the deployment's pull steps: handing over", entrypoint)
            return _Handover(run.id)
        return await _fail_to_load(client, run, f"Could not load entrypoint {entrypoint!r}: {exc}")
    except Exception as exc:
        logger.exception("Importing entrypoint %r raised", entrypoint)
        reason = f"Could not load entrypoint {entrypoint!r}: {_describe(exc)}"
        return await _fail_to_load(client, run, reason)
    if is_prefect_flow(fn):
        if prefect_available():
            logger.info(
                "Entrypoint %r is a Prefect flow: handing over to prefect.engine", entrypoint
            )
            return _Handover(run.id)
        reason = f"Entrypoint {entrypoint!r} is a Prefect flow, but prefect is not installed"
        return await _fail_to_load(client, run, reason)

    running = State.of(StateType.RUNNING)
    try:
        result = await _propose(client, run.id, running)
    except (APIError, ModelError) as exc:
        logger.error("Could not propose RUNNING for flow run %r: %s", run.name, exc)
        return 1
    if result.status is SetStateStatus.WAIT:
        logger.error("Gave up waiting to run flow run %r: %s", run.name, result.reason)
        return 1
    if not _recorded(result, running):
        current = result.state.type if result.state else "unknown"
        logger.info(
            "Not running flow run %r: the API answered %s (%s); it is %s",
            run.name,
            result.status,
            result.reason,
            current,
        )
        return 0

    logger.info(
        "Running flow run %r: %s with parameters %s", run.name, entrypoint, sorted(run.parameters)
    )
    async with emitting_heartbeats(client, run, heartbeat_seconds):
        try:
            await _call(fn, run.parameters)
        except Exception as exc:
            trimmed = (type(exc), exc, _user_traceback(exc))
            logger.error("Encountered exception during execution:", exc_info=trimmed)
            return await _record_final(client, run, State.of(StateType.FAILED, _describe(exc)))
        return await _record_final(client, run, State.of(StateType.COMPLETED, COMPLETED_MESSAGE))


async def _fail_to_load(client: PrefectClient, run: FlowRun, message: str) -> int:
    """Record FAILED for a run that cannot even start; exit 1, a problem of the deployment."""
    logger.error("%s", message)
    await _record_final(client, run, State.of(StateType.FAILED, message))
    return 1


async def _run(
    client: PrefectClient,
    settings: Settings,
    flow_run_id: uuid.UUID,
    handler: APILogHandler,
    end_output: Callable[[], None],
) -> int | _Handover:
    async with client:
        shipper = LogShipper(handler.buffer, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shipper.serve)  # its last flush runs when it is cancelled
            try:
                outcome = await _execute(
                    client, flow_run_id, settings.flow_heartbeat_seconds, handler
                )
            finally:
                end_output()  # a last print without a newline is a line too
            nursery.cancel_scope.cancel()
    return outcome


# -- entry point ----------------------------------------------------------------


def _flow_run_id(argv: Sequence[str], environ: Mapping[str, str]) -> uuid.UUID:
    raw = argv[0] if argv else environ.get(FLOW_RUN_ID_ENV)
    if not raw:
        raise ConfigurationError(
            f"no flow run id: set {FLOW_RUN_ID_ENV} or pass the id as the first argument"
        )
    try:
        return uuid.UUID(raw)
    except ValueError:
        source = "argument" if argv else FLOW_RUN_ID_ENV
        raise ConfigurationError(f"{source}={raw!r} is not a UUID") from None


def _exec_prefect_engine(flow_run_id: uuid.UUID, environ: Mapping[str, str]) -> NoReturn:
    """Replace this process with Prefect's engine; same pid, same environment plus the run id."""
    argv = prefect_engine_argv()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, prefect_engine_env(flow_run_id, environ))


def prefect_engine_env(flow_run_id: uuid.UUID, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment Prefect's engine runs a handed-over flow run with (exec'd or warm)."""
    env = {**environ, FLOW_RUN_ID_ENV: str(flow_run_id)}
    # Prefect's engine heartbeats every 180 s by default, too seldom for the
    # embedded API's dead-run rule (90 s); ask it for 30 s (its minimum) unless set.
    env.setdefault(HEARTBEAT_FREQUENCY_ENV, str(PREFECT_MIN_HEARTBEAT_SECONDS))
    return env


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    handover: Callable[[uuid.UUID], int] | None = None,
    ssl_context_for: Callable[[Settings], ssl.SSLContext | None] | None = None,
) -> int:
    """Run the flow run named by argv[0] or ``PREFECT__FLOW_RUN_ID``; return the exit code.

    Args:
        argv: arguments after the program name (``sys.argv[1:]`` by default).
        environ: the environment (``os.environ`` by default).
        handover: runs a Prefect flow's run in this process instead of
            exec-ing ``python -m prefect.engine`` (the warm-start zygote's
            children, which have Prefect imported already); returns the exit code.
        ssl_context_for: an SSL context already built for these settings, if
            any (the warm-start zygote's), so that an https API's CA bundle is
            not loaded again for each run.

    Returns:
        0 when the run reached a final state (COMPLETED or FAILED) or another
        actor decided it must not run; 1 when the environment is unusable, the
        entrypoint cannot be loaded, or the state could not be recorded.
    """
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        flow_run_id = _flow_run_id(argv, environ)
        settings = Settings.from_env(environ)
        if not settings.api_url:
            raise ConfigurationError(
                "PREFECT_API_URL is not set; the engine needs the API that holds the flow run"
            )
        prepared = ssl_context_for(settings) if ssl_context_for is not None else None
        # Made here, outside the loop, so that a bad URL or CA bundle is reported early.
        client = PrefectClient(settings.api_url, settings=settings, ssl_context=prepared)
    except ConfigurationError as exc:
        print(f"trio_worker.engine: {exc}", file=sys.stderr)
        return 1
    handler = APILogHandler(flow_run_id, capacity=settings.log_buffer_lines)
    with logging_to_api(handler) as end_output:
        outcome = trio.run(_run, client, settings, flow_run_id, handler, end_output)
    if isinstance(outcome, _Handover):
        if handover is not None:
            return handover(outcome.flow_run_id)
        _exec_prefect_engine(outcome.flow_run_id, environ)
    return outcome
