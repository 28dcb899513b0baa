"""Reading JSON that models write: balanced values, calls as JSON objects."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from turnout.workers.formats.events import Call, NotACall
from turnout.workers.formats.schema import ToolSet, dumps


def json_end(s: str, start: int = 0) -> int | None:
    """Index just past the JSON object/array (or string) that begins at the first
    non-space character at or after ``start``; None while it is not closed (or
    when no object, array or string begins there). Tracks strings and escapes, not
    full validity. One scan of :class:`JsonEnd`."""
    return JsonEnd(start)(s)


class JsonEnd:
    """:func:`json_end` for a string that grows: call it again with the longer
    string and it scans only what was added (linear in the whole, where calling
    ``json_end`` on every chunk is quadratic). Same answers as ``json_end(s, start)``."""

    def __init__(self, start: int = 0) -> None:
        self.pos = start
        self.kind = ""  # "" (not started), "{" (object or array), '"' (string)
        self.depth = 0
        self.in_str = self.esc = False

    def __call__(self, s: str) -> int | None:
        i, n = self.pos, len(s)
        if not self.kind:
            while i < n and s[i] in " \t\r\n":
                i += 1
            self.pos = i
            if i >= n or s[i] not in '{["':
                return None
            self.kind = "{" if s[i] in "{[" else '"'
            self.in_str = self.kind == '"'
            if self.in_str:
                i += 1
        depth, in_str, esc = self.depth, self.in_str, self.esc
        end = None
        while i < n:
            ch = s[i]
            i += 1
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                    if self.kind == '"':
                        end = i
                        break
            elif ch == '"':
                in_str = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        self.pos, self.depth, self.in_str, self.esc = i, depth, in_str, esc
        return end


class JsonAfter:
    """A ``complete`` (resumable, like :class:`JsonEnd`) for a body ``HEAD MARKER
    JSON``: Mistral's ``NAME[ARGS]{…}``, Kimi's ``ID<|tool_call_argument_begin|>{…}``.
    The body ends with the JSON value after the marker. ``head_ok``: a test of
    each character of the head (leading whitespace aside); one that fails it
    makes the body no call (0)."""

    def __init__(self, marker: str, head_ok: Callable[[str], bool] | None = None, start: int = 0) -> None:
        self.marker, self.head_ok = marker, head_ok
        self.searched = self.checked = start
        self.began = False
        self.json: JsonEnd | None = None

    def __call__(self, s: str) -> int | None:
        if self.json is None:
            j = s.find(self.marker, self.searched)
            head_end = j if j >= 0 else len(s)
            if self.head_ok is not None:
                for k in range(self.checked, head_end):
                    c = s[k]
                    if not self.began and c in " \t\r\n":
                        continue
                    self.began = True
                    if not self.head_ok(c):
                        return 0
                self.checked = head_end
            if j < 0:
                self.searched = max(self.searched, len(s) - len(self.marker) + 1)
                return None
            self.json = JsonEnd(j + len(self.marker))
        return self.json(s)


def json_scan() -> JsonEnd:
    """``CallSyntax.scan`` for a body that is one JSON value (the linear
    :func:`json_complete`)."""
    return JsonEnd()


def loads(text: str) -> Any:
    """JSON as models write it: control characters allowed inside strings."""
    try:
        return json.loads(text, strict=False)
    except ValueError:
        raise NotACall(f"not JSON: {text[:80]!r}") from None


def args_object(value: Any) -> dict[str, Any]:
    """Arguments given as an object or as a JSON string of one."""
    if isinstance(value, str):
        value = loads(value) if value.strip() else {}
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NotACall("arguments are not an object")
    return value


def call_from_obj(obj: Any, *, name_keys: Iterable[str] = ("name",),
                  args_keys: Iterable[str] = ("arguments", "parameters"),
                  id_keys: Iterable[str] = ("id",)) -> Call:
    """``{"name": …, "arguments": {…}}`` (or the OpenAI ``{"function": {…}}``
    shape, or the given key names) as a call."""
    if not isinstance(obj, dict):
        raise NotACall("a call is a JSON object")
    if isinstance(obj.get("function"), dict) and "name" in obj["function"]:
        outer_id = obj.get("id")
        obj = dict(obj["function"], **({"id": outer_id} if outer_id is not None else {}))
    name = next((obj[k] for k in name_keys if isinstance(obj.get(k), str)), None)
    if not name:
        raise NotACall("a call names its function")
    args: Any = {}
    for k in args_keys:
        if k in obj:
            args = obj[k]
            break
    call_id = next((str(obj[k]) for k in id_keys if obj.get(k) is not None), "")
    return Call(name, dumps(args_object(args)), call_id)


def calls_from_json(body: str, tools: ToolSet | None = None, **keys: Any) -> list[Call]:
    """Every call in ``body``: one JSON object, an array of them, or several
    separated by whitespace, commas or semicolons; a ```json fence around them is
    allowed. Raises :class:`NotACall` unless ``body`` is entirely calls."""
    s = body.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0].strip()
    calls: list[Call] = []
    pos = 0
    while pos < len(s):
        while pos < len(s) and s[pos] in " \t\r\n;,":
            pos += 1
        if pos >= len(s):
            break
        if s[pos] not in "{[":
            raise NotACall("text after the calls")
        end = json_end(s, pos)
        if end is None:
            raise NotACall("unclosed JSON")
        value = loads(s[pos:end])
        for item in value if isinstance(value, list) else [value]:
            calls.append(call_from_obj(item, **keys))
        pos = end
    if not calls:
        raise NotACall("no call")
    return calls


def json_complete(s: str) -> int | None:
    """``CallSyntax.complete`` for a body that is one JSON value."""
    return json_end(s, 0)


def close_partial_json(s: str) -> str | None:
    """The JSON value that the unfinished ``s`` (a call cut off by max_tokens)
    begins, closed where it stopped: only values that were finished are kept (a
    cut string or number is dropped, never passed on shortened: a shortened shell
    command is a different command), then open objects and arrays are closed.
    None when ``s`` does not start a JSON object or array."""
    t = s.lstrip()
    if not t.startswith(("{", "[")):
        return None
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []  # (end offset, closers) of prefixes that may close cleanly
    in_str = esc = False
    for j, ch in enumerate(t):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                cuts.append((j + 1, "".join(reversed(stack))))
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            cuts.append((j + 1, "".join(reversed(stack))))
        elif ch in "}]":
            if stack:
                stack.pop()
            cuts.append((j + 1, "".join(reversed(stack))))
            if not stack:
                return t[: j + 1]
        elif ch == ",":
            cuts.append((j, "".join(reversed(stack))))
    for cand in (t[:end] + closers for end, closers in reversed(cuts)):
        try:
            json.loads(cand, strict=False)  # models put raw control characters in strings
        except ValueError:
            continue
        return cand
    return None
