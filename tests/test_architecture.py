"""The shape of the tree: no import cycles between modules, and no import against the arrows.

api -> lrlab; worker -> lrlab, trainer; trainer -> nothing of the project. Every import counts: those at the
top, inside functions and under TYPE_CHECKING (read from the source with ast, not from sys.modules).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "worker", "trainer", "lrlab")
# What each package may import of the project (besides itself).
ALLOWED = {"api": {"lrlab"}, "worker": {"lrlab", "trainer"}, "trainer": set(), "lrlab": set()}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(project module imported, line) for every import statement in the file, wherever it sits."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from pkg import sub` imports the sub-module when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for target in targets:
            # the closest project module: `import lrlab.pbt.rounds` is lrlab.pbt.rounds
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES:
                yield target, node.lineno


def _graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    modules = _modules(root)
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(name, path, known):
            # a package importing its own sub-modules (trainer/__init__.py's lazy table) is not a cycle
            if target != name and not target.startswith(name + "."):
                edges.setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_imports_follow_the_arrows() -> None:
    wrong = []
    for source, edges in _graph().items():
        home = source.split(".")[0]
        for target, line in edges.items():
            other = target.split(".")[0]
            if other != home and other not in ALLOWED[home]:
                wrong.append(f"{source}:{line} imports {target}")
    assert wrong == []


def test_the_checker_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lrlab import db\n"
        "def f():\n    import worker.app\n"
    )
    for module in ("lrlab/__init__.py", "lrlab/db.py", "worker/__init__.py", "worker/app.py", "trainer/__init__.py"):
        (tmp_path / module).parent.mkdir(exist_ok=True)
        (tmp_path / module).write_text("")
    (tmp_path / "trainer" / "probe.py").write_text(source)
    (tmp_path / "worker" / "app.py").write_text("import trainer.probe\n")
    graph = _graph(tmp_path)
    assert set(graph["trainer.probe"]) == {"lrlab.db", "worker.app"}
    assert _cycles(graph) == [["trainer.probe", "worker.app"]]
