"""Turn the ``curves`` and ``sam_vs_m`` sections of simulations.json into plot points.

Schema read (simulations/README.md): ``curves[method] = {"strength": [...], "theory": {...},
"sim": {quantity: {"mean": [...], "lo": [...], "hi": [...], "per_seed": [...]}}}`` with method
"sam-fixed-scale" or "at-linf" (also "at-l2"/"st" if present) and quantities "clean",
"robust_<norm>_<eps>", "reliance", "ratio"; ``sam_vs_m`` = list of ``{"m", "rho",
"theory_lambda_m1", "lambda_eff"|"rho_eff"|...: {"mean", "lo", "hi", "per_seed"}}``.

Normalised curve point: ``{"method": "sam"|"at-linf"|..., "strength": float, "n_seeds": int,
"clean": (mean, lo, hi), "robust": {eval key: (mean, lo, hi)}, "reliance": triple | None,
"ratio": triple | None, "measure_only": bool}``; (lo, hi) is the simulations' 95% interval over seeds. Only measured
("sim") values are used; the theory stored next to them is ignored (the figures recompute it).
``measure_only`` marks a point the simulations report as a measurement, not a check (a
``relation == "measure"`` row of ``claims`` for it: AT l_inf at eps = eta, finding 4).
"""
from __future__ import annotations

import math

from .palette import canonical_method

__all__ = ["curve_points", "sam_vs_m_points", "measure_only_points"]


def _finite(*xs) -> bool:
    return all(x is not None and math.isfinite(float(x)) for x in xs)


def measure_only_points(sim: dict) -> set:
    """(curve name, strength) pairs that simulations.json reports as measurements only.

    The simulations mark AT l_inf at eps = eta with ``relation == "measure"`` rows whose id starts
    with ``S5-at-eps=eta`` (flat objective in the non-robust weights, simulations/README.md
    finding 4); their strength is the model's eta (``meta.model.eta``). A row carrying
    ``config.strength`` and ``config.curve`` is honoured directly.
    """
    out = set()
    eta = ((sim.get("meta") or {}).get("model") or {}).get("eta")
    for row in sim.get("claims") or []:
        if row.get("relation") != "measure" or row.get("claim") != "S5":
            continue
        cfg = row.get("config") or {}
        if "strength" in cfg and "curve" in cfg:
            out.add((cfg["curve"], float(cfg["strength"])))
        elif str(row.get("id", "")).startswith("S5-at-eps=eta") and _finite(eta):
            out.add(("at-linf", float(eta)))
    return out


def curve_points(sim: dict) -> list[dict]:
    """Simulation points of figures 1-3 (see module docstring); non-finite entries dropped."""
    curves = sim.get("curves") or {}
    measured_only = measure_only_points(sim)
    pts = []
    for method, cur in curves.items():
        sims = cur.get("sim") or {}
        canon = canonical_method(method)
        for i, strength in enumerate(cur.get("strength", [])):
            def triple(q):
                s = sims.get(q)
                if not s or i >= len(s["mean"]):
                    return None
                m, lo, hi = s["mean"][i], s["lo"][i], s["hi"][i]
                return (float(m), float(lo), float(hi)) if _finite(m, lo, hi) else None

            clean = triple("clean")
            if clean is None:
                continue
            robust = {q[len("robust_"):]: triple(q) for q in sims if q.startswith("robust_")}
            per_seed = (sims.get("clean") or {}).get("per_seed") or []
            pts.append({
                "method": canon, "strength": float(strength),
                "n_seeds": len(per_seed[i]) if i < len(per_seed) else None,
                "clean": clean,
                "robust": {k: v for k, v in robust.items() if v is not None},
                "reliance": triple("reliance"), "ratio": triple("ratio"),
                "measure_only": any(c == method and abs(x - float(strength)) < 1e-9
                                    for c, x in measured_only),
            })
    return pts


def sam_vs_m_points(sim: dict) -> list[dict]:
    """``{"m", "rho", "rho_eff": triple | None, "lambda_eff": triple | None,
    "theory_lambda": float | None}`` rows of S4, sorted by m."""
    out = []
    for r in sim.get("sam_vs_m") or []:
        def triple(q):
            s = r.get(q)
            if not isinstance(s, dict) or not _finite(s.get("mean"), s.get("lo"), s.get("hi")):
                return None
            return (float(s["mean"]), float(s["lo"]), float(s["hi"]))

        th = r.get("theory_lambda_m1")
        out.append({"m": float(r["m"]), "rho": float(r["rho"]) if "rho" in r else None,
                    "rho_eff": triple("rho_eff"), "lambda_eff": triple("lambda_eff"),
                    "theory_lambda": float(th) if _finite(th) else None})
    return sorted(out, key=lambda p: p["m"])
