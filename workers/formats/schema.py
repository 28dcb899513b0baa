"""The tools a request offers, and argument values typed by their JSON schemas.

Formats that write arguments as tagged text (Qwen3-Coder's
``<parameter=x>…</parameter>``, GLM's ``<arg_value>``, MiniMax's ``<parameter
name="x">``) carry no JSON types: ``1`` may be the number 1 or the string "1".
:meth:`ToolSet.coerce` decides by the parameter's schema, as llama.cpp does: a
parameter that only takes strings gets the text as is; otherwise the text is read
as JSON when that gives a value the schema allows, else it stays a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def _types(schema: Any) -> set[str] | None:
    """The JSON types a schema admits (None: any)."""
    if not isinstance(schema, Mapping) or not schema:
        return None
    out: set[str] = set()
    t = schema.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(x for x in t if isinstance(x, str))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            st = _types(sub)
            if st is None:
                return None
            out |= st
    if "enum" in schema and not out:
        for v in schema["enum"]:
            out.add(_type_name(v))
    if "const" in schema and not out:
        out.add(_type_name(schema["const"]))
    if not out and ("properties" in schema):
        out.add("object")
    if not out and ("items" in schema):
        out.add("array")
    return out or None


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if v is None:
        return "null"
    return "object" if isinstance(v, dict) else "array"


def allows(schema: Any, value: Any) -> bool:
    types = _types(schema)
    if types is None:
        return True
    for t in types:
        py = _JSON_TYPES.get(t)
        if py is None:
            continue
        if isinstance(value, bool) and t in ("integer", "number"):
            continue
        if t == "integer" and isinstance(value, float):
            if value.is_integer():
                return True
            continue
        if isinstance(value, py):
            return True
    return False


def string_only(schema: Any) -> bool:
    types = _types(schema)
    return types == {"string"}


class ToolSet:
    """Tool name -> parameters schema, from OpenAI-shaped tool specs
    (``{"type": "function", "function": {"name", "parameters"}}``) or plain
    ``{"name", "parameters"|"input_schema"}`` dicts."""

    def __init__(self, tools: Iterable[Mapping[str, Any]] = ()) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        for t in tools:
            inner = t.get("function")
            fn: Mapping[str, Any] = inner if isinstance(inner, Mapping) else t
            name = fn.get("name")
            if isinstance(name, str):
                params = fn.get("parameters") or fn.get("input_schema") or {}
                self.schemas[name] = dict(params) if isinstance(params, Mapping) else {}

    def __bool__(self) -> bool:
        return bool(self.schemas)

    @property
    def names(self) -> list[str]:
        return list(self.schemas)

    def param(self, tool: str, name: str) -> Any:
        props = self.schemas.get(tool, {}).get("properties")
        if isinstance(props, Mapping):
            return props.get(name)
        return None

    def coerce(self, tool: str, name: str, raw: str) -> Any:
        """A tagged argument's text as the value its schema wants."""
        return coerce(self.param(tool, name), raw)


def coerce(schema: Any, raw: str) -> Any:
    if string_only(schema):
        return raw
    text = raw.strip()
    try:
        value = json.loads(text, strict=False)  # models put raw control characters in strings
    except ValueError:
        return raw
    if isinstance(value, str) and not text.startswith('"'):
        return raw
    if allows(schema, value):
        return value
    return raw


def dumps(args: Any) -> str:
    """Arguments as the compact JSON object a call carries."""
    return json.dumps(args, ensure_ascii=False, separators=(",", ":"))
