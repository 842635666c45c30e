"""Rendering a job configuration: a pool's base job template plus a run's job variables.

The steps are Prefect's, so a pool renders the same for both workers; they are
kept apart from the configuration classes (:mod:`._jobs`) because they are
about templates and values (defaults, dotted keys, env merging, placeholders,
block and variable references), not about what a configuration holds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypeVar

from trio_worker._core._exceptions import JobVariableError, TemplateError
from trio_worker._core._job_schema import structure
from trio_worker._core._template_references import (
    GetBlock,
    GetBlockDocument,
    GetVariable,
    resolve_block_document_references,
    resolve_variables,
)
from trio_worker._core._templating import apply_values

__all__ = ["render_job_configuration"]

C = TypeVar("C")


async def render_job_configuration(
    base_job_template: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    get_variable: GetVariable | None = None,
    get_block: GetBlock | None = None,
    get_block_document: GetBlockDocument | None = None,
    env: Mapping[str, str] | None = None,
    config_cls: type[C],
) -> C:
    """Build a validated job configuration from a pool's template and a run's job variables.

    The steps are Prefect's (``prefect-api-subset.md`` 7.3), so a pool renders the
    same for both workers:

    1. start from ``job_configuration``; collect the non-null ``default`` of each
       ``variables`` property;
    2. a default ``env`` is merged into a dict ``env`` of the configuration (or
       replaces a placeholder ``env``);
    3. dotted keys of ``values`` (``"env.X"``) are nested and deep-merged under the
       plain keys; then ``values`` override the defaults;
    4. a dict ``env`` of the configuration is merged with the resulting ``env``;
    5. :func:`apply_values`, then block references, then Prefect variables;
    6. validation into ``config_cls``: env values become strings, missing fields
       take the class defaults, unknown keys are ignored.

    Args:
        base_job_template: the pool's ``base_job_template``; not modified.
        values: the job variables (see :func:`merge_job_variables`).
        get_variable: reads a Prefect variable; ``None`` leaves those placeholders.
        get_block: reads block data by slug and name; ``None`` leaves those placeholders.
        get_block_document: reads block data by id, for ``$ref`` objects.
        env: where ``{{ $NAME }}`` is read; the worker's environment when omitted.
        config_cls: the configuration class to build.

    Returns:
        An instance of ``config_cls``.

    Raises:
        TemplateError: the template is malformed or references a missing block.
        JobVariableError: a rendered value does not fit its field; the message
            names the job variable and the expected type.
    """
    if not isinstance(base_job_template, Mapping) or not isinstance(
        base_job_template.get("job_configuration"), Mapping
    ):
        raise TemplateError("a base job template needs a 'job_configuration' object")
    schema = base_job_template.get("variables", {})
    properties = schema.get("properties", {}) if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        raise TemplateError(
            "a base job template needs 'variables' with 'properties' (a JSON schema)"
        )
    config = copy.deepcopy(dict(base_job_template["job_configuration"]))
    variables = {
        name: spec["default"]
        for name, spec in properties.items()
        if isinstance(spec, Mapping) and spec.get("default") is not None
    }
    if default_env := variables.get("env"):
        if isinstance(config.get("env"), Mapping) and isinstance(default_env, Mapping):
            config["env"] = {**config["env"], **default_env}
        elif isinstance(config.get("env"), Mapping):
            raise TemplateError(
                f"the default of job variable 'env' must be an object: {default_env!r}"
            )
        else:
            config["env"] = default_env
    variables.update(_nest_dotted(values))
    if isinstance(config.get("env"), Mapping) and (run_env := variables.get("env")):
        if not isinstance(run_env, Mapping):
            raise JobVariableError(
                f"job variable 'env' must be object of string or null, got {run_env!r}"
                f" ({type(run_env).__name__})"
            )
        config["env"] = {**config["env"], **run_env}
    rendered = apply_values(config, variables, env=env)
    rendered = await resolve_block_document_references(
        rendered, get_block, get_block_document=get_block_document
    )
    if get_variable is not None:
        rendered = await resolve_variables(rendered, get_variable)
    rendered_config: C = structure(config_cls, rendered)
    return rendered_config


def _nest_dotted(values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"env.X": 1}`` into ``{"env": {"X": 1}}``, deep-merged under the plain keys."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if "." not in key:
            continue
        *parents, last = key.split(".")
        target = nested
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[last] = value
    return _deep_merge(nested, {key: v for key, v in values.items() if "." not in key})


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
