"""The robust / non-robust feature model (docs/theory.md section 1) and the Tsipras variant.

Both models describe the class-conditional law of x in R^D given a label y uniform on {-1, +1}.
Robust coordinates come first. The only thing the accuracies and losses of a linear classifier
f(x) = v.x need is the law of the margin z = y v.x, exposed by ``margin_components`` as a finite
mixture of Gaussians (one component for ``FeatureModel``, two for ``TsiprasModel``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureModel", "TsiprasModel", "as_rng", "check_weights"]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def as_rng(rng_or_seed) -> np.random.Generator:
    """Return a numpy Generator from a Generator, an int seed or None."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if rng_or_seed is None or (isinstance(rng_or_seed, numbers.Integral) and not isinstance(rng_or_seed, bool)):
        return np.random.default_rng(rng_or_seed)
    raise ValueError(f"rng_or_seed must be a numpy Generator, an int or None, got {rng_or_seed!r}")


def check_weights(model, v, name: str = "v") -> np.ndarray:
    """Validate a weight vector against a model: finite, shape (D,)."""
    arr = np.asarray(v, dtype=float)
    if arr.shape != (model.D,):
        raise ValueError(f"{name} must have shape ({model.D},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _check_n(n) -> None:
    _check_positive_int("n", n)


class _ModelBase:
    """Shared properties: mu, sigma2, cov, robust_mask, D."""

    k: int
    d: int

    @property
    def D(self) -> int:
        return self.k + self.d

    @property
    def robust_mask(self) -> np.ndarray:
        mask = np.zeros(self.D, dtype=bool)
        mask[: self.k] = True
        return mask

    @property
    def cov(self) -> np.ndarray:
        """Class-conditional covariance Sigma = diag(sigma2), shape (D, D)."""
        return np.diag(self.sigma2)

    def margin_moments(self, v) -> tuple[float, float]:
        """Mean v.mu and standard deviation sqrt(v.Sigma.v) of the margin's class-conditional moments."""
        v = check_weights(self, v)
        return float(v @ self.mu), float(math.sqrt(max(float(v * v @ self.sigma2), 0.0)))


@dataclass(frozen=True)
class FeatureModel(_ModelBase):
    """Robust / non-robust Gaussian feature model (docs/theory.md section 1).

    x_i | y ~ N(y*mu_r, sigma_r^2) for the k robust coordinates and N(y*eta, sigma_n^2) for the d
    non-robust ones, independent given y; y uniform on {-1, +1}. Defaults are the reference
    parameters k=1, mu_r=4, sigma_r=4, d=100, eta=0.2, sigma_n=1.
    """

    k: int = 1
    mu_r: float = 4.0
    sigma_r: float = 4.0
    d: int = 100
    eta: float = 0.2
    sigma_n: float = 1.0

    def __post_init__(self):
        _check_positive_int("k", self.k)
        _check_positive_int("d", self.d)
        for name in ("mu_r", "sigma_r", "eta", "sigma_n"):
            _check_positive_float(name, getattr(self, name))

    @property
    def mu(self) -> np.ndarray:
        """Class-conditional mean E[y x], robust block first, shape (D,)."""
        return np.concatenate([np.full(self.k, float(self.mu_r)), np.full(self.d, float(self.eta))])

    @property
    def sigma2(self) -> np.ndarray:
        """Class-conditional variances, shape (D,)."""
        return np.concatenate([np.full(self.k, float(self.sigma_r) ** 2), np.full(self.d, float(self.sigma_n) ** 2)])

    def sample(self, n, rng_or_seed=None):
        """Draw n labelled examples: X (n, D) float64, y (n,) in {-1, +1}."""
        _check_n(n)
        rng = as_rng(rng_or_seed)
        y = rng.choice(np.array([-1.0, 1.0]), size=n)
        X = rng.standard_normal((n, self.D))
        X *= np.sqrt(self.sigma2)  # in place: the same numbers as y mu + g sigma, without two temporaries
        X += y[:, None] * self.mu
        return X, y

    def margin_components(self, v):
        """Law of the margin z = y v.x as a Gaussian mixture: (weights, means, stds) arrays.

        For this model z ~ N(v.mu, v.Sigma.v) exactly (docs/theory.md section 2).
        """
        m, s = self.margin_moments(v)
        return np.array([1.0]), np.array([m]), np.array([s])


@dataclass(frozen=True)
class TsiprasModel(_ModelBase):
    """Tsipras et al. (2019) variant: one robust coordinate x_0 = y with probability p, else -y.

    The d non-robust coordinates are N(y*eta, sigma_n^2) as in ``FeatureModel``. Handled numerically
    only (no closed forms). ``mu`` and ``sigma2`` are the class-conditional mean E[y x] and
    variance: (2p-1, 4p(1-p)) for x_0.
    """

    p: float = 0.9
    d: int = 100
    eta: float = 0.2
    sigma_n: float = 1.0

    @property
    def k(self) -> int:  # type: ignore[override]
        return 1

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, numbers.Real) or not math.isfinite(float(self.p)):
            raise ValueError(f"p must be a finite number in (0.5, 1), got {self.p!r}")
        if not 0.5 < float(self.p) < 1.0:
            raise ValueError(f"p must lie in the open interval (0.5, 1), got {self.p!r}")
        _check_positive_int("d", self.d)
        for name in ("eta", "sigma_n"):
            _check_positive_float(name, getattr(self, name))

    @property
    def mu(self) -> np.ndarray:
        return np.concatenate([[2.0 * self.p - 1.0], np.full(self.d, float(self.eta))])

    @property
    def sigma2(self) -> np.ndarray:
        return np.concatenate([[4.0 * self.p * (1.0 - self.p)], np.full(self.d, float(self.sigma_n) ** 2)])

    def sample(self, n, rng_or_seed=None):
        """Draw n labelled examples: X (n, D) float64, y (n,) in {-1, +1}."""
        _check_n(n)
        rng = as_rng(rng_or_seed)
        y = rng.choice(np.array([-1.0, 1.0]), size=n)
        agree = rng.random(n) < self.p
        x0 = np.where(agree, y, -y)
        xn = y[:, None] * self.eta + self.sigma_n * rng.standard_normal((n, self.d))
        return np.concatenate([x0[:, None], xn], axis=1), y

    def margin_components(self, v):
        """Law of z = y v.x: mixture of N(+-v_0 + eta*sum(v_N), sigma_n^2 ||v_N||^2) with weights p, 1-p."""
        v = check_weights(self, v)
        m_n = float(self.eta * v[1:].sum())
        s_n = float(self.sigma_n * np.linalg.norm(v[1:]))
        return (np.array([self.p, 1.0 - self.p]), np.array([v[0] + m_n, -v[0] + m_n]), np.array([s_n, s_n]))
