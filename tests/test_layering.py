"""The package layout's rules, read from the source: who may import whom, no cycles, small modules.

docs/architecture.md explains the layers; this test is what keeps them true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "coordinator"
INTEGRATIONS = ROOT / "integrations"

# Stage -> the stages it may import (besides itself). Data flows client -> transport -> aggregator
# -> journal -> forward; imports point down this table, never up, so every stage can be read and
# tested with only the stages below it.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "settings": {"errors"},
    "core": {"errors"},
    "transport": {"core", "errors", "settings"},
    "journal": {"core", "errors", "settings"},
    "forward": {"core", "errors", "settings", "journal"},
    "aggregator": {"core", "errors", "settings", "transport", "journal", "forward"},
    "client": {"core", "errors", "settings", "transport", "journal", "forward"},
    "ui": {"core", "errors", "settings", "journal"},
    "cli": {"core", "errors", "settings", "transport", "journal", "forward", "aggregator", "client", "api", "ui"},
    "integrations": {"api", "errors", "settings"},
    "api": {"errors", "settings", "client", "core"},
}
MAX_MODULE_LINES = 450  # "about 400": a module past this holds two concepts


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for base, prefix in ((PKG, "coordinator"), (INTEGRATIONS, "coordinator.integrations")):
        for p in sorted(base.rglob("*.py")):
            rel = p.relative_to(base).with_suffix("")
            parts = [prefix, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = p
    return mods


def _stage(module: str) -> str:
    parts = module.split(".")
    if module == "coordinator":
        return "api"
    if parts[1] == "integrations":
        return "integrations"
    return parts[1]


def _imports(path: Path, module: str, is_pkg: bool) -> set[str]:
    """Every coordinator module this file imports, anywhere (lazy imports in functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = module if is_pkg else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "coordinator")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "coordinator":
                continue
            found.add(target)
            for a in node.names:  # ``from coordinator.transport import wire`` imports a module
                found.add(f"{target}.{a.name}")
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = _imports(path, name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_stages_import_only_the_stages_below_them() -> None:
    """No stage imports upward or sideways (e.g. the journal never imports the transport)."""
    bad = []
    for mod, deps in _graph().items():
        me = _stage(mod)
        for d in deps:
            other = _stage(d)
            if other != me and other not in ALLOWED[me]:
                bad.append(f"{mod} ({me}) imports {d} ({other})")
    assert not bad, "\n".join(sorted(bad))


def test_integrations_use_only_the_public_api() -> None:
    """Integrations import ``coordinator`` (and its errors/settings), never a stage's internals."""
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        if _stage(m) == "integrations"
        for d in deps
        if _stage(d) not in ("api", "errors", "settings", "integrations")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    """The module graph (package __init__ edges excluded: they only re-export) has no cycle."""
    graph = _graph()
    mods = _modules()
    edges = {m: {d for d in deps if mods[d].name != "__init__.py"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted([*PKG.rglob("*.py"), *INTEGRATIONS.rglob("*.py")]), ids=str)
def test_module_is_small_and_says_what_it_owns(path: Path) -> None:
    """Every module is at most about 400 lines and opens with a docstring."""
    text = path.read_text()
    n = text.count("\n")
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept"
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(ROOT)} has no module docstring"
