"""Atomic file writes and strict JSON, shared by every package's results, summaries and checkpoints."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Union

import numpy as np

__all__ = ["write_atomic", "write_text_atomic", "write_json_atomic", "jsonable"]


def write_atomic(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (parent folders created), then move it
    onto ``path`` with os.replace, so readers never see a half-written file. Returns ``path``.
    (The temporary file is opened by ``write`` itself, not by mkstemp, so the result gets the usual
    umask permissions rather than mkstemp's 0600.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """``text`` to ``path`` atomically (see write_atomic)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def jsonable(obj):
    """The one JSON sanitiser: non-finite floats -> None, numpy scalars/arrays -> Python objects,
    tuples -> lists, dict keys -> str (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json_atomic(path: Union[str, Path], obj, indent: int = 2) -> Path:
    """``obj`` as strict JSON (``jsonable``, then ``json.dumps(..., indent=2, allow_nan=False)``, one
    trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")
