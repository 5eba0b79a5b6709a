"""Atomic file writes and strict JSON, shared by every package's results, summaries and checkpoints."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Union

import numpy as np

__all__ = ["write_atomic", "write_text_atomic", "write_json_atomic", "jsonable", "JsonFileError",
           "read_json_object", "warn_unreadable", "check_output_dir", "remove_stale_temp_files"]


def write_atomic(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (parent folders created), then move it
    onto ``path`` with os.replace, so readers never see a half-written file. Returns ``path``.
    (The temporary file is opened by ``write`` itself, not by mkstemp, so the result gets the usual
    umask permissions rather than mkstemp's 0600.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:           # a full disk, an interrupt: no half-written temporary file stays behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
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


class JsonFileError(ValueError):
    """A JSON file that cannot be used: unreadable, not valid JSON, or not a JSON object; the message names
    the file."""


def read_json_object(path: Union[str, Path]) -> dict:
    """The JSON object stored at ``path``; JsonFileError (one line naming the file) when it cannot be read,
    is not valid JSON or is not an object (a list, a number ...)."""
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as err:
        raise JsonFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise JsonFileError(f"{path}: not valid JSON ({err}); delete it or rerun with --force") from None
    if not isinstance(obj, dict):
        raise JsonFileError(f"{path}: holds a JSON {type(obj).__name__}, not an object; delete it or rerun "
                            f"with --force")
    return obj


_WARNED: set = set()


def warn_unreadable(err: Exception, prog: str = "warning") -> None:
    """One line on stderr for a file that is skipped (e.g. a corrupt result JSON), once per message and
    process, so that two readers of one folder do not repeat it."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if text not in _WARNED:
        _WARNED.add(text)
        print(f"{prog}: skipped {text}", file=sys.stderr, flush=True)


def check_output_dir(folder: Union[str, Path], need_bytes: int = 0) -> Path:
    """Create ``folder`` if needed and check, before any work, that a file can be written in it and that
    about ``need_bytes`` are free there; ValueError (one line naming the folder) otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"output folder {folder}: exists and is not a folder") from None
    except OSError as err:
        raise ValueError(f"output folder {folder}: cannot be created ({err.strerror or err})") from None
    probe = folder / f".write-test{os.getpid()}"
    try:
        probe.write_bytes(b"x")
    except OSError as err:
        raise ValueError(f"output folder {folder}: not writable ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free = shutil.disk_usage(folder).free
    if need_bytes > free:
        raise ValueError(f"output folder {folder}: {free / 2**20:.1f} MiB free, the run needs about "
                         f"{need_bytes / 2**20:.1f} MiB; free some space or choose another --out")
    return folder


def remove_stale_temp_files(folder: Union[str, Path]) -> list:
    """Delete temporary files of :func:`write_atomic` (``*.tmp<pid>``) left in ``folder`` (not its
    subfolders) by processes that no longer run (killed with -9, power loss). Returns the removed paths.
    Only safe for a folder this process alone writes (samrobust.lock.RunLock held)."""
    removed = []
    for p in Path(folder).glob("*.tmp*"):
        pid = p.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
