"""The shape of the code (docs/architecture.md): no import cycle in src/, no import from a lower
layer to a higher one, every module named in docs/architecture.md, the client's side of a round
imports nothing of the server, and the attacks name no method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rvepfl import registry

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "rvepfl"

#: The layers of ``src/rvepfl``, lowest first (docs/architecture.md, "Layers"). A module may import
#: (type-only imports included) modules of its own layer and of lower ones, never of a higher one.
#: A module belongs to the layer of the longest name listed that is itself or a package above it;
#: the package root ``rvepfl`` (``__version__``) is listed for itself only.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pure maths", ("rvepfl.maths",)),
    ("foundations", ("rvepfl", "rvepfl.errors", "rvepfl.seeding", "rvepfl.io", "rvepfl.params", "rvepfl.precision",
                     "rvepfl.perf", "rvepfl.progress", "rvepfl.metrics")),
    ("building blocks", ("rvepfl.engine_config", "rvepfl.data", "rvepfl.models", "rvepfl.wire", "rvepfl.shared_adam")),
    ("methods", ("rvepfl.methods",)),
    ("mechanisms", ("rvepfl.mechanisms",)),
    ("configuration", ("rvepfl.registry", "rvepfl.config")),
    ("engine", ("rvepfl.fl", "rvepfl.rundir", "rvepfl.tensorboard", "rvepfl.figures")),
    ("Flower", ("rvepfl.flower",)),
    ("attacks", ("rvepfl.attacks",)),
    ("experiments", ("rvepfl.experiments",)),
    ("entry points", ("rvepfl.cli", "rvepfl.__main__")),
)


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


def _layer(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s layer (-1: none)."""
    best, rank = "", -1
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            inside = module == name or (name != "rvepfl" and module.startswith(name + "."))
            if inside and len(name) > len(best):
                best, rank = name, i
    return rank


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


def test_every_module_has_a_layer():
    assert [m for m in sorted(_modules()) if _layer(m) < 0] == []


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer to a higher one in ``graph``."""
    return sorted(f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
                  for m, targets in graph.items() for t in targets if _layer(t) > _layer(m))


def test_no_import_from_a_lower_layer_to_a_higher_one():
    """Pure maths at the bottom, the entry points at the top; imports for type hints count too."""
    assert _upward(_graph(type_only=True)) == []


def test_an_upward_import_is_caught():
    assert _upward({"rvepfl.maths.aggregate": {"rvepfl.fl.server"}, "rvepfl.fl.server": {"rvepfl.maths"}}) == [
        "rvepfl.maths.aggregate (pure maths) imports rvepfl.fl.server (engine)"]
    assert _layer("rvepfl") == 1 and _layer("rvepfl.newthing") == -1


def test_the_pure_maths_imports_nothing_else_of_rvepfl():
    graph = _graph(type_only=True)
    assert sorted((m, t) for m in graph if _layer(m) == 0 for t in graph[m] if _layer(t) != 0) == []


def test_every_module_is_named_in_the_architecture_doc():
    """docs/architecture.md names every module (``rvepfl/fl/server.py``) and package
    (``rvepfl/fl/``) of src/ in backquotes, each with a line on what it holds."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(SRC)
        name = f"{rel.parent.as_posix()}/" if path.name == "__init__.py" else rel.as_posix()
        if f"`{name}`" not in doc:
            missing.append(name)
    assert missing == []


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
