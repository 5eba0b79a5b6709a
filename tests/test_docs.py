"""docs/: the generated part of docs/theory.md is current, every cited document exists inside the repository,
cited sections exist, and LICENSE / CITATION.cff are in place."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from linear_theory.cli import main as lt_main
from linear_theory.derive import DOCS_BEGIN, DOCS_END, render_markdown, replace_generated, write_docs

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
REGENERATE = "python -m linear_theory derive --write-docs docs/theory.md"

# Spelled in pieces so that this file does not match its own scan.
FORBIDDEN = ("THEORY" + ".md", "PROTOCOL" + ".md", ".." + "/shared")


@pytest.fixture(scope="module")
def generated():
    return render_markdown()


def _repo_files(*suffixes):
    """Tracked files with the given suffixes (git ls-files); outside a git checkout, all files under ROOT
    except hidden folders and build output."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
        files = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*")
                 if not any(part.startswith(".") or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.suffix in suffixes and p.is_file())


def _is_stale(text: str, block: str) -> bool:
    return replace_generated(text, block) != text


# --- generated section of docs/theory.md -------------------------------------------------------------------

def test_theory_generated_section_is_current(generated):
    text = THEORY.read_text(encoding="utf-8")
    assert text.count(DOCS_BEGIN) == 1 and text.count(DOCS_END) == 1, "docs/theory.md lost its generated markers"
    assert not _is_stale(text, generated), f"docs/theory.md is stale: run `{REGENERATE}` and commit the result"


def test_generated_section_has_every_label(generated):
    text = THEORY.read_text(encoding="utf-8")
    inside = text.split(DOCS_BEGIN)[1].split(DOCS_END)[0]
    for label in ("L1", "L2", "L3", "L4", "T1", "T2", "T3", "T4", "T5"):
        assert f"#### {label}\n" in inside
    assert "```math" in inside and "2*mu1/sigma2_1" in inside   # T1: v_ST = 2 Sigma^-1 mu, derived


def test_stale_copy_is_detected_and_rewritten(tmp_path, generated):
    """The check can fail: a copy whose derived T1 formula was edited is stale; write_docs repairs it."""
    text = THEORY.read_text(encoding="utf-8")
    assert "2*mu1/sigma2_1" in text
    bad = text.replace("2*mu1/sigma2_1", "3*mu1/sigma2_1", 1)
    assert _is_stale(bad, generated)
    copy = tmp_path / "theory.md"
    copy.write_text(bad, encoding="utf-8")
    assert write_docs(copy) is True
    fixed = copy.read_text(encoding="utf-8")
    assert not _is_stale(fixed, generated) and fixed == text
    assert write_docs(copy) is False                        # already current: file left alone
    # text outside the markers is never touched
    extra = text.replace("## 8. Where each statement lives", "## 8. Where each statement lives (edited)")
    copy.write_text(extra.replace("2*mu1/sigma2_1", "3*mu1/sigma2_1", 1), encoding="utf-8")
    write_docs(copy)
    assert copy.read_text(encoding="utf-8") == extra


def test_cli_write_docs_and_markdown(tmp_path, capsys, generated):
    copy = tmp_path / "theory.md"
    shutil.copy(THEORY, copy)
    copy.write_text(copy.read_text(encoding="utf-8").replace("epsilon*(v1 + v2 + v3)", "0"), encoding="utf-8")
    assert lt_main(["derive", "--write-docs", str(copy)]) == 0
    assert "rewritten" in capsys.readouterr().out
    assert copy.read_text(encoding="utf-8") == THEORY.read_text(encoding="utf-8")
    assert lt_main(["derive", "--markdown"]) == 0
    assert capsys.readouterr().out == generated


@pytest.mark.parametrize("text", [
    "no markers at all\n",
    f"{DOCS_END}\nwrong order\n{DOCS_BEGIN}\n",
    f"{DOCS_BEGIN}\n{DOCS_BEGIN}\n{DOCS_END}\n",
])
def test_replace_generated_rejects_bad_markers(text):
    with pytest.raises(ValueError):
        replace_generated(text, "x")


def test_cli_write_docs_missing_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        lt_main(["derive", "--write-docs", str(tmp_path / "missing.md")])
    assert exc.value.code == 2
    assert "cannot read" in capsys.readouterr().err


# --- the repository stands on its own --------------------------------------------------------------------

def test_no_references_to_documents_outside_the_repository():
    hits = []
    for path in _repo_files(".py", ".md"):
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for bad in FORBIDDEN:
                if bad in line:
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {bad}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_forbidden_scan_would_catch_a_reference(tmp_path):
    line = "see " + FORBIDDEN[0] + " section 2"
    assert any(bad in line for bad in FORBIDDEN)


def test_every_cited_docs_path_exists():
    cited = {}
    for path in _repo_files(".py", ".md"):
        for m in re.finditer(r"(?<![\w./-])(?:\.\./)*(docs/[\w./-]+?\.md)\b", path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(m.group(1), path.relative_to(ROOT))
    assert "docs/theory.md" in cited and "docs/protocol.md" in cited
    missing = [f"{p} (cited in {src})" for p, src in cited.items() if not (ROOT / p).is_file()]
    assert not missing, "cited documents that do not exist: " + ", ".join(missing)


def test_markdown_links_resolve_inside_the_repository():
    bad = []
    for path in _repo_files(".md"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"\]\(([^)\s#]*)(#[^)\s]*)?\)", text):
            target = m.group(1)
            if not target or re.match(r"[a-z]+:", target):      # in-page anchor or URL
                continue
            dest = (path.parent / target).resolve()
            if ROOT.resolve() not in dest.parents and dest != ROOT.resolve():
                bad.append(f"{path.relative_to(ROOT)}: {target} (outside the repository)")
            elif not dest.exists():
                bad.append(f"{path.relative_to(ROOT)}: {target} (missing)")
    assert not bad, "broken or external links:\n" + "\n".join(bad)


def _numbered_sections(doc: Path):
    return {int(m.group(1)) for m in re.finditer(r"^## (\d+)\. ", doc.read_text(encoding="utf-8"), re.M)}


def test_cited_theory_sections_and_labels_exist():
    sections = _numbered_sections(THEORY)
    assert sections == set(range(1, 9))
    cited = []
    for path in _repo_files(".py", ".md"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"docs/theory\.md,?\s+sections?\s+(\d+)(?:-(\d+))?", text):
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            cited += [(path.relative_to(ROOT), n) for n in range(lo, hi + 1)]
    assert cited, "expected section citations of docs/theory.md"
    missing = [f"{src}: section {n}" for src, n in cited if n not in sections]
    assert not missing, "cited sections missing from docs/theory.md: " + ", ".join(missing)
    text = THEORY.read_text(encoding="utf-8")
    for label in [f"L{i}" for i in range(1, 5)] + [f"T{i}" for i in range(1, 7)] + [f"S{i}" for i in range(1, 6)]:
        assert f"**{label}" in text, f"docs/theory.md does not state {label}"


def test_protocol_sections():
    text = PROTOCOL.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (.+)$", text, re.M))
    for h in ("Reference protocol: CIFAR-10 and CIFAR-100", "Fashion-MNIST protocol",
              "Test data: scikit-learn digits", "CPU preset", "Deviations from the paper's public code"):
        assert h in headings, h
    assert "--profile cpu" in text
    for path in _repo_files(".py", ".md"):
        for m in re.finditer(r'docs/protocol\.md, "([^"]+)"', path.read_text(encoding="utf-8", errors="replace")):
            assert m.group(1) in headings, f"{path.relative_to(ROOT)} cites a missing section {m.group(1)!r}"


# --- license and citation --------------------------------------------------------------------------------

def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 The sam-robustness authors" in text
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_citation_cff():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    for key in ("message", "title", "authors", "license"):
        assert cff[key]
    assert cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["title"] == "Sharpness-Aware Minimization Alone can Improve Adversarial Robustness"
    assert [a["family-names"] for a in paper["authors"]] == ["Wei", "Zhu", "Zhang"]
    assert paper["year"] == 2023
    assert "2305.05392" in paper["url"] and any("2305.05392" in i["value"] for i in paper["identifiers"])
    assert any(r["title"] == paper["title"] for r in cff["references"])
