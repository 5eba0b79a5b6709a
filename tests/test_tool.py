"""The package as a tool (issue 22): the README's Python example runs, user runs stay out of the shipped
results, bring-your-own-model in deep.run, logs (CSV, run k/N, plain progress lines), one CLI style."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- README example: tests/test_tool.py runs this block -->"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split(MARKER, 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_readme_example_is_at_most_15_lines():
    assert len(readme_example().strip().splitlines()) <= 15


def test_readme_example_runs(capsys):
    """The README's code with smaller sizes (the only change) prints clean, PGD and AA for ST and SAM."""
    from deep.images import DataError
    from deep.datasets import find_fashion_mnist
    try:
        find_fashion_mnist(None)
    except DataError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    code = readme_example()
    small = code.replace("n_train=2000", "n_train=128").replace("n_test=500", "n_test=40").replace("n=100", "n=8")
    assert small != code
    exec(compile(small, "README example", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["st", "sam"]
    for line in out:
        vals = [float(v) for v in re.findall(r"(?:clean|PGD|AA) ([0-9.]+)", line)]
        assert len(vals) == 3 and all(0 <= v <= 1 for v in vals) and vals[1] <= vals[0]


def test_user_runs_default_to_untracked_runs_folder():
    from deep import cost, run
    from deep.bench import cli as bench
    assert run.build_parser().get_default("out") == "runs/deep"
    assert cost.build_parser().get_default("out").startswith("runs/")
    assert bench.build_parser().get_default("out").startswith("runs/")
    out = subprocess.run(["git", "check-ignore", "-q", "runs/deep/quick/st_s0.json"], cwd=ROOT)
    assert out.returncode == 0, "runs/ must be in .gitignore"


def test_simulations_out_resolution(monkeypatch):
    """runs/ by default, results/ only with --publish (or an explicit --out)."""
    from simulations import run as sim
    seen = []
    monkeypatch.setattr(sim, "run_simulations", lambda *a, **k: seen.append(k["out"]) or (_ for _ in ()).throw(
        KeyboardInterrupt))
    for argv, want in (([], "runs"), (["--publish"], "results"), (["--out", "x"], "x")):
        assert sim.main(argv + ["--quick"]) == 130
        assert seen[-1] == want
    with pytest.raises(SystemExit):
        sim.main(["--publish", "--out", "x"])


def _mynets(tmp_path: Path) -> Path:
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_channels * 16, num_classes))\n"
        "def broken(num_classes, in_channels):\n    raise RuntimeError('boom')\n")
    return tmp_path


QUICK = ["--quick", "--methods", "st,sam", "--n-train", "32", "--n-test", "16", "--probe-n", "8", "--no-progress"]


def test_deep_run_trains_your_own_model_and_logs_csv(tmp_path, monkeypatch, capsys):
    from deep import run
    monkeypatch.syspath_prepend(str(_mynets(tmp_path)))
    assert run.main(QUICK + ["--archs", "mynets:tiny", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "run 1/2: mynets-tiny_st_s0" in out and "run 2/2: mynets-tiny_sam_rho0.1_s0" in out
    csv_path = tmp_path / "out" / "quick" / "mynets-tiny_sam_rho0.1_s0.csv"
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_acc,lr_end") and len(lines) == 2


@pytest.mark.parametrize("arch, why", [("mynets:broken", "boom"), ("mynets:nope", "no attribute"),
                                       ("nomodule_xyz:f", "cannot import")])
def test_deep_run_bad_own_model_exits_2_with_one_line(tmp_path, monkeypatch, capsys, arch, why):
    from deep import run
    monkeypatch.syspath_prepend(str(_mynets(tmp_path)))
    with pytest.raises(SystemExit) as exc:
        run.main(QUICK + ["--archs", arch, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and why in err[0]


def test_line_progress_prints_at_a_low_rate():
    from samrobust.progress import LineProgress
    now = [0.0]
    buf = io.StringIO()
    bar = LineProgress(100, desc="st", unit="step", interval=30, file=buf, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 1.0
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    # gaps of half the time elapsed, 5 s to 30 s: t = 1, 6, 12, 24, 48, 78 and the last one
    assert "\r" not in buf.getvalue() and [ln.split("/")[0] for ln in lines] == \
        ["st: 1", "st: 6", "st: 12", "st: 24", "st: 48", "st: 78", "st: 100"]
    assert lines[2].startswith("st: 12/100 step (12%), 0:12 elapsed, ETA 1:28")   # rate since the first update
    assert lines[0].endswith("ETA 1:39")                                        # first one: since the start


def test_grid_progress_eta_from_trained_runs_only():
    from deep.logs import GridProgress
    now, said = [0.0], []
    g = GridProgress(4, say=said.append, clock=lambda: now[0])
    g.start("a")
    g.finish(skipped=True)
    g.start("b")
    now[0] += 60
    g.finish()
    assert g.start("c").startswith("run 3/4: c (1:00 elapsed, grid ETA 2:00)")
    assert said[0] == "run 1/4: a (0:00 elapsed, grid ETA ?)"


ENTRY_POINTS = ["deep.run", "deep.evaluate", "deep.saliency", "deep.cost", "deep.bench.cli", "paper_figs.__main__",
                "simulations.run", "simulations.bench", "linear_theory.cli", "deep.gridtime"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_has_examples_version_and_shared_names(module):
    parser = import_module(module).build_parser()
    text = parser.format_help()
    assert "examples:\n  python -m " in text and "--version" in text
    opts = {o for a in parser._actions for o in a.option_strings}
    assert "--quiet" not in opts or "--no-progress" in opts


def test_console_scripts_resolve():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"samrob-sim", "samrob-deep", "samrob-eval", "samrob-figs"} <= set(scripts)
    for target in scripts.values():
        mod, _, fn = target.partition(":")
        assert callable(getattr(import_module(mod), fn))


def test_every_package_is_typed():
    for pkg in ("samrobust", "linear_theory", "simulations", "deep", "paper_figs"):
        assert (ROOT / pkg / "py.typed").is_file()


def test_smoke_runs_never_count_in_a_verdict():
    from paper_figs.deep_figures import _counted
    assert _counted(["fashion-mnist", "synthetic (quick, runs/deep)", "synthetic (quick)"]) == ["fashion-mnist"]
    assert _counted(["synthetic (quick)"]) == ["synthetic (quick)"]   # alone: counted, flagged as smoke
