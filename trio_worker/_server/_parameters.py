"""A small check of flow-run parameters against a deployment's parameter schema.

Prefect validates with full JSON Schema; the embedded API checks what catches
real mistakes (required parameters, top-level JSON types) and words failures
the way Prefect does, e.g. ``Validation failed for field 'n'. Failure reason:
'notint' is not of type 'integer'``. Anything it does not understand passes.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["validate_parameters"]

_PYTHON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _fits(value: Any, json_type: str) -> bool:
    kinds = _PYTHON_TYPES.get(json_type)
    if kinds is None:
        return True
    if isinstance(value, bool) and json_type in ("integer", "number"):
        return False
    return isinstance(value, kinds)


def _repr(value: Any) -> str:
    return repr(value) if not isinstance(value, bool | type(None)) else str(value).lower()


def validate_parameters(parameters: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """Return Prefect's failure sentence for the first problem, or ``None`` when they fit."""
    properties = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in parameters:
            return f"Validation failed. Failure reason: '{name}' is a required property"
    for name, value in parameters.items():
        prop = properties.get(name)
        if not isinstance(prop, dict):
            continue
        options = prop.get("anyOf") or [prop]
        types = [o["type"] for o in options if isinstance(o, dict) and o.get("type")]
        if not types:
            continue
        flat: list[str] = [
            t for entry in types for t in (entry if isinstance(entry, list) else [entry])
        ]
        if not any(_fits(value, t) for t in flat):
            expected = flat[0] if len(flat) == 1 else flat
            return (
                f"Validation failed for field '{name}'. Failure reason: "
                f"{_repr(value)} is not of type {_repr(expected)}"
            )
    return None
