"""Theory curves for the figures, evaluated with ``linear_theory`` (closed forms, no training).

Every number here comes from ``linear_theory``; this module only chooses grids and maps each
method's own strength parameter onto one common axis, the per-coordinate feature-perturbation
strength of THEORY.md L4:

* AT l_inf of radius eps perturbs each coordinate by eps;
* AT l2 of radius eps perturbs each coordinate by about eps / sqrt(D);
* SAM perturbs the features by s_SAM = rho * ||x||_2 / ||v||_2 in l2 (L4), i.e. about
  s_SAM / sqrt(D) per coordinate (``linear_theory.sam_strength`` gives s_SAM). SAM at fixed scale
  (T5) takes its ascent on the unit direction, so there ||v|| = 1 and s_SAM = rho*sqrt(E||x||^2).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

import linear_theory as lt

__all__ = ["TheorySettings", "settings_from_meta", "theory_point", "method_curve",
           "coordinate_strength", "weight_summary", "rho_grid",
           "representative_points", "probe_accuracies"]



def rho_grid(top: float = 0.4, n: int = 17) -> tuple:
    """The SAM rho grid of the theory curves: n points from 0 to ``top``."""
    return tuple(float(x) for x in np.round(np.linspace(0.0, top, n), 6))


@dataclass(frozen=True)
class TheorySettings:
    """Feature-model parameters, SAM's fixed scale tau and the evaluation attack of the figures."""

    model_kwargs: tuple = ()     # (name, value) pairs passed to lt.FeatureModel (hashable)
    tau: float = 5.0
    eval_norm: str = "inf"
    eval_eps: float = 0.1

    def model(self):
        return lt.FeatureModel(**dict(self.model_kwargs))


_MODEL_FIELDS = ("k", "mu_r", "sigma_r", "d", "eta", "sigma_n")


def _find(meta: dict, names) -> dict:
    """First dict inside ``meta`` (depth <= 2) holding any of ``names``."""
    stack = [meta]
    for _ in range(3):
        nxt = []
        for node in stack:
            if isinstance(node, dict):
                if any(n in node for n in names):
                    return node
                nxt.extend(v for v in node.values() if isinstance(v, dict))
        stack = nxt
    return {}


def settings_from_meta(meta: dict | None) -> TheorySettings:
    """Settings matching a simulation run (its ``meta``), defaults where it says nothing.

    Looks for the feature-model fields (k, mu_r, sigma_r, d, eta, sigma_n), ``tau`` and the
    evaluation attack (``eval_eps``/``eval_norm``) anywhere in the first two levels of ``meta``.
    """
    meta = meta or {}
    node = _find(meta, _MODEL_FIELDS)
    model_kwargs = tuple((k, node[k]) for k in _MODEL_FIELDS if k in node)
    base = TheorySettings()
    tau_node = _find(meta, ("tau",))
    ev = _find(meta, ("eval_eps",))
    return TheorySettings(
        model_kwargs=model_kwargs,
        tau=float(tau_node.get("tau", base.tau)),
        eval_norm=str(ev.get("eval_norm", base.eval_norm)),
        eval_eps=float(ev.get("eval_eps", base.eval_eps)),
    )


def coordinate_strength(model, method: str, strength: float, v) -> float:
    """Per-coordinate perturbation strength of a method (L4); see the module docstring."""
    if method == "st":
        return 0.0
    if method == "at-linf":
        return float(strength)
    if method == "at-l2":
        return float(strength) / math.sqrt(model.D)
    if method in ("sam", "sam-fixed-scale"):
        # T5: the ascent acts on the unit direction w = v/||v|| (scale tau held fixed), so the
        # feature perturbation is rho*||x||_2 in l2, i.e. L4's s_SAM evaluated at ||w|| = 1.
        n = float(np.linalg.norm(v))
        if n == 0.0:
            return float("nan")
        return float(lt.sam_strength(model, strength, np.asarray(v) / n)) / math.sqrt(model.D)
    raise ValueError(f"method must be st, at-linf, at-l2 or sam-fixed-scale, got {method!r}")


def weight_summary(model, v) -> tuple[float, float]:
    """(robust weight, mean non-robust weight) of the unit-norm direction v / ||v||_2."""
    v = np.asarray(v, dtype=float)
    n = np.linalg.norm(v)
    if n == 0:
        return 0.0, 0.0
    u = v / n
    mask = np.asarray(model.robust_mask, dtype=bool)
    return float(u[mask].mean()), float(u[~mask].mean())


def theory_point(settings: TheorySettings, method: str, strength: float) -> dict:
    """Closed-form quantities of one (method, strength) optimum (cached: the SAM solve is a
    one-dimensional minimisation that costs a fraction of a second).

    method in {"st", "at-linf", "at-l2", "sam"}; "sam" means SAM at fixed scale tau (T5).
    Keys: v, method, strength, coord_strength, clean, robust (at the settings' evaluation attack),
    reliance, w_robust, w_nonrobust; accuracies are NaN where the optimum is v = 0.
    """
    return dict(_theory_point(settings, method, float(strength)))


@functools.lru_cache(maxsize=4096)
def _theory_point(settings: TheorySettings, method: str, strength: float) -> dict:
    model = settings.model()
    lt_method = "sam-fixed-scale" if method == "sam" else method
    tau = settings.tau if lt_method == "sam-fixed-scale" else None
    sol = lt.solve(model, lt_method, float(strength), tau=tau)
    v = np.asarray(sol.v, dtype=float)
    w_r, w_n = weight_summary(model, v)
    zero = not np.any(v)
    nan = float("nan")
    return {
        "settings": settings,
        "v": v,
        "method": method,
        "strength": float(strength),
        "coord_strength": coordinate_strength(model, lt_method, strength, v),
        "clean": nan if zero else float(sol.clean_accuracy),
        "robust": nan if zero else float(sol.robust_accuracy(settings.eval_norm, settings.eval_eps)),
        "reliance": float("nan") if zero else float(sol.robust_reliance),
        "w_robust": w_r,
        "w_nonrobust": w_n,
    }


def method_curve(settings: TheorySettings, method: str, strengths) -> list[dict]:
    """:func:`theory_point` over a grid of strengths (rho for SAM, eps for AT)."""
    return [theory_point(settings, method, s) for s in strengths]


def representative_points(settings: TheorySettings, rhos=None, clean_drop: float = 0.005):
    """Theory optima that stand for each method in the deep comparison (figures 5 and 6).

    ST; SAM at the largest rho of ``rhos`` whose clean accuracy is within ``clean_drop`` of ST's
    (T6: robustness at almost no clean cost); AT l_inf at eps = eta/2 (keeps the non-robust
    features) and at eps = 1.5*eta (drops them, T3). Returns {label_key: theory_point dict}.
    """
    eta = settings.model().eta
    st = theory_point(settings, "st", 0.0)
    sam = None
    for rho in rhos if rhos is not None else rho_grid():
        p = theory_point(settings, "sam", rho)
        if st["clean"] - p["clean"] <= clean_drop:
            sam = p
    return {"st": st, "sam": sam, "at-small": theory_point(settings, "at-linf", 0.5 * eta),
            "at-large": theory_point(settings, "at-linf", 1.5 * eta)}


def probe_accuracies(settings: TheorySettings, v) -> dict:
    """Linear-model analogue of the deep feature probes (exact, via ``lt.clean_accuracy``).

    clean: margin v.x; nonrobust_removed: x_N = 0 (weights (v_R, 0)); nonrobust_swapped: the
    non-robust block carries the other label (weights (v_R, -v_N)); robust_removed: x_R = 0.
    A fully removed margin gives chance, 0.5.
    """
    model = settings.model()
    v = np.asarray(v, dtype=float)
    mask = np.asarray(model.robust_mask, dtype=bool)

    def acc(w):
        return float(lt.clean_accuracy(model, w)) if np.any(w) else 0.5

    return {
        "clean": acc(v),
        "nonrobust_removed": acc(np.where(mask, v, 0.0)),
        "nonrobust_swapped": acc(np.where(mask, v, -v)),
        "robust_removed": acc(np.where(mask, 0.0, v)),
    }


def probe_accuracies_from_point(point: dict, settings: TheorySettings | None = None) -> dict:
    """:func:`probe_accuracies` of a :func:`theory_point` result (uses its stored ``v``)."""
    return probe_accuracies(point.get("settings") or settings or TheorySettings(), point["v"])
