"""The source tree's shape: no import cycle, no import above a module's layer, one install layout.

The import graph is read from the source files with `ast` (every import, also those inside
functions), so a new module is covered the day it is added. The layers are docs/architecture.md's.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"privfl": ROOT / "privfl", "privfl.attacks": ROOT / "attacks"}

# docs/architecture.md: a module may import its own layer and the layers below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("privfl", "privfl.errors", "privfl.config", "privfl.parallel")),
    (
        "data and maths",
        (
            "privfl.data",
            "privfl.models",
            "privfl.metrics",
            "privfl.privacy",
            "privfl.canaries",
            "privfl.evaluate",
            "privfl.runs",
            "privfl.plots",
        ),
    ),
    ("federated learning", ("privfl.fl",)),
    ("engines", ("privfl.fl.engines",)),
    (
        "applications",
        (
            "privfl.experiment",
            "privfl.folds",
            "privfl.flower_app",
            "privfl.deploy",
            "privfl.cli",
            "privfl.keyholder_cli",
            "privfl.clickgroup",
            "privfl.bench",
            "privfl.attacks",
        ),
    ),
]


def modules() -> dict[str, Path]:
    """Every module of privfl and privfl.attacks: dotted name -> source file."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the tree it imports (by absolute or relative import)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    child = f"{source}.{alias.name}"
                    targets.add(child if child in mods else source)
        graph[name] = {_owner(t, mods) for t in targets if _owner(t, mods) not in (None, name)}
    return graph


def _owner(target: str, mods: dict[str, Path]) -> str | None:
    """The tree's module an import names (itself or its nearest enclosing package), or None."""
    parts = target.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names the module."""
    best, depth = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    if best is None:
        raise AssertionError(f"{module} belongs to no layer; add it to LAYERS and docs/architecture.md")
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "privfl.fl.components" in graph["privfl.experiment"]
    assert "privfl.fl.secure.summation" in graph["privfl.fl.components"]  # an import inside a function
    assert "privfl.attacks.observe" in graph["privfl.attacks.membership"]
    assert len(graph) > 60


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports above their layer (docs/architecture.md):\n" + "\n".join(upward)


def test_every_layer_is_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, prefixes in LAYERS:
        assert name in doc, name
        for prefix in prefixes:
            assert f"`{prefix.removeprefix('privfl.')}" in doc or f"`{prefix}" in doc, prefix


def test_the_package_list_matches_the_source_tree():
    """pyproject.toml lists packages by hand (attacks/ installs as privfl.attacks): none missing."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert set(cfg["packages"]) == packages
    assert cfg["package-dir"] == {"privfl.attacks": "attacks"}


def test_attacks_are_not_a_top_level_package():
    import privfl.attacks

    assert Path(privfl.attacks.__file__).parent == ROOT / "attacks"
    for path in [*modules().values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
        assert not [m for m in names if m == "attacks" or m.startswith("attacks.")], path
