"""Atomic file writes shared by deep/'s results, summaries and checkpoints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union


def write_atomic(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (parent folders created), then move it
    onto ``path`` with os.replace, so readers never see a half-written file. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """``text`` to ``path`` atomically (see write_atomic)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))
