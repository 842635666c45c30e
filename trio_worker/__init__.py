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
from trio_worker._settings import Settings as Settings
from trio_worker._version import __version__ as __version__

__all__ = [
    "APIError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "InfrastructureError",
    "JobVariableError",
    "ModelError",
    "NotFoundError",
    "PrefectClient",
    "ServerUnavailableError",
    "Settings",
    "TemplateError",
    "TrioWorkerError",
    "UnauthorizedError",
    "WorkerTypeNotFoundError",
    "__version__",
]

# Show the public name in reprs and tracebacks: ``trio_worker.NotFoundError``,
# not ``trio_worker._exceptions.NotFoundError`` (as httpx does). Only for names
# exported here: models keep their module, because their string annotations
# are resolved in it.
__locals = locals()
for __name in __all__:
    if not __name.startswith("__"):
        __locals[__name].__module__ = "trio_worker"
del __locals, __name
