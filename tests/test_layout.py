"""The one-way dependency arrows of the package layout (README.md, "Layout"):

    samrobust <- linear_theory <- simulations,   samrobust <- deep,   everything <- paper_figs

Every module's imports (module level and inside functions) are read with ``ast``; an import of a
package that is not upstream of the importing package fails the test.
"""
from __future__ import annotations

import ast
from pathlib import Path

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
