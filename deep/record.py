"""The run record: the result of one deep run, ``<run_id>.json``, with its saliency maps beside it in
``<run_id>.saliency.json``.

This module owns the record's layout. :class:`RunRecord` names its fields; :func:`read_record` is the one
reader (it reads every layout earlier versions wrote) and :func:`write_record` the one writer (atomic, the
current layout). ``deep.run`` creates records, ``deep.evaluate`` and ``deep.saliency`` update them, and
``deep.summary`` and ``paper_figs.loaders`` read them, all through these two functions.

Layouts read (and brought to the current one):

* the cheap AT variants were stored as method "at" with ``"at_variant": "fgsm-rs"`` (or pgd1, pgd2) and
  config method "at"; they are now methods of their own (method "fgsm-rs", config method "fgsm-rs") and
  the "at_variant" key is gone (:func:`_upgrade_variant`);
* the saliency maps of deep.saliency (``maps``, ``map_labels``, ``map_images``) were stored inline under
  "saliency"; they now go to the sidecar file, and "saliency" keeps the summary numbers and
  ``"maps_file": "<run_id>.saliency.json"``. A record read with inline maps holds them
  (:attr:`RunRecord.saliency_maps`) until it is written;
* keys added over time (arch, stopped_early, bn_stats, curves, cuda_graph, ...) may be absent: the field
  gets its meaning for old runs (e.g. arch preact-resnet18) and the key stays absent when the record is
  written back unchanged (:attr:`RunRecord.absent`);
* keys this version does not know are kept in :attr:`RunRecord.extra` and written back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from samrobust.files import JsonFileError, read_json_object, write_json_atomic

from .archs import DEFAULT_ARCH
from .train import AT_VARIANTS, is_adversarial

__all__ = ["RunRecord", "RecordError", "NotARecord", "read_record", "write_record", "record_from_dict", "record_files",
           "is_sidecar", "sidecar_path", "load_saliency_maps", "legacy_config", "SIDECAR_SUFFIX", "MAP_KEYS"]

SIDECAR_SUFFIX = ".saliency.json"
MAP_KEYS = ("maps", "map_labels", "map_images")       # the large lists of a saliency entry (the sidecar's)
_OMIT_IF_NONE = ("autoattack", "extra_evals", "saliency")   # keys written only when there is an entry


class RecordError(JsonFileError):
    """A file that is not a readable run record (the message names it); a ValueError."""


class NotARecord(RecordError):
    """A readable JSON object that is not a run result (no clean_acc): a sidecar, a summary, a bench file."""


@dataclass
class RunRecord:
    """One run's result: what deep.run measured and how, then what deep.evaluate and deep.saliency added.
    Field order is the key order of the written JSON."""

    run_id: Optional[str] = None
    dataset: Optional[str] = None
    method: Optional[str] = None            # st | sam | at | fgsm-rs | pgd1 | pgd2
    rho: Optional[float] = None             # SAM radius (sam only)
    eps: Optional[float] = None             # AT radius (AT and its variants only)
    norm: Optional[str] = None              # "linf" | "l2" (AT and its variants only)
    arch: str = DEFAULT_ARCH
    stopped_early: Optional[Any] = None     # the catastrophic-overfitting stop, or None
    seed: Optional[int] = None
    epochs: Optional[int] = None
    clean_acc: Optional[float] = None
    robust: Optional[Dict[str, Optional[float]]] = None     # {attack label: PGD robust accuracy}
    wall_time_s: Optional[float] = None     # training only
    images_per_s: Optional[float] = None
    total_time_s: Optional[float] = None
    probes: Optional[Dict[str, float]] = None
    history: Optional[List[Dict[str, Any]]] = None
    eval: Optional[Dict[str, Any]] = None   # the evaluation settings (RunSpec.eval_record)
    curves: Optional[Dict[str, Any]] = None
    config: Optional[Dict[str, Any]] = None     # TrainConfig.to_dict()
    device: Optional[str] = None
    torch: Optional[str] = None
    world_size: Optional[int] = None
    per_process_batch: Optional[int] = None
    compile: bool = False
    cuda_graph: bool = False
    train_precision: Optional[str] = None   # "bf16 autocast" | "fp32"
    bn_stats: str = "first"
    channels_last: Optional[bool] = None
    threads: Optional[int] = None
    profile: Optional[str] = None
    n_clean: Optional[int] = None
    n_robust: Optional[int] = None
    autoattack: Optional[Dict[str, Any]] = None     # deep.run --autoattack
    extra_evals: Optional[Dict[str, Dict[str, Any]]] = None     # deep.evaluate: {attack-set key: entry}
    saliency: Optional[Dict[str, Any]] = None       # deep.saliency: summary numbers (+ maps_file)
    # not written as keys of their own:
    extra: Dict[str, Any] = field(default_factory=dict)         # keys this version does not know
    saliency_maps: Optional[Dict[str, Any]] = field(default=None, compare=False)  # MAP_KEYS, when held
    # keys the file lacked -> the value the reader filled in; such a key is written only once it changes
    absent: Dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def adversarial(self) -> bool:
        """Whether the run trained on PGD examples (AT or an AT variant)."""
        return is_adversarial(self.method or "")

    @property
    def method_family(self) -> Optional[str]:
        """st, sam or at (the AT variants are AT)."""
        return "at" if self.adversarial else self.method

    def to_dict(self, with_maps: bool = False) -> Dict[str, Any]:
        """The record as the JSON object :func:`write_record` stores (unknown keys last). With ``with_maps``
        the saliency maps it holds are put back inline under "saliency" (the layout before the sidecar)."""
        out: Dict[str, Any] = {}
        for f in _RECORD_FIELDS:
            val = getattr(self, f.name)
            if (f.name in self.absent and val == self.absent[f.name]) or (f.name in _OMIT_IF_NONE and val is None):
                continue
            out[f.name] = val
        out.update(self.extra)
        if with_maps and self.saliency_maps and isinstance(self.saliency, dict):
            out["saliency"] = dict(self.saliency, **self.saliency_maps)
        return out


_RECORD_FIELDS = tuple(f for f in dataclasses.fields(RunRecord)
                       if f.name not in ("extra", "saliency_maps", "absent"))
_FIELD_NAMES = frozenset(f.name for f in _RECORD_FIELDS)


def legacy_config(config: Any, method: Optional[str]) -> Any:
    """A stored configuration in the current form: an AT variant that earlier versions stored with config
    method "at" gets its own method (``method``, the record's); anything else is returned as it is."""
    if isinstance(config, dict) and config.get("method") == "at" and method in AT_VARIANTS:
        return dict(config, method=method)
    return config


def _upgrade_variant(data: Dict[str, Any]) -> Dict[str, Any]:
    """Fold the legacy "at_variant" key into the method (module docstring); the key itself is dropped."""
    data = dict(data)
    variant = data.pop("at_variant", None)
    if variant in AT_VARIANTS and data.get("method") == "at":
        data["method"] = variant
        data["config"] = legacy_config(data.get("config"), variant)
    return data


def _split_saliency(entry: Any):
    """(summary entry, maps or None) of a stored saliency entry: inline maps are taken out."""
    if not isinstance(entry, dict) or not any(k in entry for k in MAP_KEYS):
        return entry, None
    return ({k: v for k, v in entry.items() if k not in MAP_KEYS},
            {k: entry[k] for k in MAP_KEYS if k in entry})


def record_from_dict(data: Dict[str, Any], run_id: Optional[str] = None) -> RunRecord:
    """The RunRecord of a stored result object (any layout, module docstring). ``run_id`` fills a record
    that lacks one (the file's stem)."""
    data = _upgrade_variant(data)
    known = {k: v for k, v in data.items() if k in _FIELD_NAMES}
    known["saliency"], maps = _split_saliency(known.get("saliency"))
    if "run_id" not in data and run_id is not None:
        known["run_id"] = run_id
    rec = RunRecord(**known, extra={k: v for k, v in data.items() if k not in _FIELD_NAMES}, saliency_maps=maps)
    rec.absent = {name: getattr(rec, name) for name in _FIELD_NAMES - set(data)}
    return rec


def read_record(path: Union[str, Path]) -> RunRecord:
    """The run record at ``path`` (a ``<run_id>.json`` of deep.run, any version). RecordError (a
    JsonFileError, itself a ValueError, naming the file) when it cannot be read or is not a JSON object;
    NotARecord (a RecordError) when it is not a run result (no clean_acc; e.g. a saliency sidecar). The saliency maps of a sidecar are not loaded
    (:func:`load_saliency_maps`); inline ones of an old record are held in ``saliency_maps``."""
    path = Path(path)
    try:
        data = read_json_object(path)
    except JsonFileError as err:
        raise RecordError(str(err)) from None
    if "clean_acc" not in data:
        raise NotARecord(f"{path}: not a deep.run result (no clean_acc)")
    return record_from_dict(data, run_id=path.stem)


def sidecar_path(record_path: Union[str, Path]) -> Path:
    """``<run_id>.saliency.json`` beside the record ``<run_id>.json``."""
    p = Path(record_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def is_sidecar(path: Union[str, Path]) -> bool:
    """Whether ``path`` names a saliency sidecar rather than a run record."""
    return Path(path).name.endswith(SIDECAR_SUFFIX)


def record_files(folder: Union[str, Path], pattern: str = "*.json") -> List[Path]:
    """The candidate record files of ``folder`` matching ``pattern`` (sorted; saliency sidecars left out)."""
    return [p for p in sorted(Path(folder).glob(pattern)) if not is_sidecar(p)]


def write_record(path: Union[str, Path], record: RunRecord) -> Path:
    """Write ``record`` to ``path`` atomically (samrobust.files.write_json_atomic), in the current layout:
    saliency maps it holds go first to the sidecar (:func:`sidecar_path`) and "saliency" names it in
    "maps_file" (set on ``record`` too), so a record never points at a missing sidecar. Returns ``path``."""
    path = Path(path)
    if record.saliency_maps and isinstance(record.saliency, dict):
        side = sidecar_path(path)
        write_json_atomic(side, {"run_id": record.run_id, **record.saliency_maps})
        record.saliency = dict(record.saliency, maps_file=side.name)
    return write_json_atomic(path, record.to_dict())


def load_saliency_maps(record_path: Union[str, Path], record: Optional[RunRecord] = None) -> Optional[Dict]:
    """The saliency maps of the run at ``record_path`` ({"maps", "map_labels", "map_images"}), from either
    layout: held by ``record`` (read when not given) from an inline entry, or from the sidecar its
    "maps_file" names. None when the run has no maps; RecordError when the sidecar is missing or unreadable."""
    record = read_record(record_path) if record is None else record
    if record.saliency_maps:
        return dict(record.saliency_maps)
    name = (record.saliency or {}).get("maps_file") if isinstance(record.saliency, dict) else None
    if not name:
        return None
    side = Path(record_path).with_name(name)
    try:
        data = read_json_object(side)
    except JsonFileError as err:
        raise RecordError(str(err)) from None
    return {k: data[k] for k in MAP_KEYS if k in data}
