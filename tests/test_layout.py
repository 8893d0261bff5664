"""The house: the package's import graph has no circle, the root stays small, modules stay short,
and the checkout never refers to documents that are not in it."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "megraphau"
MAX_LINES = 500  # a longer module states its reason at its top


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `name` imports, anywhere in its body (a module X.y imported as
    `from X import y` counts as X.y)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif target in known:
                    out.add(target)
    out.discard(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_import_graph_has_no_circle():
    modules = package_modules()
    known = set(modules)
    # a package's __init__ that re-exports its modules is the package's front, not a node of the
    # graph between modules: an edge into it stands for the modules it re-exports
    graph = {name: imports_of(name, path, known) for name, path in modules.items()}
    fronts = {name for name, path in modules.items() if path.name == "__init__.py"}
    flat = {}
    for name, targets in graph.items():
        if name in fronts:
            continue
        expanded = set()
        for t in targets:
            expanded |= {u for u in graph[t] if u not in fronts} if t in fronts else {t}
        flat[name] = expanded - {name}
    assert cycles(flat) == []


def test_root_has_at_most_about_twenty_entries():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        names = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    else:
        names = {line.split("/", 1)[0] for line in tracked.stdout.splitlines() if not line.startswith(".")}
    assert len(names) <= 22, sorted(names)


def test_long_modules_state_their_reason():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES:
            head = text.split('"""', 2)[1] if text.startswith('"""') else ""
            assert "500 lines" in " ".join(head.split()), (
                f"{path.relative_to(REPO)} has {text.count(chr(10))} lines and no reason in its docstring")


def test_no_reference_to_documents_outside_the_checkout():
    pattern = re.compile(r"SPEC\s*§|SPEC\.md")
    files = [p for ext in ("*.py", "*.md", "*.yaml", "*.sh", "*.toml", "*.txt", "*.cff")
             for p in REPO.rglob(ext) if ".git" not in p.parts and p.name != "test_layout.py"]
    offenders = [str(p.relative_to(REPO)) for p in files
                 if pattern.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []


def test_demo_is_a_thin_command_line():
    assert (REPO / "demo.py").read_text(encoding="utf-8").count("\n") <= 220
