"""One entry point for the population optima: ``solve(model, method, strength, tau)`` and ``tradeoff``.

Methods (docs/theory.md section 4):
  "st"              T1   v = 2 Sigma^{-1} mu                                   (strength ignored, must be 0)
  "at-linf"         T3   soft thresholding, strength = eps
  "at-l2"           T4   ridge shrinkage, strength = eps, .lam = T4's lambda
  "sam"             T2   unconstrained per-example SAM, strength = rho: 1-D solve of
                         min_t E l(t y d.x - rho*||x||) along d = Sigma^{-1} mu / ||Sigma^{-1} mu||;
                         .info reports the exact (symmetric, convex) minimiser and the measured deviation
  "sam-fixed-scale" T5   SAM at fixed scale tau, strength = rho: 1-D minimisation over the ridge parameter
                         lam of E l(y v.x - rho*tau*||x||) with v = tau*(Sigma + lam I)^{-1} mu/||.||; .lam = ridge
                         lam (> -min sigma^2; negative only when tau exceeds the unconstrained optimum's norm);
                         .info reports the unrestricted sphere minimiser (one angle) and the deviation.
                         sam_norm="projected": the same with the exact ascent's margin drop rho*tau*||P_w x||
                         (P_w projects out w = v/tau) instead of T5's rho*tau*||x||; default "full" is T5
For ``TsiprasModel`` every method is a direct numeric minimisation (two-parameter reduction, exact by
convexity and permutation symmetry for st/at/sam; one angle on the sphere for sam-fixed-scale).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from samrobust import threat
from samrobust.files import jsonable

from . import closed_forms as cf
from . import metrics
from . import numeric
from .model import FeatureModel, TsiprasModel
from .sam_objective import check_sam_norm, sam_loss

__all__ = ["METHODS", "Solution", "solve", "tradeoff", "DEFAULT_EPS_GRID"]

METHODS = ("st", "at-linf", "at-l2", "sam", "sam-fixed-scale")
DEFAULT_EPS_GRID = (("inf", 0.1), ("inf", 0.2), ("inf", 0.3), (2, 0.5), (2, 1.0))


def attack_label(norm, eps) -> str:
    """samrobust.threat.attack_label with the radius as ``f"{eps:g}"`` ("linf_0.1", "l2_0.5"); any other
    l_p norm (linear_theory allows p >= 1) is named "l{norm}"."""
    q = metrics.dual_exponent(norm)
    if q in (1.0, 2.0):
        return threat.attack_label(threat.Norm.LINF if q == 1.0 else threat.Norm.L2, eps, fmt="g")
    return f"l{norm}_{eps:g}"


@dataclass
class Solution:
    """Result of ``solve``: weights ``v``, ``lam`` (T4 lambda for at-l2, ridge lambda for sam-fixed-scale,
    else None), the method's objective value, and derived quantities. ``info`` holds method-specific
    diagnostics (measured deviations for the approximate statements T2/T5)."""

    model: object
    method: str
    strength: float
    v: np.ndarray
    lam: float | None = None
    tau: float | None = None
    sam_norm: str | None = None
    objective: float = float("nan")
    info: dict = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return metrics.clean_accuracy(self.model, self.v)

    def robust_accuracy(self, norm="inf", eps=0.1) -> float:
        return metrics.robust_accuracy(self.model, self.v, eps, norm)

    @property
    def robust_reliance(self) -> float:
        try:
            return metrics.robust_reliance(self.model, self.v)
        except ValueError:
            return float("nan")

    @property
    def loss(self) -> float:
        """Clean population logistic loss E l(y v.x)."""
        return metrics.population_loss(self.model, self.v)

    @property
    def robust_weight(self) -> float:
        return float(self.v[: self.model.k].mean())

    @property
    def nonrobust_weight(self) -> float:
        return float(self.v[self.model.k:].mean())

    def to_dict(self, eps_grid=DEFAULT_EPS_GRID, full_weights: bool = False) -> dict:
        out = {
            "method": self.method,
            "strength": self.strength,
            "tau": self.tau,
            "sam_norm": self.sam_norm,
            "lam": None if self.lam is None else (None if math.isinf(self.lam) else float(self.lam)),
            "robust_weight": self.robust_weight,
            "nonrobust_weight": self.nonrobust_weight,
            "nonrobust_weight_sd": float(np.std(self.v[self.model.k:])),
            "weight_norm": float(np.linalg.norm(self.v)),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": {attack_label(n, e): self.robust_accuracy(n, e) for n, e in _parse_grid(eps_grid)},
            "robust_reliance": self.robust_reliance,
            "loss": self.loss,
            "objective": self.objective,
            "info": jsonable(self.info),
        }
        if full_weights:
            out["v"] = [float(x) for x in self.v]
        return out


def _parse_grid(eps_grid):
    out = []
    for item in eps_grid:
        if isinstance(item, (tuple, list)):
            norm, eps = item
        else:
            norm, eps = "inf", item
        metrics.dual_exponent(norm)
        out.append((norm, metrics.check_nonnegative("eps", eps)))
    return out


def _check_model(model):
    if not isinstance(model, (FeatureModel, TsiprasModel)):
        raise ValueError(f"model must be a FeatureModel or TsiprasModel, got {type(model).__name__}")


def _direction_report(v, ref) -> dict:
    """Cosine, angle (degrees) and relative l2 difference between the directions of v and ref."""
    a, b = v / np.linalg.norm(v), ref / np.linalg.norm(ref)
    cos = float(np.clip(a @ b, -1.0, 1.0))
    return {"cosine": cos, "angle_deg": math.degrees(math.acos(cos)), "rel_dir_diff": float(np.linalg.norm(a - b))}


def _minimize_scale(objective, direction, t_start: float) -> float:
    """argmin_{t >= 0} objective(t*direction) for a convex one-dimensional objective (bracket then Brent)."""
    f = lambda t: objective(t * direction)  # noqa: E731
    hi = max(t_start, 1e-3)
    while f(2 * hi) < f(hi):
        hi *= 2
        if hi > 1e8:
            raise ValueError("the objective decreases without bound along the direction")
    res = minimize_scalar(f, bounds=(0.0, 2 * hi), method="bounded", options={"xatol": 1e-10 * hi, "maxiter": 500})
    return float(res.x)


def _solve_sam(model, rho, info_checks: bool):
    obj = lambda v: sam_loss(model, v, rho)  # noqa: E731
    if isinstance(model, TsiprasModel):
        v = numeric.minimize_sam_symmetric(model, rho)
        return v, None, obj(v), {}
    d = model.mu / model.sigma2
    d = d / np.linalg.norm(d)
    t = _minimize_scale(obj, d, 2.0 * float(np.linalg.norm(model.mu / model.sigma2)))
    v = t * d
    info = {"route": "1-D scale along Sigma^{-1} mu (T2)"}
    if info_checks:
        v_exact = numeric.minimize_sam_symmetric(model, rho, x0=v[[0, model.k]])
        info["exact_minimiser"] = {"robust_weight": float(v_exact[0]), "nonrobust_weight": float(v_exact[-1]),
                                   "objective": obj(v_exact)}
        info["deviation_from_sigma_inv_mu"] = _direction_report(v_exact, d)
        info["objective_gap"] = obj(v) - obj(v_exact)
    return v, None, obj(v), info


def _unit_ridge(model, lam: float) -> np.ndarray:
    r = cf.ridge_vector(model, lam)  # allows -min(sigma^2) < lam < 0
    return r / np.linalg.norm(r)


def _ridge_objective(model, rho, tau, sam_norm="full"):
    """G(lam) = E l(y v.x - rho*tau*||x||) (T5; ||P_w x|| for sam_norm="projected") at v = tau*(Sigma + lam I)^{-1}
    mu/||.||, remembering its values: the solver asks again for G at the lam it returns."""
    @functools.lru_cache(maxsize=None)
    def G(lam: float) -> float:
        return sam_loss(model, tau * _unit_ridge(model, lam), rho * tau, sam_norm=sam_norm)
    return G


def _argmin_on_ridge(G, scale: float, lam_min: float):
    """argmin of G(lam) over lam > lam_min = -min(sigma^2): log-spaced grid (19 points, scale*e^-9 .. scale*e^9,
    plus 0), bounded Brent on the bracketing cell; if lam = 0 is best, Brent on [0.999*lam_min, grid[1]] (the
    Lagrange multiplier of ||v|| = tau can have either sign: lam < 0 when tau exceeds the unconstrained norm)."""
    grid = np.concatenate([[0.0], scale * np.exp(np.linspace(-9.0, 9.0, 19))])
    vals = np.array([G(lam) for lam in grid])
    i = int(np.argmin(vals))
    lo, hi = (0.999 * lam_min, grid[1]) if i == 0 else (grid[i - 1], grid[min(i + 1, len(grid) - 1)])
    res = minimize_scalar(G, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10 * max(hi, 1e-12)})
    return float(res.x) if res.fun <= vals[i] else float(grid[i])


def _solve_sam_fixed_scale(model, rho, tau, info_checks: bool, sam_norm: str = "full"):
    if isinstance(model, TsiprasModel):
        v = numeric.minimize_sam_sphere(model, rho, tau, sam_norm=sam_norm)
        return v, None, sam_loss(model, v, rho * tau, sam_norm=sam_norm), {"route": "angle on the sphere (numeric)",
                                                                           "sam_norm": sam_norm}
    G = _ridge_objective(model, rho, tau, sam_norm)
    scale, lam_min = float(np.mean(model.sigma2)), -float(model.sigma2.min())
    lam = _argmin_on_ridge(G, scale, lam_min)
    info = {"route": "1-D minimisation over the ridge parameter lam of (Sigma + lam I)^{-1} mu (T5)",
            "sam_norm": sam_norm}
    if lam < 0:
        info["negative_lam"] = ("tau exceeds the norm of the unconstrained optimum: the scale constraint pushes "
                                "weight towards low-variance (non-robust) features")
    v = tau * _unit_ridge(model, lam)
    info["l2_at_eps_equivalent"] = cf.ridge_lambda_to_l2_eps(model, lam)
    # L4 with unit-norm w: SAM acts as l2 AT of radius about rho*sqrt(E||x||^2)
    info["sam_l2_strength_rms"] = metrics.sam_strength(model, rho, v / tau).l2_rms
    if info_checks:
        v_sphere = numeric.minimize_sam_sphere(model, rho, tau, sam_norm=sam_norm)
        f_sphere = sam_loss(model, v_sphere, rho * tau, sam_norm=sam_norm)
        info["sphere_minimiser"] = {"robust_weight": float(v_sphere[0]), "nonrobust_weight": float(v_sphere[-1]),
                                    "objective": f_sphere}
        info["deviation_from_ridge_path"] = _direction_report(v_sphere, v)
        info["objective_gap"] = G(lam) - f_sphere
        # what replacing ||x|| by sqrt(E||x||^2) (a constant shift) would have given instead
        rms = math.sqrt(float(np.sum(model.mu**2 + model.sigma2)))
        G_const = lambda lam_: metrics.population_loss(  # noqa: E731
            model, tau * _unit_ridge(model, lam_), shift=rho * tau * rms)
        lam_c = _argmin_on_ridge(G_const, scale, lam_min)
        v_c = tau * _unit_ridge(model, lam_c)
        info["mean_norm_approximation"] = {"lam": lam_c, "rel_weight_diff": float(np.linalg.norm(v_c - v) / tau),
                                           "robust_weight": float(v_c[0]), "nonrobust_weight": float(v_c[-1])}
    return v, lam, G(lam), info


def solve(model, method, strength=0.0, tau=None, checks: bool = False, sam_norm=None) -> Solution:
    """Population optimum of ``method`` at ``strength`` (eps for AT, rho for SAM) on ``model``.

    ``tau`` (the fixed weight norm) is required for "sam-fixed-scale" and rejected otherwise.
    ``sam_norm`` (only "sam-fixed-scale"): "full" (default, T5: margin drop rho*tau*||x||_2) or "projected"
    (the exact ascent's drop rho*tau*||P_w x||_2, P_w = I - w w^T, w = v/tau).
    ``checks=True`` adds to ``info`` the independent minimiser and the measured deviation for T2/T5.
    """
    _check_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    strength = metrics.check_nonnegative("strength", strength)
    if method == "sam-fixed-scale":
        if tau is None:
            raise ValueError("tau is required for method 'sam-fixed-scale'")
        tau = metrics.check_nonnegative("tau", tau)
        if tau == 0.0:
            raise ValueError("tau must be positive")
        sam_norm = check_sam_norm("full" if sam_norm is None else sam_norm)
    elif tau is not None:
        raise ValueError(f"tau applies only to method 'sam-fixed-scale', not {method!r}")
    elif sam_norm is not None:
        raise ValueError(f"sam_norm applies only to method 'sam-fixed-scale', not {method!r} "
                         "(unconstrained SAM's ascent lowers the margin by exactly rho*||x||)")
    if method == "st" and strength != 0.0:
        raise ValueError("strength must be 0 for method 'st'")

    gaussian = isinstance(model, FeatureModel)
    lam, info = None, {}
    if method == "st":
        v = cf.st_weights(model) if gaussian else numeric.minimize_margin_objective(model, basis=numeric.block_basis(model))
        obj = metrics.population_loss(model, v)
    elif method in ("at-linf", "at-l2"):
        norm = "inf" if method == "at-linf" else 2
        if gaussian and method == "at-linf":
            v = cf.at_linf_weights(model, strength)
        elif gaussian:
            v, lam = cf.at_l2_weights(model, strength)
            info["ridge_lambda"] = 2 * lam
        else:
            v = numeric.minimize_margin_objective(model, strength, norm, basis=numeric.block_basis(model))
        obj = metrics.population_loss(model, v, metrics.attack_margin_shift(v, strength, norm))
    elif method == "sam":
        v, lam, obj, info = _solve_sam(model, strength, checks)
    else:
        v, lam, obj, info = _solve_sam_fixed_scale(model, strength, tau, checks, sam_norm)
    return Solution(model=model, method=method, strength=strength, v=np.asarray(v, dtype=float), lam=lam, tau=tau,
                    sam_norm=sam_norm, objective=float(obj), info=info)


def tradeoff(model, method, strengths, eps_grid=DEFAULT_EPS_GRID, tau=None, progress: bool = False,
             sam_norm=None) -> list:
    """T6: one row per strength with clean accuracy, robust accuracies on ``eps_grid``, reliance and weights.

    ``eps_grid``: attack radii, floats (l_inf) or (norm, eps) pairs; ``tau``/``sam_norm`` as in ``solve``.
    Returns a list of dicts (``Solution.to_dict``).
    """
    strengths = [metrics.check_nonnegative("strength", s) for s in strengths]
    grid = _parse_grid(eps_grid)
    it = strengths
    if progress:
        from tqdm import tqdm

        it = tqdm(strengths, desc=f"tradeoff {method}", leave=False)
    return [solve(model, method, s, tau=tau, sam_norm=sam_norm).to_dict(grid) for s in it]
