"""The ``inline`` worker type: an example of a trio-worker infrastructure backend."""

from inline_worker.worker import InlineJobConfiguration as InlineJobConfiguration
from inline_worker.worker import InlineVariables as InlineVariables
from inline_worker.worker import InlineWorker as InlineWorker

__all__ = ["InlineJobConfiguration", "InlineVariables", "InlineWorker"]
