"""deep/autoattack.py (pyautoattack wrapper), deep/masking.py (gradient-masking checks) and the re-evaluation
CLI ``python -m deep.evaluate`` (deep/evaluate.py), end to end on tiny digits runs."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("pyautoattack")

import deep.evaluate as evaluate_cli  # noqa: E402
from deep import masking  # noqa: E402
from deep.autoattack import run_autoattack, robust_flags  # noqa: E402
from deep.images import ImageData, to_float  # noqa: E402
from deep.datasets import load_digits_split  # noqa: E402
from deep.evaluate import main as evaluate_main  # noqa: E402
from deep.robustness import Attack, evaluate  # noqa: E402
from deep.run import main as run_main  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ wrapper

@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP trained full-batch on the digits training set (about 95 % test accuracy)."""
    train, test = load_digits_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = to_float(train.x), train.y
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), test


def test_autoattack_is_at_least_as_strong_as_pgd_on_the_same_points(digits_mlp):
    model, test = digits_mlp
    attacks = [Attack("inf", 0.05), Attack("l2", 0.5)]
    aa = run_autoattack(model, test, attacks, "cpu", n=100, device="cpu")
    pgd = evaluate(model, test.subset(100), attacks, steps=10, sharded=False)
    assert aa["n"] == 100 and aa["version"] == "cpu" and aa["attacks_run"] == ["apgd-ce", "apgd-t"]
    assert aa["clean_acc"] == pytest.approx(pgd["clean_acc"])
    for a in attacks:
        assert aa["robust"][a.label] <= pgd["robust"][a.label] + 0.02
        assert aa["robust"][a.label] < aa["clean_acc"]          # the attack does something here
    assert set(aa["seconds_per_attack"]) == {a.label for a in attacks}
    assert aa["seconds"] == pytest.approx(sum(aa["seconds_per_attack"].values()))


def test_standard_breaks_every_point_the_cpu_subset_breaks(digits_mlp):
    """Same seed: standard runs APGD-CE and then APGD-T over 9 targets, whose first 3 are the cpu subset's,
    so its robust points are a subset of the cpu version's."""
    model, test = digits_mlp
    x, y = to_float(test.x[:24]), test.y[:24]
    a = Attack("inf", 0.08)
    cpu = robust_flags(model, x, y, a, "cpu", "cpu", seed=3)
    std = robust_flags(model, x, y, a, "standard", "cpu", seed=3)
    assert not bool((std & ~cpu).any())
    assert int(cpu.sum()) < int((model(x).argmax(1) == y).sum())


class ConstantClassifier(nn.Module):
    """Logits that ignore the input (their gradient is exactly zero): always class ``c``."""

    def __init__(self, c: int):
        super().__init__()
        self.logits = torch.full((10,), -1.0)
        self.logits[c] = 1.0

    def forward(self, x):
        return self.logits + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_constant_classifier_gets_the_trivial_answer_and_the_zero_gradient_warning():
    _, test = load_digits_split()
    model = ConstantClassifier(3)
    res = run_autoattack(model, test, [Attack("inf", 0.3), Attack("l2", 2.0)], "cpu", n=60, device="cpu")
    share = float((test.y[:60] == 3).float().mean())
    assert share > 0
    assert res["clean_acc"] == pytest.approx(share)
    assert res["robust"] == {"linf_0.3": pytest.approx(share), "l2_2": pytest.approx(share)}
    assert any("zero gradient" in w for w in res["warnings"])


def test_points_outside_the_ball_are_refused_and_rng_is_untouched(digits_mlp, monkeypatch):
    import pyautoattack

    model, test = digits_mlp
    x, y = to_float(test.x[:8]), test.y[:8]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    robust_flags(model, x, y, Attack("inf", 0.05), "cpu", "cpu", seed=0)
    assert torch.equal(torch.rand(3), expected)              # the library's manual_seed does not leak
    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation",
                        lambda self, x, y, batch_size=250: ((x + 0.1).clamp(0, 1), y))
    with pytest.raises(RuntimeError, match="outside"):
        robust_flags(model, x, y, Attack("inf", 0.05), "cpu", "cpu")


# ----------------------------------------------------------------------------------- masking checks

def _res(seed=0, robust=None, extra=None, aa=None, dataset="fashion-mnist"):
    res = {"run_id": f"sam_rho0.1_s{seed}", "dataset": dataset, "method": "sam", "rho": 0.1, "eps": None,
           "norm": None, "seed": seed, "robust": robust or {}, "n_robust": 2000,
           "eval": {"attack_steps": 10, "restarts": 1, "loss": "ce"}, "config": {"adaptive": False}}
    if extra is not None:
        res["extra_evals"] = extra
    if aa is not None:
        res["autoattack"] = aa
    return res


def test_gap_is_baseline_minus_the_lowest_other_estimate_and_flags_above_two_points():
    base = {"linf_0.01": 0.50, "linf_0.02": 0.30}
    extra = {"pgd-50x5-ce": {"robust": {"linf_0.01": 0.47, "linf_0.02": 0.295}, "n": 500},
             "autoattack-cpu": {"robust": {"linf_0.01": 0.455, "linf_0.02": 0.29}, "n": 500}}
    # estimates on 500 images are not compared with the run's PGD on 2,000 images (other images) ...
    assert masking.gap_points(_res(robust=base, extra=extra), "linf_0.01") is None
    # ... but with the run's PGD-10 re-run on the same 500 images
    extra["pgd-10x1-ce"] = {"robust": dict(base), "n": 500}
    res = _res(robust={"linf_0.01": 0.9, "linf_0.02": 0.9}, extra=extra)
    assert masking.gap_points(res, "linf_0.01") == pytest.approx(4.5)
    assert masking.gap_points(res, "linf_0.02") == pytest.approx(1.0)
    assert masking.gap_points(_res(robust=base), "linf_0.01") is None
    (check,) = masking.masking_checks([res])
    rows = {r["label"]: r for r in check["radii"]}
    assert rows["linf_0.01"]["flagged"] and not rows["linf_0.02"]["flagged"]
    assert rows["linf_0.01"]["autoattack"]["sources"] == ["autoattack-cpu"]
    assert rows["linf_0.01"]["pgd"]["acc"] == pytest.approx(0.47) and rows["linf_0.01"]["pgd"]["n"] == [500]
    assert check["flags"] == ["gap"]


def test_gap_over_seeds_reports_mean_and_worst_seed():
    runs = [_res(s, robust={"l2_0.5": 0.40}, aa={"version": "cpu", "n": 2000, "robust": {"l2_0.5": 0.40 - g}})
            for s, g in ((0, 0.01), (1, 0.03))]
    (check,) = masking.masking_checks(runs)
    (row,) = check["radii"]
    assert row["gap"] == pytest.approx(2.0) and row["worst_gap"] == pytest.approx(3.0) and row["flagged"]
    assert check["seeds"] == [0, 1]


def test_monotone_violations_per_norm_with_tolerance():
    robust = {"linf_0.01": 0.50, "linf_0.02": 0.60, "linf_0.05": 0.10, "l2_0.5": 0.300, "l2_1": 0.303}
    assert masking.monotone_violations(robust) == ["linf_0.02 (60.00) > linf_0.01 (50.00)"]
    assert masking.monotone_violations({"l2_0.5": 0.3, "l2_1": 0.31}) == ["l2_1 (31.00) > l2_0.5 (30.00)"]
    assert masking.monotone_violations({"l2_0.5": 0.3, "l2_1": 0.2, "linf_8/255": 0.1}) == []
    (check,) = masking.masking_checks([_res(robust=robust)])
    assert check["flags"] == ["monotone"] and "pgd-10x1-ce (run)" in check["monotone"][0]


def test_sanity_uses_the_lowest_estimate_at_the_data_sets_large_radii():
    extra = {"pgd-50x5-ce": {"robust": {"linf_0.3": 0.0, "l2_3": 0.20}, "n": 500},
             "autoattack-cpu": {"robust": {"l2_3": 0.08}, "n": 500}}
    got = {c["label"]: c for c in masking.sanity_check(_res(extra=extra))}
    assert got["linf_0.3"]["ok"] and got["l2_3"]["acc"] == pytest.approx(0.08) and not got["l2_3"]["ok"]
    assert masking.masking_checks([_res(extra=extra)])[0]["flags"] == ["sanity"]
    missing = masking.sanity_check(_res(robust={"linf_0.1": 0.2}))
    assert [c["ok"] for c in missing] == [None, None]           # not evaluated is not a failure
    assert masking.masking_checks([_res(robust={"linf_0.1": 0.2})])[0]["flags"] == []
    md = masking.masking_markdown([_res(extra=extra)])
    assert "l2_3 8.00 FAIL" in md and "## Gradient-masking checks" in md


def test_labels_round_trip_and_attack_set_names():
    for a in (Attack("inf", 8 / 255), Attack("l2", 1.0), Attack("l2", 0.25), Attack("inf", 0.3)):
        back = masking.label_attack(a.label)
        assert back.norm == a.norm and back.eps == pytest.approx(a.eps)
    assert [evaluate_cli.parse_attack_set(t).key for t in ("pgd:50x5", "PGD-CW:100", "pgd-ce:20x2", "autoattack:cpu",
                                                      "autoattack:standard")] == \
        ["pgd-50x5-ce", "pgd-100x1-cw", "pgd-20x2-ce", "autoattack-cpu", "autoattack-standard"]
    for bad in ("pgd", "pgd:0", "pgd:5x0", "pgd-l1:5", "autoattack:plus", "fgsm:1"):
        with pytest.raises(ValueError, match="unknown attack"):
            evaluate_cli.parse_attack_set(bad)


def test_resume_rules_for_stored_entries():
    radii = [Attack("inf", 0.1), Attack("l2", 1.0)]
    old = {"n": 100, "robust": {"linf_0.1": 0.5}, "seconds": 2.0}
    assert evaluate_cli.todo_radii(None, radii, 100, False) == radii
    assert evaluate_cli.todo_radii(old, radii, 100, False) == [radii[1]]
    assert evaluate_cli.todo_radii(old, radii, 200, False) == radii           # other n: all again
    assert evaluate_cli.todo_radii(old, radii, 100, True) == radii
    merged = evaluate_cli.merge_entry(old, {"n": 100, "robust": {"l2_1": 0.25}, "seconds": 1.0}, replace=False)
    assert merged["robust"] == {"linf_0.1": 0.5, "l2_1": 0.25} and merged["seconds"] == 3.0


# -------------------------------------------------------------------------------------- CLI end to end

RUN = ["--dataset", "digits", "--epochs", "1", "--width", "4", "--methods", "st", "--n-robust", "50",
       "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reeval")
    assert run_main(RUN + ["--out", str(out)]) == 0
    return out / "digits"


def test_reevaluation_stores_numbers_that_reproduce_the_run_and_resumes(tiny_run, capsys):
    js = tiny_run / "st_s0.json"
    before = json.loads(js.read_text())
    common = ["--threads", "1", "--no-progress"]
    assert evaluate_main([str(tiny_run), "--attacks", "pgd:10x1", "--n", "50"] + common) == 0
    assert evaluate_main([str(tiny_run), "--attacks", "autoattack:cpu", "--n", "20", "--no-sanity"] + common) == 0
    out = capsys.readouterr().out
    after = json.loads(js.read_text())
    assert {k: v for k, v in after.items() if k != "extra_evals"} == before     # nothing else changed
    pgd, aa = after["extra_evals"]["pgd-10x1-ce"], after["extra_evals"]["autoattack-cpu"]
    assert pgd["n"] == 50 and aa["n"] == 20 and set(aa["robust"]) == set(before["robust"])
    assert set(pgd["robust"]) == set(before["robust"]) | {"linf_0.3", "l2_2"}    # + the sanity radii
    for label in before["robust"]:          # same images, seed and batches as the run's own PGD-10
        assert pgd["robust"][label] == before["robust"][label]
    assert "| st_s0 | autoattack-cpu | 20 |" in out
    assert "## Gradient-masking checks" in (tiny_run / "summary.md").read_text()
    # resume: nothing to do, the file is not rewritten
    mtime = js.stat().st_mtime_ns
    assert evaluate_main([str(tiny_run), "--attacks", "autoattack:cpu", "--n", "20", "--no-sanity"]) == 0
    assert "autoattack-cpu: done earlier on 20 images, skipped" in capsys.readouterr().out
    assert js.stat().st_mtime_ns == mtime
    # a new radius: only that one is computed and merged
    assert evaluate_main([str(tiny_run / "checkpoints" / "st_s0.pt"), "--attacks", "pgd:10x1", "--n", "50",
                          "--radii", "linf:0.05,linf:0.02", "--no-sanity"] + common) == 0
    assert "pgd-10x1-ce on 50 images: linf_0.02\n" in capsys.readouterr().out
    assert json.loads(js.read_text())["extra_evals"]["pgd-10x1-ce"]["robust"].keys() >= {"linf_0.02", "l2_2"}


@pytest.mark.parametrize("argv,word", [(["{missing}"], "no such file"), (["{run}", "--attacks", "fgsm:3"], "unknown attack"),
                                       (["{empty}"], "no finished runs"), (["{run}", "--runs", "zz*"], "no finished runs"),
                                       (["{run}", "--radii", "l3:1"], "norm"), (["{run}", "--n", "0"], "--n")])
def test_bad_input_is_one_line_and_exit_2(argv, word, tiny_run, tmp_path, capsys):
    paths = dict(missing=str(tmp_path / "nope"), run=str(tiny_run), empty=str(tmp_path))
    with pytest.raises(SystemExit) as e:
        evaluate_main([a.format(**paths) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert word in err and err.count("\n") == 1 and "Traceback" not in err


def test_python_m_deep_evaluate_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "-m", "deep.evaluate", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().endswith("no such file or folder") and "Traceback" not in p.stderr
    h = subprocess.run([sys.executable, "-m", "deep.evaluate", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert h.returncode == 0 and h.stdout.startswith("usage: python -m deep.evaluate")
    for opt in ("--attacks", "--radii", "--no-sanity", "--n", "--seeds", "--runs", "--force"):
        assert opt in h.stdout


def test_run_with_autoattack_stores_it_and_leaves_the_default_eval_settings_alone(tiny_run, tmp_path, capsys):
    legacy = {"attack_steps", "restarts", "attacks", "n_test", "probe_n", "loss", "n_robust", "best_iterate"}
    assert set(json.loads((tiny_run / "st_s0.json").read_text())["eval"]) == legacy
    assert run_main(RUN + ["--out", str(tmp_path), "--autoattack", "cpu", "--aa-n", "10"]) == 0
    res = json.loads((tmp_path / "digits" / "st_s0.json").read_text())
    assert res["eval"]["autoattack"] == {"version": "cpu", "n": 10}
    assert res["autoattack"]["n"] == 10 and set(res["autoattack"]["robust"]) == set(res["robust"])
    assert run_main(RUN + ["--out", str(tmp_path), "--autoattack", "cpu", "--aa-n", "10"]) == 0   # skipped
    assert "finished earlier, skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:          # finished without AutoAttack: asked to use deep.evaluate
        run_main(RUN + ["--out", str(tiny_run.parent), "--autoattack", "cpu"])
    assert e.value.code == 2 and "python -m deep.evaluate" in capsys.readouterr().err
