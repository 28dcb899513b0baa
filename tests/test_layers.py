"""The layers: gateway/, supervisor/ and workers/ run in different processes and
share only protocol/ (the contracts that cross a process boundary). None of them
imports another (a lazy import inside a function counts too); bench/, cli/ and
tests/ may import anything.

The tree installs as one namespace (pyproject.toml: ``gateway/`` is
``turnout.gateway``): every import names it so, and every package of the tree is
in the install.

What still crosses is listed in ``ALLOWED``, each with why and where it should go.
The list must only shrink: an entry that no longer occurs fails the test as well,
so the entry is removed together with the import."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("gateway", "supervisor", "workers")
TOPS = ("protocol", "gateway", "supervisor", "workers", "cli", "bench")

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
            # ``from turnout.gateway import media`` imports turnout.gateway.media
            out.update(f"{node.module}.{a.name}" for a in node.names if _layer(node.module) == node.module[8:])
    return out


def _layer(mod: str) -> str | None:
    """``gateway`` for ``turnout.gateway.app``; None outside the layers."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "turnout" and parts[1] in LAYERS else None


def crossings() -> set[tuple[str, str]]:
    found = set()
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for mod in _imports(path):
                other = _layer(mod)
                if other is not None and other != layer:
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
    p.write_text("def f():\n    from turnout.workers.models import locate\n    import turnout.supervisor.control\n"
                 "from turnout.gateway import media\n")
    assert _imports(p) >= {"turnout.workers.models", "turnout.supervisor.control", "turnout.gateway.media"}


def _tree_files() -> list[Path]:
    return sorted(p for d in (*TOPS, "tests") for p in (ROOT / d).rglob("*.py") if "fixtures" not in p.parts)


def test_every_import_names_the_turnout_namespace() -> None:
    # A bare ``import gateway`` would load a second copy of a module under another
    # name (two ApiError classes, two registries) wherever the tree is on sys.path.
    bare = sorted((p.relative_to(ROOT).as_posix(), mod) for p in _tree_files() for mod in _imports(p)
                  if mod.split(".")[0] in TOPS)
    assert not bare, f"import these as turnout.<package>: {bare}"


def test_every_package_of_the_tree_is_installed() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["package-dir"] == {f"turnout.{d}": d for d in TOPS}
    tree = {"turnout." + p.parent.relative_to(ROOT).as_posix().replace("/", ".")
            for d in TOPS for p in (ROOT / d).rglob("__init__.py")}
    data = {f"turnout.{d}.data" for d in TOPS if (ROOT / d / "data").is_dir()}
    assert set(conf["packages"]) == tree | data
