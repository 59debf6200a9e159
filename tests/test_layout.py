"""The package layout rules: no import cycles, built-ins in their stage package, no oversized modules."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sdd_plugin"

#: the stage package each hook's built-ins belong to
HOOK_PACKAGES = {
    "sdd_block_metrics": "sdd_plugin.prune",
    "sdd_distill_templates": "sdd_plugin.distill",
    "sdd_answer_checkers": "sdd_plugin.distill",
    "sdd_generation_backends": "sdd_plugin.generation",
}

MAX_LINES = 600
#: Modules allowed over MAX_LINES, each with the reason. Keep it empty: split a module that grows
#: past the limit instead of adding it here.
OVERSIZED_ALLOWED: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """``(module, line)`` for every sdd_plugin module ``name`` imports, at any depth of the file."""
    is_package = path.name == "__init__.py"

    def longest_known(dotted: str) -> str | None:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                return ".".join(parts[:end])
        return None

    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            module = longest_known(target)
            if module is not None:
                found.append((module, node.lineno))
    return found


def _import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, without edges to the module's own ancestors
    (importing a submodule runs its parent packages first anyway)."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path, set(modules)):
            if target == name or name.startswith(target + "."):
                continue
            edges[target] = min(line, edges.get(target, line))
        graph[name] = edges
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_cycle_finder_on_a_known_graph():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1, "d": 1}}
    assert _strongly_connected(graph) == [["a", "b", "c"]]


def test_import_resolution(tmp_path):
    """Relative imports from modules and packages, `from pkg import submodule`, nested imports."""
    known = {"sdd_plugin", "sdd_plugin.prune", "sdd_plugin.prune.stage", "sdd_plugin.prune.metrics"}
    known |= {"sdd_plugin.models", "sdd_plugin.cache"}
    module = tmp_path / "stage.py"
    module.write_text(
        "from . import metrics\nfrom .. import models\nfrom ..cache import x\n"
        "def f():\n    import sdd_plugin.prune.metrics.y\n    from sdd_plugin import hookimpl\n"
    )
    assert sorted(_imports("sdd_plugin.prune.stage", module, known)) == [
        ("sdd_plugin", 6),
        ("sdd_plugin.cache", 3),
        ("sdd_plugin.models", 2),
        ("sdd_plugin.prune.metrics", 1),
        ("sdd_plugin.prune.metrics", 5),
    ]
    init = tmp_path / "__init__.py"
    init.write_text("from .stage import prune\nfrom . import metrics\n")
    assert sorted(_imports("sdd_plugin.prune", init, known)) == [
        ("sdd_plugin.prune.metrics", 2),
        ("sdd_plugin.prune.stage", 1),
    ]


def test_no_import_cycles():
    graph = _import_graph()
    # the walk found the modules and their imports
    assert {"sdd_plugin.prune.scoring", "sdd_plugin.prune.stage"} <= set(graph["sdd_plugin.prune"])
    cycles = _strongly_connected(graph)
    lines = []
    for component in cycles:
        members = set(component)
        edges = [
            f"{src} -> {dst} (line {line})"
            for src in component
            for dst, line in sorted(graph[src].items())
            if dst in members
        ]
        lines.append(f"{', '.join(component)}:\n    " + "\n    ".join(edges))
    assert not cycles, "import cycles among sdd_plugin modules:\n" + "\n".join(lines)


def _pyproject_entry_points() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return data["project"]["entry-points"]["sdd_plugin"]


def test_builtins_register_through_the_entry_point_group_from_their_stage_package():
    from sdd_plugin import hookspecs, plugins

    declared = _pyproject_entry_points()
    assert set(HOOK_PACKAGES) == {n for n in dir(hookspecs) if n.startswith("sdd_")}, "a hook without a stage"
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="sdd_plugin")}
    assert {k: v for k, v in installed.items() if v.startswith("sdd_plugin.")} == declared, (
        "the installed entry points differ from pyproject.toml: reinstall (pip install -e .)"
    )
    assert set(plugins.BUILTIN_MODULES) == set(declared.values())  # the source-tree fallback agrees
    implemented = set()
    for ep_name, module_name in declared.items():
        module = importlib.import_module(module_name)  # raises when an entry point does not import
        hooks = [n for n in HOOK_PACKAGES if hasattr(getattr(module, n, None), "sdd_plugin_impl")]
        assert hooks, f"entry point {ep_name} = {module_name} implements no sdd_plugin hook"
        for hook in hooks:
            stage = HOOK_PACKAGES[hook]
            assert module_name.startswith(stage + "."), f"{module_name} implements {hook}: belongs in {stage}"
            objects = getattr(module, hook)()
            assert objects, f"{module_name}.{hook} returns nothing"
            for obj in objects:
                assert type(obj).__module__.startswith(stage + "."), (hook, obj.name, type(obj).__module__)
            implemented.add(hook)
    assert implemented == set(HOOK_PACKAGES), "a hook has no built-in"


def test_no_module_over_the_line_limit():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    unlisted = {name: n for name, n in over.items() if name not in OVERSIZED_ALLOWED}
    assert not unlisted, f"modules over {MAX_LINES} lines (split them): {unlisted}"
    stale = sorted(set(OVERSIZED_ALLOWED) - set(over))
    assert not stale, f"allow-listed but no longer over {MAX_LINES} lines (remove from the list): {stale}"
