"""Projected gradient descent (PGD) attacks in input space (l_inf and l2).

The one PGD implementation of the package: deep adversarial training and evaluation use it, and
``simulations/`` reuses it on linear models (``clamp=None``, logistic ``loss_fn`` on +-1 labels).

PGD (Madry et al. 2018) approximately solves the AT inner maximisation (docs/theory.md, L1)

    max_{||delta||_p <= eps, x + delta in [lo, hi]}  loss(f(x + delta), y)

by ``steps`` iterations of

    l_inf:  delta <- Proj_{||.||_inf <= eps}( delta + alpha * sign(grad) )
    l2:     delta <- Proj_{||.||_2  <= eps}( delta + alpha * grad / ||grad||_2 )   (per example;
            computed scale-invariantly, so vanishing-but-nonzero gradients still take full steps)

each followed by the box projection x + delta in [lo, hi] (when ``clamp`` is given).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["pgd", "normalize_norm", "default_step_size"]

Norm = Union[str, int, float]


def normalize_norm(norm: Norm) -> str:
    """Map the accepted spellings of a norm to ``"inf"`` or ``"l2"``; ValueError otherwise."""
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in ("inf", "linf", "l_inf", "infinity"):
            return "inf"
        if key in ("2", "l2", "l_2"):
            return "l2"
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm == 2:
            return "l2"
        if norm == float("inf"):
            return "inf"
    raise ValueError(f"norm must be 'inf' (or 'linf') or 2 (or 'l2'), got {norm!r}")


def default_step_size(eps: float, norm: Norm) -> float:
    """docs/protocol.md step sizes: eps/4 for l_inf (2/255 at eps 8/255), eps/8 for l2."""
    return eps / 4.0 if normalize_norm(norm) == "inf" else eps / 8.0


def _per_example_l2(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each example (first dimension), shaped to broadcast against ``t``."""
    n = t.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


def _l2_direction(g: torch.Tensor) -> torch.Tensor:
    """Per-example ``g / ||g||_2``, scale-invariant: each example is first divided by its max-abs
    entry, so tiny gradients (e.g. a logistic loss at margin > ~28, ||g|| < 1e-12) still give a unit
    direction instead of being swamped by the 1e-12 guard. An all-zero example stays zero."""
    m = g.flatten(1).abs().amax(dim=1).view(-1, *([1] * (g.dim() - 1)))
    g = g / torch.where(m > 0, m, torch.ones_like(m))
    return g / (_per_example_l2(g) + 1e-12)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "inf":
        return delta.clamp(-eps, eps)
    n = _per_example_l2(delta)
    factor = torch.clamp(eps / (n + 1e-12), max=1.0)
    return delta * factor


def _random_start(x: torch.Tensor, eps: float, norm: str,
                  generator: Optional[torch.Generator]) -> torch.Tensor:
    if norm == "inf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2.0 * u - 1.0) * eps
    # uniform in the l2 ball: Gaussian direction, radius eps * U^(1/dim)
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    g = g / (_per_example_l2(g) + 1e-12)
    dim = x[0].numel()
    u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator,
                   device=x.device, dtype=x.dtype)
    return g * eps * u.pow(1.0 / dim)


def _clamp_box(x: torch.Tensor, delta: torch.Tensor,
               clamp: Optional[Tuple[float, float]]) -> torch.Tensor:
    """Return delta such that x + delta lies in the box ``clamp``."""
    if clamp is None:
        return delta
    lo, hi = clamp
    return (x + delta).clamp(lo, hi) - x


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        eps: float, norm: Norm = "inf", steps: int = 10, step_size: Optional[float] = None,
        random_start: bool = True,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        clamp: Optional[Tuple[float, float]] = (0.0, 1.0),
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD attack maximising ``loss_fn(forward(x_adv), y)`` over the eps ball (docs/theory.md L1).

    Args:
        forward: callable mapping inputs to logits (or margins for a linear model).
        x, y: clean inputs (first dimension = examples) and labels.
        eps: attack radius (>= 0) in the chosen norm; eps = 0 returns ``x``.
        norm: "inf"/"linf" or 2/"l2".
        steps: number of gradient steps (>= 0).
        step_size: alpha; default eps/4 (l_inf) or eps/8 (l2), as in docs/protocol.md.
        random_start: start from a uniform point of the eps ball (l_inf: cube; l2: ball).
        loss_fn: ``loss_fn(logits, y) -> scalar``; default summed cross-entropy. Only the
            gradient direction per example matters (sign or l2-normalised), so sum vs mean is moot.
        clamp: (lo, hi) box of valid inputs, or None for unbounded inputs.
        generator: torch.Generator for the random start (reproducible attacks).

    Returns:
        ``x_adv`` detached, with ``||x_adv - x|| <= eps`` (per example) and inside ``clamp``.
        Parameter gradients (``.grad``) of the attacked model are not touched.
    """
    norm_ = normalize_norm(norm)
    if not (eps >= 0.0):
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if step_size is None:
        step_size = default_step_size(eps, norm_)
    if not (step_size >= 0.0):
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    if clamp is not None and not (clamp[0] < clamp[1]):
        raise ValueError(f"clamp must be (lo, hi) with lo < hi or None, got {clamp!r}")
    if loss_fn is None:
        def loss_fn(logits, target):
            return F.cross_entropy(logits.float(), target, reduction="sum")

    x = x.detach()
    if eps == 0.0 or (steps == 0 and not random_start):
        return x.clone()
    if random_start:
        delta = _clamp_box(x, _random_start(x, eps, norm_, generator), clamp)
    else:
        delta = torch.zeros_like(x)

    for _ in range(int(steps)):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(forward(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach()
        grad = grad.detach().to(delta.dtype)
        if norm_ == "inf":
            delta = delta + step_size * grad.sign()
        else:
            delta = delta + step_size * _l2_direction(grad)
        delta = _clamp_box(x, _project(delta, eps, norm_), clamp)
    return (x + delta).detach()
