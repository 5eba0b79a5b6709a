"""Trust under bad input (issue 20), in process: each probe of the issue gives one clear line and the right
exit status. The end-to-end faults (kill -9, full disk, two writers) are in tests/test_faults.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from samrobust.files import write_atomic
from samrobust.threat import parse_eps

TINY = ["--dataset", "digits", "--n-train", "128", "--n-test", "32", "--width", "4", "--batch-size", "64",
        "--threads", "1", "--methods", "st", "--eval-attacks", "linf:0.02", "--attack-steps", "2",
        "--no-progress", "--seeds", "0", "--epochs", "1"]


def _exit(fn, argv, capsys):
    """(exit status, stderr) of a command's main that ends with SystemExit."""
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------ radii and rho

def test_inf_is_refused_as_a_radius():
    for text in ("inf", "-inf", "nan", "1e999"):
        with pytest.raises(ValueError, match="eps"):
            parse_eps(text)
    assert parse_eps("8/255") == pytest.approx(8 / 255)


@pytest.mark.parametrize("argv, words", [
    (["--methods", "sam", "--rho", "inf"], "--rho"),
    (["--methods", "at", "--norm", "l2", "--eps", "inf"], "--eps"),
    (["--eval-attacks", "l2:inf"], "--eval-attacks l2:inf"),
    (["--eval-attacks", ","], "--eval-attacks is empty"),
    (["--lr", "inf"], "--lr must be finite"),
    (["--weight-decay", "inf"], "--weight-decay must be finite"),
    (["--threads", "100000"], "--threads must be <="),
    (["--width", "1000000"], "--width 1000000"),
    (["--methods", "sam", "--rho", "0.1,0.1"], "sam_rho0.1_s0"),
])
def test_deep_run_refuses_bad_values_before_any_work(tmp_path, capsys, argv, words):
    from deep.run import main
    code, line = _exit(main, TINY + argv + ["--out", str(tmp_path)], capsys)
    assert code == 2 and words in line
    assert not list(tmp_path.iterdir())                     # nothing written


def test_rho_values_that_print_alike_get_distinct_run_ids():
    from deep.run import format_rho, run_id
    from deep.train import TrainConfig
    ids = {run_id(TrainConfig(dataset="digits", method="sam", rho=r)) for r in (0.1, 0.1000001, 0.10000000000000002)}
    assert len(ids) == 3
    assert format_rho(0.1) == "0.1" and format_rho(0.05) == "0.05"        # existing ids unchanged


def test_trainconfig_refuses_non_finite_values():
    from deep.train import TrainConfig
    for field in ("rho", "eps", "lr", "weight_decay"):
        with pytest.raises(ValueError, match=f"{field} must be finite"):
            TrainConfig(**{field: float("inf")})


def test_n_train_larger_than_the_data_is_refused(tmp_path, capsys):
    from deep.run import main
    code, line = _exit(main, TINY + ["--n-train", "100000", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--n-train 100000 is larger than the 1297 training images of digits" in line


def test_threads_are_bounded():
    from samrobust.cli import max_threads, threads_error
    assert threads_error(max_threads()) is None and threads_error(0) is None
    assert "<=" in threads_error(max_threads() + 1)
    assert ">= 1" in threads_error(0, low=1)


def test_deep_evaluate_checks_linf_units_and_threads(tmp_path, capsys):
    from deep.evaluate import main
    for argv, words in ((["--radii", "linf:8"], "did you mean 8/255"), (["--radii", "l2:inf"], "finite"),
                        (["--radii", ","], "--radii is empty"), (["--threads", "100000"], "--threads")):
        code, line = _exit(main, [str(tmp_path), "--attacks", "pgd:1"] + argv, capsys)
        assert code == 2 and words in line


def test_deep_bench_refuses_linf_8_before_measuring(monkeypatch, capsys):
    import deep.bench.cli as bench

    def never(*a, **k):
        raise AssertionError("the benchmark started")
    monkeypatch.setattr(bench, "run_bench", never)
    code, line = _exit(bench.main, ["--eps", "8", "--device", "cpu", "--steps", "1"], capsys)
    assert code == 2 and "did you mean 8/255" in line


def test_huge_d_is_refused_before_allocation(capsys):
    from linear_theory.cli import main
    code, line = _exit(main, ["solve", "--method", "st", "--d", str(10 ** 12)], capsys)
    assert code == 2 and "--d 1000000000000" in line


# ------------------------------------------------------------------------------------ files

def test_read_json_object_names_the_file(tmp_path):
    from samrobust.files import JsonFileError, read_json_object
    p = tmp_path / "r.json"
    p.write_text("{broken")
    with pytest.raises(JsonFileError, match="r.json: not valid JSON"):
        read_json_object(p)
    p.write_text("[1]")
    with pytest.raises(JsonFileError, match="r.json: holds a JSON list"):
        read_json_object(p)
    p.write_text('{"a": 1}')
    assert read_json_object(p) == {"a": 1}


def test_write_summary_and_find_runs_warn_once_about_a_corrupt_file(tmp_path, capsys):
    from deep.evaluate import find_runs
    from deep.summary import write_summary
    (tmp_path / "bad_s0.json").write_text("{")
    (tmp_path / "list_s0.json").write_text("[]")
    write_summary(tmp_path)
    assert find_runs(tmp_path) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and any("bad_s0.json" in ln for ln in err) and any("list_s0.json" in ln for ln in err)


def test_failed_atomic_write_leaves_no_temp_file(tmp_path):
    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "r.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    from samrobust.files import remove_stale_temp_files
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"r.json.tmp{dead.pid}").write_text("half")
    (tmp_path / f"live.json.tmp{os.getpid()}").write_text("being written")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [f"r.json.tmp{dead.pid}"]
    assert (tmp_path / f"live.json.tmp{os.getpid()}").exists()


def test_output_dir_checks(tmp_path):
    from samrobust.files import check_output_dir
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="not a folder|cannot be created"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(ValueError, match="cannot be created"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(ValueError, match="MiB free"):
        check_output_dir(tmp_path / "ok", need_bytes=2 ** 62)
    assert check_output_dir(tmp_path / "ok", 1).is_dir()
    assert list((tmp_path / "ok").iterdir()) == []              # the probe file is gone


def test_lock_refuses_a_second_process_and_names_the_holder(tmp_path):
    from samrobust.lock import LockedError, RunLock
    code = ("import sys; from samrobust.lock import RunLock, LockedError\n"
            "try:\n    RunLock(sys.argv[1]).acquire()\nexcept LockedError as e:\n    print(e); sys.exit(2)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with RunLock(tmp_path) as lock:
        assert lock.taken_over is None
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and f"pid {os.getpid()}" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr                # released: the next writer gets it
    assert LockedError.__mro__[1] is ValueError


# ------------------------------------------------------------------------------------ checkpoints

class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_loading_refuses_payloads_and_names_corrupt_files(tmp_path):
    from deep.train import CheckpointError, load_checkpoint, save_checkpoint   # noqa: F401
    good = tmp_path / "good.pt"
    rng = torch.get_rng_state()
    save_checkpoint(good, {"model": {"w": torch.ones(2)}, "config": {"seed": 0}, "rng": {"torch": rng},
                           "history": [{"epoch": 1, "train_loss": 0.5}]})
    ck = load_checkpoint(good, "cpu")           # weights_only=True still loads the RNG state
    assert torch.equal(ck["rng"]["torch"], rng) and ck["history"] == [{"epoch": 1, "train_loss": 0.5}]
    marker = tmp_path / "ran"
    torch.save({"model": _Payload(marker), "config": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt: refused"):
        load_checkpoint(tmp_path / "bad.pt", "cpu")
    assert not marker.exists()
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(CheckpointError, match="r.json: not a checkpoint"):
        load_checkpoint(tmp_path / "r.json", "cpu")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt", "cpu")


def test_non_finite_weights_are_found_by_name():
    from deep.train import first_nonfinite
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert first_nonfinite(m) is None
    with torch.no_grad():
        m[1].running_var[0] = float("nan")
    assert first_nonfinite(m) == "1.running_var"



def test_a_null_radius_from_an_older_version_is_skipped_by_the_summary(tmp_path, capsys):
    from deep.summary import write_summary
    good = {"run_id": "sam_rho0.1_s0", "method": "sam", "rho": 0.1, "eps": None, "norm": None, "seed": 0,
            "clean_acc": 0.5, "robust": {"linf_0.02": 0.25}, "epochs": 1, "wall_time_s": 1.0, "config": None}
    (tmp_path / "sam_rho0.1_s0.json").write_text(json.dumps(good))
    (tmp_path / "sam_rhoinf_s0.json").write_text(json.dumps(dict(good, rho=None, run_id="sam_rhoinf_s0")))
    text = write_summary(tmp_path).read_text()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sam_rhoinf_s0.json: rho is null" in err[0]
    assert "rho=0.1" in text


def test_a_result_json_that_is_not_an_object_is_named(tmp_path, capsys):
    from deep.run import main
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "st_s0.json").write_text("[1, 2]")
    code, line = _exit(main, TINY + ["--out", str(tmp_path)], capsys)
    assert code == 2 and "st_s0.json: holds a JSON list, not an object" in line
    assert (tmp_path / "digits" / "st_s0.json").read_text() == "[1, 2]"
