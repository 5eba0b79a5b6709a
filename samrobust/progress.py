"""Progress output that stays readable where it lands: a tqdm bar on a terminal, and elsewhere (a log
file, a pipe, CI) one plain line per update at a low rate instead of ``\\r``-overwritten bars that pile up
on one huge line.

:func:`progress_bar` picks one of the two; :class:`LineProgress` is the plain-line one (the part of tqdm's
interface the package uses: ``update``, ``set_postfix``, ``set_postfix_str``, ``close``); :func:`eta_text`
formats an estimate of the time left.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["LineProgress", "progress_bar", "eta_text", "format_seconds", "LINE_INTERVAL_S", "MIN_GAP_S"]

#: Longest gap in seconds between two plain progress lines (besides the first and the last).
LINE_INTERVAL_S = 30.0
#: Shortest gap: early on the gaps grow with the time elapsed, from this up to LINE_INTERVAL_S.
MIN_GAP_S = 5.0


def format_seconds(s: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"`` (``"?"`` for a negative or non-finite value)."""
    if not (s >= 0 and s != float("inf")):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def eta_text(done: float, total: float, elapsed: float) -> str:
    """Time left at the mean rate so far (``done`` of ``total`` units in ``elapsed`` seconds), e.g.
    ``"ETA 3:20"``; ``"ETA ?"`` until something is done."""
    if done <= 0 or elapsed <= 0:
        return "ETA ?"
    return "ETA " + format_seconds(elapsed / done * max(total - done, 0))


class LineProgress:
    """A progress report of one line per update: the first at the first update, then with gaps of half the
    time elapsed (at least 5 s, at most ``interval`` seconds), and the last one at :meth:`close`:
    ``desc: 40/120 step (33%), 0:41 elapsed, ETA 1:22, loss=0.41``. The ETA is taken from the rate since
    the first update, so that start-up work before it (data, forks) does not inflate it. ``clock`` is for
    tests."""

    def __init__(self, total: float, desc: str = "", unit: str = "it", initial: float = 0,
                 interval: float = LINE_INTERVAL_S, file: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.file, self.clock = interval, file, clock
        self._start_n = initial
        self._t0 = clock()
        self._last: Optional[float] = None
        self._printed_n: Optional[float] = None
        self._first: Optional[tuple] = None        # (time, count) at the first update
        self._postfix = ""

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if self._first is None:
            self._first = (now, self.n)
        gap = min(self.interval, max(MIN_GAP_S, (now - self._t0) / 2))
        if self._last is None or now - self._last >= gap:
            self._emit(now)

    def set_postfix(self, **kw) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:  # noqa: ARG002 - tqdm's signature
        self._postfix = text

    def close(self) -> None:
        if self._last is None or self.n != self._printed_n:
            self._emit(self.clock())

    def line(self, now: float) -> str:
        """The text of one progress line at time ``now``."""
        elapsed = now - self._t0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        t1, n1 = self._first if self._first is not None else (self._t0, self._start_n)
        if self.n - n1 <= 0 or now - t1 <= 0:      # only the first update so far: the rate since the start
            t1, n1 = self._t0, self._start_n
        parts = [f"{self.desc}: {self.n:g}/{self.total:g} {self.unit}{pct}", f"{format_seconds(elapsed)} elapsed",
                 eta_text(self.n - n1, self.total - n1, now - t1)]
        return ", ".join(parts + ([self._postfix] if self._postfix else []))

    def _emit(self, now: float) -> None:
        self._last, self._printed_n = now, self.n
        print(self.line(now), file=self.file or sys.stderr, flush=True)


def progress_bar(total: float, desc: str = "", unit: str = "it", initial: float = 0, enabled: bool = True,
                 stream: Optional[TextIO] = None, bar_class=None, **tqdm_kw):
    """A tqdm bar (``bar_class``, default ``tqdm.auto.tqdm``) when ``stream`` (default stderr) is a
    terminal; a :class:`LineProgress` otherwise; None when not ``enabled``."""
    if not enabled:
        return None
    stream = stream or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return LineProgress(total, desc=desc, unit=unit, initial=initial, file=stream)
    if bar_class is None:
        from tqdm.auto import tqdm as bar_class
    return bar_class(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, **tqdm_kw)
