"""``torchrun --nproc_per_node=2 -m deep.run`` end to end on CPU (gloo): the wiring of deep/distributed.py
into deep.run (process group, DDP, shards, SAM's ascent under no_sync, PGD on the unwrapped module inside
a DDP run, sharded evaluation, rank-0-only output).  The numerical
equivalence of DDP and one process is tested in test_deep_distributed.py."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

def _args(out, batch=32):
    return ["--dataset", "synthetic", "--methods", "st,sam,at", "--rho", "0.1", "--eps", "2/255",
            "--at-steps", "3", "--epochs", "1", "--n-train", "64", "--n-test", "40", "--width", "4",
            "--batch-size", str(batch), "--eval-attacks", "linf:2/255", "--probe-n", "16", "--device", "cpu",
            "--no-progress", "--out", str(out)]


def _torchrun(args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deep.run"] + args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_trains_each_run_with_ddp_and_rank0_writes(tmp_path):
    p = _torchrun(_args(tmp_path))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = tmp_path / "synthetic"
    runs = ["at_linf_2-255_s0", "sam_rho0.1_s0", "st_s0"]
    # rank 0 alone writes: one result JSON and one per-epoch CSV per run, the summary, the checkpoints
    assert sorted(f.name for f in out.iterdir()) == sorted(["checkpoints", "summary.md"] + [r + ".json" for r in runs]
                                                           + [r + ".csv" for r in runs])
    assert sorted(f.name for f in (out / "checkpoints").iterdir()) == [r + ".pt" for r in runs]
    for name in (r + ".json" for r in runs):
        res = json.loads((out / name).read_text())
        assert res["world_size"] == 2 and res["per_process_batch"] == 16
        assert res["config"]["batch_size"] == 32                      # the global batch is what is recorded
        assert res["history"][0]["images"] == 64                      # both shards counted, each image once
        assert 0.0 <= res["clean_acc"] <= 1.0 and set(res["robust"]) == {"linf_2/255"}
        # sharded evaluation: accuracies are counts over all 40 test images (multiples of 1/40)
        assert abs(res["clean_acc"] * 40 - round(res["clean_acc"] * 40)) < 1e-9
        ck = torch.load(out / "checkpoints" / name.replace(".json", ".pt"), weights_only=False)
        assert ck["config"]["batch_size"] == 16 and ck["epoch"] == 1
    assert p.stdout.count("deep.run:") == 1 and p.stdout.count("| method |") == 1      # rank 0 prints


def test_torchrun_rejects_batch_not_divisible_by_processes(tmp_path):
    p = _torchrun(_args(tmp_path, batch=33))
    assert p.returncode != 0
    assert "--batch-size 33 must be divisible by the number of processes 2" in p.stderr
