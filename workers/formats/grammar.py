"""The grammar of a forced tool call, in the model's own format.

When ``tool_choice`` forces a call (``any`` or one named tool), llama.cpp holds the
model to a GBNF grammar that admits exactly one valid call, written the way the
model's family writes calls. The grammar is derived from the family's
``forced_call`` writer, so it always matches what the family's reader reads:

* **JSON arguments** (Hermes, Mistral, Llama 3, Kimi, gpt-oss, DeepSeek…): the
  writer puts the arguments object in verbatim; the grammar is the text before
  it, the arguments' JSON schema (llama.cpp's converter), the text after it.
* **Tagged arguments** (Qwen3-Coder, DSML, MiniMax, GLM…): writing no argument
  and then one argument shows the text around each argument; the grammar writes
  the tool's parameters in schema order (required ones always, optional ones
  maybe), strings as text that cannot close the tag, other values as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.chat import Tool
from workers.formats.families import Family, by_name

_KEY, _VAL = "tkey7f3a", "tval9c1e"
_ARGS = '{"targ5b2d": 17}'

# JSON-schema keywords that only annotate, which llama.cpp's converter rejects or
# mishandles (a schema of only a description is "unrecognized"; `{}` is any object).
_DROP = {"$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated", "readOnly",
         "writeOnly", "propertyNames"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}


def clean_schema(schema: Any) -> Any:
    """Drop annotation keywords; property names are data, never dropped."""
    if isinstance(schema, list):
        return [clean_schema(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _DROP:
            continue
        if k in _SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: clean_schema(sub) for name, sub in v.items()}
        else:
            out[k] = clean_schema(v)
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _common_suffix(a: str, b: str, limit: int) -> int:
    n = 0
    while n < limit and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


class _Shape:
    """How a family writes one call of tool ``name``: JSON args between ``before``
    and ``after``, or tagged args (``per_arg`` = key prefix, key/value separator,
    value suffix) between ``before`` and ``after``."""

    def __init__(self, family: Family, name: str) -> None:
        write = family.forced_call
        if write is None:
            raise ValueError(f"tool_format {family.name!r} cannot write a forced call")
        text = write(name, _ARGS)
        if _ARGS in text:
            self.json = True
            self.before, self.after = text.split(_ARGS, 1)
            self.per_arg: tuple[str, str, str] = ("", "", "")
            return
        self.json = False
        empty = write(name, "{}")
        one = write(name, json.dumps({_KEY: _VAL}))
        p = _common_prefix(empty, one)
        s = _common_suffix(empty, one, min(len(empty), len(one)) - p)
        block = one[p : len(one) - s]
        if _KEY not in block or _VAL not in block:
            raise ValueError(f"tool_format {family.name!r}: cannot see how it writes an argument")
        k, v = block.index(_KEY), block.index(_VAL)
        self.before, self.after = empty[:p], empty[p:]
        self.per_arg = (block[:k], block[k + len(_KEY) : v], block[v + len(_VAL) :])


def _lit(converter: Any, text: str) -> str:
    return str(converter._format_literal(text)) if text else ""


def _string_until(close: str, max_length: int | None = None) -> str:
    """GBNF for text that does not run into the closing tag: no character that
    could start it followed by the tag's second character (``</`` for XML tags);
    at most ``max_length`` such pieces when the schema bounds the string."""
    tag = close.strip() or "<"
    a = tag[0]
    unit = f"[^{_cls(a)}]" if len(tag) == 1 else f"( [^{_cls(a)}] | {json.dumps(a)} [^{_cls(tag[1])}] )"
    return f"{unit}{{0,{max_length}}}" if max_length is not None else f"{unit}*"


def _cls(c: str) -> str:
    """A character escaped for a GBNF character class."""
    return "\\" + c if c in "]\\^-" else c


def bound_strings(schema: Any, limit: int) -> Any:
    """``schema`` with ``maxLength: limit`` on every string that has no bound."""
    if isinstance(schema, list):
        return [bound_strings(v, limit) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bound_strings(v, limit) if k not in _SCHEMA_MAPS else
           {n: bound_strings(sub, limit) for n, sub in v.items()} if isinstance(v, dict) else v
           for k, v in schema.items()}
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out and "const" not in out:
        out["maxLength"] = limit
    return out


def call_grammar(family: Family, tools: list[Tool], name: str = "", *, max_string: int = 0) -> str:
    """GBNF text admitting exactly one call of tool ``name`` (or of any of
    ``tools``) as ``family`` writes it; ``max_string`` > 0 bounds string arguments
    the schema leaves unbounded. Raises ValueError for an unknown name or a schema
    llama.cpp's converter cannot express."""
    from llama_cpp.llama_grammar import SchemaConverter

    chosen = [t for t in tools if t.name == name] if name else tools
    if not chosen:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alts = []
    for i, tool in enumerate(chosen):
        shape = _Shape(family, tool.name)
        schema = clean_schema(tool.input_schema) or {"type": "object"}
        if max_string > 0:
            schema = bound_strings(schema, max_string)
        schema = conv.resolve_refs(schema, f"tool{i}")
        if shape.json:
            args = conv.visit(schema, f"args-{i}")
            alts.append(" ".join(x for x in (_lit(conv, shape.before), args, _lit(conv, shape.after)) if x))
            continue
        key_open, sep, val_close = shape.per_arg
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        parts = [_lit(conv, shape.before)]
        for j, (pname, psub) in enumerate(props.items()):
            types = psub.get("type") if isinstance(psub, dict) else None
            if types == "string" or (isinstance(psub, dict) and "enum" in psub and all(
                    isinstance(x, str) for x in psub["enum"]) and not types):
                if isinstance(psub, dict) and "enum" in psub:
                    value = " | ".join(_lit(conv, x) for x in psub["enum"])
                    value = f"( {value} )"
                else:
                    limit = psub.get("maxLength") if isinstance(psub, dict) else None
                    value = conv._add_rule(f"str-{i}-{j}", _string_until(
                        val_close, limit if isinstance(limit, int) and limit >= 0 else None))
            else:
                value = conv.visit(psub if isinstance(psub, dict) else {}, f"val-{i}-{j}")
            block = " ".join(x for x in (_lit(conv, key_open + pname + sep), value, _lit(conv, val_close)) if x)
            parts.append(f"( {block} )" if pname in required else f"( {block} )?")
        parts.append(_lit(conv, shape.after))
        alts.append(" ".join(x for x in parts if x))
    conv._add_rule("root", " | ".join(f"( {a} )" for a in alts))
    return str(conv.format_grammar())


def forced_prefix(family: Family, tools: list[Tool], name: str) -> str:
    """The start of a forced call up to its arguments (for backends with no
    grammar: MLX writes it into the prompt and lets the model go on)."""
    try:
        shape = _Shape(family, name)
    except ValueError:
        shape = _Shape(by_name("generic"), name)
    return shape.before
