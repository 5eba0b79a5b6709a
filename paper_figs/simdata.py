"""Turn the ``curves`` and ``sam_vs_m`` sections of simulations.json into plot points.

Normalised point (one per method and strength, aggregated over seeds by simulations.run):
``{"method": "st"|"sam"|"at-linf"|"at-l2", "strength": float,
   "clean": (mean, lo, hi), "robust": (mean, lo, hi), "reliance": (mean, lo, hi) | None,
   "w_robust": ..., "w_nonrobust": ...}`` with accuracies as fractions and (lo, hi) the 95% CI.
"""
from __future__ import annotations

import math

from .palette import canonical_method

__all__ = ["curve_points", "sam_vs_m_points"]


def _triple(row: dict, key: str):
    """(mean, lo, hi) of quantity ``key`` from ``key`` / ``key_mean`` and ``key_ci95``."""
    mean = row.get(f"{key}_mean", row.get(key))
    if isinstance(mean, dict):
        ci = mean.get("ci95")
        mean = mean.get("mean")
    else:
        ci = row.get(f"{key}_ci95")
    if mean is None:
        return None
    mean = float(mean)
    if not math.isfinite(mean):
        return None
    if ci is None:
        return (mean, mean, mean)
    return (mean, float(ci[0]), float(ci[1]))


def curve_points(sim: dict) -> list[dict]:
    """Simulation points of the trade-off/weights figures (see module docstring)."""
    rows = sim.get("curves") or []
    if isinstance(rows, dict):
        rows = [dict(r, method=r.get("method", m)) for m, rs in rows.items() for r in rs]
    pts = []
    for r in rows:
        method = canonical_method(r["method"], r.get("norm"))
        p = {"method": method, "strength": float(r.get("strength", 0.0) or 0.0)}
        for key in ("clean", "robust", "reliance", "w_robust", "w_nonrobust"):
            p[key] = _triple(r, key)
        if p["clean"] is None or p["robust"] is None:
            continue
        pts.append(p)
    return pts


def sam_vs_m_points(sim: dict) -> list[dict]:
    """``{"m", "value": (mean, lo, hi), "theory", "quantity_label"}`` rows of S4."""
    rows = sim.get("sam_vs_m") or []
    if isinstance(rows, dict):
        rows = rows.get("rows", [])
    out = []
    for r in rows:
        val = _triple(r, "lambda") or _triple(r, "strength")
        if val is None:
            continue
        th = r.get("theory_lambda", r.get("theory"))
        out.append({"m": float(r["m"]), "value": val,
                    "theory": None if th is None else float(th),
                    "quantity_label": r"matched ridge $\lambda$"})
    return out
