"""``python -m deep.saliency``: what the models look at (docs/protocol.md, "Beyond the paper", part 4).

For each saved run, the input gradient (saliency map) of the loss at the true label,

    g(x) = d CE(f(x), y) / dx        (eval mode, fp32, the trained weights),

on the same first ``n`` test images, and two numbers per model that say how image-like the maps are:

* ``object_mass``: the fraction of the gradient mass sum |g| that falls on the object, the pixels whose
  intensity exceeds ``OBJECT_THRESHOLD`` (Fashion-MNIST items are bright on a black background), averaged
  over images; ``object_area`` is the mean fraction of pixels on the object (the value of a map that
  ignores the image).
* ``image_corr``: the Pearson correlation over pixels between -g (the direction that raises the true
  class) and the image, averaged over images: near 0 for noise-like maps, positive when the map looks like
  the item ("perceptually aligned gradients" of robust models).

The feature-perturbation view predicts ST < SAM < AT on both. The numbers are stored under ``saliency``
in the run's record, the maps of the first ``maps`` images (rounded to 4 decimals, for the figure) in the
sidecar ``<run_id>.saliency.json`` beside it, which "saliency" names in "maps_file" (deep/record.py;
records of earlier versions hold the maps inline, and deep.record.load_saliency_maps reads both).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common

from .images import DataError, to_float
from .evaluate import find_runs, load_run_model, run_test_data
from .record import MAP_KEYS, read_record, write_record
from .train import resolve_device

__all__ = ["OBJECT_THRESHOLD", "input_gradients", "saliency_metrics", "saliency_entry", "store_saliency",
           "build_parser", "main"]

OBJECT_THRESHOLD = 0.1      # pixel intensity in [0, 1] above which a pixel belongs to the object


def input_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(f(x), y) / dx per example (summed loss, so each example's gradient is its own), fp32."""
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g.detach()


def saliency_metrics(x: torch.Tensor, g: torch.Tensor, threshold: float = OBJECT_THRESHOLD) -> Dict[str, torch.Tensor]:
    """Per-image object_mass, object_area and image_corr (module docstring) of maps ``g`` for images ``x``
    (both (N, C, H, W), x in [0, 1]); channels are summed (|g|) or averaged (x) to one plane first."""
    a = g.abs().sum(1).flatten(1)                           # (N, H*W) gradient mass per pixel
    img = x.float().mean(1).flatten(1)
    mask = (img > threshold).float()
    mass = (a * mask).sum(1) / a.sum(1).clamp_min(1e-30)
    u = -g.sum(1).flatten(1)
    u = u - u.mean(1, keepdim=True)
    v = img - img.mean(1, keepdim=True)
    corr = (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-30)
    return {"object_mass": mass, "object_area": mask.mean(1), "image_corr": corr}


def saliency_entry(model: torch.nn.Module, test, n: int, maps: int, batch_size: int = 500) -> Dict:
    """The stored entry for one model on the first ``n`` test images: means of saliency_metrics, their
    standard errors over images, and the first ``maps`` maps (-g, per image scaled to max |.| = 1)."""
    model.eval()
    n = min(n, len(test))
    vals: Dict[str, list] = {}
    first = []
    for s in range(0, n, batch_size):
        x, y = to_float(test.x[s:min(s + batch_size, n)]), test.y[s:min(s + batch_size, n)]
        g = input_gradients(model, x, y)
        for k, v in saliency_metrics(x, g).items():
            vals.setdefault(k, []).append(v)
        if sum(len(f) for f in first) < maps:
            first.append(-g.sum(1)[:maps])
    out: Dict = {"n": n, "threshold": OBJECT_THRESHOLD}
    for k, parts in vals.items():
        v = torch.cat(parts)
        out[k] = float(v.mean())
        out[k + "_se"] = float(v.std() / max(len(v), 1) ** 0.5) if len(v) > 1 else 0.0
    m = torch.cat(first)[:maps] if first else torch.zeros(0)
    m = m / m.flatten(1).abs().amax(1).clamp_min(1e-30).view(-1, 1, 1)
    out["maps"] = [[[round(float(v), 4) for v in row] for row in img] for img in m]
    out["map_labels"] = [int(v) for v in test.y[:len(m)]]
    out["map_images"] = [[[round(float(v), 3) for v in row] for row in img]
                         for img in to_float(test.x[:len(m)]).mean(1)]
    return out


def store_saliency(json_path: Path, entry: Dict) -> None:
    """Store a :func:`saliency_entry` in the record at ``json_path`` (re-read just before the rewrite): the
    numbers under "saliency", the maps in the sidecar (deep.record.write_record). ValueError (naming the
    file) when the record cannot be read."""
    rec = read_record(json_path)
    rec.saliency = {k: v for k, v in entry.items() if k not in MAP_KEYS}
    rec.saliency_maps = {k: entry[k] for k in MAP_KEYS if k in entry}
    write_record(json_path, rec)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m deep.saliency", formatter_class=DefaultsHelpFormatter,
        description="Input-gradient (saliency) maps of saved deep.run models on the same test images, with "
                    "the fraction of gradient mass on the object and the gradient-image correlation; stored "
                    "under \"saliency\" in each run's JSON, the maps in <run_id>.saliency.json beside it "
                    "(resumable: runs with an entry for the same n are skipped unless --force).")
    p.add_argument("paths", nargs="+", help="results folders (<out>/<dataset>) or checkpoint files")
    p.add_argument("--n", type=int, default=1000, help="test images (the first n)")
    p.add_argument("--maps", type=int, default=8, help="maps stored per run for the figure")
    p.add_argument("--runs", default="", help="comma list of run-id glob patterns (default: all)")
    p.add_argument("--data-dir", default="data", help="folder with the data set files")
    p.add_argument("--force", action="store_true", help="recompute runs that have an entry")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no line per finished run")
    return add_common(p, (
        "python -m deep.saliency runs/deep/fashion-mnist            # every run of a deep.run folder",
        "python -m deep.saliency runs/deep/quick --n 200 --runs 'sam_*'",
        "python -m deep.saliency results/deep/fashion-mnist results/beyond/rho-sweep/fashion-mnist   # the shipped maps"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1 or args.maps < 0 or args.threads < 0:
        parser.error("--n must be >= 1, --maps >= 0 and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    patterns = [t.strip() for t in args.runs.split(",") if t.strip()]
    cache, done, failed = {}, 0, []
    try:
        refs = [r for path in args.paths for r in find_runs(Path(path), patterns=patterns)]
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    for ref in refs:
        old = ref.record.saliency if ref.record is not None else None
        if ref.json_path is None or (old and old.get("n") == args.n and not args.force):
            continue
        try:
            model, cfg = load_run_model(ref, device)
            test = run_test_data(cfg, args.data_dir, device, cache)
        except DataError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        except ValueError as err:           # a corrupt or planted checkpoint: the other runs still go on
            if len(refs) == 1:
                parser.exit(2, f"{parser.prog}: error: {err}\n")
            print(f"{parser.prog}: {ref.run_id} skipped: {err}", file=sys.stderr, flush=True)
            failed.append(ref.run_id)
            continue
        entry = saliency_entry(model, test, args.n, args.maps)
        try:
            store_saliency(ref.json_path, entry)
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        done += 1
        if not args.no_progress:
            print(f"{ref.run_id}: object mass {entry['object_mass']:.3f} (area {entry['object_area']:.3f}), "
                  f"image corr {entry['image_corr']:.3f} on {entry['n']} images", flush=True)
    print(f"{done} run(s) updated of {len(refs)}" + (f"; skipped for errors: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
