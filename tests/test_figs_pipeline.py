"""paper_figs end to end: every figure from real quick-mode results, missing/corrupt inputs,
verdicts derived from the data (not hard-coded)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from paper_figs.__main__ import main
from paper_figs.build import build

ROOT = Path(__file__).resolve().parents[1]
ALL_FIGS = ("fig1_tradeoff", "fig2_strength", "fig3_weights", "fig4_sam_vs_m", "fig5_deep",
            "fig6_probes")

# The smallest runs the two CLIs allow that still produce every section the figures read.
SIM_CMD = ["-m", "simulations.run", "--quick", "--only", "S4,S5", "--seeds", "2", "--no-progress"]
DEEP_CMD = ["-m", "deep.run", "--quick", "--seeds", "0", "--n-train", "64", "--n-test", "32",
            "--probe-n", "32", "--width", "4", "--batch-size", "32", "--attack-steps", "2",
            "--at-steps", "2", "--eval-attacks", "linf:1/255,l2:16/255", "--no-progress"]


@pytest.fixture(scope="session")
def real_results(tmp_path_factory):
    """results/ made by the real simulations.run and deep.run in (reduced) quick mode."""
    root = tmp_path_factory.mktemp("figs_results")
    # the two CLIs are independent: run them side by side (one core each)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {name: subprocess.Popen([sys.executable, *cmd, "--out", str(out)], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd, out in (("sim", SIM_CMD, root), ("deep", DEEP_CMD, root / "deep"))}
    results = {name: (p.communicate()[1], p.returncode) for name, p in procs.items()}
    # simulations exit 1 when a check fails: a finding the report shows, not a fixture error
    assert results["sim"][1] in (0, 1), results["sim"][0][-2000:]
    assert results["deep"][1] == 0, results["deep"][0][-2000:]
    return root


def _assert_image(path: Path):
    assert path.is_file() and path.stat().st_size > 5000, path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300, (path, img.shape)
    assert float(np.std(img[..., :3])) > 0.02, f"{path} looks blank"


def test_every_figure_and_report_from_quick_results(real_results, tmp_path):
    out, report = tmp_path / "figs", tmp_path / "REPORT.md"
    lines = []
    res = build(real_results, out, report, formats=("png", "pdf"), log=lines.append)
    assert not res.errors
    assert [f.name for f in res.figures] == list(ALL_FIGS), res.skipped
    for name in ALL_FIGS:
        _assert_image(out / f"{name}.png")
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    text = report.read_text()
    for name in ALL_FIGS:
        assert f"](figs/{name}.png)" in text
    claims = json.loads((real_results / "simulations.json").read_text())["claims"]
    assert claims and all(f"| {c['id']} |" in text for c in claims)
    assert "synthetic (quick)" in text and "nonrobust_swapped" in text
    for f in res.figures:   # a verdict for every figure, derived from data both sides exist for
        assert f.verdict.agree is not None, (f.name, f.verdict.text)


def _shift_sim_clean(src: Path, dst: Path, delta: float):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "figures"))
    path = dst / "simulations.json"
    data = json.loads(path.read_text())
    for cur in data["curves"].values():
        s = cur["sim"]["clean"]
        for k in ("mean", "lo", "hi"):
            s[k] = [x + delta for x in s[k]]
    path.write_text(json.dumps(data))


def _set_deep(root: Path, values: dict):
    """Overwrite clean/robust accuracies of the quick deep runs with method -> (clean, robust)."""
    for path in (root / "deep").glob("*/*.json"):
        rec = json.loads(path.read_text())
        clean, robust = values[rec["method"]]
        rec["clean_acc"] = clean
        rec["robust"] = {k: robust for k in rec["robust"]}
        path.write_text(json.dumps(rec))


def test_verdicts_follow_the_data(real_results, tmp_path):
    """Moving the measurements moves the verdicts: nothing in a caption is hard-coded."""
    bad = tmp_path / "bad"
    _shift_sim_clean(real_results, bad, -0.3)          # simulated clean accuracy 30 points off
    _set_deep(bad, {"st": (0.9, 0.5), "sam": (0.5, 0.1), "at": (0.95, 0.05)})
    res = build(bad, bad / "figs", bad / "REPORT.md", formats=("png",), log=lambda s: None)
    v = {f.name: f.verdict for f in res.figures}
    assert v["fig1_tradeoff"].agree is False and "Disagree" in v["fig1_tradeoff"].text
    assert v["fig5_deep"].agree is False
    # quick mode trains SAM at rho = 0.1, where T5 predicts a robust gain over ST
    assert "SAM rho=0.1 robust > ST: theory yes, measured no" in v["fig5_deep"].text
    assert "Disagree" in (bad / "REPORT.md").read_text()

    good = tmp_path / "good"
    shutil.copytree(real_results, good, ignore=shutil.ignore_patterns("cache", "figures"))
    # the linear theory's ordering at the first evaluation attack (l_inf 0.1 = eta/2): SAM more
    # robust than ST at equal clean accuracy; AT beyond eta loses clean accuracy and, at so small
    # an attack, also robust accuracy relative to SAM
    _set_deep(good, {"st": (0.9, 0.2), "sam": (0.9, 0.4), "at": (0.7, 0.3)})
    res = build(good, good / "figs", good / "REPORT.md", formats=("png",), log=lambda s: None)
    v = {f.name: f.verdict for f in res.figures}
    assert v["fig5_deep"].agree is True, v["fig5_deep"].text


def test_missing_inputs_are_reported_not_fatal(tmp_path, capsys):
    empty = tmp_path / "results"
    empty.mkdir()
    rc = main(["--results", str(empty), "--out", str(tmp_path / "figs"), "--report",
               str(tmp_path / "R.md"), "--formats", "png"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"python -m simulations.run --out {empty}" in out
    assert f"python -m deep.run --out {empty}/deep" in out
    for name in ("fig4_sam_vs_m", "fig5_deep", "fig6_probes"):
        assert f"{name} skipped" in out
        assert not (tmp_path / "figs" / f"{name}.png").exists()
    for name in ("fig1_tradeoff", "fig2_strength", "fig3_weights"):   # theory-only versions
        _assert_image(tmp_path / "figs" / f"{name}.png")
    text = (tmp_path / "R.md").read_text()
    assert "Not compared: theory only" in text and "fig4_sam_vs_m skipped" in text


def test_corrupt_input_exits_2_with_one_line(tmp_path, capsys):
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "simulations.json").write_text("{not json")
    rc = main(["--results", str(res_dir), "--out", str(tmp_path / "figs"), "--report",
               str(tmp_path / "R.md"), "--formats", "png"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "simulations.json" in err[0] and "not valid JSON" in err[0]
    assert (tmp_path / "figs" / "fig1_tradeoff.png").is_file()   # the rest is still drawn


def test_bad_cli_options_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--formats", "gif", "--results", str(tmp_path)])
    assert exc.value.code == 2
    assert "--formats" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--results", "--runs"])
def test_a_missing_folder_exits_2_and_creates_nothing(tmp_path, capsys, option):
    """A mistyped --results or --runs folder is an error, not an empty report (and no folder is made)."""
    missing = tmp_path / "no-such-folder"
    argv = [option, str(missing), "--out", str(tmp_path / "figs"), "--report", str(tmp_path / "R.md")]
    if option == "--runs":
        (tmp_path / "results").mkdir()
        argv += ["--results", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{option} {missing}: no such folder" in err[-1]
    assert not missing.exists() and not (tmp_path / "figs").exists() and not (tmp_path / "R.md").exists()
