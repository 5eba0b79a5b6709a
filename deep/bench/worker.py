"""One process of deep/bench/concurrency.py (``python -m deep.bench.worker SPEC_JSON``): warm up, print
READY, wait for a line on stdin, train the timed steps, print one JSON line {images, t0, t1}."""
from __future__ import annotations

import json
import os
import sys
import time

import torch


def main(argv=None) -> int:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    if spec.get("core") is not None:
        os.sched_setaffinity(0, {spec["core"]})     # one core per process on CPU (see concurrency.py)
    torch.set_num_threads(spec["threads"])
    from ..train import runtime_flags, build_model, build_optimizer, setup_device, train_epoch
    from .config import BenchConfig
    from .harness import train_cfg
    from .timing import make_data, sync

    cfg = BenchConfig(**spec["config"])
    device = torch.device(spec["device"])
    setup_device(device)
    tc = train_cfg(cfg, spec["method"], device)
    bf16, channels_last, augment = runtime_flags(tc, device)
    B, steps, warm = cfg.batch_size, spec["steps"], max(1, cfg.warmup)
    data = make_data(cfg.dataset, B * (warm + steps), spec["seed"]).to(device)
    model = build_model(tc, device)
    opt = build_optimizer(tc, model)

    def run(lo, hi):
        m = train_epoch(model, opt, data, tc, 0, indices=torch.arange(lo * B, hi * B), bf16=bf16,
                        channels_last=channels_last, augment=augment)
        int(m["count"])

    run(0, warm)
    sync(device)
    print("READY", flush=True)
    sys.stdin.readline()
    t0 = time.time()
    run(warm, warm + steps)
    sync(device)
    t1 = time.time()
    print(json.dumps({"images": steps * B, "t0": t0, "t1": t1}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
