"""Fault injection on the real command lines (issue 20): each test runs ``python -m deep.run`` (or
deep.evaluate, deep.saliency, simulations.run) in a subprocess with tiny settings, breaks something (kill -9,
a corrupt or planted file, a full file system, a second writer) and checks the exit status, that stderr is
exactly one line without a traceback, and that nothing finished was lost.

Some faults are injected from inside the real command: ``_inject`` runs the module as ``__main__`` after
wrapping one of its functions (e.g. the result write kills its own process half-way).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# digits (scikit-learn, no download), 128 images, width 4, 2 steps per epoch: about a second of training
TINY = ["--dataset", "digits", "--n-train", "128", "--n-test", "32", "--width", "4", "--batch-size", "64",
        "--threads", "1", "--methods", "st", "--eval-attacks", "linf:0.02", "--attack-steps", "2",
        "--no-progress", "--seeds", "0", "--lr", "0.05"]


def _env() -> dict:
    """The environment of the commands: this checkout first on the path (not an installed copy)."""
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def cli(module: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` from the repository root; its CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _inject(module: str, patch: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``module`` as ``__main__`` (as ``python -m`` does) after executing ``patch``, Python code that
    replaces a function to inject a fault. ``module`` is executed afresh, so the patch must replace the
    function where the module imports it from (e.g. ``samrobust.files``), and must not import ``module``."""
    code = textwrap.dedent(patch) + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{module!r}] + {list(map(str, args))!r}
        runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The single stderr line of ``proc`` (asserting there is exactly one, with no traceback, and that it
    contains ``words``)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def numbers(path: Path) -> tuple:
    """What a run measured: accuracies and the per-epoch training losses (not timings)."""
    res = json.loads(path.read_text())
    return res["clean_acc"], res["robust"], [(h["epoch"], h["train_loss"], h["train_acc"]) for h in res["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of two configurations (st, sam rho 0.1), 6 epochs: the numbers every
    interrupted run must reproduce, and finished runs for the evaluation tests."""
    out = tmp_path_factory.mktemp("reference")
    proc = cli("deep.run", *TINY, "--methods", "st,sam", "--rho", "0.1", "--epochs", "6", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out / "digits"


def _copy_runs(src: Path, dst: Path) -> Path:
    """A copy of a results folder (JSONs and checkpoints), to break without touching the reference."""
    import shutil
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------- kill -9

@pytest.mark.slow
def test_kill_9_during_training_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "out"
    args = ["deep.run", *TINY, "--methods", "st,sam", "--rho", "0.1", "--epochs", "6", "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "digits" / "checkpoints" / "st_s0.pt"
    t0 = time.time()
    while not ckpt.exists() and proc.poll() is None and time.time() - t0 < 60:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)            # mid-training of the first run (its first epoch is saved)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "digits" / "sam_rho0.1_s0.json").exists()
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.strip() == ""
    for rid in ("st_s0", "sam_rho0.1_s0"):
        assert numbers(out / "digits" / f"{rid}.json") == numbers(reference / f"{rid}.json")
    assert not list((out / "digits").rglob("*.tmp*"))


@pytest.mark.slow
def test_kill_9_during_the_result_write_then_resume(tmp_path, reference):
    out = tmp_path / "out"
    # the result write puts half of the JSON into its temporary file, then the process is killed
    patch = """
        import os, signal
        import samrobust.files
        def half_write(path, obj, indent=2):
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text('{"run_id": "st_s0", "clean_ac')
            os.kill(os.getpid(), signal.SIGKILL)
        samrobust.files.write_json_atomic = half_write
    """
    args = [*TINY, "--epochs", "6", "--out", out]
    killed = _inject("deep.run", patch, *args)
    assert killed.returncode == -signal.SIGKILL
    folder = out / "digits"
    assert not (folder / "st_s0.json").exists() and len(list(folder.glob("st_s0.json.tmp*"))) == 1
    resumed = cli("deep.run", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.strip() == "" and "temporary file of a process that no longer runs" in resumed.stdout
    assert numbers(folder / "st_s0.json") == numbers(reference / "st_s0.json")
    assert not list(folder.rglob("*.tmp*"))


# ------------------------------------------------------------------------- corrupt and planted files

class Payload:
    """Unpickling this runs ``touch <marker>``: a planted checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(ckpt: Path, marker: Path) -> None:
    torch.save({"model": Payload(marker), "config": {}, "epoch": 1}, ckpt)


def test_planted_checkpoint_is_refused_by_every_reader(tmp_path, reference):
    runs = _copy_runs(reference, tmp_path / "runs")
    marker = tmp_path / "payload-ran"
    _plant(runs / "checkpoints" / "st_s0.pt", marker)
    ev = cli("deep.evaluate", runs / "checkpoints" / "st_s0.pt", "--attacks", "pgd:1", "--no-sanity",
             "--threads", "1")
    assert ev.returncode == 2
    one_line(ev, "st_s0.pt", "refused")
    sal = cli("deep.saliency", runs, "--runs", "st_s0", "--n", "4")
    assert sal.returncode == 2
    one_line(sal, "st_s0.pt", "refused")
    # deep.run --resume on an unfinished run whose checkpoint was replaced
    out = tmp_path / "out"
    (out / "digits" / "checkpoints").mkdir(parents=True)
    _plant(out / "digits" / "checkpoints" / "st_s0.pt", marker)
    res = cli("deep.run", *TINY, "--epochs", "2", "--out", out, "--resume")
    assert res.returncode == 2
    one_line(res, "st_s0.pt", "refused")
    assert not marker.exists()


def test_corrupt_checkpoint_skips_that_run_only(tmp_path, reference):
    runs = _copy_runs(reference, tmp_path / "runs")
    ck = runs / "checkpoints" / "st_s0.pt"
    ck.write_bytes(ck.read_bytes()[:1000])                      # truncated
    ev = cli("deep.evaluate", runs, "--attacks", "pgd:1", "--no-sanity", "--threads", "1", "--no-progress")
    assert ev.returncode == 1
    one_line(ev, "st_s0", "st_s0.pt", "corrupt or truncated")
    healthy = json.loads((runs / "sam_rho0.1_s0.json").read_text())
    assert "pgd-1x1-ce" in healthy["extra_evals"]               # the healthy run was evaluated
    assert numbers(runs / "st_s0.json") == numbers(reference / "st_s0.json")   # the broken one kept as is
    sal = cli("deep.saliency", runs, "--n", "4", "--maps", "1")
    assert sal.returncode == 1
    one_line(sal, "st_s0 skipped", "corrupt or truncated")
    assert "saliency" in json.loads((runs / "sam_rho0.1_s0.json").read_text())


def test_corrupt_result_json_is_named(tmp_path, reference):
    content, words = '{"clean_acc": 0.5,', "not valid JSON"         # a JSON that is not an object: test_trust
    runs = _copy_runs(reference, tmp_path / "out" / "digits")
    (runs / "st_s0.json").write_text(content)
    rerun = cli("deep.run", *TINY, "--methods", "st,sam", "--rho", "0.1", "--epochs", "6",
                "--out", tmp_path / "out")
    assert rerun.returncode == 2
    one_line(rerun, "st_s0.json", words)
    ev = cli("deep.evaluate", runs, "--attacks", "pgd:1", "--no-sanity", "--threads", "1", "--no-progress")
    assert ev.returncode == 0, ev.stderr
    one_line(ev, "st_s0.json", words)            # one warning, though find_runs and write_summary both read it
    assert "pgd-1x1-ce" in json.loads((runs / "sam_rho0.1_s0.json").read_text())["extra_evals"]
    assert (runs / "st_s0.json").read_text() == content        # left for the user to look at


def test_corrupt_data_file_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(b"\x00\x00\x08\x03garbage")
    proc = cli("deep.run", *TINY, "--dataset", "fashion-mnist", "--data-dir", data, "--n-train", "64",
               "--epochs", "1", "--out", tmp_path / "out")
    assert proc.returncode == 2
    one_line(proc, "ubyte")
    assert not list((tmp_path / "out").rglob("*.json"))


# --------------------------------------------------------------------------------- non-finite training

def test_non_finite_weights_end_the_run_without_a_result(tmp_path):
    # one step per epoch: the loss of that step is finite, the update it makes is not
    proc = cli("deep.run", *TINY, "--batch-size", "128", "--epochs", "1", "--lr", "1e30",
               "--weight-decay", "1e30", "--out", tmp_path)
    assert proc.returncode == 1
    one_line(proc, "st_s0", "non-finite weights", "epoch 1")
    assert not list(tmp_path.rglob("*.json"))


# ---------------------------------------------------------------------------------- output folders

def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped otherwise), unmounted afterwards."""
    yield from _tmpfs(tmp_path / "small", "1m")


@pytest.fixture
def roomy_fs(tmp_path):
    """An 8 MiB tmpfs: room for the space check of a tiny run (root only; skipped otherwise)."""
    yield from _tmpfs(tmp_path / "roomy", "8m")


def _tmpfs(where: Path, size: str):
    _mount_tmpfs(where, size)
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_full_file_system_is_refused_before_training(small_fs):
    proc = cli("deep.run", *TINY, "--epochs", "1", "--out", small_fs / "out")
    assert proc.returncode == 2
    one_line(proc, "MiB free", str(small_fs / "out"))
    assert "deep.run: 1 run(s)" not in proc.stdout          # refused before the data and the training
    sims = cli("simulations.run", "--quick", "--out", small_fs / "sim")
    assert sims.returncode == 2
    one_line(sims, "MiB free")


def test_disk_full_while_writing_gives_one_line_and_no_temp_files(roomy_fs):
    small_fs = roomy_fs
    # the space check passes and the folder is locked, then the disk fills up before the first checkpoint
    patch = f"""
        import samrobust.lock
        _acquire = samrobust.lock.RunLock.acquire
        def acquire_then_fill(self):
            out = _acquire(self)
            try:
                with open({str(small_fs)!r} + "/filler", "wb") as f:
                    while True:
                        f.write(b"x" * 4096)
            except OSError:
                pass
            return out
        samrobust.lock.RunLock.acquire = acquire_then_fill
    """
    proc = _inject("deep.run", patch, *TINY, "--epochs", "1", "--out", small_fs / "out")
    assert proc.returncode == 1
    one_line(proc, "st_s0", "No space left on device")
    assert not list((small_fs / "out").rglob("*.tmp*"))


def test_read_only_out_is_refused_before_training(tmp_path):
    where = tmp_path / "ro"
    _mount_tmpfs(where, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        proc = cli("deep.run", *TINY, "--epochs", "1", "--out", where / "out")
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
    assert proc.returncode == 2
    one_line(proc, "Read-only file system")


def test_out_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = cli("deep.run", *TINY, "--epochs", "1", "--out", tmp_path / "afile")
    assert proc.returncode == 2
    one_line(proc, "afile")
    assert (tmp_path / "afile").read_text() == "x"
    sims = cli("simulations.run", "--quick", "--out", tmp_path / "afile")
    assert sims.returncode == 2
    one_line(sims, "afile", "not a folder")


# ------------------------------------------------------------------------------------ two writers

@pytest.mark.slow
def test_second_writer_on_one_folder_exits_2_naming_the_first(tmp_path):
    out, go_on = tmp_path / "out", tmp_path / "go-on"
    # the first writer waits after its first epoch until the second has been refused
    patch = f"""
        import os, time
        import deep.train
        _save = deep.train.save_checkpoint
        def save_then_wait(path, state):
            _save(path, state)
            t0 = time.time()
            while not os.path.exists({str(go_on)!r}) and time.time() - t0 < 60:
                time.sleep(0.01)
        deep.train.save_checkpoint = save_then_wait
    """
    code = textwrap.dedent(patch) + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["deep.run"] + {list(map(str, [*TINY, "--epochs", "2", "--out", out]))!r}
        runpy.run_module("deep.run", run_name="__main__", alter_sys=True)
    """)
    first = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    ckpt = out / "digits" / "checkpoints" / "st_s0.pt"
    t0 = time.time()
    while not ckpt.exists() and first.poll() is None and time.time() - t0 < 60:
        time.sleep(0.01)
    second = cli("deep.run", *TINY, "--epochs", "3", "--out", out)
    still_running = first.poll() is None
    go_on.write_text("")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert still_running
    assert second.returncode == 2
    one_line(second, f"pid {first.pid}")
    assert json.loads((out / "digits" / "st_s0.json").read_text())["epochs"] == 2   # the first's result kept


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                  # its pid now names no process
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / ".lock").write_text(f"{dead.pid}\n")
    proc = cli("deep.run", *TINY, "--epochs", "1", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"taking over the lock of process {dead.pid}" in proc.stdout
    assert (tmp_path / "digits" / "st_s0.json").exists()
