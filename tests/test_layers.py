"""Each layer imports only down (core < jobs < app; benchmarks beside app, on core; lamp/ the composition root on
top), no module of core/ or jobs/ is in an import cycle, and no source file passes 500 lines. Read from the source:
every import statement, at the top or inside a function, and module names given to importlib as strings."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {"core": {"core"}, "jobs": {"core", "jobs"}, "app": {"core", "jobs", "app"},
              "benchmarks": {"core", "benchmarks"}, "lamp": {"core", "jobs", "app", "benchmarks", "lamp"}}


def _modules() -> dict[str, Path]:
    out = {}
    for layer in MAY_IMPORT:
        for path in (ROOT / layer).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that `name` imports (`from X import Y` counts as X.Y when that is a module)."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        elif isinstance(node, ast.Constant) and node.value in modules and "." in str(node.value):
            found.add(node.value)  # a module named for importlib ("jobs.cli"; not a file name such as "lamp.db")
    resolved = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_each_layer_imports_only_the_layers_below() -> None:
    breaches = [f"{m} -> {t}" for m, targets in _graph().items() for t in sorted(targets)
                if t.split(".")[0] not in MAY_IMPORT[m.split(".")[0]]]
    assert breaches == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_core_or_jobs() -> None:
    graph = {m: {t for t in ts if t.split(".")[0] in ("core", "jobs")} for m, ts in _graph().items()
             if m.split(".")[0] in ("core", "jobs")}
    assert len(graph) > 40 and _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself works


def test_no_source_file_is_a_god_file() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for layer in MAY_IMPORT
             for p in (ROOT / layer).rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 500} == {}
