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

from turnout.protocol.chat import Tool
from turnout.workers.formats.families import Family, by_name

# (the second key sorts after the first: some writers order arguments by key)
_KEY, _KEY2, _VAL = "tkey7f3a", "tkey9b8d", "tval9c1e"
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
    """How a family writes one call of tool ``name``.

    JSON arguments: ``before`` + the arguments object + ``after``. Tagged
    arguments: ``before`` + arguments joined by ``sep`` + ``after``, each argument
    written as ``key_open`` KEY then, for a string value, ``str_open`` VALUE
    ``str_close``, for any other value ``val_open`` JSON ``val_close`` (the key may
    reappear in the closing part, as in ``<city>Paris</city>``: ``{key}`` there).
    Found by writing no argument, one string, one number, and both."""

    def __init__(self, family: Family, name: str) -> None:
        write = family.forced_call
        if write is None:
            raise ValueError(f"tool_format {family.name!r} cannot write a forced call")
        text = write(name, _ARGS)
        self.sep = ""
        if _ARGS in text:
            self.json = True
            self.before, self.after = text.split(_ARGS, 1)
            self.key_open = self.str_open = self.str_close = self.val_open = self.val_close = ""
            return
        self.json = False
        empty = write(name, "{}")
        one_s = write(name, json.dumps({_KEY: _VAL}))
        one_n = write(name, json.dumps({_KEY: 17}))
        both = write(name, json.dumps({_KEY: _VAL, _KEY2: 17}))
        p = min(_common_prefix(empty, one_s), _common_prefix(empty, one_n), _common_prefix(empty, both))
        limit = min(len(empty), len(one_s), len(one_n), len(both)) - p
        q = min(_common_suffix(empty, x, limit) for x in (one_s, one_n, both))
        self.before, self.after = empty[:p], empty[p:]
        bs, bn, b2 = (x[p : len(x) - q] for x in (one_s, one_n, both))
        if _KEY not in bs or _VAL not in bs or _KEY not in bn or "17" not in bn:
            raise ValueError(f"tool_format {family.name!r}: cannot see how it writes an argument")
        ks, vs = bs.index(_KEY), bs.index(_VAL)
        kn = bn.index(_KEY)
        vn = bn.index("17", kn + len(_KEY))
        self.key_open = bs[:ks]
        self.str_open, self.str_close = bs[ks + len(_KEY) : vs], bs[vs + len(_VAL) :].replace(_KEY, "{key}")
        self.val_open, self.val_close = bn[kn + len(_KEY) : vn], bn[vn + 2 :].replace(_KEY, "{key}")
        second = bn.replace(_KEY, _KEY2)
        if not (b2.startswith(bs) and b2.endswith(second)):
            raise ValueError(f"tool_format {family.name!r}: cannot see how it separates arguments")
        self.sep = b2[len(bs) : len(b2) - len(second)]


def _lit(converter: Any, text: str) -> str:
    return str(converter._format_literal(text)) if text else ""


def _string_until(close: str, max_length: int | None = None) -> str:
    """GBNF for text that does not run into the closing tag: no character that
    could start it followed by the tag's second character (``</`` for XML tags), or
    for a quoted string no quote but an escaped one;
    at most ``max_length`` such pieces when the schema bounds the string."""
    tag = close.strip() or "<"
    a = tag[0]
    if a in "\"'":
        # a quoted string (pythonic calls): a backslash escapes the next character,
        # so a bare backslash would turn the closing quote into text
        unit = f"( [^{_cls(a)}\\\\] | \"\\\\\" [^\\x00] )"
    elif len(tag) == 1:
        unit = f"[^{_cls(a)}]"
    else:
        unit = f"( [^{_cls(a)}] | {json.dumps(a)} [^{_cls(tag[1])}] )"
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


def _arg_rule(conv: Any, shape: _Shape, pname: str, psub: Any, tag: str) -> str:
    """One argument, written as the family writes it, its value held to its schema."""
    psub = psub if isinstance(psub, dict) else {}
    types = psub.get("type")
    enum = psub.get("enum")
    if types == "string" or (enum and not types and all(isinstance(x, str) for x in enum)):
        close = shape.str_close.replace("{key}", pname)
        if enum:
            value = "( " + " | ".join(_lit(conv, x) for x in enum) + " )"
        else:
            limit = psub.get("maxLength")
            value = conv._add_rule(f"str-{tag}", _string_until(
                close, limit if isinstance(limit, int) and limit >= 0 else None))
        parts = (shape.key_open + pname + shape.str_open, value, close)
    else:
        parts = (shape.key_open + pname + shape.val_open, conv.visit(psub, f"val-{tag}"),
                 shape.val_close.replace("{key}", pname))
    return " ".join(_lit(conv, x) if k != 1 else x for k, x in enumerate(parts) if x)


def _join_args(conv: Any, blocks: list[tuple[str, bool]], sep: str) -> str:
    """Arguments joined by ``sep``: required ones always, optional ones maybe."""
    if not blocks:
        return ""
    sep_ = f"{sep} " if sep else ""
    if blocks[0][1]:  # at least one required argument: it comes first
        out = [f"( {blocks[0][0]} )"]
        for rule, req in blocks[1:]:
            out.append(f"( {sep_}{rule} )" + ("" if req else "?"))
        return " ".join(out)
    # all optional: whichever comes first has no separator before it
    alts = []
    for k in range(len(blocks)):
        tail = " ".join(f"( {sep_}{r} )?" for r, _ in blocks[k + 1:])
        alts.append(f"( {blocks[k][0]} ) {tail}".strip())
    return "( " + " | ".join(f"( {a} )" for a in alts) + " )?"


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
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        blocks: list[tuple[str, bool]] = []
        for j, (pname, psub) in enumerate(props.items()):
            blocks.append((_arg_rule(conv, shape, pname, psub, f"{i}-{j}"), pname in required))
        # required arguments first (in schema order), then the optional ones
        blocks.sort(key=lambda b: not b[1])
        body = _join_args(conv, blocks, _lit(conv, shape.sep))
        alts.append(" ".join(x for x in (_lit(conv, shape.before), body, _lit(conv, shape.after)) if x))
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
