"""The layers: gateway/, supervisor/ and workers/ run in different processes and
share only protocol/ (the contracts that cross a process boundary). None of them
imports another (a lazy import inside a function counts too); bench/, cli/ and
tests/ may import anything.

What still crosses is listed in ``ALLOWED``, each with why and where it should go.
The list must only shrink: an entry that no longer occurs fails the test as well,
so the entry is removed together with the import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("gateway", "supervisor", "workers")

# (importing file, imported module) -> why it is still here. Nothing crosses now;
# an entry would have to say why, and go again with the import.
ALLOWED: dict[tuple[str, str], str] = {}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            # ``from gateway import media`` imports gateway.media
            out.update(f"{node.module}.{a.name}" for a in node.names if node.module in LAYERS)
    return out


def crossings() -> set[tuple[str, str]]:
    found = set()
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for mod in _imports(path):
                top = mod.split(".")[0]
                if top in LAYERS and top != layer:
                    found.add((rel, mod))
    return found


def test_layers_import_each_other_only_through_protocol() -> None:
    new = sorted(crossings() - set(ALLOWED))
    assert not new, ("gateway/, supervisor/ and workers/ share only protocol/: move the contract there "
                     f"(or, for a CLI command, into cli/): {new}")


def test_the_allowlist_only_shrinks() -> None:
    gone = sorted(set(ALLOWED) - crossings())
    assert not gone, f"no longer imported: remove from ALLOWED in tests/test_layers.py: {gone}"


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from workers.models import locate\n    import supervisor.control\n")
    assert _imports(p) >= {"workers.models", "supervisor.control"}
