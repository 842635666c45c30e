"""A small JSON Schema check, for flow-run parameters and job variables, worded as Prefect's.

Prefect's server validates a flow run's parameters against its deployment's
parameter schema, and job variables against the work pool's variables schema
(``base_job_template["variables"]``), with full JSON Schema, and words the
first failure e.g. ``Validation failed for field 'env.N'. Failure reason: 5 is
not of type 'string'``. This module checks what catches real mistakes:
``type`` (nested through ``properties``, ``additionalProperties`` and
``items``), ``required``, ``enum``, ``anyOf``/``oneOf``/``allOf``, with
Prefect's preprocessing (an optional property also accepts ``null``).
Anything it does not understand (``$ref``, a malformed schema stored by an
older version) passes, so it never fails a request the schema does not
clearly refuse, and never raises.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["job_variables_problem", "schema_error", "schema_problem", "validate_parameters"]

_PYTHON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}

_NO_OPTION: Final = "{value!r} is not valid under any of the given schemas"

Path = tuple[str | int, ...]
Problem = tuple[Path, str]


def _fits(value: Any, json_type: Any) -> bool:
    kinds = _PYTHON_TYPES.get(json_type) if isinstance(json_type, str) else None
    if kinds is None:
        return True  # a type this check does not know: not its business
    if isinstance(value, bool) and json_type in ("integer", "number"):
        return False
    if json_type == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, kinds)


def _types(schema: dict[str, Any]) -> list[Any]:
    declared = schema.get("type")
    if declared is None:
        return []
    return declared if isinstance(declared, list) else [declared]


def _type_problem(value: Any, schema: dict[str, Any]) -> str | None:
    types = _types(schema)
    if types and not any(_fits(value, t) for t in types):
        return f"{value!r} is not of type {', '.join(repr(t) for t in types)}"
    return None


def _options_problem(value: Any, options: list[Any], path: Path, rules: _Rules) -> Problem | None:
    """``anyOf``/``oneOf``: fine when one option fits (``oneOf`` is not held to "only one")."""
    if not options:
        return None
    problems = [_problem(value, option, path, rules, optional=False) for option in options]
    if any(p is None for p in problems):
        return None
    # As jsonschema's best match: the problem inside an option whose type fits
    # the value is the informative one; otherwise no option is better than another.
    for option, problem in zip(options, problems, strict=True):
        if isinstance(option, dict) and _types(option) and _type_problem(value, option) is None:
            return problem
    return path, _NO_OPTION.format(value=value)


class _Rules:
    """How strict the check is: Prefect's ``ignore_required`` and ``allow_none_with_default``."""

    __slots__ = ("check_required", "none_with_default")

    def __init__(self, *, check_required: bool, none_with_default: bool) -> None:
        self.check_required = check_required
        self.none_with_default = none_with_default


def _problem(
    value: Any, schema: Any, path: Path, rules: _Rules, *, optional: bool
) -> Problem | None:
    if not isinstance(schema, dict) or "$ref" in schema:
        return None
    if value is None and optional:
        return None
    if (reason := _type_problem(value, schema)) is not None:
        if optional and "null" not in _types(schema):
            # Prefect's preprocessing made the type ``anyOf [type, null]``.
            reason = _NO_OPTION.format(value=value)
        return path, reason
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return path, f"{value!r} is not one of {enum!r}"
    for keyword in ("anyOf", "oneOf"):
        options = schema.get(keyword)
        if isinstance(options, list) and (found := _options_problem(value, options, path, rules)):
            return found
    every = schema.get("allOf")
    for part in every if isinstance(every, list) else []:
        if (found := _problem(value, part, path, rules, optional=False)) is not None:
            return found
    if isinstance(value, dict):
        return _object_problem(value, schema, path, rules)
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        for index, item in enumerate(value):
            if found := _problem(item, items, (*path, index), rules, optional=False):
                return found
    return None


def _object_problem(
    value: dict[str, Any], schema: dict[str, Any], path: Path, rules: _Rules
) -> Problem | None:
    required = schema.get("required")
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    if rules.check_required:
        for name in required:
            if name not in value:
                return path, f"{name!r} is a required property"
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            prop = properties[key]
            # Prefect's preprocessing: an optional property also accepts null,
            # unless it has a default (job variables: even then, at the top level).
            has_default = isinstance(prop, dict) and "default" in prop
            lenient = rules.none_with_default and not path
            optional = key not in required and (not has_default or lenient)
            found = _problem(item, prop, (*path, key), rules, optional=optional)
        elif extra is False:
            return path, f"Additional properties are not allowed ({key!r} was unexpected)"
        else:
            found = _problem(item, extra, (*path, key), rules, optional=False)
        if found is not None:
            return found
    return None


def _json_path(path: Path) -> str:
    text = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return text.replace("$.", "")


def schema_problem(
    values: dict[str, Any],
    schema: Any,
    *,
    check_required: bool = True,
    none_with_default: bool = False,
) -> str | None:
    """Return Prefect's failure sentence for the first problem of ``values``, or ``None``.

    Args:
        values: the parameters or job variables.
        schema: the JSON schema they must fit (anything but an object passes).
        check_required: refuse missing ``required`` properties (Prefect ignores
            them for deployments, where a later overlay may still supply them).
        none_with_default: top-level properties with a default also accept
            ``null`` (Prefect's rule for job variables).
    """
    rules = _Rules(check_required=check_required, none_with_default=none_with_default)
    found = _problem(values, schema, (), rules, optional=False)
    if found is None:
        return None
    path, reason = found
    where = f" for field {_json_path(path)!r}" if path else ""
    return f"Validation failed{where}. Failure reason: {reason}"


def schema_error(schema: Any) -> str | None:
    """Return why ``schema`` is not a JSON schema this check can apply, or ``None``.

    Looks at what a variables schema is built from: ``properties`` (an
    object of schemas), ``type`` (a type name or a list of them), ``required``
    (a list), nested through ``properties``, ``items`` and
    ``additionalProperties``. Words it as Prefect's ``Invalid schema: …``.
    """
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"Invalid schema: {schema!r} is not of type 'object', 'boolean'"
    declared = schema.get("type")
    names = declared if isinstance(declared, list) else [declared]
    if declared is not None and not all(n in _PYTHON_TYPES for n in names):
        return f"Invalid schema: {declared!r} is not valid under any of the given schemas"
    required = schema.get("required")
    if required is not None and not isinstance(required, list):
        return f"Invalid schema: {required!r} is not of type 'array'"
    properties = schema.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return f"Invalid schema: {properties!r} is not of type 'object'"
    nested = [*(properties or {}).values()]
    nested += [schema[key] for key in ("items", "additionalProperties") if key in schema]
    for part in nested:
        if (reason := schema_error(part)) is not None:
            return reason
    return None


def _defaults(variables: dict[str, Any], *, drop_invalid: bool) -> tuple[dict[str, Any], bool]:
    """The defaults of a variables schema (only those that fit it, when ``drop_invalid``).

    Returns:
        The defaults, and whether some were dropped.
    """
    properties = variables.get("properties")
    kept: dict[str, Any] = {}
    dropped = False
    check = _Rules(check_required=False, none_with_default=False)
    for name, prop in (properties if isinstance(properties, dict) else {}).items():
        if not isinstance(prop, dict) or "default" not in prop:
            continue
        default = prop["default"]
        if isinstance(default, dict) and "$ref" in default:
            continue  # a block reference: the embedded API has no blocks to resolve
        if drop_invalid and _problem({name: default}, variables, (), check, optional=False):
            dropped = True
        else:
            kept[name] = default
    return kept, dropped


def job_variables_problem(
    base_job_template: Any, *layers: Any, check_required: bool, defaults_must_fit: bool = False
) -> str | None:
    """Check job variables against a work pool's variables schema, as Prefect's server does.

    The pool's defaults are overlaid by each layer in turn (deployment, then
    flow run), and the result is checked with ``null`` allowed for optional
    variables. Defaults that do not fit the schema are left out, unless
    ``defaults_must_fit`` (a pool being saved: then they are the problem).
    Required variables are only checked when ``check_required`` (a flow run:
    nothing overlays it later) and no default was left out.

    Returns:
        Prefect's failure sentence, or ``None`` when they fit (or the pool
        has no variables schema to check against).
    """
    variables = base_job_template.get("variables") if isinstance(base_job_template, dict) else None
    if not isinstance(variables, dict) or not variables:
        return None
    merged, dropped = _defaults(variables, drop_invalid=not defaults_must_fit)
    for layer in layers:
        if isinstance(layer, dict):
            merged.update(layer)
    return schema_problem(
        merged, variables, check_required=check_required and not dropped, none_with_default=True
    )


def validate_parameters(parameters: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """Return Prefect's failure sentence for parameters that do not fit ``schema``, or ``None``."""
    return schema_problem(parameters, schema)
