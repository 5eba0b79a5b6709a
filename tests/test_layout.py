"""The one-way dependency arrows of the package layout (README.md, "Layout"):

    samrobust <- linear_theory <- simulations,   samrobust <- deep,   everything <- paper_figs

Every module's imports (module level and inside functions) are read with ``ast``; an import of a
package that is not upstream of the importing package fails the test. Inside each package the modules form
layers too: the arrows between its modules (module level and inside functions, absolute and relative
imports) have no circle, and no module imports another module's private (``_name``) names.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("samrobust", "linear_theory", "simulations", "deep", "paper_figs")

#: package -> the other packages it may import
ALLOWED = {
    "samrobust": set(),
    "linear_theory": {"samrobust"},
    "simulations": {"samrobust", "linear_theory"},
    "deep": {"samrobust"},
    "paper_figs": {"samrobust", "linear_theory", "simulations", "deep"},
}

#: (importing package, imported module) pairs allowed against the arrows; none at present (PGD and the
#: SAM step, once simulations -> deep, now live in samrobust/)
EXCEPTIONS: set = set()


def _imported_modules(path: Path):
    """(line, dotted name) of every absolute import in ``path``: ``import a.b`` -> "a.b",
    ``from a.b import c`` -> "a.b.c" (c may be a submodule or a name in a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _allowed(package: str, name: str, exceptions=None) -> bool:
    top = name.split(".")[0]
    if top not in PACKAGES or top == package or top in ALLOWED[package]:
        return True
    exceptions = EXCEPTIONS if exceptions is None else exceptions
    return any(p == package and (name == m or name.startswith(m + ".")) for p, m in exceptions)


def _violations(package: str, root: Path = ROOT, exceptions=None) -> list:
    return [f"{path.relative_to(root)}:{line}: {package} imports {name}"
            for path in sorted((root / package).rglob("*.py"))
            for line, name in _imported_modules(path) if not _allowed(package, name, exceptions)]


def test_every_package_is_listed():
    found = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(PACKAGES), "a new top-level package needs its arrows in tests/test_layout.py"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_arrows(package):
    assert _violations(package) == []


def test_checker_sees_a_violation(tmp_path):
    """The checker itself: imports against the arrows are reported (also inside functions and in
    ``from pkg import module`` form), allowed ones and the recorded exceptions are not. EXCEPTIONS is empty
    now, so the exception mechanism is checked with the two pairs it used to hold."""
    exceptions = {("simulations", "deep.attacks"), ("simulations", "deep.sam")}
    for pkg in ("samrobust", "simulations"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "samrobust" / "bad.py").write_text(
        "import numpy\nfrom deep.attacks import pgd\n\ndef f():\n    import paper_figs.report\n")
    (tmp_path / "simulations" / "ok.py").write_text(
        "import linear_theory as lt\nfrom samrobust.threat import Norm\nfrom deep.attacks import pgd\n"
        "from deep import sam\nfrom deep.evaluate import evaluate\n")
    assert [v.split(": ", 1)[1] for v in _violations("samrobust", tmp_path, exceptions)] == [
        "samrobust imports deep.attacks.pgd", "samrobust imports paper_figs.report"]
    assert [v.split(": ", 1)[1] for v in _violations("simulations", tmp_path, exceptions)] == [
        "simulations imports deep.evaluate.evaluate"]
    # with the package's own (empty) EXCEPTIONS, simulations -> deep is reported like any other violation
    assert [v.split(": ", 1)[1] for v in _violations("simulations", tmp_path)] == [
        "simulations imports deep.attacks.pgd", "simulations imports deep.sam",
        "simulations imports deep.evaluate.evaluate"]


# ------------------------------------------------------------------------------- inside each package

#: (module, imported private name) pairs allowed against the rule: deep/bench.py keeps its old import of
#: train._flags until issue 19 splits that file (the split imports the public runtime_flags)
PRIVATE_EXCEPTIONS = {("deep/bench.py", "deep.train._flags")}


def _module_imports(path: Path, package: str):
    """(line, module of ``package`` imported, name imported from it or None) of every import in ``path``
    that reaches a sibling module: ``from .a import b``, ``from pkg.a import b``, ``from . import a``,
    ``import pkg.a``; module level and inside functions."""
    modules = {p.stem for p in path.parent.glob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    yield node.lineno, parts[1], None
        elif isinstance(node, ast.ImportFrom):
            parts = ([package] if node.level else []) + (node.module.split(".") if node.module else [])
            if node.level > 1 or parts[:1] != [package]:
                continue
            for alias in node.names:
                if len(parts) > 1:
                    yield node.lineno, parts[1], alias.name
                elif alias.name in modules:
                    yield node.lineno, alias.name, None


def _module_graph(package: str, root: Path = ROOT) -> Dict[str, Set[str]]:
    """module -> the modules of the same package it imports (itself and __init__ left out)."""
    graph = {}
    for path in sorted((root / package).glob("*.py")):
        graph[path.stem] = {m for _, m, _ in _module_imports(path, package)} - {path.stem, "__init__"}
    return graph


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (or a module importing itself),
    each sorted; found by Tarjan's algorithm."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    out: List[List[str]] = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _private_imports(package: str, root: Path = ROOT, exceptions=None) -> List[str]:
    """Imports of a private name (``_x``) of another module, within the package or across packages."""
    exceptions = PRIVATE_EXCEPTIONS if exceptions is None else exceptions
    out = []
    for path in sorted((root / package).rglob("*.py")):
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level > 1:
                continue
            module = ".".join(([package] if node.level else []) + ([node.module] if node.module else []))
            if module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                name = f"{module}.{alias.name}"
                if alias.name.startswith("_") and not alias.name.startswith("__") \
                        and (rel, name) not in exceptions:
                    out.append(f"{rel}:{node.lineno}: imports {name}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_inside_a_package_form_layers(package):
    assert _circles(_module_graph(package)) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_is_imported_across_modules(package):
    assert _private_imports(package) == []


def test_checker_sees_a_circle_and_a_private_import(tmp_path):
    """The in-package checkers themselves: a planted circle a -> b -> c -> a (one arrow inside a function,
    one relative ``from . import``, one absolute) is found, the module outside it (d) is not part of it; a
    self-import counts; private imports are reported, dunder names and the recorded exceptions are not."""
    pkg = tmp_path / "deep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import c\n\ndef g():\n    return c\n")
    (pkg / "c.py").write_text("import deep.a\nfrom .d import _hidden, __version__\n")
    (pkg / "d.py").write_text("import os\nfrom samrobust.threat import _secret\n_hidden = 1\n")
    assert _module_graph("deep", tmp_path) == {"__init__": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a", "d"},
                                               "d": set()}
    assert _circles(_module_graph("deep", tmp_path)) == [["a", "b", "c"]]
    assert _circles({"x": {"x"}, "y": set()}) == [["x"]]
    assert _circles({"x": {"y"}, "y": set()}) == []
    assert _private_imports("deep", tmp_path, exceptions=set()) == [
        "deep/c.py:2: imports deep.d._hidden", "deep/d.py:2: imports samrobust.threat._secret"]
    assert _private_imports("deep", tmp_path, exceptions={("deep/c.py", "deep.d._hidden")}) == [
        "deep/d.py:2: imports samrobust.threat._secret"]
