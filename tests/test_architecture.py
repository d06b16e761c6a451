"""The plan of the house: layers import only downward, no import cycle in ttmoe_core, no streamlit
in the engine, modules small, every package says what it is for and re-exports its names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "ttmoe_core"
MAX_LINES = 550

# The layers, lowest first: a module may import its own layer and the ones below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "files", "runtime", "tasks", "tt"),     # primitives: no ML model, no engine state
    ("base", "adapters"),                              # the frozen base model, adapter layers
    ("experts", "routing", "budget"),                  # what is trained on the base model
    ("store", "baselines"),                            # files of experts, packs, routers; baselines
    ("moe",),                                          # the mixture
    ("services",),                                     # what the app and the CLI call
    ("report",),                                       # the paper's experiments
    ("cli", "bench"),                                  # entry points
)
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}
TOP_LEVEL = {"ttmoe_core", "ttmoe_core.__main__", "ttmoe_core.errors", "ttmoe_core.tt",
             "ttmoe_core.budget"}     # the only modules allowed flat at ttmoe_core/


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the engine."""
    found = {}
    for path in ENGINE.rglob("*.py"):
        parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Engine modules imported by ``name`` (absolute and relative, top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None. A package's __init__ re-exporting its own
    modules is not a cycle (a module importing its package's siblings goes through the package)."""
    def edges(node):
        return {t for t in graph[node] if not (node.startswith(t + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges(node)):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_engine():
    cycle = _find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_cli():
    graph = _graph()
    users = sorted(m for m, deps in graph.items() if "ttmoe_core.cli" in deps
                   and m not in ("ttmoe_core.__main__",) and not m.endswith(".__main__"))
    assert users == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_engine_module_never_imports_streamlit(name):
    tree = ast.parse(_modules()[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "streamlit" for a in node.names), name
        elif isinstance(node, ast.ImportFrom) and not node.level:
            assert (node.module or "").split(".")[0] != "streamlit", name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_engine_module_is_small(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def _level(module: str) -> int | None:
    """The layer of an engine module (None: the package root or an entry point, above all)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[-1] == "__main__":
        return None
    return LEVEL[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer from a lower one, as 'a -> b'."""
    found = []
    for module, deps in graph.items():
        here = _level(module)
        if here is None:
            continue
        for dep in deps:
            there = _level(dep)
            if there is not None and there > here:
                found.append(f"{module} (layer {here}) -> {dep} (layer {there})")
    return sorted(found)


def test_every_engine_package_has_a_layer():
    graph = _graph()
    unknown = sorted({m.split(".")[1] for m in graph if m not in TOP_LEVEL} - set(LEVEL))
    assert unknown == [], f"packages without a layer in LAYERS: {unknown}"


def test_layers_import_only_downward():
    assert upward_imports(_graph()) == []


def test_layer_check_finds_a_planted_upward_import():
    graph = _graph()
    graph["ttmoe_core.files.safefs"] = graph["ttmoe_core.files.safefs"] | {"ttmoe_core.moe.mixture"}
    assert upward_imports(graph) == [
        "ttmoe_core.files.safefs (layer 0) -> ttmoe_core.moe.mixture (layer 4)"]


def test_nothing_flat_at_the_top_but_errors_tt_budget():
    flat = sorted(m for m, path in _modules().items()
                  if path.parent == ENGINE and m not in TOP_LEVEL)
    assert flat == []


def test_no_v2_modules_and_no_names_that_differ_by_a_plural():
    stems = {path.stem for path in ENGINE.rglob("*.py")} - {"__init__", "__main__"}
    stems |= {path.name for path in ENGINE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert not [s for s in stems if s.endswith("_v2")]
    assert sorted(s for s in stems if s + "s" in stems) == []


@pytest.mark.parametrize("package", sorted(LEVEL))
def test_each_package_says_what_it_is_for_and_exports_its_names(package):
    init = ENGINE / package / "__init__.py"
    if not init.exists():          # a flat module of the lowest layer (errors, tt, budget)
        return
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree) or ""
    assert doc and "May import" in doc, f"{package}/__init__.py: docstring without 'May import'"
    def names(target) -> list[str]:
        return [e.id for e in target.elts] if isinstance(target, ast.Tuple) else [getattr(target, "id", "")]
    assert any(isinstance(n, ast.Assign) and any("__all__" in names(t) for t in n.targets)
               for n in tree.body), f"{package}/__init__.py has no __all__"
