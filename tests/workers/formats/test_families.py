"""What every family promises besides reading llama.cpp's cases: a call written
the way the family writes it (``forced_call``) reads back as exactly that call,
whole and one character at a time; and each template is recognised as the family
that lists it."""

from __future__ import annotations

import json

import pytest

from tests.workers.formats.cases import TEMPLATES, template
from turnout.workers import formats
from turnout.workers.formats.events import Call, Text

TOOLS = formats.ToolSet([
    {"name": "Bash", "parameters": {"type": "object", "properties": {
        "command": {"type": "string"}, "timeout": {"type": "integer"}}}},
    {"name": "Write", "parameters": {"type": "object", "properties": {
        "file_path": {"type": "string"}, "content": {"type": "string"}}}},
])
CALLS = [
    ("Bash", {"command": "echo hi", "timeout": 5}),
    ("Write", {"file_path": "/tmp/x.py", "content": "def f():\n    return {\"a\": [1, 2]}\n"}),
    ("Bash", {}),
]
FAMILIES = [f for f in formats.registry().values() if f.forced_call is not None]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("name,args", CALLS, ids=["bash", "write", "no-args"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chars"])
def test_forced_call_reads_back(family: formats.Family, name: str, args: dict, chunked: bool) -> None:
    assert family.forced_call is not None
    text = family.forced_call(name, json.dumps(args, ensure_ascii=False))
    reader = family.new_reader(TOOLS)
    events = []
    for chunk in (list(text) if chunked else [text]):
        events += reader.feed(chunk)
    events += reader.finish()
    calls = [e for e in events if isinstance(e, Call)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [(name, args)], events
    assert "".join(e.text for e in events if isinstance(e, Text)).strip() == ""


@pytest.mark.parametrize("family", list(formats.registry().values()), ids=lambda f: f.name)
def test_templates_listed_by_a_family_are_detected_as_it(family: formats.Family) -> None:
    for name in family.examples:
        assert (TEMPLATES / name).exists(), name
        assert formats.detect(template(name)).name == family.name, name
