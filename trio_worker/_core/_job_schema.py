"""JSON schema from attrs classes, and validation of rendered JSON back into them.

Job variables and configurations are attrs classes whose fields carry their
title and description in ``metadata`` (:func:`job_metadata`). This module turns
such a class into the variables schema a work pool stores (:func:`json_schema`),
shaped exactly as Prefect's pydantic models produce it, and checks rendered
template JSON against the field types (:func:`structure`) the way pydantic's lax
mode does, so a template that works with Prefect's worker works here too. Only
JSON types are supported: str, bool, int, float, None, ``pathlib.Path``, ``Any``,
``dict[str, X]``, ``list[X]`` and unions of them.
"""

from __future__ import annotations

import pathlib
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, Union, cast, get_args, get_origin

import attrs

from trio_worker._core._exceptions import JobVariableError

__all__ = [
    "empty_as_none",
    "field_info",
    "job_metadata",
    "json_schema",
    "stringify_values",
    "structure",
]

T = TypeVar("T")

_METADATA_KEY: Final = "trio_worker.job"


def job_metadata(
    *,
    title: str | None = None,
    description: str | None = None,
    format: str | None = None,
    template: str | None = None,
    before: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Build the ``metadata`` of a job configuration or variables field.

    Args:
        title: the schema title; defaults to the field name in title case.
        description: the schema description shown to users editing a pool.
        format: a JSON-schema ``format`` for string types (e.g. ``"path"``).
        template: the field's value in :meth:`BaseJobConfiguration.json_template`
            when it is not simply ``"{{ <name> }}"``.
        before: applied to the rendered value before validation, for lenient
            inputs Prefect accepts (e.g. env values given as numbers).

    Returns:
        A dict to pass as ``attrs.field(metadata=...)``.
    """
    info: dict[str, Any] = {"title": title, "description": description, "format": format}
    info |= {"template": template, "before": before}
    return {_METADATA_KEY: info}


def stringify_values(value: Any) -> Any:
    """A ``before`` hook: make a mapping's values strings (``5`` -> ``"5"``), keeping ``None``.

    Prefect coerces env values this way, so ``{"N": 5}`` is a valid env; ``None``
    stays because it means "remove this inherited variable". Non-mappings pass
    through for the type check to report.
    """
    if isinstance(value, Mapping):
        return {key: item if item is None else str(item) for key, item in value.items()}
    return value


def empty_as_none(value: Any) -> Any:
    """A ``before`` hook: ``""`` means unset, as a placeholder that rendered to nothing does."""
    return None if value == "" else value


def field_info(field: attrs.Attribute[Any]) -> dict[str, Any]:
    """Return what :func:`job_metadata` recorded on a field (empty when nothing was)."""
    info: dict[str, Any] = field.metadata.get(_METADATA_KEY, {})
    return info


def _schema_of(tp: Any, fmt: str | None) -> dict[str, Any]:
    """Translate a field's type into JSON schema the way Prefect's pydantic models do."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        parts = [_schema_of(arg, fmt) for arg in args if arg is not type(None)]
        if type(None) in args:
            parts.append({"type": "null"})
        return parts[0] if len(parts) == 1 else {"anyOf": parts}
    if tp is type(None):
        return {"type": "null"}
    if tp is str or tp is pathlib.Path:
        string = {"type": "string"}
        form = "path" if tp is pathlib.Path else fmt
        return string if form is None else {"format": form, **string}
    simple = {bool: "boolean", int: "integer", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    if origin is dict or tp is dict:
        if not args or args[1] is Any:
            return {"type": "object"}
        return {"additionalProperties": _schema_of(args[1], fmt), "type": "object"}
    if origin is list or tp is list:
        if not args or args[0] is Any:
            return {"type": "array"}
        return {"items": _schema_of(args[0], fmt), "type": "array"}
    raise TypeError(f"job variables cannot have type {tp!r}; use JSON types (str, dict, ...)")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def json_schema(cls: type[Any]) -> dict[str, Any]:
    """Generate the variables JSON schema of an attrs class, shaped as Prefect's.

    Properties follow the field order; inside each property keys are sorted, as
    in templates captured from a Prefect server. Optional types become
    ``anyOf [..., {"type": "null"}]``, dicts ``additionalProperties``, paths
    ``format: path``; a plain ``default`` is recorded, a factory default is not.

    Args:
        cls: an attrs class whose fields may carry :func:`job_metadata`.

    Returns:
        ``{"properties": {...}, "type": "object"}`` (plus ``required`` when
        some field has no default).
    """
    hints = _type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        info = field_info(field)
        prop = _schema_of(hints[field.name], info.get("format"))
        prop["title"] = info.get("title") or field.name.replace("_", " ").title()
        if info.get("description"):
            prop["description"] = info["description"]
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            prop["default"] = field.default
        properties[field.name] = _sorted(prop)
    schema: dict[str, Any] = {"properties": properties}
    if required:
        schema["required"] = required
    schema["type"] = "object"
    return schema


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    # Annotations are strings under `from __future__ import annotations`; resolve them once.
    return {field.name: field.type for field in attrs.fields(attrs.resolve_types(cls))}


_BOOL_WORDS: Final = {
    **dict.fromkeys(("true", "t", "yes", "y", "on", "1"), True),
    **dict.fromkeys(("false", "f", "no", "n", "off", "0"), False),
}


def _describe(tp: Any) -> str:
    """Name a type the way the variables schema does, for error messages."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is dict:
        return f"object of {_describe(args[1])}" if args else "object"
    if origin is list:
        return f"array of {_describe(args[0])}" if args else "array"
    schema = _schema_of(tp, None)
    return str(schema.get("format", schema.get("type", "any JSON value")))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against ``tp`` as pydantic's lax mode would, converting where it does.

    Raises:
        JobVariableError: naming ``where`` (the job variable's path) and the expected type.
    """
    origin, args = get_origin(tp), get_args(tp)
    ok: Any = _MISMATCH
    if tp is Any:
        ok = value
    elif origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except JobVariableError:
                continue
    elif tp is type(None):
        ok = value if value is None else _MISMATCH
    elif tp is bool:
        if isinstance(value, bool):
            ok = value
        elif isinstance(value, int | str) and str(value).strip().lower() in _BOOL_WORDS:
            ok = _BOOL_WORDS[str(value).strip().lower()]
    elif tp is str or tp is pathlib.Path:
        ok = tp(value) if isinstance(value, str) else _MISMATCH
    elif tp is int or tp is float:
        ok = _number(value, tp)
    elif origin is dict or tp is dict:
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            item_tp = args[1] if args else Any
            ok = {key: _coerce(item, item_tp, f"{where}.{key}") for key, item in value.items()}
    elif origin is list or tp is list:
        if isinstance(value, list):
            item_tp = args[0] if args else Any
            ok = [_coerce(item, item_tp, f"{where}[{i}]") for i, item in enumerate(value)]
    else:
        raise TypeError(f"job configurations cannot have type {tp!r}; use JSON types")
    if ok is _MISMATCH:
        raise JobVariableError(
            f"job variable {where!r} must be {_describe(tp)}, got {value!r}"
            f" ({type(value).__name__})"
        )
    return ok


_MISMATCH: Final = object()


def _number(value: Any, tp: type[int] | type[float]) -> Any:
    if isinstance(value, bool):
        return _MISMATCH
    if isinstance(value, str):
        try:
            value = float(value) if tp is float or "." in value else int(value)
        except ValueError:
            return _MISMATCH
    if isinstance(value, int) or (isinstance(value, float) and tp is float):
        return tp(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _MISMATCH


def structure(config_cls: type[T], data: Mapping[str, Any]) -> T:
    """Validate rendered configuration JSON into an attrs class.

    Each field's :func:`job_metadata` ``before`` hook runs first, then the value is
    checked against the field's type. Missing fields take the class defaults;
    unknown keys are ignored (a template may carry keys another worker type uses).

    Args:
        config_cls: the attrs class to build.
        data: the rendered ``job_configuration``.

    Returns:
        The instance.

    Raises:
        JobVariableError: a value does not fit; names the job variable and the type.
    """
    hints = _type_hints(config_cls)
    kwargs: dict[str, Any] = {}
    fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(cast(Any, config_cls))
    for field in fields:
        if not field.init:
            continue
        if field.name not in data:
            if field.default is attrs.NOTHING:
                raise JobVariableError(
                    f"job variable {field.name!r} is required ({_describe(hints[field.name])})"
                    " but the job template gave it no value"
                )
            continue
        value = data[field.name]
        before = field_info(field).get("before")
        if before is not None:
            value = before(value)
        kwargs[field.alias or field.name] = _coerce(value, hints[field.name], field.name)
    return config_cls(**kwargs)
