"""trio-worker: a Prefect-compatible job worker on Trio structured concurrency.

This module is the whole public surface; everything lives in private modules
and is re-exported here by name. Models of API objects are in
:mod:`trio_worker.models`.

Names load on first use (PEP 562), so a worker started from the command line
does not import the task worker or its status server, nor the embedded API:
start-up time and memory are features. The exceptions load at once, so
tracebacks always name them ``trio_worker.X``.
"""

import importlib as _importlib
import typing as _typing

from trio_worker._core._exceptions import APIError as APIError
from trio_worker._core._exceptions import BadRequestError as BadRequestError
from trio_worker._core._exceptions import ConfigurationError as ConfigurationError
from trio_worker._core._exceptions import ConflictError as ConflictError
from trio_worker._core._exceptions import InfrastructureError as InfrastructureError
from trio_worker._core._exceptions import JobVariableError as JobVariableError
from trio_worker._core._exceptions import ModelError as ModelError
from trio_worker._core._exceptions import NotFoundError as NotFoundError
from trio_worker._core._exceptions import ServerUnavailableError as ServerUnavailableError
from trio_worker._core._exceptions import TemplateError as TemplateError
from trio_worker._core._exceptions import TLSError as TLSError
from trio_worker._core._exceptions import TrioWorkerError as TrioWorkerError
from trio_worker._core._exceptions import UnauthorizedError as UnauthorizedError
from trio_worker._core._exceptions import WorkerTypeNotFoundError as WorkerTypeNotFoundError
from trio_worker._version import __version__ as __version__

if _typing.TYPE_CHECKING:
    from trio_worker._client._client import PrefectClient as PrefectClient
    from trio_worker._core._jobs import BaseJobConfiguration as BaseJobConfiguration
    from trio_worker._core._jobs import BaseVariables as BaseVariables
    from trio_worker._core._jobs import job_metadata as job_metadata
    from trio_worker._core._settings import Settings as Settings
    from trio_worker._process._config import ProcessJobConfiguration as ProcessJobConfiguration
    from trio_worker._process._config import ProcessVariables as ProcessVariables
    from trio_worker._process._group import format_infrastructure_pid as format_infrastructure_pid
    from trio_worker._process._group import kill_process_group as kill_process_group
    from trio_worker._process._group import parse_infrastructure_pid as parse_infrastructure_pid
    from trio_worker._process._group import run_process_group as run_process_group
    from trio_worker._process._group import signal_process_group as signal_process_group
    from trio_worker._process._group import sweep_process_group as sweep_process_group
    from trio_worker._process._group import terminate_process_group as terminate_process_group
    from trio_worker._process._worker import ProcessWorker as ProcessWorker
    from trio_worker._taskworker._handles import TaskRunFailedError as TaskRunFailedError
    from trio_worker._taskworker._handles import TaskRunHandle as TaskRunHandle
    from trio_worker._taskworker._handles import TaskRunTimeoutError as TaskRunTimeoutError
    from trio_worker._taskworker._serve import serve as serve
    from trio_worker._taskworker._store import LocalTaskStore as LocalTaskStore
    from trio_worker._taskworker._store import TaskStore as TaskStore
    from trio_worker._taskworker._tasks import Task as Task
    from trio_worker._taskworker._tasks import task as task
    from trio_worker._taskworker._worker import StopTaskWorker as StopTaskWorker
    from trio_worker._taskworker._worker import TaskWorker as TaskWorker
    from trio_worker._worker._base import BaseWorker as BaseWorker
    from trio_worker._worker._context import BaseWorkerResult as BaseWorkerResult
    from trio_worker._worker._context import RunContext as RunContext
    from trio_worker._worker._context import RunLimits as RunLimits
    from trio_worker._worker._status import WorkerStatistics as WorkerStatistics

__all__ = [
    "APIError",
    "BadRequestError",
    "BaseJobConfiguration",
    "BaseVariables",
    "BaseWorker",
    "BaseWorkerResult",
    "ConfigurationError",
    "ConflictError",
    "InfrastructureError",
    "JobVariableError",
    "LocalTaskStore",
    "ModelError",
    "NotFoundError",
    "PrefectClient",
    "ProcessJobConfiguration",
    "ProcessVariables",
    "ProcessWorker",
    "RunContext",
    "RunLimits",
    "ServerUnavailableError",
    "Settings",
    "StopTaskWorker",
    "TLSError",
    "Task",
    "TaskRunFailedError",
    "TaskRunHandle",
    "TaskRunTimeoutError",
    "TaskStore",
    "TaskWorker",
    "TemplateError",
    "TrioWorkerError",
    "UnauthorizedError",
    "WorkerStatistics",
    "WorkerTypeNotFoundError",
    "__version__",
    "format_infrastructure_pid",
    "job_metadata",
    "kill_process_group",
    "parse_infrastructure_pid",
    "run_process_group",
    "serve",
    "signal_process_group",
    "sweep_process_group",
    "task",
    "terminate_process_group",
]

#: Where each lazily loaded name lives.
_LAZY: dict[str, str] = {
    "PrefectClient": "trio_worker._client._client",
    "BaseJobConfiguration": "trio_worker._core._jobs",
    "BaseVariables": "trio_worker._core._jobs",
    "job_metadata": "trio_worker._core._jobs",
    "ProcessWorker": "trio_worker._process._worker",
    "ProcessJobConfiguration": "trio_worker._process._config",
    "ProcessVariables": "trio_worker._process._config",
    "Settings": "trio_worker._core._settings",
    "LocalTaskStore": "trio_worker._taskworker._store",
    "TaskStore": "trio_worker._taskworker._store",
    "StopTaskWorker": "trio_worker._taskworker._worker",
    "TaskWorker": "trio_worker._taskworker._worker",
    "serve": "trio_worker._taskworker._serve",
    "Task": "trio_worker._taskworker._tasks",
    "TaskRunFailedError": "trio_worker._taskworker._handles",
    "TaskRunHandle": "trio_worker._taskworker._handles",
    "TaskRunTimeoutError": "trio_worker._taskworker._handles",
    "task": "trio_worker._taskworker._tasks",
    "BaseWorker": "trio_worker._worker._base",
    "BaseWorkerResult": "trio_worker._worker._context",
    "RunContext": "trio_worker._worker._context",
    "RunLimits": "trio_worker._worker._context",
    "WorkerStatistics": "trio_worker._worker._status",
    "format_infrastructure_pid": "trio_worker._process._group",
    "kill_process_group": "trio_worker._process._group",
    "parse_infrastructure_pid": "trio_worker._process._group",
    "run_process_group": "trio_worker._process._group",
    "signal_process_group": "trio_worker._process._group",
    "sweep_process_group": "trio_worker._process._group",
    "terminate_process_group": "trio_worker._process._group",
}

# Show the public name in reprs and tracebacks: ``trio_worker.NotFoundError``,
# not ``trio_worker._core._exceptions.NotFoundError`` (as httpx does). attrs classes
# that are structured from JSON keep their module: their string annotations
# are resolved in it.
_STRUCTURED = {
    "BaseJobConfiguration",
    "BaseVariables",
    "BaseWorkerResult",
    "LocalTaskStore",
    "ProcessJobConfiguration",
    "ProcessVariables",
    "RunContext",
    "RunLimits",
    "Settings",
    "WorkerStatistics",
}


def _publish(name: str, value: _typing.Any) -> _typing.Any:
    if name not in _STRUCTURED:
        value.__module__ = "trio_worker"
    globals()[name] = value
    return value


for _loaded in [n for n in __all__ if n in globals() and not n.startswith("__")]:
    _publish(_loaded, globals()[_loaded])
del _loaded


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_worker' has no attribute {name!r}")
    return _publish(name, getattr(_importlib.import_module(module), name))


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
