"""Theory-vs-measurement verdicts for the figure captions, computed from the data.

Pure functions: they take numbers (theory values, measured means and intervals) and return a
:class:`Verdict` whose ``text`` is the second caption line. Nothing is hard-coded: a figure whose
measurements disagree with the theory gets a caption that says so, with the largest gap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Verdict", "interval_verdict", "ordering_verdict", "no_data", "count_outside",
           "simulation_verdict"]


@dataclass(frozen=True)
class Verdict:
    """``agree`` is True/False, or None when there is nothing to compare."""

    agree: bool | None
    text: str


def no_data(reason: str) -> Verdict:
    return Verdict(None, f"Not compared: {reason}.")


def _item_gap(item, tol):
    label, theory, lo, hi = item[:4]
    t = item[4] if len(item) > 4 else tol
    if any(x is None or not math.isfinite(x) for x in (theory, lo, hi, t)):
        return None
    return max(lo - t - theory, theory - hi - t, 0.0)


def count_outside(items, tol: float = 0.0) -> tuple[int, int]:
    """(number compared, number outside) for ``items`` as in :func:`interval_verdict`."""
    gaps = [g for g in (_item_gap(i, tol) for i in items) if g is not None]
    return len(gaps), sum(g > 0 for g in gaps)


def simulation_verdict(items, what: str, tol_note: str = "", boundary=(), sam_t5=(),
                       sam_proj=(), boundary_theory: str = "T3") -> Verdict:
    """:func:`interval_verdict` of ``items`` plus two statements that do not change it.

    ``boundary``: (label, theory, lo, hi, ...) of points the simulations report as measurements
    only (AT l_inf at eps = eta, simulations/README.md finding 4): listed with their numbers, not
    counted. ``sam_t5`` / ``sam_proj``: the SAM items against T5 and against T5 with ||P_w x||
    (finding 6); both counts are stated ("T5: 1 of 7 outside; T5 with ||P_w x||: 0 of 7").
    """
    v = interval_verdict(items, what, tol_note=tol_note) if items else \
        no_data(f"no checked {what} point")
    extra = []
    if sam_t5 and sam_proj:
        (n1, b1), (n2, b2) = count_outside(sam_t5), count_outside(sam_proj)
        extra.append(f"SAM points: T5: {b1} of {n1} outside; T5 with ||P_w x|| "
                     f"(simulations finding 6): {b2} of {n2} outside")
    if boundary:
        extra.append("boundary point eps = eta, measurement only, not counted (simulations "
                     "finding 4): " + ", ".join(
                         f"{label} measured [{lo:.4g}, {hi:.4g}] vs {boundary_theory} {theory:.4g}"
                         for label, theory, lo, hi, *_ in boundary))
    if not extra:
        return v
    return Verdict(v.agree, v.text + " " + "; ".join(extra) + ".")


def interval_verdict(items, what: str, tol: float = 0.0, tol_note: str = "") -> Verdict:
    """Theory values against measured intervals.

    ``items``: iterable of (label, theory, lo, hi) or (label, theory, lo, hi, tol_i); a point
    agrees when lo - t <= theory <= hi + t with t = tol_i if given else ``tol`` (the measurement's
    allowance for systematic error, e.g. the simulations' optimisation tolerance). Entries with a
    non-finite theory or interval are skipped.
    """
    n = ok = 0
    worst = None
    any_tol = False
    for item in items:
        label, theory, lo, hi = item[:4]
        t = item[4] if len(item) > 4 else tol
        if any(x is None or not math.isfinite(x) for x in (theory, lo, hi, t)):
            continue
        any_tol = any_tol or t > 0
        n += 1
        gap = max(lo - t - theory, theory - hi - t, 0.0)
        if gap <= 0:
            ok += 1
        elif worst is None or gap > worst[1]:
            worst = (label, gap, theory, lo, hi)
    if n == 0:
        return no_data(f"no {what} with a finite interval")
    tol_txt = (f" widened by {tol_note}" if tol_note else " widened by the stated tolerance") \
        if any_tol else ""
    if ok == n:
        return Verdict(True, f"Agree: theory lies inside all {n} {what} intervals{tol_txt}.")
    label, gap, theory, lo, hi = worst
    return Verdict(False, f"Disagree: theory outside {n - ok} of {n} {what} intervals{tol_txt}; "
                          f"largest excess {gap:.3g} at {label} (theory {theory:.4g}, "
                          f"measured [{lo:.4g}, {hi:.4g}]).")


def ordering_verdict(checks, unit: str = "orderings") -> Verdict:
    """Compare orderings: ``checks`` = iterable of (description, predicted, observed[, detail])
    with predicted / observed booleans (None = could not be evaluated) and an optional detail
    (the numbers) shown for disagreeing checks. A check agrees when the measurements show the
    relation exactly when the theory predicts it. ``unit`` names what is counted."""
    checks = [tuple(c) + ("",) * (4 - len(c)) for c in checks
              if c[1] is not None and c[2] is not None]
    if not checks:
        return no_data("no ordering could be evaluated")

    def say(flag):
        return "yes" if flag else "no"

    bad = [c for c in checks if bool(c[1]) != bool(c[2])]
    if not bad:
        return Verdict(True, f"Agree: all {len(checks)} {unit} come out as the linear theory "
                             f"predicts ({'; '.join(f'{d}: {say(p)}' for d, p, _, _ in checks)}).")
    return Verdict(False, f"Disagree on {len(bad)} of {len(checks)} {unit} "
                          f"({len(checks) - len(bad)} agree): "
                          + "; ".join(f"{d}: theory {say(p)}, measured {say(o)}"
                                      + (f" ({x})" if x else "") for d, p, o, x in bad)
                          + ".")
