"""The package's shape: no import cycle between modules, and the layers import downwards only
(version <- utils <- threads; ops, models <- method <- studies <- commands/cli/bench; the root package re-exports
the public API and is imported by nothing below the command line)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "achilles_fast"

# layer -> the other layers it may import ("root": the package's __init__; a top-level module is its own layer)
LOW = {"version", "utils"}
ALLOWED = {
    "version": set(),
    "utils": {"version"},
    "threads": {"utils", "version"},
    "ops": LOW,
    "models": {"ops"} | LOW,
    "method": {"ops", "models"} | LOW,
    "studies": {"ops", "models", "method", "threads"} | LOW,
    "commands": {"ops", "models", "method", "studies", "threads", "bench", "root"} | LOW,
    "bench": {"ops", "models", "method", "studies", "threads", "root"} | LOW,
    "cli": {"commands", "root"} | LOW,
    "root": {"ops", "models", "method", "studies", "threads"} | LOW,
}
EXTENSIONS = {"achilles_fast._C": "ops"}  # compiled modules (absent from a fresh clone) -> their layer


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Every achilles_fast module imported anywhere in the file (function-level imports included)."""
    name = _module_name(path)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("achilles_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("achilles_fast"):
                continue
            if node.module:
                out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def _resolve(m: str, files) -> str:
    """An imported name -> the module it lives in (``from .. import __version__`` -> the root package)."""
    if m in files or m in EXTENSIONS:
        return m
    parent = m.rpartition(".")[0]
    return parent if parent in files else ""


def _layer(name: str) -> str:
    if name in EXTENSIONS:
        return EXTENSIONS[name]
    parts = name.split(".")
    return "root" if len(parts) == 1 else parts[1]


def _graph():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {name: {d for d in (_resolve(m, files) for m in _imports(path)) if d and d != name}
            for name, path in files.items()}


def test_no_import_cycles():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_layers_import_downwards():
    bad = []
    for name, deps in _graph().items():
        layer = _layer(name)
        assert layer in ALLOWED, f"{name}: layer {layer!r} has no place in ALLOWED (add it there)"
        bad += [f"{name} -> {d}" for d in deps if _layer(d) != layer and _layer(d) not in ALLOWED[layer]]
    assert not bad, "imports against the layering: " + ", ".join(bad)


def test_graph_sees_imports():
    """The checks above can fail: the graph does contain the known edges, the root package and names imported
    from a module (not modules) included."""
    g = _graph()
    assert "achilles_fast.method.ranking" in g["achilles_fast.method.stage1"]
    assert "achilles_fast.method.api" in g["achilles_fast.studies.baselines"]
    assert "achilles_fast" in g["achilles_fast.bench.e2e"]  # import achilles_fast as af
    assert "achilles_fast.method.api" in g["achilles_fast"]  # the root's re-exports
    assert "achilles_fast.version" in g["achilles_fast.method.result"]  # from ..version import __version__
    assert "achilles_fast.utils" in g["achilles_fast.threads"] or "achilles_fast.threads" in g[
        "achilles_fast.studies.sweep.worker"]
    assert "achilles_fast._C" in g["achilles_fast.ops._lib"]


def test_a_name_from_the_root_counts_as_importing_the_root():
    files = {"achilles_fast": None, "achilles_fast.method": None, "achilles_fast.method.ops_user": None}
    assert _resolve("achilles_fast.__version__", files) == "achilles_fast"
    assert _resolve("achilles_fast.method", files) == "achilles_fast.method"
    assert _layer("achilles_fast") == "root" and "root" not in ALLOWED["method"]
