"""Package foundation: every sub-package imports and the README carries the CI test command."""
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["linear_theory", "simulations", "deep", "paper_figs"])
def test_subpackage_imports(name):
    assert importlib.import_module(name) is not None


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"^(python3 -m pip install -e '\.\[dev\]' && python3 -m pytest -q)$", readme, re.M)
    assert m, "README must contain the test command"
    assert m.group(1) in ci.splitlines()
