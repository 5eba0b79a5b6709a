"""Logs of ``deep.run``: per-epoch metrics as CSV beside each run's JSON, and the grid's "run k/N" lines
with an overall estimate of the time left.

``<out>/<dataset>/<run_id>.csv`` has one row per epoch with the columns of the run's history (epoch,
train_loss, train_acc, lr_end, images, and pgd_check_acc / co_stop where the run has them), so runs can be
compared in any spreadsheet or with ``pandas.read_csv``. TensorBoard event files are not written: the
writers need the ``tensorboard`` package (torch.utils.tensorboard) or ``tensorboardX`` with protobuf, a
heavy dependency for a handful of scalars per epoch; the CSV holds the same numbers.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from samrobust.files import write_text_atomic
from samrobust.progress import format_seconds

__all__ = ["history_csv", "write_history_csv", "GridProgress"]

_FIRST = ("epoch", "train_loss", "train_acc", "lr_end", "images")


def history_csv(history: Sequence[Dict]) -> str:
    """CSV text of a run's per-epoch history: the usual columns first, then any other key in order of
    appearance; a missing value is an empty cell."""
    cols: List[str] = [c for c in _FIRST if any(c in h for h in history)]
    for h in history:
        cols += [k for k in h if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def write_history_csv(json_path: Path, history: Sequence[Dict]) -> Path:
    """``history`` as CSV beside the run record ``json_path`` (same name, ``.csv``), atomically."""
    return write_text_atomic(Path(json_path).with_suffix(".csv"), history_csv(history))


class GridProgress:
    """The "run k/N" line of each run of a grid, with the time spent and an estimate of the time left for
    the whole grid (mean wall time of the runs trained so far times the runs left; runs skipped as
    finished earlier cost nothing and do not count). ``say`` prints a line; ``clock`` is for tests."""

    def __init__(self, total: int, say: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.say, self.clock = total, say, clock
        self.t0 = clock()
        self.trained: List[float] = []
        self.k = 0
        self._run_start: Optional[float] = None

    def start(self, rid: str) -> str:
        """Announce run k (the next one) and return the line."""
        self.k += 1
        self._run_start = self.clock()
        line = f"run {self.k}/{self.total}: {rid} ({format_seconds(self._run_start - self.t0)} elapsed, " \
               f"{self.eta()})"
        self.say(line)
        return line

    def finish(self, skipped: bool = False) -> None:
        """Record the run just finished (its wall time, unless it was skipped)."""
        if not skipped and self._run_start is not None:
            self.trained.append(self.clock() - self._run_start)

    def eta(self) -> str:
        """``"grid ETA h:mm:ss"`` for the runs not yet finished (including the current one), ``"grid ETA ?"``
        before any run was trained."""
        if not self.trained:
            return "grid ETA ?"
        left = self.total - self.k + 1
        return "grid ETA " + format_seconds(sum(self.trained) / len(self.trained) * left)
