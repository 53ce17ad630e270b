"""The layout is the architecture: data flows one way (host glue -> sampler/ sub-packages -> core), with no circles.

Read from the source with ast (every import, also the ones inside functions), so a lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = {"sampler", "sampler.schedule", "sampler.plans", "sampler.sampling", "sampler.noise", "sampler.denoiser",
        "sampler.errors", "sampler.live"}
SUB_PACKAGES = ("sampler.models", "sampler.app", "sampler.shapes")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports (absolute or relative, at any depth of the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "sampler").rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items() if not name.endswith("__main__")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_sampler_has_no_import_circles():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_core_imports_only_the_core():
    graph = _graph()
    leaks = {m: sorted(graph[m] - CORE) for m in CORE if graph[m] - CORE}
    assert not leaks, f"core modules import outside the core: {leaks}"


def test_every_sampler_module_is_core_or_in_a_sub_package():
    strays = [m for m in _graph() if m not in CORE and not m.startswith(SUB_PACKAGES)]
    assert not strays, f"modules outside the core and its sub-packages {SUB_PACKAGES}: {strays}"


def test_sampler_never_imports_host_glue():
    for path in (ROOT / "sampler").rglob("*.py"):
        imported = _imports(path, {"nodes", "extension", "distill", "bench", "tests"})
        assert not imported, f"{path.relative_to(ROOT)} imports {sorted(imported)}"


def test_the_circle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
