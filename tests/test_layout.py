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

def _dotted(path: Path, root: Path) -> List[str]:
    """The package a file's relative imports start from: deep/bench/cli.py -> [deep, bench]."""
    return list(path.relative_to(root).parent.parts)


def _resolved_imports(path: Path, root: Path):
    """(line, absolute dotted module, imported name or None) of every import in ``path``, module level and
    inside functions; relative imports resolved against the file's package."""
    pkg = _dotted(path, root)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                yield node.lineno, module, alias.name


def _module_graph(package: str, root: Path = ROOT) -> Dict[str, Set[str]]:
    """Child -> the children of the same package it imports; a child is a module or a subpackage (whose
    files' imports count as its own), ``package`` dotted (e.g. "deep.bench"). Self-arrows and __init__ are
    left out."""
    folder = root.joinpath(*package.split("."))
    children = {p.stem for p in folder.glob("*.py")} | {p.parent.name for p in folder.glob("*/__init__.py")}
    graph: Dict[str, Set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).parts
        child = rel[0][:-3] if len(rel) == 1 else rel[0]
        targets = graph.setdefault(child, set())
        for _, module, name in _resolved_imports(path, root):
            full = f"{module}.{name}" if name else module
            if full.startswith(package + "."):
                targets.add(full[len(package) + 1:].split(".")[0])
        targets &= children - {child, "__init__"}
    return graph


def _packages(root: Path = ROOT) -> List[str]:
    """Every package and subpackage of the library, dotted."""
    return [".".join(d.relative_to(root).parts) for top in PACKAGES if (root / top / "__init__.py").is_file()
            for d in sorted([root / top] + [p.parent for p in (root / top).rglob("*/__init__.py")])]


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


def _private_imports(package: str, root: Path = ROOT) -> List[str]:
    """Imports of another module's private name (``_x``, not dunder) from the library, within the package
    or across packages."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module, name in _resolved_imports(path, root):
            if name and name.startswith("_") and not name.startswith("__") and module.split(".")[0] in PACKAGES:
                out.append(f"{path.relative_to(root)}:{line}: imports {module}.{name}")
    return out


@pytest.mark.parametrize("package", _packages())
def test_modules_inside_a_package_form_layers(package):
    assert _circles(_module_graph(package)) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_is_imported_across_modules(package):
    assert _private_imports(package) == []


def test_checker_sees_a_circle_and_a_private_import(tmp_path):
    """The in-package checkers themselves: a planted circle a -> b -> c -> a (one arrow inside a function,
    one relative ``from . import``, one absolute) is found, the module outside it (d) is not part of it; a
    subpackage is one node of its parent (its ``from ..c import`` counts) and a package of its own; a
    self-import counts; private imports are reported, dunder names are not."""
    pkg = tmp_path / "deep"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import c\n\ndef g():\n    return c\n")
    (pkg / "c.py").write_text("import deep.a\nfrom .d import _hidden, __version__\n")
    (pkg / "d.py").write_text("import os\nfrom samrobust.threat import _secret\n_hidden = 1\n")
    (pkg / "sub" / "__init__.py").write_text("from .x import y\n")
    (pkg / "sub" / "x.py").write_text("from ..c import _z\nfrom . import y\ny = 1\n")
    assert _module_graph("deep", tmp_path) == {"__init__": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a", "d"},
                                               "d": set(), "sub": {"c"}}
    assert _module_graph("deep.sub", tmp_path) == {"__init__": {"x"}, "x": set()}
    assert _packages(tmp_path) == ["deep", "deep.sub"] and "deep.bench" in _packages()
    assert _circles(_module_graph("deep", tmp_path)) == [["a", "b", "c"]]
    assert _circles({"x": {"x"}, "y": set()}) == [["x"]]
    assert _circles({"x": {"y"}, "y": set()}) == []
    assert _private_imports("deep", tmp_path) == [
        "deep/c.py:2: imports deep.d._hidden", "deep/d.py:2: imports samrobust.threat._secret",
        "deep/sub/x.py:1: imports deep.c._z"]


# ----------------------------------------------------------------------------- one owner per output kind

def _library_files(root: Path = ROOT):
    return [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]


def _calls(path: Path, attr: str) -> List[int]:
    """Lines of the calls ``<anything>.attr(...)`` or ``attr(...)`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name == attr:
                out.append(node.lineno)
    return out


def _owners(kind_check, root: Path = ROOT) -> Set[str]:
    return {str(p.relative_to(root)) for p in _library_files(root) if kind_check(p)}


def _writes_table_rule(path: Path) -> bool:
    """Whether a string constant of ``path``'s code (docstrings aside) holds the markdown rule ``---|``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and "---|" in n.value
               and id(n) not in docs for n in ast.walk(tree))


def test_one_markdown_table_writer():
    """Every markdown table (summary.md, REPORT.md, simulations.md, bench tables) comes from samrobust.tables."""
    assert _owners(_writes_table_rule) == {"samrobust/tables.py"}


def test_one_figure_file_writer():
    """Every figure file is written by paper_figs.figures.save (atomic, date-free PDFs)."""
    assert _owners(lambda p: bool(_calls(p, "savefig"))) == {"paper_figs/figures.py"}


def test_run_records_are_written_by_deep_record_only():
    """In deep/, JSON files are written by deep.record (run records and their saliency sidecars) and by the
    commands whose output is not a run record (deep.cost, deep.gridtime, deep.bench results)."""
    writers = _owners(lambda p: p.parts[-2:][0] in ("deep", "bench") and bool(_calls(p, "write_json_atomic")))
    assert writers == {"deep/record.py", "deep/cost.py", "deep/gridtime.py", "deep/bench/tables.py"}
    dumpers = _owners(lambda p: str(p.relative_to(ROOT)).startswith("deep/") and bool(_calls(p, "dump")))
    assert dumpers == set()


def test_the_owner_checks_see_a_second_owner(tmp_path):
    """The checks above fail when a second module writes a table rule or saves a figure itself."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "samrobust" / "tables.py").write_text('RULE = "|---|"\n')
    (tmp_path / "deep" / "summary.py").write_text('def t():\n    """|---| in a docstring is fine"""\n'
                                                  '    return "| a |\\n|---|"\n')
    (tmp_path / "paper_figs" / "x.py").write_text("def f(fig):\n    fig.savefig('a.png')\n")
    assert _owners(_writes_table_rule, tmp_path) == {"samrobust/tables.py", "deep/summary.py"}
    assert _owners(lambda p: bool(_calls(p, "savefig")), tmp_path) == {"paper_figs/x.py"}
