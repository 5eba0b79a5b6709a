"""A launch-free training step on CUDA: the whole step captured once as a CUDA graph, then replayed.

Why (issue 19): on an H200 our eager step is limited by the host issuing kernels (about 21-29 us per
operation; ST ~380 operations per step, SAM ~1,000, AT with PGD-10 several thousand), not by arithmetic.
A CUDA graph replays all of a step's kernels with one launch, so the host cost per step becomes ~constant.

What is captured: :func:`deep.train.train_step` itself, on static input buffers (no second implementation):

* ST: forward, backward, fused SGD;   SAM: both passes with the ascent and the restore (samrobust/sam.py:
  multi-tensor, persistent weight backup);   AT: PGD (all iterations) plus the step.
* The learning rate is a device tensor (``param_groups[i]["lr"]``; fused SGD reads it at replay), filled
  outside the graph only when the schedule changes it.
* Random numbers: AT's PGD random start is drawn outside the graph from the epoch's PGD generator into
  static noise buffers (samrobust.attacks.draw_start_noise), in the order and amounts the eager step draws
  them, so the graphed run uses the very numbers of the eager run. Augmentation stays outside the graph.
* The summed loss, the number correct and the non-finite flag are accumulated inside the graph.
* Warm-up: the first ``warmup`` full batches of the first epoch run eagerly on a side stream (torch's rule
  for capture: lazy initialisation, cuDNN autotuning, momentum buffers, SAM's backup); they are real
  training steps. Batches of another shape (the last partial batch) run eagerly.

Opt-in (``TrainConfig`` is unchanged: this is how a run executes, not what it trains): ``FitOptions.cuda_graph``
/ ``deep.run --cuda-graph`` / ``deep.bench`` loop ``ours-graphed``. Where it cannot apply (not CUDA, several
processes, a wrapped or compiled model, an SGD that is not fused) or capture fails, training continues eagerly
after a one-line warning. Equality with the eager step: tests/test_deep_graphed.py (the GPU test runs where
CUDA exists; the control flow is tested on CPU with a stand-in graph backend).
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, Optional, Tuple

import torch

from samrobust.sam import SAM

from . import distributed as ddist

__all__ = ["GraphedStep", "graphed_step_for", "CudaGraphs", "unsupported_reason", "start_noise_shapes",
           "WARMUP_STEPS"]

# Eager steps on a side stream before the capture (torch's documentation asks for a few; 3 suffice
# outside DDP, which we do not graph).
WARMUP_STEPS = 3


def _warn(msg: str) -> None:
    print(f"deep: {msg}", file=sys.stderr, flush=True)


def _base_sgd(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return opt.base_optimizer if isinstance(opt, SAM) else opt


def unsupported_reason(model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
                       backend=None) -> Optional[str]:
    """Why the step of ``model``/``opt`` on ``device`` cannot be graphed (None: it can). ``backend``: a
    stand-in for CUDA graphs (tests), which skips the CUDA-only checks."""
    if backend is None and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if ddist.get_world_size() > 1:
        return "not under torch.distributed (DDP's gradient hooks would need their own capture)"
    if ddist.unwrap(model) is not model:
        return "not with a wrapped or torch.compile'd model"
    base = _base_sgd(opt)
    if not isinstance(base, torch.optim.SGD):
        return "only with SGD (or SAM over SGD)"
    if backend is None and not base.defaults.get("fused"):
        return "only with fused SGD (reads the learning rate from device memory)"
    return None


class CudaGraphs:
    """The CUDA side of :class:`GraphedStep`: warm-up on a side stream, capture, replay."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def lr_tensor(self, lr: float) -> torch.Tensor:
        # float32 on the device: what the fused SGD kernel's tensor-lr variant reads
        return torch.tensor(lr, dtype=torch.float32, device=self.device)

    def warmup(self, fn: Callable[[], object]) -> None:
        cur = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(cur)
        with torch.cuda.stream(self.stream):
            fn()
        cur.wait_stream(self.stream)

    def capture(self, fn: Callable[[], object]) -> Callable[[], None]:
        """Record ``fn`` (nothing runs) and return the replay."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (e.g. a DataLoader's pin-memory thread) do not break it
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
        return graph.replay


class GraphedStep:
    """The CUDA-graphed :func:`deep.train.train_step` of one model and optimizer (see the module docstring).

    Per epoch: :meth:`begin_epoch`, then :meth:`step` for every batch (full batches replay the graph,
    others run eagerly), then :meth:`end_epoch` for the device totals {loss_sum, correct, nonfinite}
    (:attr:`nonfinite` may be read in between for the divergence check)."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, cfg, bf16: bool, *,
                 step_fn: Callable, backend=None, warmup: int = WARMUP_STEPS):
        self._train_step = step_fn             # deep.train.train_step, handed in (deep.train imports this module)
        self.model, self.opt, self.cfg, self.bf16 = model, opt, cfg, bool(bf16)
        self.device = next(model.parameters()).device
        self.backend = backend if backend is not None else CudaGraphs(self.device)
        self.warmup = int(warmup)
        self.warm = 0                          # eager warm-up steps done
        self.replay: Optional[Callable[[], None]] = None
        self.failed: Optional[str] = None      # why we run eagerly from now on
        self.shape: Optional[Tuple[int, ...]] = None   # the captured batch's x shape
        self.warm_shape: Optional[Tuple[int, ...]] = None   # the warmed-up shape (cuDNN plans exist for it)
        self.lr_t = self.backend.lr_tensor(cfg.lr)
        self.lr_value = float(cfg.lr)
        # the epoch's totals, accumulated inside the graph (dtypes as train_epoch's eager totals)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.nonfinite = torch.zeros((), device=self.device, dtype=torch.bool)
        self.graphed_steps = 0                 # replays so far (for tests and the bench)
        self.eager_steps = 0

    # ------------------------------------------------------------------ epoch bookkeeping

    def begin_epoch(self) -> None:
        """Zero the totals; the optimizer reads the learning rate from :attr:`lr_t` during the epoch."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.nonfinite.zero_()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_t

    def end_epoch(self) -> Dict[str, torch.Tensor]:
        """Put plain float learning rates back (checkpoints and schedulers see floats) and return copies
        of the epoch's device totals."""
        for g in self.opt.param_groups:
            g["lr"] = self.lr_value
        return {"loss_sum": self.loss_sum.clone(), "correct": self.correct.clone(),
                "nonfinite": self.nonfinite.clone()}

    def set_lr(self, lr: float) -> None:
        """The schedule's learning rate; one fill of the device scalar when it changes (piecewise constant:
        rarely), none otherwise."""
        lr = float(lr)
        if lr != self.lr_value:
            self.lr_t.fill_(lr)
            self.lr_value = lr

    # ------------------------------------------------------------------ steps

    def _needs_noise(self) -> bool:
        c = self.cfg
        return c.adversarial and c.attack_random_start and c.eps != 0.0

    def _body(self, x, y, generator=None, noise=None) -> None:
        """The step on (x, y), accumulated into the totals: what is captured and what runs eagerly."""
        ls, c, bad = self._train_step(self.model, x, y, self.cfg, self.opt, generator=generator, bf16=self.bf16,
                                      start_noise=noise)
        self.loss_sum += ls
        self.correct += c
        self.nonfinite |= bad

    def _eager(self, x, y, generator) -> None:
        self.eager_steps += 1
        self._body(x, y, generator=generator)

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """One training step on the batch (x laid out as in training); AT's random start from ``generator``."""
        if self.failed is not None or (self.shape is not None and tuple(x.shape) != self.shape):
            return self._eager(x, y, generator)
        if self.replay is None and self.warm_shape is not None and tuple(x.shape) != self.warm_shape:
            return self._eager(x, y, generator)   # warm-up and capture only on the shape warmed up first
        if self.replay is None and self.warm < self.warmup:
            self.warm_shape = tuple(x.shape)
            self.warm += 1
            self.eager_steps += 1
            return self.backend.warmup(lambda: self._body(x, y, generator=generator))
        if self.replay is None:
            self._capture(x, y)
            if self.replay is None:             # capture failed: this batch eagerly
                return self._eager(x, y, generator)
        self.x_static.copy_(x)
        self.y_static.copy_(y)
        if self.noise_static is not None:
            self._draw_noise(generator)
        self.replay()
        self.graphed_steps += 1

    def _draw_noise(self, generator) -> None:
        """Fill the static noise buffers with the numbers the eager step would draw now (same generator,
        same order and shapes as samrobust.attacks.draw_start_noise; one kernel per buffer)."""
        bufs = self.noise_static
        if len(bufs) == 1:
            torch.rand(bufs[0].shape, generator=generator, out=bufs[0])
        else:
            torch.randn(bufs[0].shape, generator=generator, out=bufs[0])
            torch.rand(bufs[1].shape, generator=generator, out=bufs[1])

    def _capture(self, x, y) -> None:
        """Static buffers shaped like this batch, then the capture; on failure a one-line warning and eager
        steps from then on."""
        self.shape = tuple(x.shape)
        self.x_static = torch.empty_like(x).copy_(x)         # empty_like keeps channels_last
        self.y_static = y.clone()
        self.noise_static = tuple(torch.empty(shape, device=x.device, dtype=x.dtype)
                                  for shape in start_noise_shapes(x, self.cfg.norm)) \
            if self._needs_noise() else None
        self.opt.zero_grad(set_to_none=True)     # gradients are then allocated inside the graph's pool
        try:
            self.replay = self.backend.capture(lambda: self._body(self.x_static, self.y_static,
                                                                  noise=self.noise_static))
        except Exception as err:  # noqa: BLE001 - any capture failure: train eagerly
            self.replay = None
            self.failed = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
            if isinstance(self.opt, SAM):        # a capture interrupted between ascent and restore
                self.opt._is_perturbed, self.opt._perturbed = False, []
            self.opt.zero_grad(set_to_none=True)
            _warn(f"CUDA graph capture failed ({self.failed}); training eagerly")


def start_noise_shapes(x: torch.Tensor, norm: str) -> Tuple[Tuple[int, ...], ...]:
    """Shapes of samrobust.attacks.draw_start_noise's tensors for inputs like ``x`` (l_inf: x's shape; l2:
    x's shape, then one number per example)."""
    if norm == "inf":
        return (tuple(x.shape),)
    return tuple(x.shape), (x.shape[0],) + (1,) * (x.dim() - 1)


GRAPH_ATTR = "_deep_graphed_step"


def graphed_step_for(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg, bf16: bool, *, step_fn: Callable,
                     backend=None) -> Optional[GraphedStep]:
    """The :class:`GraphedStep` of (model, opt) around ``step_fn`` (:func:`deep.train.train_step`), built on the
    first call and kept on the optimizer (one capture per run, replayed in every epoch); None, after a one-line
    warning, where graphs do not apply."""
    gs = opt.__dict__.get(GRAPH_ATTR)
    if gs is not None and gs.model is model and gs.cfg is cfg and gs.bf16 == bool(bf16):
        return gs
    device = next(model.parameters()).device
    why = unsupported_reason(model, opt, device, backend)
    if why is not None:
        if opt.__dict__.get(GRAPH_ATTR + "_said") != why:          # the warning once per optimizer, not per epoch
            _warn(f"--cuda-graph: {why}; training eagerly")
            opt.__dict__[GRAPH_ATTR + "_said"] = why
        return None
    gs = GraphedStep(model, opt, cfg, bf16, step_fn=step_fn, backend=backend)
    opt.__dict__[GRAPH_ATTR] = gs
    return gs
