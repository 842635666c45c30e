"""JSON schema from attrs classes, and validation of rendered JSON back into them.

Job variables and configurations are attrs classes whose fields carry their
title and description in ``metadata`` (:func:`job_metadata`). This module turns
such a class into the variables schema a work pool stores (:func:`json_schema`),
shaped exactly as Prefect's pydantic models produce it, and checks rendered
template JSON against the field types (:func:`structure`) the way pydantic's lax
mode does, through the lax converter of ``_converter.py``, so a template that
works with Prefect's worker works here too. Supported: str, bool, int, float,
None, ``pathlib.Path``, ``Any``, ``Literal``, ``Enum``, ``dict[str, X]``,
``list[X]``, nested attrs classes and unions of them. Enums and nested classes
are described under ``definitions`` and referred to by ``$ref``, as Prefect's
``BaseVariables.model_json_schema`` does.
"""

from __future__ import annotations

import enum
import inspect
import pathlib
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar, Union, get_args, get_origin

import attrs

from trio_worker._core._exceptions import JobVariableError
from trio_worker._core._lax_converter import MISSING, LaxValueError, make_lax_converter

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


_JSON_TYPES: Final = {str: "string", bool: "boolean", int: "integer", float: "number"}

Definitions = dict[str, dict[str, Any]]


def _literal_schema(values: tuple[Any, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"enum": list(values)} if len(values) > 1 else {"const": values[0]}
    kinds = {_JSON_TYPES.get(type(value)) for value in values}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return schema


def _own_doc(cls: type[Any]) -> str | None:
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _definition(tp: type[Any], defs: Definitions) -> dict[str, Any]:
    """Describe an Enum or a nested attrs class under ``definitions``; return the ``$ref``."""
    if tp.__name__ not in defs:
        defs[tp.__name__] = {}  # claimed first: a class may refer to itself
        if issubclass(tp, enum.Enum):
            schema = _literal_schema(tuple(member.value for member in tp))
            schema.pop("const", None)
            schema["enum"] = [member.value for member in tp]
        else:
            schema = _object_schema(tp, defs)
        schema["title"] = tp.__name__
        if description := _own_doc(tp):
            schema["description"] = description
        defs[tp.__name__] = _sorted(schema)
    return {"$ref": f"#/definitions/{tp.__name__}"}


def _json_default(value: Any) -> Any:
    """A field default as JSON: an enum as its value, an attrs instance as an object."""
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return {k: _json_default(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_default(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_default(item) for key, item in value.items()}
    return value


def _schema_of(tp: Any, fmt: str | None, defs: Definitions) -> dict[str, Any]:
    """Translate a field's type into JSON schema the way Prefect's pydantic models do."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return {}
    if origin is Literal:
        return _literal_schema(args)
    if isinstance(tp, type) and (issubclass(tp, enum.Enum) or attrs.has(tp)):
        return _definition(tp, defs)
    if origin in (Union, types.UnionType):
        parts = [_schema_of(arg, fmt, defs) for arg in args if arg is not type(None)]
        if type(None) in args:
            parts.append({"type": "null"})
        return parts[0] if len(parts) == 1 else {"anyOf": parts}
    if tp is type(None):
        return {"type": "null"}
    if tp is str or tp is pathlib.Path:
        string = {"type": "string"}
        form = "path" if tp is pathlib.Path else fmt
        return string if form is None else {"format": form, **string}
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    if origin is dict or tp is dict:
        if not args or args[1] is Any:
            return {"type": "object"}
        return {"additionalProperties": _schema_of(args[1], fmt, defs), "type": "object"}
    if origin is list or tp is list:
        if not args or args[0] is Any:
            return {"type": "array"}
        return {"items": _schema_of(args[0], fmt, defs), "type": "array"}
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
    ``format: path``, literals ``enum`` (or ``const``); enums and nested attrs
    classes are described once under ``definitions`` and referred to by
    ``$ref``. A plain ``default`` is recorded (as JSON), a factory default is not.

    Args:
        cls: an attrs class whose fields may carry :func:`job_metadata`.

    Returns:
        ``{"properties": {...}, "type": "object"}`` (plus ``required`` when
        some field has no default, and ``definitions`` when enums or nested
        classes are used).

    Raises:
        TypeError: a field's type is not one of those listed in the module docstring.
    """
    defs: Definitions = {}
    schema = _object_schema(cls, defs)
    if defs:
        schema["definitions"] = {name: defs[name] for name in sorted(defs)}
    return schema


def _object_schema(cls: type[Any], defs: Definitions) -> dict[str, Any]:
    hints = _type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        info = field_info(field)
        prop = _schema_of(hints[field.name], info.get("format"), defs)
        prop["title"] = info.get("title") or field.name.replace("_", " ").title()
        if info.get("description"):
            prop["description"] = info["description"]
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            prop["default"] = _json_default(field.default)
        properties[field.name] = _sorted(prop)
    schema: dict[str, Any] = {"properties": properties}
    if required:
        schema["required"] = required
    schema["type"] = "object"
    return schema


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    # Annotations are strings under `from __future__ import annotations`; resolve them once.
    return {field.name: field.type for field in attrs.fields(attrs.resolve_types(cls))}


def _describe(tp: Any) -> str:
    """Name a type the way the variables schema does, for error messages."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is dict:
        return f"object of {_describe(args[1])}" if args else "object"
    if origin is list:
        return f"array of {_describe(args[0])}" if args else "array"
    if origin is Literal:
        return "one of " + ", ".join(repr(value) for value in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in tp)
    if isinstance(tp, type) and attrs.has(tp):
        return f"object ({tp.__name__})"
    schema = _schema_of(tp, None, {})
    return str(schema.get("format", schema.get("type", "any JSON value")))


def structure(config_cls: type[T], data: Mapping[str, Any]) -> T:
    """Validate rendered configuration JSON into an attrs class, with the lax converter.

    Each field's :func:`job_metadata` ``before`` hook runs first, then the value is
    checked against the field's type as pydantic's lax mode would (nested attrs
    classes, enums and literals included). Missing fields take the class
    defaults; unknown keys are ignored (a template may carry keys another worker
    type uses).

    Args:
        config_cls: the attrs class to build.
        data: the rendered ``job_configuration``.

    Returns:
        The instance.

    Raises:
        JobVariableError: a value does not fit; names the job variable and the type.
    """
    try:
        return _LAX.structure(data, config_cls)
    except LaxValueError as exc:
        raise JobVariableError(_problem(exc)) from None


def _where(path: tuple[str | int, ...]) -> str:
    """``("labels", "a")`` as ``labels.a``, ``("args", 0)`` as ``args[0]``."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _problem(exc: LaxValueError) -> str:
    where = _where(exc.path) or "(the configuration)"
    if exc.value is MISSING:
        return (
            f"job variable {where!r} is required ({_describe(exc.expected)})"
            " but the job template gave it no value"
        )
    return (
        f"job variable {where!r} must be {_describe(exc.expected)}, got {exc.value!r}"
        f" ({type(exc.value).__name__})"
    )


def _before(field: attrs.Attribute[Any]) -> Callable[[Any], Any] | None:
    hook: Callable[[Any], Any] | None = field_info(field).get("before")
    return hook


_LAX: Final = make_lax_converter(before=_before)
