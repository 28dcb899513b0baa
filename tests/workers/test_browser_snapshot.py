"""The accessibility tree as text with stable refs (workers/browser_snapshot.py), on
Chromium's recorded answer for the e2e test site's form page
(tests/fixtures/browser/record.py made it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from turnout.workers.browser_snapshot import RefMap, render

AX = json.loads((Path(__file__).resolve().parents[1] / "fixtures/browser/form-ax.json").read_text())


def line(text: str, pattern: str) -> str:
    hits = [x for x in text.splitlines() if re.search(pattern, x)]
    assert len(hits) == 1, (pattern, text)
    return hits[0]


def ref_of(text: str, pattern: str) -> str:
    hit = re.search(r"\[ref=(e\d+)\]", line(text, pattern))
    assert hit
    return hit.group(1)


def test_the_page_reads_as_roles_names_values_and_states() -> None:
    out = render(AX["before"], RefMap())
    assert out.splitlines()[0] == '- document "Test form"'
    assert re.fullmatch(r'- heading "Order" \[level=1\] \[ref=e\d+\]', line(out, "heading"))
    assert re.fullmatch(r'  - combobox "Size" \[value=Small\] \[ref=e\d+\]', line(out, "combobox"))
    assert re.fullmatch(r'    - option "Small" \[selected\] \[ref=e\d+\]', line(out, '"Small"'))
    assert "[selected]" not in line(out, '"Large"')
    assert re.fullmatch(r'- link "Elsewhere" \[url=http://127.0.0.1:9/\] \[ref=e\d+\]', line(out, "Elsewhere"))
    assert line(out, "item 1") == "    - text: item 1"


def test_layout_pieces_and_repeated_text_are_left_out() -> None:
    out = render(AX["after_click"], RefMap())
    assert "InlineTextBox" not in out and "ListMarker" not in out and "•" not in out
    assert "generic" not in out and "LabelText" not in out and "MenuListPopup" not in out
    # a button's own text is its name: said once
    assert out.count("Send order") == 1
    # a field's text is its value: said once
    assert out.count("Ada") == 1 and "[value=Ada]" in line(out, "textbox")


def test_every_element_gets_a_distinct_ref_naming_its_dom_node() -> None:
    refs = RefMap()
    out = render(AX["before"], refs)
    found = re.findall(r"\[ref=(e\d+)\]", out)
    assert len(found) == len(set(found)) >= 10
    by_backend = {n["backendDOMNodeId"]: n for n in AX["before"] if "backendDOMNodeId" in n}
    button = refs.node(ref_of(out, 'button "Add item"'))
    assert button is not None and by_backend[button]["name"]["value"] == "Add item"
    assert refs.node("[ref=" + ref_of(out, "heading") + "]") == refs.node(ref_of(out, "heading"))
    assert refs.node("e999") is None


def test_refs_are_stable_across_snapshots_and_new_nodes_get_new_ones() -> None:
    refs = RefMap()
    before = render(AX["before"], refs)
    after = render(AX["after_click"], refs)
    for pattern in ('button "Add item"', 'textbox "Name"', 'combobox "Size"', "heading", '"Elsewhere"'):
        assert ref_of(before, pattern) == ref_of(after, pattern), pattern
    old = set(re.findall(r"\[ref=(e\d+)\]", before))
    new_items = [r for r in re.findall(r"listitem \[ref=(e\d+)\]", after) if r not in old]
    assert len(new_items) == 1  # the item the click added


def test_a_navigation_resets_the_refs() -> None:
    refs = RefMap()
    first = render(AX["after_click"], refs)
    refs.reset()
    assert refs.node(ref_of(first, "heading")) is None
    again = render(AX["before"], refs)
    assert ref_of(again, "heading") == "e1"


def test_a_long_page_is_cut_at_a_line_and_says_so() -> None:
    out = render(AX["before"], RefMap(), max_chars=120)
    assert len(out) < 400
    assert out.splitlines()[-1].startswith("… ") and "more lines left out" in out


def test_ignored_nodes_keep_their_children_and_long_names_are_cut() -> None:
    nodes: list[dict[str, Any]] = [
        {"nodeId": "1", "role": {"value": "RootWebArea"}, "name": {"value": ""}, "childIds": ["2"]},
        {"nodeId": "2", "parentId": "1", "ignored": True, "role": {"value": "none"}, "childIds": ["3"]},
        {"nodeId": "3", "parentId": "2", "role": {"value": "button"}, "name": {"value": "x" * 500},
         "backendDOMNodeId": 7, "childIds": []},
    ]
    out = render(nodes, RefMap())
    assert out == f'- button "{"x" * 200}…" [ref=e1]'


@pytest.mark.parametrize("name", ['say "hi"', "two\nlines"])
def test_names_are_quoted_on_one_line(name: str) -> None:
    nodes = [{"nodeId": "1", "role": {"value": "button"}, "name": {"value": name}, "backendDOMNodeId": 3}]
    out = render(nodes, RefMap())
    assert "\n" not in out and out.startswith('- button "') and out.endswith(" [ref=e1]")
