"""The import graph of the package: no cycles, and layers that only import downward.

Every ``import`` of a ``resonance.*`` module is read with ``ast`` -- at module level and inside functions
(the lazy imports that keep ``resonance --help`` fast still make a dependency) -- from the folders
pyproject.toml maps to the package. Not seen: ``importlib.import_module`` by name, which the package uses only
for a package's own modules (the lazy public API in ``__init__.py``, bench's engine registry). Run
``python tests/test_import_graph.py`` to print the graph's summary.

Layers, lowest first (a module may import its own layer and those its row names):
  core     resonance/*.py (constants, errors, audio, fsutil, system, cpu, cli_common …)   -
  data     resonance/data (a patient's recordings)                                         core
  runtime  runtime/ (on the device: never torch)                                          core, data
  train    train/ (never the runtime: a model is trained, then exported)                  core, data
  export   export/ (writes the bundle the runtime reads, checks it with the runtime)      core, data, train, runtime
  bench    bench/ (compares engines; nothing imports it but the CLI)                       all of the above
  update   update/ (retrain from corrections, judge, deploy; the loop simulation)          core .. export
  app      resonance/cli.py, resonance/demo.py (the command line and the demo)             everything
torch, transformers, peft and optimum are never imported by core, data or runtime.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "resonance"
APP = {"resonance.cli", "resonance.demo"}
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "runtime": {"core", "data", "runtime"},
    "train": {"core", "data", "train"},
    "export": {"core", "data", "train", "runtime", "export"},
    "bench": {"core", "data", "train", "runtime", "export", "bench"},
    "update": {"core", "data", "train", "runtime", "export", "update"},
    "app": {"core", "data", "train", "runtime", "export", "bench", "update", "app"},
}
HEAVY = ("torch", "transformers", "peft", "optimum")
TORCH_FREE = ("core", "data", "runtime")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function (runs when called), not at import time


def package_folders(root: Path = ROOT) -> Dict[str, Path]:
    """Package name -> folder, as pyproject.toml maps them (resonance.train -> train/ …)."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})

    def folder(name: str) -> Path:  # setuptools' rule: the nearest mapped parent, then the dotted rest
        parent, rest = name, []
        while parent not in mapped and "." in parent:
            parent, last = parent.rsplit(".", 1)
            rest.insert(0, last)
        return root.joinpath(mapped.get(parent, parent.replace(".", "/")), *rest)

    return {name: folder(name) for name in setuptools["packages"]}


def module_files(folders: Dict[str, Path]) -> Dict[str, Path]:
    """Every module of the package: dotted name -> file (subpackages counted once, by their own mapping)."""
    modules = {}
    for package, folder in folders.items():
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _resolve(name: str, modules: Iterable[str]) -> str:
    """The module an imported name belongs to: ``resonance.x.y`` -> itself if a module, else ``resonance.x``."""
    known = set(modules)
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str, path: Path, modules: Iterable[str]) -> List[Tuple[str, int, bool]]:
    """(imported name, line, lazy) for every import statement of the file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: List[Tuple[str, int, bool]] = []
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from . import x / from .x import y
                    parent = package.split(".")
                    parent = parent[: len(parent) - (child.level - 1)]
                    base = ".".join([*parent, base] if base else parent)
                # `from resonance import system` imports the module resonance.system, not just a name
                found.extend((f"{base}.{alias.name}", child.lineno, lazy) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(root: Path = ROOT) -> Tuple[Dict[str, Path], List[Edge], List[Edge]]:
    """(modules, edges between the package's modules, imports of other packages)."""
    modules = module_files(package_folders(root))
    internal, external = [], []
    for module, path in modules.items():
        for name, line, lazy in imports_of(module, path, modules):
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                target = _resolve(name, modules)
                if target != module and target != PACKAGE:  # `resonance` itself only holds __version__
                    internal.append(Edge(module, target, line, lazy))
            else:
                external.append(Edge(module, name.split(".")[0], line, lazy))
    return modules, internal, external


def cycles(nodes: Iterable[str], edges: Iterable[Edge]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted: the import cycles."""
    graph: Dict[str, Set[str]] = {n: set() for n in nodes}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def strongconnect(v: str) -> None:  # recursion depth = module count (~100): fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def layer_of(module: str) -> str:
    if module in APP:
        return "app"
    parts = module.split(".")
    if len(parts) > 2 or (
        len(parts) == 2 and parts[1] in ("data", "train", "export", "runtime", "bench", "update")
    ):
        return {"device_configs": "runtime"}.get(parts[1], parts[1])
    return "core"


def layer_violations(internal: Iterable[Edge], external: Iterable[Edge]) -> List[str]:
    problems = []
    for e in internal:
        if layer_of(e.imported) not in ALLOWED[layer_of(e.importer)]:
            problems.append(
                f"{e.importer} ({layer_of(e.importer)}) imports {e.imported} ({layer_of(e.imported)}), line {e.line}"
            )
    for e in external:
        if e.imported in HEAVY and layer_of(e.importer) in TORCH_FREE:
            problems.append(f"{e.importer} ({layer_of(e.importer)}) imports {e.imported}, line {e.line}")
    return problems


def _describe(component: List[str], edges: Iterable[Edge]) -> str:
    """The modules of a cycle and its shortest loop through the first of them, with the importing lines."""
    inside = set(component)
    first_edge: Dict[Tuple[str, str], Edge] = {}
    for e in edges:
        if e.importer in inside and e.imported in inside:
            first_edge.setdefault((e.importer, e.imported), e)
    start = component[0]
    came_from: Dict[str, Edge] = {}
    frontier = [start]
    while frontier and start not in came_from:  # breadth first: the shortest way back to start
        step = []
        for node in frontier:
            for (a, b), e in sorted(first_edge.items()):
                if a == node and b not in came_from:
                    came_from[b] = e
                    step.append(b)
        frontier = step
    loop, node = [], start
    while True:
        e = came_from[node]
        loop.insert(0, f"{e.importer} -> {e.imported} (line {e.line}{', in a function' if e.lazy else ''})")
        node = e.importer
        if node == start:
            break
    return f"cycle among {len(component)} modules ({', '.join(component)}):\n    " + "\n    ".join(loop)


def test_the_package_has_no_import_cycle():
    modules, internal, _ = import_graph()
    assert len(modules) > 50 and len(internal) > 100  # the walk found the package, not an empty folder
    found = cycles(modules, internal)
    assert not found, "\n".join(_describe(c, internal) for c in found)


def test_the_graph_sees_imports_in_functions_and_of_modules_named_in_from():
    _, internal, _ = import_graph()
    lazy = {(e.importer, e.imported): e.lazy for e in internal}
    assert lazy[("resonance.runtime.models", "resonance.runtime.transcriber")] is True  # inside a function
    assert ("resonance.runtime.server", "resonance.runtime.server.app") in lazy  # a package's own module
    assert ("resonance.cli", "resonance.bench.cli") in lazy  # from resonance.bench import cli as bench_cli


def test_layers_import_only_downward():
    _, internal, external = import_graph()
    problems = layer_violations(internal, external)
    assert not problems, "\n".join(problems)


def redefined_constants(modules: Dict[str, Path]) -> List[str]:
    """Module-level assignments of a name that resonance/constants.py defines: a second home for a fact."""
    shared = set(_assigned_names(modules["resonance.constants"]))
    return [
        f"{module} defines {name} (import it from resonance.constants)"
        for module, path in sorted(modules.items())
        if module != "resonance.constants"
        for name in _assigned_names(path)
        if name in shared
    ]


def _assigned_names(path: Path) -> List[str]:
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def test_shared_facts_have_one_home():
    modules, _, _ = import_graph()
    problems = redefined_constants(modules)
    assert not problems, "\n".join(problems)


def _package(tmp_path: Path, files: Dict[str, str]) -> Path:
    """A throwaway project with the same pyproject mapping, to show the checks catch what they should."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackages = ["resonance", "resonance.runtime", "resonance.train"]\n'
        '[tool.setuptools.package-dir]\n"resonance.runtime" = "runtime"\n"resonance.train" = "train"\n',
        encoding="utf-8",
    )
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    root = _package(
        tmp_path,
        {
            "resonance/__init__.py": "",
            "resonance/errors.py": "",
            "runtime/__init__.py": "",
            "runtime/a.py": "from resonance.runtime import b\n",
            "runtime/b.py": "def f():\n    from resonance.runtime.c import g\n",
            "runtime/c.py": "from . import a\nfrom resonance.errors import Error\n",
            "train/__init__.py": "",
        },
    )
    modules, internal, _ = import_graph(root)
    found = cycles(modules, internal)
    assert found == [["resonance.runtime.a", "resonance.runtime.b", "resonance.runtime.c"]]
    assert _describe(found[0], internal).splitlines()[1:] == [
        "    resonance.runtime.a -> resonance.runtime.b (line 1)",
        "    resonance.runtime.b -> resonance.runtime.c (line 2, in a function)",
        "    resonance.runtime.c -> resonance.runtime.a (line 1)",
    ]


def test_an_upward_import_and_torch_in_the_runtime_are_found(tmp_path):
    root = _package(
        tmp_path,
        {
            "resonance/__init__.py": "",
            "runtime/__init__.py": "",
            "runtime/a.py": "def f():\n    import torch\n    from resonance.train.t import x\n",
            "train/__init__.py": "",
            "train/t.py": "import torch\nfrom resonance.runtime import a\n",
        },
    )
    modules, internal, external = import_graph(root)
    assert cycles(modules, internal) == [["resonance.runtime.a", "resonance.train.t"]]
    assert layer_violations(internal, external) == [
        "resonance.runtime.a (runtime) imports resonance.train.t (train), line 3",
        "resonance.train.t (train) imports resonance.runtime.a (runtime), line 2",
        "resonance.runtime.a (runtime) imports torch, line 2",  # torch in train/t.py is allowed
    ]


def main() -> int:
    modules, internal, external = import_graph()
    found = cycles(modules, internal)
    problems = layer_violations(internal, external)
    lazy = sum(e.lazy for e in internal)
    print(f"{len(modules)} modules, {len(internal)} imports between them ({lazy} inside functions)")
    layers: Dict[str, int] = {}
    for m in modules:
        layers[layer_of(m)] = layers.get(layer_of(m), 0) + 1
    print("modules per layer: " + ", ".join(f"{k} {v}" for k, v in sorted(layers.items())))
    for component in found:
        print(_describe(component, internal))
    for problem in problems:
        print("layer: " + problem)
    for problem in redefined_constants(modules):
        print("constant: " + problem)
    print("no import cycle" if not found else f"{len(found)} import cycle(s)")
    print("layers import only downward" if not problems else f"{len(problems)} layer violation(s)")
    return 1 if found or problems else 0


if __name__ == "__main__":
    sys.exit(main())
