"""Theory curves for the figures, evaluated with ``linear_theory`` (closed forms, no training).

Every number here comes from ``linear_theory``; this module only chooses grids and maps each
method's own strength parameter onto one common axis, the per-coordinate feature-perturbation
strength of docs/theory.md L4:

* AT l_inf of radius eps perturbs each coordinate by eps;
* AT l2 of radius eps perturbs each coordinate by about eps / sqrt(D);
* SAM perturbs the features by s_SAM = rho * ||x||_2 / ||v||_2 in l2 (L4), i.e. about
  s_SAM / sqrt(D) per coordinate (``linear_theory.sam_strength``). SAM at fixed scale (T5) takes
  its ascent on the unit direction w = v/||v||, so there s_SAM = rho * sqrt(E||x||^2).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

import linear_theory as lt
from samrobust.threat import attack_label

__all__ = ["TheorySettings", "settings_from_meta", "theory_point", "method_curve", "rho_grid",
           "coordinate_strength", "weight_summary", "eval_key",
           "representative_points", "probe_accuracies", "probe_accuracies_from_point"]


def rho_grid(top: float = 0.4, n: int = 17) -> tuple:
    """The SAM rho grid of the theory curves: n points from 0 to ``top``."""
    return tuple(float(x) for x in np.round(np.linspace(0.0, top, n), 6))


def eval_key(norm, eps: float) -> str:
    """Name of an evaluation attack, as the simulations use it: ("inf", 0.1) -> "linf_0.1"."""
    return attack_label(norm, eps, fmt="g")


@dataclass(frozen=True)
class TheorySettings:
    """Feature-model parameters, SAM's fixed scale tau and the evaluation attacks of the figures.

    Defaults are those of ``simulations.run`` (tau 4, l_inf 0.1 and l2 1.0); a simulation's own
    values are read from its ``meta`` by :func:`settings_from_meta`.
    """

    model_kwargs: tuple = ()                       # (name, value) pairs for lt.FeatureModel
    tau: float = 4.0
    evals: tuple = (("inf", 0.1), (2, 1.0))        # (norm, eps) of the robust accuracies

    def model(self):
        return lt.FeatureModel(**dict(self.model_kwargs))

    @property
    def eval_keys(self) -> tuple:
        return tuple(eval_key(n, e) for n, e in self.evals)


_MODEL_FIELDS = ("k", "mu_r", "sigma_r", "d", "eta", "sigma_n")


def settings_from_meta(meta: dict | None) -> TheorySettings:
    """Settings matching a simulation run: ``meta["model"]`` (feature-model fields),
    ``meta["settings"]`` (tau, eval_linf, eval_l2). Defaults where ``meta`` says nothing.
    ValueError when the simulated model is not the Gaussian FeatureModel."""
    meta = meta or {}
    model = meta.get("model") or {}
    if model.get("class", "FeatureModel") != "FeatureModel":
        raise ValueError(f"theory curves need a FeatureModel simulation, got {model.get('class')!r}")
    sim = meta.get("settings") or {}
    base = TheorySettings()
    evals = []
    if sim.get("eval_linf") is not None:
        evals.append(("inf", float(sim["eval_linf"])))
    if sim.get("eval_l2") is not None:
        evals.append((2, float(sim["eval_l2"])))
    return TheorySettings(
        model_kwargs=tuple((k, model[k]) for k in _MODEL_FIELDS if k in model),
        tau=float(sim.get("tau", base.tau)),
        evals=tuple(evals) or base.evals,
    )


def coordinate_strength(model, method: str, strength: float) -> float:
    """Per-coordinate perturbation strength of a method (L4); see the module docstring."""
    if method == "st":
        return 0.0
    if method == "at-linf":
        return float(strength)
    if method == "at-l2":
        return float(strength) / math.sqrt(model.D)
    if method in ("sam", "sam-fixed-scale"):
        unit = np.zeros(model.D)
        unit[0] = 1.0   # T5: ||w|| = 1; the strength does not depend on the direction
        return float(lt.sam_strength(model, strength, unit).per_coordinate)
    raise ValueError(f"method must be st, at-linf, at-l2 or sam, got {method!r}")


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

    method in {"st", "at-linf", "at-l2", "sam", "sam-proj"}; "sam" means SAM at fixed scale tau
    (T5), "sam-proj" the same with T5's ||x|| replaced by ||P_w x|| (``sam_norm="projected"``,
    simulations/README.md finding 6).
    Keys: settings, v, method, strength, coord_strength, clean, robust ({eval key: accuracy}),
    reliance, w_robust, w_nonrobust (unit-norm direction), ratio (mean robust weight / mean
    non-robust weight, inf when the non-robust weights vanish); accuracies NaN where v = 0.
    """
    return dict(_theory_point(settings, method, float(strength)))


@functools.lru_cache(maxsize=4096)
def _theory_point(settings: TheorySettings, method: str, strength: float) -> dict:
    model = settings.model()
    lt_method = "sam-fixed-scale" if method in ("sam", "sam-proj") else method
    tau = settings.tau if lt_method == "sam-fixed-scale" else None
    kw = {"sam_norm": "projected"} if method == "sam-proj" else {}
    sol = lt.solve(model, lt_method, float(strength), tau=tau, **kw)
    v = np.asarray(sol.v, dtype=float)
    w_r, w_n = weight_summary(model, v)
    zero = not np.any(v)
    nan = float("nan")
    mask = np.asarray(model.robust_mask, dtype=bool)
    vr, vn = float(v[mask].mean()), float(v[~mask].mean())
    ratio = nan if zero else (vr / vn if vn > 0 else float("inf"))
    return {
        "settings": settings,
        "v": v,
        "method": method,
        "strength": float(strength),
        "coord_strength": coordinate_strength(model, lt_method, strength),
        "clean": nan if zero else float(sol.clean_accuracy),
        "robust": {eval_key(n, e): (nan if zero else float(sol.robust_accuracy(n, e)))
                   for n, e in settings.evals},
        "reliance": nan if zero else float(sol.robust_reliance),
        "w_robust": w_r,
        "w_nonrobust": w_n,
        "ratio": ratio,
    }


def method_curve(settings: TheorySettings, method: str, strengths) -> list[dict]:
    """:func:`theory_point` over a grid of strengths (rho for SAM, eps for AT)."""
    return [theory_point(settings, method, s) for s in strengths]


def representative_points(settings: TheorySettings, rhos=None, clean_drop: float = 0.005):
    """Theory optima that stand for each method in the deep comparison (figures 5 and 6).

    ST; SAM at the largest rho of ``rhos`` (default :func:`rho_grid`) whose clean accuracy is
    within ``clean_drop`` of ST's (T6: robustness at almost no clean cost); AT l_inf at
    eps = eta/2 (keeps the non-robust features) and at eps = 1.5*eta (drops them, T3).
    Returns {"st", "sam", "at-small", "at-large": theory_point dict (sam may be None)}.
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


def probe_accuracies_from_point(point: dict) -> dict:
    """:func:`probe_accuracies` of a :func:`theory_point` result (its settings and ``v``)."""
    return probe_accuracies(point["settings"], point["v"])
