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
:func:`frozen_bn_stats` / :class:`BNStatsFreezer` (our training loop does), which switches the layers'
``track_running_stats`` off for its duration. The running statistics used at test time therefore belong to
the weights w.

**Operations per step** (speed; issue 19). On a GPU the step is limited by the host issuing kernels, so the
ascent and the restore use multi-tensor (``torch._foreach_*``) operations: one ``_foreach_norm`` for the
per-tensor norms, one ``_foreach_mul`` for e, one ``_foreach_add_`` for w + e, and one ``_foreach_copy_``
each into and out of a weight backup that is allocated once and reused (also what a CUDA graph needs:
static memory). The numbers are those of :func:`sam_perturbation` (tests/test_deep_step_ops.py compares).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import List, Optional, Sequence

import torch
from torch import nn

__all__ = ["sam_perturbation", "SAM", "frozen_bn_stats", "BNStatsFreezer", "bn_freezer"]


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
        # Persistent backup of w (allocated on the first ascent, reused every step; see the module docstring)
        self._backup: List[torch.Tensor] = []
        self._backup_of: List[int] = []          # id() of the parameters the backup belongs to
        self._perturbed: List[torch.Tensor] = []
        self._is_perturbed = False

    def _params_with_grad(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _ascent(self, params: List[torch.Tensor], grads: List[torch.Tensor]) -> List[torch.Tensor]:
        """e of :func:`sam_perturbation` with multi-tensor kernels (same operations per tensor, same order;
        speed: a fixed handful of launches instead of several per parameter tensor)."""
        if self.adaptive:
            absw = torch._foreach_abs(params)
            scaled = torch._foreach_mul(absw, grads)              # |w| g
        else:
            scaled = grads
        acc = torch.float64 if any(s.dtype == torch.float64 for s in scaled) else torch.float32
        norms = torch._foreach_norm(scaled, 2, dtype=acc)
        norm = torch.linalg.vector_norm(torch.stack(norms))
        scale = self.rho / (norm + self.perturb_eps)              # a device scalar: no host sync
        if self.adaptive:
            e = torch._foreach_mul(absw, scaled)                  # |w| (|w| g), then * scale as before
            torch._foreach_mul_(e, scale)
        else:
            e = torch._foreach_mul(scaled, scale)
        return e

    def _save(self, params: List[torch.Tensor]) -> None:
        """Copy w into the persistent backup (re-allocated only when the parameter set changes)."""
        ids = [id(p) for p in params]
        if ids != self._backup_of:
            self._backup = [torch.empty_like(p) for p in params]
            self._backup_of = ids
        torch._foreach_copy_(self._backup, params)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> List[torch.Tensor]:
        """Ascent: w -> w + e(w) from the current ``.grad``; keeps w for ``second_step``. Returns e."""
        if self._is_perturbed:
            raise RuntimeError("first_step called twice without second_step")
        params = self._params_with_grad()
        e: List[torch.Tensor] = []
        if params:
            e = self._ascent(params, [p.grad for p in params])
            self._save(params)
            torch._foreach_add_(params, e)
        self._perturbed = params
        self._is_perturbed = True
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return e

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by ``first_step`` (exact copy, no rounding)."""
        if not self._is_perturbed:
            raise RuntimeError("second_step/restore called without first_step")
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, self._backup)
        self._is_perturbed = False
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


class BNStatsFreezer:
    """Context (re-usable): BatchNorm layers still normalise with batch statistics (train mode), but their
    running mean/var and ``num_batches_tracked`` are left unchanged. Used for SAM's second pass and for the
    PGD inner loop of adversarial training (bn_stats="first").

    The BatchNorm layers are found once, when the freezer is built (not per step), and freezing switches
    their ``track_running_stats`` off: in train mode torch's BatchNorm then passes no running buffers to
    the kernel, so nothing is updated and nothing needs saving or restoring (speed: no per-step clones of
    ``num_batches_tracked``, no running-stat kernels; the normalisation and its gradient are unchanged).
    Exiting restores the flags as they were on entry, so nesting is safe."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
        self._saved: List[List[bool]] = []

    def __enter__(self):
        self._saved.append([m.track_running_stats for m in self.layers])
        for m in self.layers:
            m.track_running_stats = False
        return self

    def __exit__(self, *exc):
        for m, flag in zip(self.layers, self._saved.pop()):
            m.track_running_stats = flag
        return False


_FREEZERS: "weakref.WeakKeyDictionary[nn.Module, BNStatsFreezer]" = weakref.WeakKeyDictionary()


def bn_freezer(model: nn.Module) -> BNStatsFreezer:
    """The :class:`BNStatsFreezer` of ``model``, built on the first call and cached per model (the layer
    list of a model is assumed not to change after its first training step)."""
    f = _FREEZERS.get(model)
    if f is None:
        f = _FREEZERS[model] = BNStatsFreezer(model)
    return f


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Context: :class:`BNStatsFreezer` of ``model`` (cached per model): BatchNorm in train mode normalises
    with batch statistics but leaves its running statistics and ``num_batches_tracked`` unchanged."""
    with bn_freezer(model):
        yield model
