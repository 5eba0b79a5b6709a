"""FeatureModel / TsiprasModel: validation, moments, sampling; accuracy formulas (docs/theory.md sections 1-2)."""
import math

import numpy as np
import pytest
from scipy.stats import norm

import linear_theory as lt


def test_reference_model_moments_and_bayes_accuracies():
    m = lt.FeatureModel()
    assert m.D == 101 and m.robust_mask.sum() == 1 and m.robust_mask[0]
    assert m.cov.shape == (101, 101) and np.allclose(np.diag(m.cov), m.sigma2)
    # robust feature alone Phi(1), non-robust block alone Phi(2), Bayes Phi(sqrt(5)) (docs/theory.md section 1)
    e0 = np.eye(101)[0]
    nonrob = np.concatenate([[0.0], np.ones(100)])
    assert lt.clean_accuracy(m, e0) == pytest.approx(norm.cdf(1.0), rel=1e-12)
    assert lt.clean_accuracy(m, nonrob) == pytest.approx(norm.cdf(2.0), rel=1e-12)
    assert lt.clean_accuracy(m, lt.st_weights(m)) == pytest.approx(norm.cdf(math.sqrt(5.0)), rel=1e-12)


def test_sample_moments_match_mu_and_sigma():
    m = lt.FeatureModel(k=2, mu_r=3.0, sigma_r=2.0, d=5, eta=0.5, sigma_n=0.7)
    X, y = m.sample(200_000, 1)
    assert X.shape == (200_000, 7) and set(np.unique(y)) == {-1.0, 1.0}
    u = y[:, None] * X
    assert np.allclose(u.mean(0), m.mu, atol=4 * np.sqrt(m.sigma2 / 200_000).max())
    assert np.allclose(u.var(0), m.sigma2, rtol=0.02)
    t = lt.TsiprasModel(p=0.8, d=3)
    X, y = t.sample(100_000, 2)
    u = y[:, None] * X
    assert np.allclose(u.mean(0), t.mu, atol=0.02) and np.allclose(u.var(0), t.sigma2, rtol=0.03)
    assert set(np.unique(X[:, 0])) == {-1.0, 1.0}


@pytest.mark.parametrize("kwargs, name", [
    ({"k": 0}, "k"), ({"d": -3}, "d"), ({"d": 2.5}, "d"), ({"k": True}, "k"),
    ({"mu_r": 0.0}, "mu_r"), ({"sigma_r": -1.0}, "sigma_r"), ({"eta": float("nan")}, "eta"),
    ({"sigma_n": float("inf")}, "sigma_n"), ({"eta": "0.2"}, "eta"),
])
def test_feature_model_validation_names_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lt.FeatureModel(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"p": 0.5}, "p"), ({"p": 1.0}, "p"), ({"p": 1.2}, "p"), ({"p": float("nan")}, "p"),
    ({"d": 0}, "d"), ({"sigma_n": 0.0}, "sigma_n"),
])
def test_tsipras_validation_names_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lt.TsiprasModel(**kwargs)


def test_api_bad_inputs_name_parameter():
    m = lt.FeatureModel(d=4)
    v = np.ones(5)
    with pytest.raises(ValueError, match="eps"):
        lt.robust_accuracy(m, v, -0.1)
    with pytest.raises(ValueError, match="norm"):
        lt.robust_accuracy(m, v, 0.1, norm=0.5)
    with pytest.raises(ValueError, match="rho"):
        lt.sam_strength(m, -1.0, v)
    with pytest.raises(ValueError, match="v must have shape"):
        lt.clean_accuracy(m, np.ones(3))
    with pytest.raises(ValueError, match="strength"):
        lt.solve(m, "at-linf", -0.2)
    with pytest.raises(ValueError, match="method"):
        lt.solve(m, "pgd", 0.1)
    with pytest.raises(ValueError, match="tau"):
        lt.solve(m, "sam-fixed-scale", 0.1)
    with pytest.raises(ValueError, match="tau"):
        lt.solve(m, "sam-fixed-scale", 0.1, tau=float("nan"))
    with pytest.raises(ValueError, match="lam"):
        lt.ridge_direction(m, -1.0)
    with pytest.raises(ValueError, match="n must"):
        m.sample(0, 1)


def test_lp_robust_accuracy_uses_dual_norm():
    m = lt.FeatureModel(d=3)
    v = np.array([0.3, -0.2, 0.5, 0.1])
    mean, sd = float(v @ m.mu), float(np.sqrt(v * v @ m.sigma2))
    for p, q in [("inf", 1.0), (2, 2.0), (1, math.inf), (3.0, 1.5)]:
        nq = np.max(np.abs(v)) if math.isinf(q) else np.sum(np.abs(v) ** q) ** (1 / q)
        assert lt.robust_accuracy(m, v, 0.3, p) == pytest.approx(norm.cdf((mean - 0.3 * nq) / sd), rel=1e-12)


def test_robust_reliance_reference_values():
    m = lt.FeatureModel()
    # ST: robust share of the mean margin = (mu_r/sigma_r)^2 / ((mu_r/sigma_r)^2 + d (eta/sigma_n)^2) = 1/5
    assert lt.robust_reliance(m, lt.st_weights(m)) == pytest.approx(0.2, rel=1e-12)
    assert lt.robust_reliance(m, lt.at_linf_weights(m, 0.25)) == 1.0
    with pytest.raises(ValueError, match="robust_reliance"):
        lt.robust_reliance(m, np.zeros(m.D))


def test_sam_strength_l4_fields():
    m = lt.FeatureModel()
    v = lt.st_weights(m)
    s = lt.sam_strength(m, 0.1, v)
    X, _ = m.sample(100_000, 5)
    rms_mc = 0.1 * np.sqrt(np.mean(np.sum(X**2, axis=1))) / np.linalg.norm(v)
    assert float(s) == pytest.approx(rms_mc, rel=0.01)
    assert s.per_coordinate == pytest.approx(float(s) / np.sqrt(101))
