"""Job variables and configuration of the built-in ``process`` worker type.

They live apart from ``_process.py`` (the worker itself) so that the template,
which users and Prefect servers see, can be generated and tested without
starting anything. :func:`process_base_job_template` is the template a new
``process`` pool gets; it equals the one a Prefect server creates.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from trio_worker._core._job_schema import empty_as_none, job_metadata
from trio_worker._core._jobs import BaseJobConfiguration, BaseVariables, default_base_job_template

__all__ = ["ProcessJobConfiguration", "ProcessVariables", "process_base_job_template"]


_STREAM_OUTPUT: Final = job_metadata(
    title="Stream Output",
    description=(
        "If enabled, workers will stream output from flow run processes to local standard output."
    ),
)
_WORKING_DIR: Final = job_metadata(
    title="Working Directory",
    description=(
        "If provided, workers will open flow run processes within the specified path as the"
        " working directory. Otherwise, a temporary directory will be created."
    ),
    format="path",
    before=empty_as_none,
)


@attrs.frozen(kw_only=True)
class ProcessVariables(BaseVariables):
    """The job variables of a ``process`` pool: the base ones plus output and directory."""

    stream_output: bool = attrs.field(default=True, metadata=_STREAM_OUTPUT)
    working_dir: str | None = attrs.field(default=None, metadata=_WORKING_DIR)


@attrs.frozen(kw_only=True)
class ProcessJobConfiguration(BaseJobConfiguration):
    """How the process worker starts one flow run as a local subprocess.

    Attributes:
        stream_output: copy the child's stdout/stderr to the worker's.
        working_dir: the child's working directory; ``None`` means a fresh
            temporary directory (an empty string counts as ``None``).
    """

    stream_output: bool = attrs.field(default=True, metadata=_STREAM_OUTPUT)
    working_dir: str | None = attrs.field(default=None, metadata=_WORKING_DIR)


def process_base_job_template() -> dict[str, Any]:
    """Return the default base job template of a ``process`` pool (a fresh copy each call)."""
    return default_base_job_template(ProcessJobConfiguration, ProcessVariables)
