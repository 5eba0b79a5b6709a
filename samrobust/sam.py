"""Sharpness-aware minimisation (SAM, Foret et al. 2021) as a wrapper over any torch optimizer.

SAM minimises max_{||e||_2 <= rho} L(w + e) with the one-step approximation (docs/theory.md, L2-L4)

    e(w) = rho * g / ||g||_2,         g = grad L(w)   (global l2 norm over all parameter tensors)
    w   <- base_step(w, grad L(w + e(w)))

Adaptive SAM (ASAM, Kwon et al. 2021) uses T_w = |w| elementwise:

    e(w) = rho * T_w^2 g / ||T_w g||_2

**Weight decay is not in the ascent step.** ``first_step`` reads ``p.grad`` as left by
``loss.backward()``, i.e. the gradient of the data loss only; torch optimizers (SGD, Adam, AdamW...) add
their ``weight_decay`` term inside ``step()``, which runs only in ``second_step`` on the restored weights w.
So the ascent direction is grad L(w) without the L2 term, and the decay acts on w, not on w + e. (If a
caller puts an explicit L2 penalty into its loss, it is of course part of g; our training loop does not.)

**BatchNorm in the second pass.** The gradient at w + e is computed on the same mini-batch with BatchNorm in
training mode (normalising by that batch's statistics, as in the first pass), but the running mean/variance
are updated only once per step, by the first pass at w: wrap the second forward in
:func:`frozen_bn_stats` (our training loop does), which sets BN momentum to 0 for its duration and restores
``num_batches_tracked``. The running statistics used at test time therefore belong to the weights w.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import torch
from torch import nn

__all__ = ["sam_perturbation", "SAM", "frozen_bn_stats"]


def sam_perturbation(grads: Sequence[Optional[torch.Tensor]], rho: float, adaptive: bool = False,
                     params: Optional[Sequence[torch.Tensor]] = None,
                     eps: float = 1e-12) -> List[Optional[torch.Tensor]]:
    """SAM ascent e = rho * g / ||g||_2 (global norm over all tensors); pure function.

    With ``adaptive=True`` (ASAM) ``params`` are required and e = rho * w^2 g / ||w g||_2.
    ``None`` entries of ``grads`` (parameters without gradient) give ``None`` in the output.
    ``eps`` guards the division when g = 0 (then e = 0).
    """
    if not (rho >= 0.0):
        raise ValueError(f"rho must be >= 0, got {rho!r}")
    grads = list(grads)
    if adaptive:
        if params is None:
            raise ValueError("params are required for adaptive SAM (ASAM)")
        params = list(params)
        if len(params) != len(grads):
            raise ValueError("params and grads must have the same length")
        scaled = [None if g is None else p.detach().abs() * g for p, g in zip(params, grads)]
    else:
        scaled = grads
    present = [s for s in scaled if s is not None]
    if not present:
        return [None] * len(grads)
    acc = torch.float64 if any(s.dtype == torch.float64 for s in present) else torch.float32
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(s.detach(), dtype=acc) for s in present]))
    scale = rho / (norm + eps)
    out: List[Optional[torch.Tensor]] = []
    for i, s in enumerate(scaled):
        if s is None:
            out.append(None)
        elif adaptive:
            out.append((params[i].detach().abs() * s * scale).to(s.dtype))
        else:
            out.append((s.detach() * scale).to(s.dtype))
    return out


class SAM(torch.optim.Optimizer):
    """SAM over a base optimizer (class or instance); see the module docstring for the formulas.

    Usage (two forward/backward passes per step)::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, weight_decay=5e-4)
        loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)      # w -> w + e
        with frozen_bn_stats(model):
            loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)                                      # w + e -> w, base step

    ``base_optimizer`` may be an optimizer class (constructed here on ``params`` with ``**kw``) or an
    already constructed optimizer instance (then ``params`` may be None and ``kw`` must be empty).
    ``rho = 0`` reproduces the base optimizer exactly. Built on torch's public Optimizer API: the param
    group dicts are shared with the base optimizer (lr schedulers work through the wrapper); the optimizer
    state (momentum buffers) lives in the base optimizer and ``state_dict``/``load_state_dict`` are its.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False,
                 perturb_eps: float = 1e-12, **kw):
        if not (rho >= 0.0):
            raise ValueError(f"rho must be >= 0, got {rho!r}")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            if kw:
                raise ValueError("keyword options go to the base optimizer only when it is a class")
            base, groups = base_optimizer, base_optimizer.param_groups
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
            if params is None:
                raise ValueError("params are required when base_optimizer is a class")
            base, groups = None, params
        else:
            raise ValueError(f"base_optimizer must be a torch optimizer class or instance, "
                             f"got {base_optimizer!r}")
        # Public API only: Optimizer.__init__ builds our param groups (dicts); the base optimizer is built
        # on (or already holds) the very same dicts, so an lr set on either is seen by both.
        super().__init__(groups, dict(rho=float(rho), adaptive=bool(adaptive)))
        self.base_optimizer = base if base is not None else base_optimizer(self.param_groups, **kw)
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.perturb_eps = float(perturb_eps)
        self._w_backup: Optional[List[torch.Tensor]] = None
        self._perturbed: List[torch.Tensor] = []

    def _params_with_grad(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> List[torch.Tensor]:
        """Ascent: w -> w + e(w) from the current ``.grad``; keeps w for ``second_step``. Returns e."""
        if self._w_backup is not None:
            raise RuntimeError("first_step called twice without second_step")
        params = self._params_with_grad()
        grads = [p.grad for p in params]
        e = sam_perturbation(grads, self.rho, self.adaptive, params=params, eps=self.perturb_eps)
        self._w_backup = [p.detach().clone() for p in params]
        self._perturbed = params
        if params:
            torch._foreach_add_(params, e)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return e

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by ``first_step`` (exact copy, no rounding)."""
        if self._w_backup is None:
            raise RuntimeError("second_step/restore called without first_step")
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, self._w_backup)
        self._w_backup = None
        self._perturbed = []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and take the base optimizer step with the gradient computed at w + e."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure=None):
        """Full SAM step with a closure that zeroes grads, recomputes the loss and calls backward.

        The gradient at w must already be in ``.grad`` (as in pytorch-optimizer's SAM).
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure; or call first_step()/second_step()")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        """Load into the base optimizer (it replaces its group dicts), then share its groups again."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Context: BatchNorm layers still normalise with batch statistics (train mode), but their running
    mean/var and ``num_batches_tracked`` are left unchanged. Used for SAM's second pass and for the
    PGD inner loop of adversarial training."""
    saved = []
    for m in model.modules():
        if isinstance(m, _BN_TYPES) and m.track_running_stats:
            nbt = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, nbt))
            m.momentum = 0.0
    try:
        yield model
    finally:
        for m, mom, nbt in saved:
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
