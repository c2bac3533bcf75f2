"""The package's shape: no import cycles, and dependencies that point one way between subsystems.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle that
is broken only at run time is still two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipnormals"

# What each subsystem (a top-level module or subpackage of clipnormals) may import. A subsystem
# may always import its own modules. See docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "_version": set(),
    "_errors": set(),
    "_atomic": set(),
    "_text": set(),
    "_images": {"_errors"},
    "_normals": {"_errors", "_atomic", "_images", "_text"},
    "_core": {"_errors", "_version", "_images", "_normals"},
    "_redis": {"_core", "_errors"},
    "_batch": {"_core", "_errors", "_atomic", "_images", "_normals"},
    "_cli": {
        "_batch",
        "_core",
        "_errors",
        "_redis",
        "_atomic",
        "_images",
        "_normals",
        "_text",
        "_version",
        "emulator",
    },
    # The emulator is an independent oracle of the API's contract: it shares no code with the
    # client it is used to test.
    "emulator": set(),
    "testing": {"__init__", "_core", "emulator", "_errors"},
    "__init__": {"_core", "_errors", "_images", "_normals", "_version", "batch"},
    "__main__": {"_cli"},
    "batch": {"_batch"},
    "images": {"_images"},
    "redis": {"_redis"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every clipnormals module ``name`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "clipnormals":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.split(".")[0] == "clipnormals":
                target = node.module
            else:
                continue
            for alias in node.names:  # ``from . import x`` may name a module
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in known else target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: {t for t in _imports(name, path, known) if t in known and t != name}
        for name, path in modules.items()
    }


def _subsystem(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def test_the_import_graph_is_read_correctly() -> None:
    graph = _graph()
    assert "clipnormals._core.limiter" in graph["clipnormals._core.client"]
    assert "clipnormals._errors" in graph["clipnormals._images.prepare"]
    # a facade importing from a subsystem package's module
    assert "clipnormals._images.prepare" in graph["clipnormals.images"]


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_subsystem_has_rules() -> None:
    assert {_subsystem(m) for m in _graph()} <= set(ALLOWED)


@pytest.mark.parametrize("subsystem", sorted(ALLOWED))
def test_dependencies_point_one_way(subsystem: str) -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _subsystem(module) == subsystem
        for target in targets
        if _subsystem(target) != subsystem and _subsystem(target) not in ALLOWED[subsystem]
    )
    assert wrong == []


def test_the_demo_does_not_use_the_other_commands() -> None:
    graph = _graph()
    cli = {t for t in graph["clipnormals._cli.demo"] if t.startswith("clipnormals._cli")}
    assert cli == set()


def test_subsystem_packages_say_what_they_own_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("_*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, init
