"""``prepare_for_flow_run``: completing a configuration with what one flow run brings.

The worker calls this, not the configuration's method directly, because
overrides come in two shapes: trio-worker's (every keyword) and Prefect's
(``prepare_for_flow_run(self, flow_run, deployment=None, flow=None)``), and
because configurations are frozen, an override that mutates or returns None
must fail with a message that says what to do instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._jobs import BaseJobConfiguration

if TYPE_CHECKING:
    from trio_worker._core._models import Deployment, Flow, FlowRun, WorkPool

__all__ = ["prepare_for_flow_run"]

C = TypeVar("C", bound=BaseJobConfiguration)


def prepare_for_flow_run(
    config: C,
    *,
    flow_run: FlowRun,
    deployment: Deployment | None = None,
    flow: Flow | None = None,
    worker_name: str | None = None,
    work_pool: WorkPool | None = None,
    base_env: Mapping[str, str] | None = None,
    default_command: str | None = None,
) -> C:
    """Complete a configuration with what is known only for one flow run.

    Env is layered lowest first: ``base_env`` (what the worker passes on, e.g. its
    Prefect settings), ``PREFECT__FLOW_RUN_ID``, the attribution variables
    (``PREFECT__WORKER_NAME``, ``PREFECT__FLOW_ID``, ``PREFECT__FLOW_NAME``,
    ``PREFECT__DEPLOYMENT_ID``, ``PREFECT__DEPLOYMENT_NAME``), then the
    configuration's own env, in which ``None`` removes a key. The ``prefect.io/*``
    labels of the objects given come before the configuration's labels, which win.
    ``name`` falls back to the flow run's name and ``command`` to ``default_command``.
    Ids missing objects are taken from the flow run (``flow_id``, ``deployment_id``).

    This calls ``config.prepare_for_flow_run`` so that subclasses' overrides apply,
    passing only the keywords the override accepts: a Prefect-style override
    ``prepare_for_flow_run(self, flow_run, deployment=None, flow=None)`` gets
    those three, after the base implementation has applied what only the worker
    knows (``base_env``, ``default_command``, its name and pool); applying the base
    part again from the override's ``super()`` call changes nothing.

    Args:
        config: the configuration rendered by :func:`from_template_and_values`.
        flow_run: the run being started.
        deployment: its deployment, when it has one.
        flow: its flow, when read.
        worker_name: the name of the worker starting it.
        work_pool: the pool it came from.
        base_env: the lowest env layer.
        default_command: the command when the configuration sets none.

    Returns:
        A new configuration; ``config`` is not modified.

    Raises:
        ConfigurationError: the override returned ``None`` or something else than
            a job configuration, or assigned to a field of the frozen configuration
            (Prefect's mutate-in-place style); the message names the class.
    """
    keywords: dict[str, Any] = {
        "flow_run": flow_run,
        "deployment": deployment,
        "flow": flow,
        "worker_name": worker_name,
        "work_pool": work_pool,
        "base_env": base_env,
        "default_command": default_command,
    }
    accepted = _accepted_keywords(config.prepare_for_flow_run)
    if accepted is not None and not accepted >= keywords.keys():
        config = BaseJobConfiguration.prepare_for_flow_run(config, **keywords)
        keywords = {key: value for key, value in keywords.items() if key in accepted}
    where = f"{type(config).__name__}.prepare_for_flow_run"
    try:
        prepared: object = config.prepare_for_flow_run(**keywords)
    except attrs.exceptions.FrozenInstanceError:
        raise ConfigurationError(
            f"{where} assigned to a field, but job configurations are frozen: return"
            " attrs.evolve(super().prepare_for_flow_run(...), field=value) instead"
        ) from None
    if not isinstance(prepared, BaseJobConfiguration):
        # Named by type: this message becomes the run's CRASHED message, and a
        # dict of the configuration would carry the API key of its env.
        returned = "None" if prepared is None else f"a {type(prepared).__name__}"
        raise ConfigurationError(
            f"{where} returned {returned}, not a job configuration: configurations are"
            " frozen, so an override must return the completed copy (attrs.evolve(...))"
        )
    return prepared  # type: ignore[return-value]  # an override returns its own class


def _accepted_keywords(method: Callable[..., Any]) -> set[str] | None:
    """The keyword names ``method`` accepts, or ``None`` when it takes ``**kwargs``."""
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in kinds}
