"""``python -m deep.evaluate``: re-evaluate saved models with stronger attacks
(docs/protocol.md, "Robust evaluation: PGD, AutoAttack, masking checks").

Loads the final checkpoint of one run (``checkpoints/<run_id>.pt``) or of every finished run of a results
folder (``<run_id>.json`` + ``checkpoints/<run_id>.pt``), rebuilds its test data from the stored configuration
(deep.datasets.load_data), runs each requested attack set on the first n test images and merges the numbers into
the run's record under ``extra_evals[<attack set>]`` (deep/record.py's atomic rewrite). Radii already stored for an attack set with
the same n are skipped (resume) unless --force; finally a table is printed and summary.md rewritten, with the
gradient-masking checks of deep.masking.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from samrobust.attacks import check_linf_eps
from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common, threads_error
from samrobust.files import warn_unreadable
from samrobust.tables import markdown_table

from .autoattack import VERSIONS, run_autoattack
from .images import DataError
from .datasets import load_data
from .masking import SANITY_RADII, label_attack, sanity_attacks
from .record import (NotARecord, RecordError, RunRecord, legacy_config, load_saliency_maps, read_record,
                     record_files, write_record)
from .robustness import Attack, evaluate, parse_attack
from .spec import PROTOCOLS
from .summary import write_summary
from .train import (TrainConfig, build_model, config_matches, first_nonfinite, load_checkpoint, resolve_device,
                    runtime_flags)
from .worstcase import worst_case

__all__ = ["AttackSet", "parse_attack_set", "RunRef", "read_run_json", "find_runs", "build_parser", "main"]

DEFAULT_ATTACKS = "pgd:50x5,autoattack:cpu"


@dataclass(frozen=True)
class AttackSet:
    """One attack configuration: PGD (steps, restarts, loss) or AutoAttack (version)."""
    kind: str                  # "pgd" | "autoattack"
    steps: int = 0
    restarts: int = 0
    loss: str = "ce"
    version: str = ""

    @property
    def key(self) -> str:
        """Name under extra_evals: pgd-50x5-ce, pgd-100x1-cw, autoattack-cpu, worst-cpu."""
        if self.kind == "pgd":
            return f"pgd-{self.steps}x{self.restarts}-{self.loss}"
        return f"{self.kind}-{self.version}"


def parse_attack_set(text: str) -> AttackSet:
    """'pgd:50x5' (CE loss), 'pgd-cw:100x1', 'pgd-ce:20' (1 restart), 'autoattack:cpu' or
    'autoattack:standard' -> AttackSet; ValueError naming the accepted forms otherwise."""
    t = text.strip().lower()
    m = re.fullmatch(r"pgd(?:-(ce|cw))?:(\d+)(?:x(\d+))?", t)
    if m and int(m.group(2)) >= 1 and int(m.group(3) or 1) >= 1:
        return AttackSet("pgd", int(m.group(2)), int(m.group(3) or 1), m.group(1) or "ce")
    m = re.fullmatch(r"(autoattack|worst):(\w+)", t)
    if m and m.group(2) in VERSIONS:
        return AttackSet(m.group(1), version=m.group(2))
    raise ValueError(f"unknown attack {text!r}: use pgd:STEPSxRESTARTS, pgd-cw:STEPSxRESTARTS (steps, "
                     f"restarts >= 1), autoattack:{'|'.join(VERSIONS)} or worst:{'|'.join(VERSIONS)}")


@dataclass
class RunRef:
    """A saved run: its checkpoint, and its record (deep/record.py) when there is one."""
    run_id: str
    checkpoint: Path
    json_path: Optional[Path]
    record: Optional[RunRecord]


def _read_run(p: Path) -> Optional[RunRecord]:
    """The record of a deep.run result (one with a config) at ``p``, or None: not a result, or unreadable
    (corrupt JSON, not an object), which is also said in one line on stderr naming the file."""
    try:
        rec = read_record(p)
    except NotARecord:
        return None
    except RecordError as err:
        warn_unreadable(err, "deep.evaluate")
        return None
    return None if "config" in rec.absent else rec


def read_run_json(p: Path) -> Optional[Dict]:
    """A deep.run result (a dict with clean_acc and config, in deep/record.py's current layout) read from
    ``p``, with its saliency maps inline whichever file holds them, or None (see :func:`_read_run`). A
    missing or corrupt saliency sidecar is said in one line; the result then comes without maps."""
    rec = _read_run(p)
    if rec is None:
        return None
    try:
        rec.saliency_maps = load_saliency_maps(p, rec)
    except RecordError as err:
        warn_unreadable(err, "deep.evaluate")
    return rec.to_dict(with_maps=True)


def find_runs(path: Path, seeds: Optional[Sequence[int]] = None, patterns: Sequence[str] = ()) -> List[RunRef]:
    """Runs under ``path``: a checkpoint file (its JSON is ../<run_id>.json when present), or a results folder
    (every run JSON with a checkpoint; also one level of data-set subfolders). Filtered by seed and by
    run-id glob patterns. ValueError when ``path`` is missing."""
    path = Path(path)
    if path.is_file() and path.suffix != ".pt":
        raise ValueError(f"{path}: not a checkpoint (a .pt file) or a results folder")
    if path.is_file():
        js = path.parent.parent / f"{path.stem}.json"
        refs = [RunRef(path.stem, path, js if js.exists() else None, _read_run(js) if js.exists() else None)]
    elif path.is_dir():
        files = record_files(path) or record_files(path, "*/*.json")
        refs = []
        for js in files:
            rec = _read_run(js)
            ck = js.parent / "checkpoints" / f"{js.stem}.pt"
            if rec is not None and ck.is_file():
                refs.append(RunRef(js.stem, ck, js, rec))
    else:
        raise ValueError(f"{path}: no such file or folder")
    out = []
    for ref in refs:
        if seeds and ref.record is not None and ref.record.seed not in seeds:
            continue
        if patterns and not any(fnmatch.fnmatchcase(ref.run_id, p) for p in patterns):
            continue
        out.append(ref)
    return out


def load_run_model(ref: RunRef, device: torch.device):
    """(model in eval mode, TrainConfig) from the run's checkpoint; ValueError for an unfinished run or a
    checkpoint whose configuration is not the experiment of the run's record (deep.train.config_matches)."""
    ck = load_checkpoint(ref.checkpoint, device)     # CheckpointError (a ValueError) naming the file
    rec = ref.record
    if rec is not None and not config_matches(ck["config"], rec.config or {}):
        raise ValueError(f"{ref.checkpoint}: configuration differs from {ref.json_path}")
    try:
        cfg = TrainConfig(**legacy_config(ck["config"], rec.method if rec is not None else None))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{ref.checkpoint}: configuration not readable by this version ({err})") from None
    if ck.get("epoch", 0) < cfg.epochs and ck.get("stopped_early") is None:
        raise ValueError(f"{ref.checkpoint}: unfinished run (epoch {ck.get('epoch')} of {cfg.epochs})")
    model = build_model(cfg, device)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{ref.checkpoint}: weights do not fit the stored configuration "
                         f"({str(err).splitlines()[0]})") from None
    bad = first_nonfinite(model)
    if bad is not None:
        raise ValueError(f"{ref.checkpoint}: non-finite weights ({bad}); not evaluated")
    return model.eval(), cfg


def run_test_data(cfg, data_dir: str, device: torch.device, cache: Dict):
    """The run's test set as deep.run builds it (same data set, n_test and generated-data spec)."""
    key = json.dumps([cfg.dataset, cfg.n_train, cfg.n_test, cfg.synthetic, data_dir, str(device)], sort_keys=True)
    if key not in cache:
        cache[key] = load_data(cfg, device, data_dir)[1]
    return cache[key]


def run_attack_set(model, cfg, test, aset: AttackSet, radii: Sequence[Attack], n: int, device,
                   batch_size: int = 500, progress: bool = False) -> Dict:
    """One attack set on the first ``n`` test images at ``radii``: the entry stored under extra_evals
    ({"kind", settings, "n", "seed", "clean_acc" (on those n), "robust": {label: acc}, "seconds"})."""
    t0 = time.perf_counter()
    if aset.kind == "pgd":
        sub = test.subset(n)
        ev = evaluate(model, sub, radii, steps=aset.steps, restarts=aset.restarts, batch_size=batch_size,
                      seed=cfg.seed, channels_last=runtime_flags(cfg, device)[1], sharded=False, progress=progress,
                      loss=aset.loss)
        entry = {"kind": "pgd", "steps": aset.steps, "restarts": aset.restarts, "loss": aset.loss,
                 "step_size": "eps/4 (linf), eps/8 (l2)", "best_iterate": True, "n": len(sub),
                 "seed": cfg.seed, "clean_acc": ev["clean_acc"], "robust": ev["robust"]}
    elif aset.kind == "worst":
        say = (lambda label, acc, s: print(f"    {label}: worst case {100 * acc:.2f} (AutoAttack {s:.1f} s)",
                                           flush=True)) if progress else None
        entry = worst_case(model, test, radii, aset.version, n, device, seed=cfg.seed,
                           batch_size=min(batch_size, 250), progress=say)
    else:
        say = (lambda label, acc, s: print(f"    {label}: {100 * acc:.2f} ({s:.1f} s)", flush=True)) \
            if progress else None
        aa = run_autoattack(model, test, radii, aset.version, n=n, device=device, seed=cfg.seed,
                            batch_size=min(batch_size, 250), progress=say)
        entry = dict(kind="autoattack", **{k: v for k, v in aa.items() if k != "seconds"})
    entry["seconds"] = time.perf_counter() - t0
    return entry


def todo_radii(entry: Optional[Dict], radii: Sequence[Attack], n: int, force: bool) -> List[Attack]:
    """The radii still to run for an attack set: all of them without a stored entry, with --force or when the
    stored entry was computed on another number of images; else those missing from it."""
    if entry is None or force or entry.get("n") != n:
        return list(radii)
    return [a for a in radii if a.label not in (entry.get("robust") or {})]


def merge_entry(old: Optional[Dict], new: Dict, replace: bool) -> Dict:
    """``new`` merged into ``old`` (same attack set and n): the per-radius tables (robust accuracies and, for
    worst-case entries, pgd / autoattack / gap_points; seconds_per_attack) united, seconds added."""
    if old is None or replace:
        return new
    per_radius = ("robust", "pgd", "autoattack", "gap_points", "seconds_per_attack")
    out = dict(old, **{k: v for k, v in new.items() if k not in per_radius + ("seconds",)})
    for k in per_radius:
        if k in new:
            out[k] = dict(old.get(k) or {}, **new[k])
    out["seconds"] = (old.get("seconds") or 0.0) + new["seconds"]
    return out


def store_entry(json_path: Path, key: str, entry: Dict, replace: bool) -> Dict:
    """Merge ``entry`` into ``extra_evals[key]`` of the record at ``json_path``, re-read just before the
    atomic rewrite (deep/record.py; other keys untouched). Returns the stored entry."""
    rec = read_record(json_path)
    rec.extra_evals = dict(rec.extra_evals or {})
    rec.extra_evals[key] = merge_entry(rec.extra_evals.get(key), entry, replace)
    write_record(json_path, rec)
    return rec.extra_evals[key]


# ---------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m deep.evaluate", formatter_class=DefaultsHelpFormatter,
        description="Re-evaluate saved deep.run models with stronger attacks (PGD with more steps, restarts or "
                    "the CW loss; AutoAttack) and merge the numbers into each run's JSON under "
                    "extra_evals[<attack set>]; attack sets and radii already stored are skipped. Prints a "
                    "table and rewrites summary.md with the gradient-masking checks (docs/protocol.md).")
    p.add_argument("path", help="a checkpoint (<out>/<dataset>/checkpoints/<run_id>.pt) or a results folder "
                                "(<out>/<dataset>, or <out> with data-set subfolders): every finished run with "
                                "a JSON and a checkpoint")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help="comma list of attack sets: pgd:STEPSxRESTARTS (cross-entropy), pgd-cw:STEPSxRESTARTS "
                        "(margin loss), autoattack:cpu (APGD-CE + APGD-T with 3 target classes), "
                        "autoattack:standard (APGD-CE, APGD-T, FAB-T, Square), or worst:cpu / worst:standard "
                        "(per image the worst case of PGD-10 best iterate and that AutoAttack, stored with both "
                        "and the gap; deep/worstcase.py)")
    p.add_argument("--radii", default=None,
                   help="comma list of norm:eps to attack (fractions allowed) [default: the radii the run was "
                        "evaluated at]; the data set's large-eps sanity radii are added unless --no-sanity")
    p.add_argument("--no-sanity", action="store_true",
                   help="do not add the data set's large-eps sanity radii (deep.masking: "
                        + "; ".join(f"{d} {', '.join(r)}" for d, r in SANITY_RADII.items()) + ")")
    p.add_argument("--n", type=int, default=None,
                   help="attack the first N test images [default: the run's robust set, its n_robust]")
    p.add_argument("--seeds", default=None, help="comma list of seeds: only runs with these seeds [default: all]")
    p.add_argument("--runs", default=None,
                   help="comma list of run-id globs, e.g. 'sam_*,st_s0' [default: all runs]")
    p.add_argument("--force", action="store_true", help="recompute attack sets and radii already stored")
    p.add_argument("--batch-size", type=int, default=500,
                   help="evaluation batch size (AutoAttack: at most 250)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default)")
    p.add_argument("--data-dir", default="data",
                   help="folder with the data set files, as for deep.run")
    p.add_argument("--no-progress", action="store_true", help="no PGD progress bars")
    return add_common(p, (
        "python -m deep.evaluate runs/deep/fashion-mnist --attacks pgd:50x5,autoattack:cpu --n 500 --seeds 0",
        "python -m deep.evaluate runs/deep/quick --attacks autoattack:cpu --n 100",
        "python -m deep.evaluate runs/deep/fashion-mnist/checkpoints/sam_rho0.1_s0.pt --attacks pgd-cw:20x1"))


def _fail(parser, msg: str):
    parser.exit(2, f"{parser.prog}: error: {msg}\n")


def _radius(text: str) -> Attack:
    """One --radii entry, with deep.run's l_inf unit check (radii of 1 or more are refused: images are in
    [0, 1], so linf:8 means 8/255); ValueError naming the entry."""
    try:
        attack = parse_attack(text)
        if attack.norm == "inf":
            check_linf_eps(attack.eps, f"--radii {text.strip()}")
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith("--radii") else f"--radii {text.strip()}: {msg}") from None
    return attack


def _options(parser, args) -> Dict:
    """Validated options; one line on stderr and exit 2 otherwise."""
    try:
        sets = list({s.key: s for s in map(parse_attack_set, [t for t in args.attacks.split(",") if t.strip()])}
                    .values())
        radii = [_radius(t) for t in args.radii.split(",") if t.strip()] if args.radii else None
        if args.radii is not None and not radii:
            raise ValueError(f"--radii is empty ({args.radii!r}); give at least one norm:eps")
        seeds = [int(t) for t in args.seeds.split(",") if t.strip()] if args.seeds else None
        device = resolve_device(args.device)
    except ValueError as err:
        _fail(parser, str(err).replace("invalid literal for int() with base 10", "--seeds: not an integer"))
    if not sets:
        _fail(parser, "--attacks is empty")
    for name, lo in (("n", 1), ("batch_size", 1), ("threads", 0)):
        if getattr(args, name) is not None and getattr(args, name) < lo:
            _fail(parser, f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    if threads_error(args.threads) is not None:
        _fail(parser, threads_error(args.threads))
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        if any(s.kind in ("autoattack", "worst") for s in sets):
            _fail(parser, "AutoAttack needs the package pyautoattack: pip install pyautoattack")
    patterns = [t.strip() for t in (args.runs or "").split(",") if t.strip()]
    return dict(sets=sets, radii=radii, seeds=seeds, device=device, patterns=patterns)


def _run_radii(ref: RunRef, dataset: str, opts: Dict, sanity: bool) -> List[Attack]:
    if opts["radii"] is not None:
        radii = list(opts["radii"])
    elif ref.record is not None:
        radii = [label_attack(k) for k in (ref.record.eval or {}).get("attacks") or ref.record.robust]
    else:
        radii = [parse_attack(t) for t in PROTOCOLS[dataset]["eval_attacks"].split(",")]
    radii += list(sanity_attacks(dataset)) if sanity else []
    return list({a.label: a for a in radii}.values())


class _Lazy:
    """A run's model, configuration and test data, loaded on first use (resumed runs never load them)."""

    def __init__(self, ref: RunRef, device, data_dir: str, cache: Dict):
        self.ref, self.device, self.data_dir, self.cache, self.model = ref, device, data_dir, cache, None

    def get(self):
        if self.model is None:
            self.model, self.cfg = load_run_model(self.ref, self.device)
            self.test = run_test_data(self.cfg, self.data_dir, self.device, self.cache)
        return self


def evaluate_ref(ref: RunRef, opts: Dict, args, cache: Dict, say=print) -> Dict[str, Dict]:
    """Run the attack sets still missing for one run, storing each in its JSON as soon as it is done;
    returns {attack-set key: entry} (stored and new)."""
    lazy, rec = _Lazy(ref, opts["device"], args.data_dir, cache), ref.record or RunRecord()
    dataset = rec.dataset or lazy.get().cfg.dataset
    radii = _run_radii(ref, dataset, opts, not args.no_sanity)
    n_all = rec.n_clean or len(lazy.get().test)
    n = min(args.n or rec.n_robust or n_all, n_all)
    out = {}
    for aset in opts["sets"]:
        old = (rec.extra_evals or {}).get(aset.key)
        todo = todo_radii(old, radii, n, args.force)
        if not todo:
            say(f"  {aset.key}: done earlier on {n} images, skipped")
            out[aset.key] = old
            continue
        say(f"  {aset.key} on {n} images: {', '.join(a.label for a in todo)}", flush=True)
        st = lazy.get()
        entry = run_attack_set(st.model, st.cfg, st.test, aset, todo, n, opts["device"], args.batch_size,
                               progress=not args.no_progress)
        replace = old is None or args.force or old.get("n") != n
        entry = store_entry(ref.json_path, aset.key, entry, replace) if ref.json_path else \
            merge_entry(old, entry, replace)
        say("    " + ", ".join(f"{k} {100 * entry['robust'][k]:.2f}" for k in (a.label for a in todo))
            + f" ({entry['seconds']:.1f} s in all)", flush=True)
        out[aset.key] = entry
    return out


def attack_sets_table(rows: Sequence[tuple]) -> str:
    """Markdown table of (run_id, attack-set key, entry) rows: n, clean and robust accuracy in %."""
    labels: List[str] = []
    for _, _, e in rows:
        labels += [k for k in e["robust"] if k not in labels]
    head = ["run", "attack set", "n", "clean"] + labels
    body = [[rid, key, str(e.get("n")), f"{100 * e['clean_acc']:.2f}" if "clean_acc" in e else ""]
            + [f"{100 * e['robust'][k]:.2f}" if k in e["robust"] else "" for k in labels] for rid, key, e in rows]
    return markdown_table(head, body)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = _options(parser, args)
    try:
        refs = find_runs(Path(args.path), opts["seeds"], opts["patterns"])
    except ValueError as err:
        _fail(parser, str(err))
    if not refs:
        _fail(parser, f"{args.path}: no finished runs with a checkpoint" +
              (" match --seeds/--runs" if opts["seeds"] or opts["patterns"] else ""))
    old_threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _evaluate_all(parser, args, opts, refs)
    finally:
        torch.set_num_threads(old_threads)


def _evaluate_all(parser, args, opts: Dict, refs: List[RunRef]) -> int:
    print(f"deep.evaluate: {len(refs)} run(s), attack sets {', '.join(s.key for s in opts['sets'])}, "
          f"device {opts['device']}", flush=True)
    rows, failed, cache, t0 = [], [], {}, time.perf_counter()
    for i, ref in enumerate(refs, 1):
        print(f"[{i}/{len(refs)}] {ref.run_id}", flush=True)
        try:
            done = evaluate_ref(ref, opts, args, cache)
        except DataError as err:
            _fail(parser, str(err))
        except ValueError as err:
            if len(refs) == 1:
                _fail(parser, str(err))
            print(f"{parser.prog}: {ref.run_id} skipped: {err}", file=sys.stderr)
            failed.append(ref.run_id)
            continue
        except KeyboardInterrupt:
            print(f"\n{parser.prog}: interrupted in {ref.run_id}; finished attack sets are stored, rerun the "
                  f"same command to continue", file=sys.stderr)
            return 130
        rows += [(ref.run_id, key, entry) for key, entry in done.items()]
    print()
    print(attack_sets_table(rows))
    for folder in dict.fromkeys(ref.json_path.parent for ref in refs if ref.json_path is not None):
        print(f"summary with the gradient-masking checks: {write_summary(folder)}")
    print(f"{len(refs) - len(failed)} run(s) in {time.perf_counter() - t0:.1f} s"
          + (f"; skipped for errors: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
