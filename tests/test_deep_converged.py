"""The converged-evidence tools of deep.run (issue 18): learning curves in every run's history, the
plateau-check runs, --at-seeds, --jobs K giving the same numbers as one run after another, and the
per-image worst case over PGD and AutoAttack (deep/worstcase.py)."""
import json

import pytest
import torch

import deep.run as R
import deep.worstcase as W
from deep.robustness import Attack, evaluate
from deep.jobs import longest_first
from samrobust.progress import format_seconds

TINY = ["--dataset", "synthetic", "--epochs", "3", "--n-train", "48", "--n-test", "24", "--width", "4",
        "--batch-size", "16", "--eval-attacks", "linf:2/255", "--attack-steps", "2", "--at-steps", "1",
        "--probe-n", "8", "--threads", "1", "--no-progress", "--curve-n", "12", "--rho", "0.1"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _runs(folder):
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_history_has_learning_curves(tmp_path):
    assert R.main(TINY + ["--methods", "st", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "synthetic" / "st_s0.json").read_text())
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    # clean test accuracy after every epoch; the last one is the run's clean accuracy (same model, all images)
    assert all(0 <= h["test_clean_acc"] <= 1 for h in hist)
    assert hist[-1]["test_clean_acc"] == res["clean_acc"]
    # PGD at the first, every third of the budget and the last epoch (3 epochs: all three), on 12 images
    assert [sorted(h["curve_robust"]) for h in hist] == [["linf_2/255"]] * 3
    assert all(h["curve_n"] == 12 for h in hist)
    assert res["curves"] == {"clean": "all test images, every epoch", "n": 12, "attack": "linf_2/255",
                             "steps": 10, "restarts": 1, "best_iterate": True}
    assert "curves" not in res["eval"]      # finished runs of earlier versions keep matching


def test_curve_epochs_first_thirds_last():
    ev = R.EvalSettings(attacks=(), steps=10, restarts=1, loss="ce", n_robust=None, batch_size=10, probe_n=1,
                        autoattack="off", aa_n=1, curve_n=200, curve_attack=Attack("inf", 0.02))
    assert ev.curve_epochs(6) == [1, 2, 4, 6]
    assert ev.curve_epochs(12) == [1, 4, 8, 12]
    assert ev.curve_epochs(1) == [1]


def test_curve_off_with_zero_images(tmp_path):
    assert R.main(TINY + ["--methods", "st", "--curve-n", "0", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "synthetic" / "st_s0.json").read_text())
    assert all("curve_robust" not in h and "test_clean_acc" in h for h in res["history"])
    assert res["curves"] == {"clean": "all test images, every epoch"}


def test_plateau_check_and_at_seeds_make_the_expected_runs():
    parser = R.build_parser()
    spec = R.resolve_spec(parser, parser.parse_args(TINY + ["--methods", "st,sam,at", "--seeds", "0,1,2",
                                                            "--at-seeds", "1", "--plateau-check"]))
    jobs = R.make_jobs(spec)
    grid = sorted(R.run_id(c) for c, d in jobs if d == spec.out_dir)
    assert grid == sorted(["st_s0", "st_s1", "st_s2", "sam_rho0.1_s0", "sam_rho0.1_s1", "sam_rho0.1_s2",
                           "at_linf_8-255_s1"])
    plateau = [(R.run_id(c), c.epochs) for c, d in jobs if d == spec.out_dir / "plateau"]
    # one per method configuration, the first seed it has, at twice the epochs
    assert sorted(plateau) == [("at_linf_8-255_s1", 6), ("sam_rho0.1_s0", 6), ("st_s0", 6)]
    spec = R.resolve_spec(parser, parser.parse_args(TINY + ["--methods", "st,sam,at", "--rho", "0.1,0.2",
                                                            "--plateau-check", "st_*,sam_rho0.2_*"]))
    assert sorted((R.run_id(c), c.epochs) for c, d in R.make_jobs(spec) if d.name == "plateau") == [
        ("sam_rho0.2_s0", 6), ("st_s0", 6)]


def test_jobs_two_processes_equal_one_after_another(tmp_path):
    argv = TINY + ["--methods", "st,sam,at", "--epochs", "2", "--plateau-check"]
    assert R.main(argv + ["--out", str(tmp_path / "serial")]) == 0
    assert R.main(argv + ["--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    for sub in ("synthetic", "synthetic/plateau"):
        a, b = _runs(tmp_path / "serial" / sub), _runs(tmp_path / "parallel" / sub)
        assert sorted(a) == sorted(b) and len(a) == 3
        for name in a:
            for key in ("clean_acc", "robust", "probes", "config", "eval"):
                assert a[name][key] == b[name][key], (sub, name, key)
            strip = [{k: v for k, v in h.items()} for h in a[name]["history"]]
            assert strip == b[name]["history"], (sub, name)
    assert (tmp_path / "parallel" / "synthetic" / "plateau" / "summary.md").exists()


def test_longest_first_and_durations():
    assert longest_first([1.0, 5.0, 3.0, 5.0]) == [1, 3, 2, 0]
    # the grid's "run k/N" lines give times as h:mm:ss (samrobust.progress.format_seconds, as GridProgress does)
    assert format_seconds(42) == "0:42" and format_seconds(600) == "10:00" and format_seconds(7200) == "2:00:00"


# ------------------------------------------------------------------------------------ worst case

class _Fixed(torch.nn.Module):
    """Predicts class 0 for images whose first pixel is < 0.5, else class 1 (no gradient signal needed)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        s = (x.flatten(1)[:, :1] - 0.5) * 100 * self.w
        return torch.cat([-s, s], 1)


def _data(n=8):
    from deep.images import ImageData
    x = torch.full((n, 1, 2, 2), 0.2)
    x[n // 2:] = 0.8
    y = torch.cat([torch.zeros(n // 2, dtype=torch.long), torch.ones(n - n // 2, dtype=torch.long)])
    return ImageData((x * 255).round().to(torch.uint8), y, 2)


def test_worst_case_is_the_per_image_and_of_pgd_and_autoattack(monkeypatch):
    data = _data()
    model = _Fixed()
    pgd_mask = torch.tensor([1, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    aa_mask = torch.tensor([1, 0, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    monkeypatch.setattr(W, "pgd_flags", lambda *a, **k: pgd_mask)
    monkeypatch.setattr(W, "robust_flags", lambda *a, **k: aa_mask)
    e = W.worst_case(model, data, [Attack("inf", 0.1)], "cpu", 8, "cpu")
    assert e["pgd"]["linf_0.1"] == 5 / 8 and e["autoattack"]["linf_0.1"] == 5 / 8
    assert e["robust"]["linf_0.1"] == 3 / 8          # images 0, 4, 5
    assert e["gap_points"]["linf_0.1"] == pytest.approx(100 * 2 / 8)
    assert e["n"] == 8 and e["clean_acc"] == 1.0 and model.training


def test_pgd_flags_match_deep_evaluate_on_a_threshold_model():
    """The images are 0.3 from the threshold: every attack of radius 0.2 fails, of radius 0.4 succeeds
    (l_inf, first pixel); pgd_flags and deep.robustness's PGD agree on both."""
    data = _data()
    x, y = data.x.float() / 255, data.y
    model = _Fixed().eval()
    for eps, want in ((0.2, 1.0), (0.4, 0.0)):
        flags = W.pgd_flags(model, x, y, Attack("inf", eps), steps=10)
        ev = evaluate(model, data, [Attack("inf", eps)], steps=10)
        assert float(flags.float().mean()) == want == ev["robust"][Attack("inf", eps).label]


# ------------------------------------------------------------------------ GPU script and grid time

def test_gridtime_projection_sums_runs_epochs_and_plateau():
    from deep.gridtime import Grid, project
    g = Grid("g", "fashion-mnist", 60000, 6, {"st": 3, "sam": 9, "at": 2}, {"st": 1, "at": 1})
    p = project(g, {"st": 10.0, "sam": 20.0, "at": 100.0})
    assert p["runs_s"] == 3 * 6 * 10 + 9 * 6 * 20 + 2 * 6 * 100
    assert p["plateau_s"] == 12 * 10 + 12 * 100 and p["total_s"] == p["runs_s"] + p["plateau_s"]


def test_gridtime_table_lists_finished_runs(tmp_path):
    from deep.gridtime import timing_table
    (tmp_path / "st_s0.json").write_text(json.dumps({"run_id": "st_s0", "epochs": 6, "wall_time_s": 12.5,
                                                     "images_per_s": 100.0, "total_time_s": 20.0,
                                                     "device": "cuda (H200)"}))
    (tmp_path / "broken.json").write_text("{")
    lines = timing_table(tmp_path).splitlines()
    assert lines[2] == "| st_s0 | 6 | 12.5 | 100 | 20.0 | cuda (H200) |" and len(lines) == 3


def test_gpu_script_is_valid_bash():
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_evidence.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_gpu_script_passes_the_data_folder_to_every_training_and_evaluation_call():
    """The device has no Debian Fashion-MNIST to fall back on: a deep.run or deep.evaluate call without
    --data-dir fails there while passing every CPU dry run (phase 4 of the 2026-12-04 device call did)."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "scripts" / "gpu_evidence.sh").read_text()
    calls = re.findall(r"python3 -m deep\.(?:run|evaluate)\b(?:[^\n]*\\\n)*[^\n]*", text)
    assert len(calls) >= 3
    for call in calls:
        assert "--data-dir" in call, call


def test_jobs_parent_stops_on_sigint_and_leaves_no_workers(tmp_path):
    """SIGINT (what `timeout -s INT` sends) stops a --jobs run within seconds, exit 130, workers gone; the
    finished epochs are checkpointed for --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time
    argv = [sys.executable, "-m", "deep.run"] + TINY + ["--methods", "at", "--epochs", "200", "--jobs", "2",
                                                        "--seeds", "0,1", "--out", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ckpt = tmp_path / "synthetic" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.is_dir() and len(list(ckpt.glob("*.pt"))) == 2):
        time.sleep(0.5)
    assert ckpt.is_dir(), proc.communicate(timeout=30)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                text=True).stdout.split()]
    assert len(children) >= 2           # the two job processes (and the resource tracker)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - t0 < 30
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(2)
    alive = []
    for pid in children:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == []


def test_history_csv_spreads_the_curve_dict_over_columns():
    from deep.logs import history_csv
    text = history_csv([{"epoch": 1, "train_loss": 0.5, "test_clean_acc": 0.8, "curve_robust": {"linf_0.02": 0.4}},
                        {"epoch": 2, "train_loss": 0.4, "test_clean_acc": 0.85}])
    assert text.splitlines() == ["epoch,train_loss,test_clean_acc,curve_robust_linf_0.02",
                                 "1,0.5,0.8,0.4", "2,0.4,0.85,"]
