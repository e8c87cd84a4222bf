"""Dependencies point one way: no module of the runtime needs, directly or through others, a module that
needs it back. Every import counts, also one inside a function or under TYPE_CHECKING: a cycle hidden in a
function is still two modules that cannot be understood (or moved) apart."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
# import prefix -> folder, as pyproject.toml's package-dir maps them
PACKAGES = {
    "resonance.runtime": ROOT / "runtime",
    "resonance.train": ROOT / "train",
    "resonance.export": ROOT / "export",
    "resonance.device_configs": ROOT / "device_configs",
    "resonance": ROOT / "resonance",
}


def modules() -> Iterator[Tuple[str, Path]]:
    for prefix, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if prefix == "resonance" and parts and f"resonance.{parts[0]}" in PACKAGES:
                continue
            yield ".".join([prefix, *parts]), path


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the project's modules it imports (``from pkg import name`` counts as pkg.name when that is a
    module, else as pkg)."""
    files = dict(modules())
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .y import z
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    assert "resonance.runtime.transcriber" in graph["resonance.runtime.models"]  # imported inside a function
    assert "resonance.runtime.server.app" in graph["resonance.runtime.server"]


def test_the_runtime_has_no_import_cycle():
    graph = import_graph()
    runtime = {
        name: {dep for dep in deps if dep.startswith("resonance.runtime")}
        for name, deps in graph.items()
        if name.startswith("resonance.runtime")
    }
    assert find_cycle(runtime) is None
