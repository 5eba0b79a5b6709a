"""linear_theory: SAM and adversarial training as feature perturbations in a linear model (docs/theory.md).

Import as ``import linear_theory as lt``; see linear_theory/README.md for the API and the CLI
(``python -m linear_theory {derive,solve,tradeoff}``).
"""
from .closed_forms import (at_l2_lambda, at_l2_weights, at_linf_weights, match_ridge_lambda,
                           ridge_direction, ridge_lambda_to_l2_eps, st_weights)
from .metrics import (SamStrength, attack_margin_shift, clean_accuracy, dual_exponent, logistic_loss,
                      population_loss, robust_accuracy, robust_reliance, sam_strength)
from .model import FeatureModel, TsiprasModel
from .sam_objective import SAM_NORMS, sam_loss, sam_loss_mc
from .solve import DEFAULT_EPS_GRID, METHODS, Solution, solve, tradeoff

__all__ = [
    "FeatureModel", "TsiprasModel",
    "clean_accuracy", "robust_accuracy", "robust_reliance", "population_loss", "sam_strength", "SamStrength",
    "attack_margin_shift", "dual_exponent", "logistic_loss",
    "st_weights", "at_linf_weights", "at_l2_lambda", "at_l2_weights",
    "ridge_direction", "match_ridge_lambda", "ridge_lambda_to_l2_eps",
    "sam_loss", "sam_loss_mc", "SAM_NORMS",
    "solve", "tradeoff", "Solution", "METHODS", "DEFAULT_EPS_GRID",
]
