"""Tool calls whose arguments are written as tags, one per argument.

Qwen3-Coder / Seed-OSS / Nemotron write ``<function=NAME><parameter=KEY>VALUE
</parameter></function>``; DeepSeek's DSML, MiniMax M2, muse-glimmer and MiniCPM
write ``<invoke name="NAME"><parameter name="KEY">VALUE</parameter></invoke>``
(with their own prefixes); GLM writes ``NAME<arg_key>KEY</arg_key><arg_value>VALUE
</arg_value>``. Values are text, typed by the tool's schema
(:meth:`~workers.formats.schema.ToolSet.coerce`).
"""

from __future__ import annotations

import re
from typing import Any

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.schema import ToolSet, coerce, dumps


def trim_value(v: str) -> str:
    """A value written on lines of its own (``<parameter=x>\\nVALUE\\n</parameter>``):
    the newline after the opening tag and the one before the closing tag are
    layout. A value that starts on the tag's line keeps its last newline."""
    for nl in ("\r\n", "\n"):
        if v.startswith(nl):
            v = v[len(nl):]
            if v.endswith(nl):
                v = v[: -len(nl)]
            break
    return v


def _call(tools: ToolSet, name: str, pairs: list[tuple[str, str, Any]]) -> Call:
    """``pairs``: (key, raw text, schema override or ...)."""
    name = name.strip()
    if not name:
        raise NotACall("a call names its function")
    args: dict[str, Any] = {}
    for key, raw, forced in pairs:
        if forced is ...:
            args[key] = tools.coerce(name, key, raw)
        else:
            args[key] = coerce(forced, raw)
    return Call(name, dumps(args))


_FUNCTION = re.compile(r"<function=([^>\n]+)>")
_PARAM = re.compile(r"<parameter=([^>\n]+)>")


def parse_function_tags(body: str, tools: ToolSet) -> list[Call]:
    """``<function=NAME>`` + ``<parameter=KEY>VALUE</parameter>`` (Qwen3-Coder),
    one or more functions. A value runs to its ``</parameter>`` (so it may hold
    tags of its own); one left unclosed runs to the next parameter or the end."""
    calls: list[Call] = []
    pos = 0
    first = _FUNCTION.search(body)
    if first is None:
        raise NotACall("no <function=…>")
    if body[: first.start()].strip(" \t\r\n") not in ("", "<tool_call>"):
        raise NotACall("text before the function")
    fm: re.Match[str] | None = first
    while fm is not None:
        pos = fm.end()
        pairs: list[tuple[str, str, Any]] = []
        while True:
            rest = body[pos:]
            stripped = rest.lstrip(" \t\r\n")
            if not stripped:
                pos = len(body)
                break
            if stripped.startswith("</function>"):
                pos = len(body) - len(stripped) + len("</function>")
                break
            pm = _PARAM.match(stripped)
            if pm is None:
                if stripped.startswith("<function="):
                    pos = len(body) - len(stripped)
                    break
                raise NotACall("text inside <function=…> that is not a parameter")
            vstart = len(body) - len(stripped) + pm.end()
            close = body.find("</parameter>", vstart)
            nxt = _PARAM.search(body, vstart)
            fend = body.find("</function>", vstart)
            if close >= 0 and (fend < 0 or close < fend):
                value, pos = body[vstart:close], close + len("</parameter>")
            else:  # unclosed: up to the next parameter or the function's end
                stops = [i for i in (nxt.start() if nxt else -1, fend) if i >= 0]
                vend = min(stops) if stops else len(body)
                value, pos = body[vstart:vend], vend
            pairs.append((pm.group(1).strip(), trim_value(value), ...))
        calls.append(_call(tools, fm.group(1), pairs))
        fm = _FUNCTION.search(body, pos)
        if fm is not None and body[pos : fm.start()].strip(" \t\r\n") not in ("", "</tool_call>", "<tool_call>",
                                                                               "</tool_call>\n<tool_call>"):
            raise NotACall("text between functions")
    return calls


def invoke_parser(prefix: str = "", typed_attr: str = "string", *, invoke_tag: str = "invoke",
                  param_tag: str = "parameter", cdata: bool = False) -> Any:
    """A parser of ``<{prefix}invoke name="N"><{prefix}parameter name="K" [string="true"]>V
    </{prefix}parameter></{prefix}invoke>`` (DSML, MiniMax M2, muse-glimmer; MiniCPM5
    names the tags ``function`` and ``param``). ``cdata``: a value may be wrapped in
    ``<![CDATA[…]]>`` (to carry text that would close its tag); the wrapper is not
    part of the value."""
    p = re.escape(prefix)
    invoke = re.compile(rf'<{p}{invoke_tag}\s+name="([^"]*)"\s*>')
    param = re.compile(rf'<{p}{param_tag}\s+name="([^"]*)"((?:\s+\w+="[^"]*")*)\s*>')
    close_param = f"</{prefix}{param_tag}>"
    close_invoke = f"</{prefix}{invoke_tag}>"

    def parse(body: str, tools: ToolSet) -> list[Call]:
        calls: list[Call] = []
        starts = list(invoke.finditer(body))
        if not starts:
            raise NotACall("no invoke")
        for k, im in enumerate(starts):
            end = starts[k + 1].start() if k + 1 < len(starts) else len(body)
            chunk = body[im.end():end]
            c = chunk.find(close_invoke)
            if c >= 0:
                chunk = chunk[:c]
            pairs: list[tuple[str, str, Any]] = []
            params = list(param.finditer(chunk))
            for j, pm in enumerate(params):
                stop = params[j + 1].start() if j + 1 < len(params) else len(chunk)
                value = chunk[pm.end():stop]
                cp = value.rfind(close_param)
                if cp >= 0:
                    value = value[:cp]
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', pm.group(2) or ""))
                forced: Any = ...
                if typed_attr in attrs:
                    forced = {"type": "string"} if attrs[typed_attr] == "true" else {}
                if cdata and value.startswith("<![CDATA["):
                    if not value.endswith("]]>"):
                        raise NotACall("an unclosed CDATA value")
                    value, forced = value[9:-3], {"type": "string"}  # text, exactly as written
                pairs.append((pm.group(1), trim_value(value) if forced is ... else value, forced))
            calls.append(_call(tools, im.group(1), pairs))
        return calls

    return parse


_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def parse_arg_key_value(body: str, tools: ToolSet) -> list[Call]:
    """``NAME<arg_key>K</arg_key><arg_value>V</arg_value>…`` (GLM, Spark, Ling):
    the body of one ``<tool_call>``."""
    i = body.find("<arg_key>")
    name = body if i < 0 else body[:i]
    if not name.strip() or "<" in name.strip() or "\n" in name.strip():
        raise NotACall("no function name")
    rest = "" if i < 0 else body[i:]
    pairs: list[tuple[str, str, Any]] = [(m.group(1).strip(), m.group(2), ...) for m in _ARG.finditer(rest)]
    leftover = _ARG.sub("", rest).strip()
    if leftover:
        raise NotACall("text between arguments")
    return [_call(tools, name, pairs)]


def open_args(call: Call, pending_key: str | None) -> str:
    """A call's arguments as a prefix: the object left open, and the key of the
    parameter being written (``{"a":1,"b":``)."""
    args = call.arguments[:-1]
    if pending_key is not None:
        args += ("," if len(args) > 1 else "") + dumps(pending_key) + ":"
    return args


class FunctionTagsSoFar:
    """:data:`~workers.formats.jsoncalls.PartialFn` for ``<function=NAME>`` tags:
    a function is known once its tag is closed; a parameter counts once its
    ``</parameter>`` is written (its value typed by the schema, as at the end).
    One per body (handed the same body, grown): the finished parameters are read
    again only when one more is finished."""

    def __init__(self) -> None:
        self.key: tuple[int, int] = (-1, -1)
        self.calls: list[Call] = []

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        last = None
        i = body.rfind("<function=")
        while i >= 0:
            last = _FUNCTION.match(body, i)
            if last is not None:
                break
            i = body.rfind("<function=", 0, i)
        if last is None:
            return []
        close = body.rfind("</parameter>", last.end())
        upto = last.end() if close < 0 else close + len("</parameter>")
        if (last.start(), upto) != self.key:
            self.key = (last.start(), upto)
            try:
                done = parse_function_tags(body[: last.start()], tools) if _FUNCTION.search(body, 0, last.start()) else []
                self.calls = [*done, parse_function_tags(body[last.start():upto], tools)[-1]]
            except NotACall:
                self.key, self.calls = (-1, -1), []
                return []
        if not self.calls:
            return []
        *done, current = self.calls
        tail = body[upto:]
        if "</function>" in tail:  # complete (an unclosed parameter runs to the function's end)
            try:
                return [*done, parse_function_tags(body[last.start():], tools)[-1]]
            except NotACall:
                return done
        pm = _PARAM.match(tail.lstrip(" \t\r\n"))
        return [*done, Call(current.name, open_args(current, pm.group(1).strip() if pm else None))]


def invoke_so_far(prefix: str = "", typed_attr: str = "string", *, invoke_tag: str = "invoke",
                  param_tag: str = "parameter", cdata: bool = False) -> Any:
    """``CallSyntax.partial`` for :func:`invoke_parser` (same options): an invoke
    is known once its tag is closed; a parameter counts once its closing tag is
    written (typed as at the end)."""
    parse = invoke_parser(prefix, typed_attr, invoke_tag=invoke_tag, param_tag=param_tag, cdata=cdata)
    p = re.escape(prefix)
    invoke = re.compile(rf'<{p}{invoke_tag}\s+name="([^"]*)"\s*>')
    param = re.compile(rf'<{p}{param_tag}\s+name="([^"]*)"((?:\s+\w+="[^"]*")*)\s*>')
    close_param = f"</{prefix}{param_tag}>"
    close_invoke = f"</{prefix}{invoke_tag}>"

    class SoFar:
        """One per body: the finished parameters are read again only when one
        more is finished."""

        def __init__(self) -> None:
            self.key: tuple[int, int] = (-1, -1)
            self.calls: list[Call] = []

        def __call__(self, body: str, tools: ToolSet) -> list[Call]:
            at = body.rfind(f"<{prefix}{invoke_tag}")
            last = invoke.match(body, at) if at >= 0 else None
            if last is None:  # (an invoke tag being written: the one before it, if any)
                starts = list(invoke.finditer(body))
                if not starts:
                    return []
                last = starts[-1]
            try:
                close = body.find(close_invoke, last.end())
                if close >= 0:
                    done = parse(body[: last.start()], tools) if invoke.search(body, 0, last.start()) else []
                    return [*done, parse(body[last.start():], tools)[-1]]
                cp = body.rfind(close_param, last.end())
                upto = last.end() if cp < 0 else cp + len(close_param)
                if (last.start(), upto) != self.key:
                    done = parse(body[: last.start()], tools) if invoke.search(body, 0, last.start()) else []
                    self.calls = [*done, parse(body[last.start():upto], tools)[-1]]
                    self.key = (last.start(), upto)
            except NotACall:
                self.key, self.calls = (-1, -1), []
                return []
            *done, current = self.calls
            pm = param.search(body, upto)
            return [*done, Call(current.name, open_args(current, pm.group(1) if pm else None))]

    return SoFar


_KEY_OPEN = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>", re.S)


class ArgKeyValueSoFar:
    """``CallSyntax.partial`` for :func:`parse_arg_key_value`: the call is known
    once its first ``<arg_key>`` follows its name; an argument counts once its
    ``</arg_value>`` is written. One per body: the finished arguments are read
    again only when one more is finished."""

    def __init__(self) -> None:
        self.upto = -1
        self.current: Call | None = None

    def __call__(self, body: str, tools: ToolSet) -> list[Call]:
        i = body.find("<arg_key>")
        name = body[:i].strip()
        if i < 0 or not name or "<" in name or "\n" in name:
            return []
        end = body.rfind("</arg_value>")
        upto = end + len("</arg_value>") if end > i else i
        if upto != self.upto:
            try:
                self.current = parse_arg_key_value(body[:upto], tools)[-1]
            except NotACall:
                self.current = None
            self.upto = upto
        if self.current is None:
            return []
        pm = _KEY_OPEN.match(body, upto)
        return [Call(self.current.name, open_args(self.current, pm.group(1).strip() if pm else None))]
