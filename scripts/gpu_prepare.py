"""Copy finished deep.run runs into .gpu/cpu-models/<name>/ for scripts/gpu_evidence.sh: each result JSON and
its final checkpoint reduced to what evaluation loads (config, epoch, model weights, stopped_early), so that
the carried tree stays under the device's 64 MiB.

    python scripts/gpu_prepare.py /work/grid/results/deep/fashion-mnist-converged
"""
import json
import shutil
import sys
from pathlib import Path

import torch


def main(src: str, dest_root: str = ".gpu/cpu-models") -> int:
    src_p = Path(src)
    dest = Path(dest_root) / src_p.name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "checkpoints").mkdir(parents=True)
    n = 0
    for js in sorted(src_p.glob("*.json")):
        ck = src_p / "checkpoints" / f"{js.stem}.pt"
        if not ck.exists() or "clean_acc" not in json.loads(js.read_text()):
            continue
        state = torch.load(ck, map_location="cpu", weights_only=True)   # tensors and plain data only
        keep = {k: state[k] for k in ("config", "epoch", "model", "stopped_early") if k in state}
        torch.save(keep, dest / "checkpoints" / ck.name)
        shutil.copy2(js, dest / js.name)
        side = js.with_name(js.stem + ".saliency.json")     # its saliency maps, when deep.saliency wrote them
        if side.exists():
            shutil.copy2(side, dest / side.name)
        n += 1
    print(f"{n} run(s) copied to {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
