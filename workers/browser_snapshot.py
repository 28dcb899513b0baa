"""A page's accessibility tree as compact text with stable node refs (pure; no
browser here, so it is tested on recorded CDP output).

Input: the ``nodes`` of CDP's ``Accessibility.getFullAXTree`` (Chromium's own
tree: roles, accessible names, values, states, and the ``backendDOMNodeId`` of each
node's DOM element). Output, one line per node worth a model's attention, indented
by depth::

    - heading "Sign in" [level=1] [ref=e1]
    - textbox "Email" [ref=e2]
    - combobox "Plan" [value=Basic] [ref=e3]
      - option "Basic" [selected]
    - button "Go" [ref=e5]
    - text: Welcome back

A ref (``e12``) names a DOM node (its backendDOMNodeId) for the actions (click,
type, select). :class:`RefMap` keeps them stable: the same node keeps its ref from
one snapshot to the next, a new node gets the next number, and the map is reset
when the tab navigates (a ref names a node of one document only).

What is left out: nodes Chromium marks ignored (their children are kept, one level
up), InlineTextBox (layout pieces of a text) and list bullets, a text that only
repeats its parent's name or value, and unnamed generic containers such as a
label's box (their children move up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Roles written without a ref: text carries no action.
_TEXT_ROLES = {"StaticText", "text"}
# Containers that say nothing by themselves: when unnamed, their children move up.
_TRANSPARENT = {"generic", "none", "presentation", "LineBreak", "LayoutTable", "LayoutTableRow", "LayoutTableCell",
                "paragraph", "group", "Section", "div", "sectionheader", "sectionfooter", "LabelText",
                "MenuListPopup"}
# Left out with everything below them: layout pieces of a text, list bullets.
_DROP = {"InlineTextBox", "ListMarker"}
# States worth showing, as ``[name]`` (booleans) or ``[name=value]``.
_STATES = ("checked", "selected", "pressed", "expanded", "disabled", "required", "readonly", "invalid", "level",
           "focused")
_VALUE_ROLES = {"textbox", "searchbox", "combobox", "spinbutton", "slider", "textField", "ComboBoxGrouping",
                "ComboBoxSelect"}
MAX_NAME = 200


@dataclass
class RefMap:
    """DOM node (backendDOMNodeId) <-> ref, stable across snapshots of one document."""

    by_node: dict[int, str] = field(default_factory=dict)
    by_ref: dict[str, int] = field(default_factory=dict)
    next_n: int = 1

    def ref(self, backend_id: int) -> str:
        r = self.by_node.get(backend_id)
        if r is None:
            r = f"e{self.next_n}"
            self.next_n += 1
            self.by_node[backend_id] = r
            self.by_ref[r] = backend_id
        return r

    def node(self, ref: str) -> int | None:
        return self.by_ref.get(ref.strip().lstrip("[").rstrip("]").removeprefix("ref="))

    def reset(self) -> None:
        """The tab navigated: no ref of the old document names anything now."""
        self.by_node.clear()
        self.by_ref.clear()
        self.next_n = 1


def _value(v: Any) -> Any:
    return v.get("value") if isinstance(v, dict) else v


def _quote(s: str) -> str:
    s = " ".join(s.split())
    if len(s) > MAX_NAME:
        s = s[:MAX_NAME] + "…"
    return '"' + s.replace('"', '\\"') + '"'


def _props(node: dict[str, Any]) -> dict[str, Any]:
    return {p.get("name"): _value(p.get("value")) for p in node.get("properties") or []}


def _attrs(role: str, node: dict[str, Any], props: dict[str, Any]) -> list[str]:
    out = []
    for k in _STATES:
        v = props.get(k)
        if v in (None, False, "false", ""):
            continue
        if k == "invalid" or (k == "focused" and role == "RootWebArea"):
            continue
        if k == "selected" and role != "option" and role != "tab":
            continue
        if k == "level" and role != "heading":
            continue
        out.append(f"[{k}]" if v is True or v == "true" else f"[{k}={v}]")
    value = _value(node.get("value"))
    if role in _VALUE_ROLES and value not in (None, ""):
        out.insert(0, f"[value={_quote(str(value))[1:-1]}]")
    url = props.get("url")
    if role == "link" and isinstance(url, str) and url:
        out.append(f"[url={url}]")
    return out


def render(nodes: list[dict[str, Any]], refs: RefMap, max_chars: int = 40_000) -> str:
    """The tree of ``nodes`` as text (see the module docstring), refs taken from
    ``refs`` (new nodes are added to it). Longer than ``max_chars``: cut at a line,
    and the last line says how much was left out."""
    by_id = {str(n.get("nodeId")): n for n in nodes}
    roots = [n for n in nodes if not n.get("parentId") or str(n.get("parentId")) not in by_id]
    lines: list[str] = []

    def walk(node: dict[str, Any], depth: int, said: tuple[str, ...]) -> None:
        """``said``: what the enclosing element's line already shows (its name, its
        value): a text child repeating it is left out."""
        role = str(_value(node.get("role")) or "")
        name = str(_value(node.get("name")) or "")
        if role in _DROP:
            return
        kids = [by_id[str(c)] for c in node.get("childIds") or [] if str(c) in by_id]
        if node.get("ignored") or (role in _TRANSPARENT and not name):
            for k in kids:
                walk(k, depth, said)
            return
        if role in _TEXT_ROLES:
            text = " ".join(name.split())
            if text and text not in said:
                lines.append("  " * depth + f"- text: {_quote(text)[1:-1]}")
            return
        if role == "RootWebArea":
            if name:
                lines.append("  " * depth + f"- document {_quote(name)}")
            for k in kids:
                walk(k, depth, (" ".join(name.split()),))
            return
        props = _props(node)
        parts = [f"- {role}"]
        if name:
            parts.append(_quote(name))
        parts.extend(_attrs(role, node, props))
        backend_id = node.get("backendDOMNodeId")
        if isinstance(backend_id, int):
            parts.append(f"[ref={refs.ref(backend_id)}]")
        lines.append("  " * depth + " ".join(parts))
        shown = (" ".join(name.split()), " ".join(str(_value(node.get("value")) or "").split()))
        for k in kids:
            walk(k, depth + 1, shown)

    for r in roots:
        walk(r, 0, ())
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        size += len(line) + 1
        if size > max_chars:
            out.append(f"… {len(lines) - i} more lines left out (the page is long: use browser_wait_for or scroll "
                       "with browser_press to reach the rest)")
            break
        out.append(line)
    return "\n".join(out)
