"""Read the saved results that the figures are drawn from, with clear errors.

Nothing here trains or computes a result: the loaders only read ``simulations.json`` (written by
``python -m simulations.run``) and ``deep/<dataset>/<run_id>.json`` (written by ``python -m deep.run``,
read through deep.record.read_record, the one reader of run records, so every layout earlier versions
wrote reads alike) and check the keys the figures use (schemas: notes in simulations/ and deep/, contracts).
Saliency maps: :func:`saliency_maps`, from the sidecar ``<run_id>.saliency.json`` or an older inline entry.

* a file that does not exist raises :class:`MissingInput`, whose message names the command that
  produces it (the CLI prints it as one line and goes on with the other figures);
* a file that exists but cannot be read raises :class:`CorruptInput` naming the file and the problem.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from deep.record import NotARecord, RecordError, RunRecord, is_sidecar, load_saliency_maps, read_record

__all__ = [
    "MissingInput", "CorruptInput", "SIM_COMMAND", "DEEP_COMMAND", "load_simulations",
    "load_deep", "DeepRun", "is_smoke", "saliency_maps",
]

SIM_COMMAND = "python -m simulations.run --out {results}"
DEEP_COMMAND = ("python -m deep.run --out {results}/deep (generated data, no download: add "
                "--dataset synthetic)")

SIM_KEYS = ("meta", "claims", "curves", "sam_vs_m")
CLAIM_KEYS = ("id", "claim", "description", "theory", "sim_mean", "ci95", "diff", "tolerance",
              "holds")
DEEP_KEYS = ("dataset", "method", "seed", "clean_acc", "robust")


class MissingInput(Exception):
    """An input file is absent; ``what`` names it and ``command`` produces it."""

    def __init__(self, what: str, path: Path, command: str):
        self.what, self.path, self.command = what, Path(path), command
        super().__init__(f"{what} not found at {path}; produce it with: {command}")


class CorruptInput(Exception):
    """An input file exists but is unreadable or lacks required keys."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptInput(path, f"cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CorruptInput(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptInput(path, "top level is not a JSON object")
    return data


def load_simulations(results_dir) -> dict:
    """Parsed ``<results_dir>/simulations.json``; MissingInput / CorruptInput as described above."""
    path = Path(results_dir) / "simulations.json"
    if not path.is_file():
        raise MissingInput("simulation results", path, SIM_COMMAND.format(results=results_dir))
    data = _read_json(path)
    missing = [k for k in SIM_KEYS if k not in data]
    if missing:
        raise CorruptInput(path, f"missing top-level keys {missing}")
    for i, row in enumerate(data["claims"]):
        absent = [k for k in CLAIM_KEYS if k not in row]
        if absent:
            raise CorruptInput(path, f"claims[{i}] lacks keys {absent}")
    return data


@dataclass(frozen=True)
class DeepRun:
    """One finished deep run (the fields the figures use, plus the raw record: the record's dict,
    deep.record.RunRecord.to_dict, with saliency maps inline when the file holds them inline)."""

    dataset: str
    method: str          # "st", "sam" or "at" (the cheap AT variants fgsm-rs, pgd1, pgd2 count as "at")
    norm: str | None
    rho: float | None
    eps: float | None
    seed: int
    clean_acc: float
    robust: dict
    probes: dict | None
    wall_time_s: float | None
    images_per_s: float | None
    path: Path
    raw: dict


def _opt_float(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def is_smoke(dataset_key: str) -> bool:
    """Whether a load_deep key names smoke runs (``deep.run --quick``), which never count in a verdict."""
    return "(quick" in dataset_key


def _run_files(results_dir, extra_roots) -> list[tuple[Path, str]]:
    """(file, label) of every run JSON: ``<results_dir>/deep/<folder>/*.json`` (label "") and
    ``<root>/<folder>/*.json`` of each extra root (label: the root's name, e.g. "deep" for runs/deep)."""
    root = Path(results_dir) / "deep"
    files = [(p, "") for p in sorted(root.glob("*/*.json")) if not is_sidecar(p)] if root.is_dir() else []
    for extra in extra_roots:
        extra = Path(extra)
        if not extra.is_dir():
            raise MissingInput("deep runs (--runs)", extra, "python -m deep.run --out " + str(extra))
        files += [(p, str(extra)) for p in sorted(extra.glob("*/*.json"))
                  if p.name != "summary.json" and not is_sidecar(p)]
    return files


def _read_run(path: Path) -> RunRecord:
    """The run record at ``path`` with the keys the figures need; CorruptInput naming the problem."""
    try:
        rec = read_record(path)
    except NotARecord:
        raise CorruptInput(path, "missing keys ['clean_acc'] (not a deep.run result)") from None
    except RecordError as err:
        raise CorruptInput(path, str(err).removeprefix(f"{path}: ")) from None
    absent = [k for k in DEEP_KEYS if k in rec.absent]
    if absent:
        raise CorruptInput(path, f"missing keys {absent}")
    if not isinstance(rec.robust, dict):
        raise CorruptInput(path, "'robust' is not an object")
    return rec


def saliency_maps(run) -> dict | None:
    """The saliency maps of a run ({"maps", "map_labels", "map_images"}: deep.saliency's first images),
    whichever layout holds them: the sidecar ``<run_id>.saliency.json`` beside the record or an inline entry
    of an older record. ``run``: a DeepRun or the path of a run record. None when the run has no maps;
    CorruptInput when its sidecar is missing or unreadable."""
    path = run.path if isinstance(run, DeepRun) else Path(run)
    try:
        return load_saliency_maps(path)
    except RecordError as err:
        raise CorruptInput(path, str(err)) from None


def load_deep(results_dir, extra_roots=()) -> dict[str, list[DeepRun]]:
    """All runs under ``<results_dir>/deep/<folder>/*.json`` (and ``<root>/<folder>/*.json`` of each of
    ``extra_roots``, e.g. ``runs/deep``), keyed by folder (sorted).

    The key is the dataset name, or "<dataset> (<folder>)" when the folder is named otherwise
    (``deep.run --quick`` writes to ``quick/``), so that smoke runs never pool with real ones; runs of
    an extra root are keyed "<dataset> (<folder>, <root>)" so that they never pool with shipped ones.
    MissingInput when no run file exists; CorruptInput for an unreadable run file.
    """
    files = _run_files(results_dir, extra_roots)
    if not files:
        root = Path(results_dir) / "deep"
        raise MissingInput("deep results", root, DEEP_COMMAND.format(results=results_dir))
    out: dict[str, list[DeepRun]] = {}
    for path, label in files:
        rec = _read_run(path)
        folder = path.parent.name
        name = str(rec.dataset)
        key = name if folder == name else f"{name} ({folder})"
        if label:
            key = f"{name} ({folder}, {label})"
        run = DeepRun(
            dataset=key, method="at" if rec.adversarial else str(rec.method).lower(),
            norm=rec.norm, rho=_opt_float(rec.rho), eps=_opt_float(rec.eps),
            seed=int(rec.seed), clean_acc=float(rec.clean_acc),
            robust={str(k): float(v) for k, v in rec.robust.items() if v is not None},
            probes=rec.probes or None, wall_time_s=_opt_float(rec.wall_time_s),
            images_per_s=_opt_float(rec.images_per_s), path=path, raw=rec.to_dict(with_maps=True),
        )
        out.setdefault(run.dataset, []).append(run)
    return dict(sorted(out.items()))
