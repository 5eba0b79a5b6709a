"""CLI: python -m linear_theory {derive,solve,tradeoff}; bad input -> exit 2 with a one-line message."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import linear_theory as lt
from linear_theory.cli import main


def run_main(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_solve_json_matches_api(capsys):
    code, out, _ = run_main(capsys, ["solve", "--method", "at-l2", "--strength", "0.4", "--json", "--d", "20"])
    assert code == 0
    res = json.loads(out)
    sol = lt.solve(lt.FeatureModel(d=20), "at-l2", 0.4)
    assert np.allclose(res["v"], sol.v) and res["lam"] == pytest.approx(sol.lam)
    assert res["robust_accuracy"]["linf_0.2"] == pytest.approx(sol.robust_accuracy("inf", 0.2))


def test_solve_sam_norm_projected_json_matches_api(capsys):
    argv = ["solve", "--method", "sam-fixed-scale", "--strength", "0.3", "--tau", "4", "--json", "--d", "20"]
    code, out, _ = run_main(capsys, argv + ["--sam-norm", "projected"])
    assert code == 0
    res = json.loads(out)
    sol = lt.solve(lt.FeatureModel(d=20), "sam-fixed-scale", 0.3, tau=4.0, sam_norm="projected")
    assert res["sam_norm"] == "projected" and np.allclose(res["v"], sol.v) and res["lam"] == pytest.approx(sol.lam)
    # default stays T5's full norm, which gives a different solution
    code, out, _ = run_main(capsys, argv)
    full = json.loads(out)
    assert full["sam_norm"] == "full" and full["lam"] > res["lam"]


def test_solve_text_and_tsipras(capsys):
    code, out, _ = run_main(capsys, ["solve", "--method", "st", "--model", "tsipras", "--p", "0.8", "--d", "10"])
    assert code == 0 and "clean accuracy" in out and "robust linf_0.1" in out


def test_tradeoff_json_and_summary(capsys, tmp_path):
    target = tmp_path / "curves.json"
    code, out, _ = run_main(capsys, ["tradeoff", "--num", "3", "--d", "20", "--json", "--out", str(target),
                                     "--methods", "sam-fixed-scale", "at-linf", "at-l2"])
    assert code == 0
    res = json.loads(out)
    assert set(res["curves"]) == {"sam-fixed-scale", "at-linf", "at-l2"}
    assert res["sam_norm"] == "full" and res["curves"]["sam-fixed-scale"][0]["sam_norm"] == "full"
    assert [r["strength"] for r in res["curves"]["at-linf"]] == [0.0, 0.25, 0.5]
    # at eps = 0.25 >= eta the AT curve sits at the robust-feature-only accuracy (T3/T6)
    s = res["summary"]["at-linf"]
    assert s["first_strength_with_nonrobust_dropped"] == 0.25
    assert s["clean_accuracy_there"] == pytest.approx(s["robust_feature_only_accuracy"])
    assert json.loads(target.read_text()) == res and target.with_suffix(".md").exists()


def test_tradeoff_out_files_get_umask_permissions(capsys, tmp_path):
    """The atomic writer must not leave results readable by the owner only (mkstemp's 0600)."""
    target = tmp_path / "curves.json"
    old = os.umask(0o022)
    try:
        code, _, _ = run_main(capsys, ["tradeoff", "--num", "2", "--d", "10", "--out", str(target),
                                       "--methods", "at-l2"])
    finally:
        os.umask(old)
    assert code == 0
    for path in (target, target.with_suffix(".md")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp_")] == []


def test_derive_prints_every_label(capsys):
    code, out, _ = run_main(capsys, ["derive", "--latex"])
    assert code == 0
    for label in ["L1", "L2", "L3", "L4", "T1", "T2", "T3", "T4", "T5"]:
        assert f"\n{label}: " in "\n" + out
    assert "\\frac" in out


@pytest.mark.parametrize("argv, word", [
    (["solve", "--method", "at-linf", "--strength", "-0.1"], "strength"),
    (["solve", "--method", "st", "--eta", "0"], "eta"),
    (["solve", "--method", "st", "--model", "tsipras", "--p", "0.4"], "p must"),
    (["solve", "--method", "sam-fixed-scale", "--strength", "0.1"], "tau"),
    (["solve", "--method", "st", "--eps-grid", "inf:-1"], "eps"),
    (["solve", "--method", "bogus"], "method"),
    (["tradeoff", "--num", "1"], "num"),
    (["solve", "--method", "at-l2", "--strength", "0.1", "--sam-norm", "projected"], "sam-norm"),
    (["solve", "--method", "sam-fixed-scale", "--tau", "4", "--sam-norm", "proj"], "sam-norm"),
    (["tradeoff", "--methods", "at-linf", "--sam-norm", "projected"], "sam-norm"),
    (["tradeoff", "--rho-max", "nan"], "rho-max"),
])
def test_bad_input_exits_2_naming_parameter(capsys, argv, word):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_module_entry_point_exit_code_and_no_traceback():
    res = subprocess.run([sys.executable, "-m", "linear_theory", "solve", "--method", "at-l2", "--strength", "-3"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "strength" in res.stderr and "Traceback" not in res.stderr
