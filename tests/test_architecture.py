"""The package's shape: no import cycle between modules, and the layers import downwards only
(ops, models <- method <- studies <- commands/cli/bench)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "achilles_fast"

# layer -> layers it must not import
FORBIDDEN = {
    "ops": {"method", "models", "studies", "commands", "bench"},
    "models": {"method", "studies", "commands", "bench"},
    "method": {"studies", "commands", "bench"},
    "studies": {"commands", "bench"},
}


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


def _graph():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        if path.name == "__init__.py" and name.count(".") <= 1 and name in ("achilles_fast",):
            continue  # the root re-exports the public API
        graph[name] = {m for m in _imports(path) if m in files and m != name and m != "achilles_fast"}
    return graph


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
        layer = name.split(".")[1] if "." in name else ""
        for d in deps:
            dl = d.split(".")[1] if d.count(".") else ""
            if dl in FORBIDDEN.get(layer, ()):
                bad.append(f"{name} -> {d}")
    assert not bad, "imports against the layering: " + ", ".join(bad)


def test_graph_sees_imports():
    """The checks above can fail: the graph does contain the known edges."""
    g = _graph()
    assert "achilles_fast.method.ranking" in g["achilles_fast.method.stage1"]
    assert "achilles_fast.method.api" in g["achilles_fast.studies.baselines"]
