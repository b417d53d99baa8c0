"""Imports point one way: the import graph of `stepjepa/` and `pipelines/`, read with `ast`.

Every `import` counts, at module level and inside functions alike: a deferred import still
ties the two modules together, it only hides the circle until the function runs. Imports
under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stepjepa", "pipelines")

# What `stepjepa/tracking/` may import from the rest of the library: leaf modules that
# import nothing above them (checked below), so tracking sits under training, the sweep
# and the report and never the other way round.
TRACKING_MAY_IMPORT = {
    "stepjepa.config",
    "stepjepa.vocabulary",
    "stepjepa.prompts",
    "stepjepa.runlock",
    "stepjepa.stats",
}

# Orchestration and its tools stay out of the library (pipelines/ wraps it, not the reverse).
NEVER_IN_LIBRARY = ("prefect", "dvc", "pipelines")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name `path` imports (for `from a import b`, both `a` and `a.b`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name resolves to its longest known module)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in imported_names(name, path):
            parts = imported.split(".")
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in known:
                    targets.add(".".join(parts[:n]))
                    break
        edges[name] = targets - {name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path `a -> b -> ... -> a`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_imports_inside_functions():
    # folders.py's deferred MLflow imports sit inside functions; they must be read.
    names = imported_names("stepjepa.tracking.folders", ROOT / "stepjepa" / "tracking" / "folders.py")
    assert "mlflow.entities" in names


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_library_modules():
    edges = graph()
    library = {m: {t for t in ts if t.startswith("stepjepa")} for m, ts in edges.items() if m.startswith("stepjepa")}
    cycle = find_cycle(library)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_library_never_imports_orchestration():
    offenders = {
        f"{name} imports {imported}"
        for name, path in modules().items()
        if name.startswith("stepjepa")
        for imported in imported_names(name, path)
        if imported.split(".")[0] in NEVER_IN_LIBRARY
    }
    assert not offenders, sorted(offenders)


def test_tracking_imports_only_leaf_modules_of_the_library():
    edges = graph()
    offenders = {
        f"{name} imports {target}"
        for name, targets in edges.items()
        if name == "stepjepa.tracking" or name.startswith("stepjepa.tracking.")
        for target in targets
        if target.startswith("stepjepa")
        and not target.startswith("stepjepa.tracking")
        and target not in TRACKING_MAY_IMPORT | {"stepjepa"}
    }
    assert not offenders, sorted(offenders)


def test_the_leaf_modules_tracking_may_import_are_leaves():
    # Otherwise the allow-list would be a back door: a "leaf" that imports train.
    edges = graph()
    for leaf in TRACKING_MAY_IMPORT:
        assert leaf in edges, f"{leaf} is not a module any more"
        above = {t for t in edges[leaf] if t.startswith("stepjepa") and t not in TRACKING_MAY_IMPORT | {"stepjepa"}}
        assert not above, f"{leaf} imports {sorted(above)}"


# The stages of `stepjepa/`, lowest first: a module imports only from its own layer or those
# below it, so each folder can be read (and tested) knowing only what lies under it.
# Layer 0 is the top-level modules every stage shares (the config and the vocabulary).
LAYERS = ("", "tracking", "data", "method", "model", "evaluation", "training", "sweep")


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] not in LAYERS:  # stepjepa.config, stepjepa.cli ...
        return 0
    return LAYERS.index(parts[1])


def test_every_library_module_sits_in_a_stage():
    stray = [
        m
        for m in modules()
        if m.startswith("stepjepa.") and m.count(".") > 2 and not m.startswith("stepjepa.tracking.")
    ]
    assert not stray, f"modules below a stage folder: {stray}"
    assert all(layer(m) >= 0 for m in modules() if m.startswith("stepjepa."))


def test_stages_import_only_the_stages_below_them():
    edges = graph()
    upward = {
        f"{name} ({LAYERS[layer(name)] or 'top level'}) imports {target} ({LAYERS[layer(target)]})"
        for name, targets in edges.items()
        if name.startswith("stepjepa.")
        for target in targets
        if target.startswith("stepjepa.") and layer(target) > layer(name)
    }
    assert not upward, sorted(upward)


def test_the_layer_check_catches_an_upward_import():
    assert layer("stepjepa.tracking.run") < layer("stepjepa.training.train")
    assert layer("stepjepa.config") == 0 and layer("stepjepa.sweep.report") == len(LAYERS) - 1


def test_a_test_module_imports_no_other_test_module():
    # Shared test code lives in tests/support/; importing a test module would also collect its tests twice.
    offenders = {
        f"{path.relative_to(ROOT)} imports {imported}"
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        for imported in imported_names(module_name(path), path)
        if imported.split(".")[0] == "tests" and imported.split(".")[-1].startswith("test_")
    }
    assert not offenders, sorted(offenders)
