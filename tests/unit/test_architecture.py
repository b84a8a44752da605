"""The shape of the code (docs/architecture.md): no import cycle in src/, the client's side of a
round imports nothing of the server, and the attacks name no method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rvepfl import registry

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "rvepfl"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path], *, type_only: bool) -> set[str]:
    """The rvepfl modules ``module`` imports, anywhere in its body (late imports included); those
    under ``if TYPE_CHECKING:`` (for type hints, never run) only with ``type_only``."""
    tree = ast.parse(path.read_text())
    skipped = set() if type_only else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)}
    package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if package else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph(*, type_only: bool = False) -> dict[str, set[str]]:
    """Module -> the rvepfl modules it imports at run time (and for type hints with ``type_only``)."""
    modules = _modules()
    return {m: _imports(m, p, modules, type_only=type_only) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle_in_src():
    """Imports for type hints count too: a reader, and a type checker, follow them as well."""
    assert _cycles(_graph(type_only=True)) == []


def test_imports_for_type_hints_count_only_when_asked(tmp_path):
    path = tmp_path / "user.py"
    path.write_text("from typing import TYPE_CHECKING\nimport rvepfl.errors\n"
                    "if TYPE_CHECKING:\n    from rvepfl.config import Config\n")
    modules = _modules()
    assert _imports("rvepfl.user", path, modules, type_only=True) == {"rvepfl.errors", "rvepfl.config"}
    assert _imports("rvepfl.user", path, modules, type_only=False) == {"rvepfl.errors"}


def test_the_clients_side_imports_nothing_of_the_server():
    graph = _graph()
    reached = _reachable(graph, "rvepfl.fl.client")
    assert not reached & {"rvepfl.fl.server", "rvepfl.fl.simulation", "rvepfl.fl.workers", "rvepfl.flower.server"}


def test_the_attacks_name_no_method():
    """No method or mechanism name, in any spelling, appears in src/rvepfl/attacks/. One method
    shares its name with the package (``rvepfl.attacks``, ``rvepfl attack``, the file format
    ``rvepfl-evaluator``): for it, the name as a value (quoted) and its display name are searched."""
    package = "rvepfl"
    names = {*registry.methods(), *registry.mechanisms()} - {package}
    spellings = {v for n in names for v in (n, n.replace("-", "_"), n.replace("-", ""))}
    for path in sorted((PACKAGE / "attacks").rglob("*.py")):
        text = path.read_text().lower()
        for name in sorted(spellings):
            assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (path.name, name)
        assert not re.search(rf"[\"']{package}[\"']|rve-pfl", text), (path.name, package)
