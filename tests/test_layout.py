"""The package's imports go one way: from the command down to the targets, with no cycle and no import hidden in
a function to dodge one."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "boltzflow"

#: Layers from the bottom up; a module may import only modules of its own layer or below.
LAYERS = [
    ["boltzflow.errors", "boltzflow.settings", "boltzflow.estimators", "boltzflow.allocator", "boltzflow.sharding",
     "boltzflow.checkpoint"],
    ["boltzflow.data"],
    ["boltzflow.molecules"],
    ["boltzflow.targets"],
    ["boltzflow.flows"],
    ["boltzflow.mcmc"],
    ["boltzflow.ais"],
    ["boltzflow.explore", "boltzflow.explore_cache", "boltzflow.frame"],
    ["boltzflow.autoflow"],
    ["boltzflow.snf"],
    ["boltzflow.vae"],
    ["boltzflow.train"],
    ["boltzflow.config", "boltzflow.configs", "boltzflow.config_reference"],
    ["boltzflow.experiment"],
    ["boltzflow.evaluate", "boltzflow.plot"],
    ["boltzflow.run"],
    ["boltzflow.cli"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(imported boltzflow module, line, at top level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("boltzflow"):
                out.append((name, node.lineno, id(node) in top))
    return out


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The module an imported name lives in (``from a.b import c`` may name a module a.b.c or an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it")


def _graph():
    graph = {}
    for module, path in MODULES.items():
        deps = {_resolve(name) for name, _, _ in _imports(path)} - {None, module}
        graph[module] = {d for d in deps if not module.startswith(d + ".")}  # a package's __init__ is its parent
    return graph


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != "boltzflow":
            _layer(module)


def test_no_import_of_boltzflow_inside_a_function():
    hidden = [f"{_module_name(p)}:{line} imports {name}" for p in MODULES.values()
              for name, line, top_level in _imports(p) if not top_level]
    assert not hidden, "\n".join(hidden)


def test_imports_go_down_the_layers():
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})" for m, deps in _graph().items()
              if m != "boltzflow" for d in deps if d != "boltzflow" and _layer(d) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in graph.get(m, ()):
            if state.get(d) == "open":  # a back edge: d is on the current path
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_importing_the_library_and_its_command_does_not_import_matplotlib_or_scipy_ndimage():
    """Pictures and image targets import them when used: every process that imports boltzflow (each of the suite's
    ~50, each user's script) would otherwise pay for them (0.2-0.5 s here: docs/benchmarks.md)."""
    code = ("import sys, boltzflow, boltzflow.cli; "
            "print(sorted(m for m in ('matplotlib', 'scipy.ndimage') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
