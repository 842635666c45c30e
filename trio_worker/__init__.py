"""trio-worker: a Prefect-compatible job worker on Trio structured concurrency.

This module is the whole public surface; everything lives in private modules
and is re-exported here by name. Models of API objects are in
:mod:`trio_worker.models`.
"""

from trio_worker._client import PrefectClient as PrefectClient
from trio_worker._exceptions import (
    APIError as APIError,
)
from trio_worker._exceptions import (
    BadRequestError as BadRequestError,
)
from trio_worker._exceptions import (
    ConfigurationError as ConfigurationError,
)
from trio_worker._exceptions import (
    ConflictError as ConflictError,
)
from trio_worker._exceptions import (
    InfrastructureError as InfrastructureError,
)
from trio_worker._exceptions import (
    JobVariableError as JobVariableError,
)
from trio_worker._exceptions import (
    ModelError as ModelError,
)
from trio_worker._exceptions import (
    NotFoundError as NotFoundError,
)
from trio_worker._exceptions import (
    ServerUnavailableError as ServerUnavailableError,
)
from trio_worker._exceptions import (
    TemplateError as TemplateError,
)
from trio_worker._exceptions import (
    TrioWorkerError as TrioWorkerError,
)
from trio_worker._exceptions import (
    UnauthorizedError as UnauthorizedError,
)
from trio_worker._exceptions import (
    WorkerTypeNotFoundError as WorkerTypeNotFoundError,
)
from trio_worker._jobs import BaseJobConfiguration as BaseJobConfiguration
from trio_worker._jobs import BaseVariables as BaseVariables
from trio_worker._jobs import job_metadata as job_metadata
from trio_worker._process import ProcessWorker as ProcessWorker
from trio_worker._process_config import ProcessJobConfiguration as ProcessJobConfiguration
from trio_worker._process_config import ProcessVariables as ProcessVariables
from trio_worker._settings import Settings as Settings
from trio_worker._task_store import LocalTaskStore as LocalTaskStore
from trio_worker._task_store import TaskStore as TaskStore
from trio_worker._task_worker import StopTaskWorker as StopTaskWorker
from trio_worker._task_worker import TaskWorker as TaskWorker
from trio_worker._task_worker import serve as serve
from trio_worker._tasks import Task as Task
from trio_worker._tasks import TaskRunFailedError as TaskRunFailedError
from trio_worker._tasks import TaskRunHandle as TaskRunHandle
from trio_worker._tasks import TaskRunTimeoutError as TaskRunTimeoutError
from trio_worker._tasks import task as task
from trio_worker._version import __version__ as __version__
from trio_worker._worker import BaseWorker as BaseWorker
from trio_worker._worker import BaseWorkerResult as BaseWorkerResult
from trio_worker._worker import WorkerStatistics as WorkerStatistics

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
    "ServerUnavailableError",
    "Settings",
    "StopTaskWorker",
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
    "job_metadata",
    "serve",
    "task",
]

# Show the public name in reprs and tracebacks: ``trio_worker.NotFoundError``,
# not ``trio_worker._exceptions.NotFoundError`` (as httpx does). Only for names
# exported here: attrs classes that are structured from JSON (models, job
# configurations, statistics) keep their module, because their string
# annotations are resolved in it.
_STRUCTURED = {
    "BaseJobConfiguration",
    "LocalTaskStore",
    "BaseVariables",
    "BaseWorkerResult",
    "ProcessJobConfiguration",
    "ProcessVariables",
    "Settings",
    "WorkerStatistics",
}
__locals = locals()
for __name in __all__:
    if not __name.startswith("__") and __name not in _STRUCTURED:
        __locals[__name].__module__ = "trio_worker"
del __locals, __name
