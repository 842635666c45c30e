"""The API objects trio-worker reads and writes, as attrs classes.

``trio_worker.models.FlowRun`` and friends: the types the client's methods
return. Their ``__module__`` stays ``trio_worker._core._models`` on purpose: the
string annotations of attrs classes are resolved in their defining module.
"""

from trio_worker._core._models import TERMINAL_STATE_TYPES as TERMINAL_STATE_TYPES
from trio_worker._core._models import Deployment as Deployment
from trio_worker._core._models import Event as Event
from trio_worker._core._models import Flow as Flow
from trio_worker._core._models import FlowRun as FlowRun
from trio_worker._core._models import Log as Log
from trio_worker._core._models import OrchestrationResult as OrchestrationResult
from trio_worker._core._models import SetStateStatus as SetStateStatus
from trio_worker._core._models import State as State
from trio_worker._core._models import StateDetails as StateDetails
from trio_worker._core._models import StateType as StateType
from trio_worker._core._models import TaskRun as TaskRun
from trio_worker._core._models import Variable as Variable
from trio_worker._core._models import Worker as Worker
from trio_worker._core._models import WorkerFlowRunResponse as WorkerFlowRunResponse
from trio_worker._core._models import WorkPool as WorkPool
from trio_worker._core._models import WorkQueue as WorkQueue
from trio_worker._core._models import now as now

__all__ = [
    "TERMINAL_STATE_TYPES",
    "Deployment",
    "Event",
    "Flow",
    "FlowRun",
    "Log",
    "OrchestrationResult",
    "SetStateStatus",
    "State",
    "StateDetails",
    "StateType",
    "TaskRun",
    "Variable",
    "WorkPool",
    "WorkQueue",
    "Worker",
    "WorkerFlowRunResponse",
    "now",
]
