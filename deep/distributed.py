"""torch.distributed helpers for deep/: several processes (GPUs), one training run.

Launch with torchrun, which sets the environment variables read here
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)::

    torchrun --nproc_per_node=N -m deep.run ...

Without those variables (plain ``python -m deep.run``) every helper degrades to the single-process
behaviour, so the training loop calls them unconditionally.

How the pieces fit (docs/protocol.md, "Deviations from the paper's public code", item 9):

* data parallelism: every rank holds the whole (device-resident) training set and draws the same
  global permutation per epoch (:func:`epoch_permutation`, seeded by (seed, epoch)); each rank takes a
  strided share of it (:func:`shard_indices`, equal sizes).  With a per-rank batch b and W ranks, the
  union of the ranks' k-th batches is exactly the k-th batch of size W*b of a single process reading
  the same permutation, so the averaged gradient is the global-batch gradient.
* gradients: the model is wrapped in DistributedDataParallel (:func:`wrap_model`), which averages the
  gradients of the backward pass over ranks.
* SAM (samrobust/sam.py): the ascent e = rho * g / ||g||_2 uses by default each rank's *local* batch gradient
  (m-sharpness with m = per-rank batch, as the reference SAM implementations do): run the first
  backward inside :func:`ascent_sync`, which is ``model.no_sync()`` for a DDP model.  With
  ``all_reduce_ascent=True`` the first backward is synchronised as well, so e comes from the global
  batch gradient and W ranks reproduce one process with the global batch (BatchNorm aside, see below).
  The descent backward is always synchronised.
* BatchNorm: in train mode each rank normalises with its own per-rank batch statistics, so W ranks of
  b images are not bit-identical to one process of W*b images when the model has BatchNorm (the
  reference implementations accept this).  Running statistics are broadcast from rank 0 at each
  forward (DDP's default buffer synchronisation), but each rank then updates them from its own batch,
  so before evaluating, deep.run copies rank 0's buffers to every rank (:func:`broadcast_buffers_`).
* attacks and evaluation run on :func:`unwrap` (the plain module): a forward through the DDP wrapper
  that is not followed by a parameter backward would leave DDP waiting for a gradient reduction.
  Evaluation is sharded (:func:`shard_range`) and the per-rank counts are summed (:func:`all_reduce_sum`).
* only rank 0 writes files (:func:`is_main`, :func:`main_only`); every rank reads checkpoints, so a resume
  under torchrun continues from the same state on all ranks.

``deep.run`` uses all of this under torchrun, with ``--batch-size`` as the global batch (each of the W
processes trains on batch/W) and ``--sam-all-reduce-ascent`` for the global ascent.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from samrobust.seeds import mix_seed

__all__ = [
    "DistContext", "torchrun_env", "init_distributed", "teardown", "distributed_session", "exit_process",
    "is_initialized", "get_rank", "get_world_size", "is_main", "main_only", "barrier",
    "epoch_permutation", "shard_indices", "shard_range",
    "all_reduce_mean_", "all_reduce_sum", "broadcast_object", "broadcast_buffers_",
    "wrap_model", "unwrap", "ascent_sync",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among world_size processes, its device and backend.

    ``backend`` is None for a single process (no process group); ``owns_group`` tells
    :func:`teardown` whether this context created the process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def torchrun_env(env=None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, 0) when absent.

    Raises ValueError naming the variable when a value is not an integer or out of range.
    """
    env = os.environ if env is None else env
    world_size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    return rank, world_size, local_rank


def _resolve_device(device, local_rank: int) -> torch.device:
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if device.index is None:  # one GPU per local rank
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def init_distributed(device=None, backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Initialise torch.distributed from torchrun's environment, or return a single-process context.

    device: None/"auto" (CUDA if available, else CPU), "cpu", "cuda" (then cuda:LOCAL_RANK) or a
    torch.device.  backend: default "nccl" on CUDA, "gloo" on CPU.  A process group that already
    exists is reused (and not destroyed by :func:`teardown`).
    """
    rank, world_size, local_rank = torchrun_env()
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        dev = _resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(rank, world_size, local_rank, dev, dist.get_backend(), owns_group=False)
    dev = _resolve_device(device, local_rank)
    if world_size == 1:
        return DistContext(0, 1, 0, dev, None, owns_group=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo", "mpi", "ucc"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world_size, local_rank, dev, backend, owns_group=True)


def teardown(ctx: DistContext | None = None, sync: bool = True) -> None:
    """Destroy the process group if ``ctx`` created it (or, with ctx None, if one exists).

    sync: first wait at a barrier for every rank, so no rank tears down its gloo/NCCL connections
    while a peer is still using them (without it, a rank that finishes early can abort at exit with
    "terminate called without an active exception").  Pass ``sync=False`` on error paths where the
    other ranks may never arrive.  The group is destroyed even if the barrier fails.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ctx is None or ctx.owns_group:
        try:
            if sync and dist.get_world_size() > 1:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_process(code) -> None:
    """End a ``python -m`` entry point with exit status ``code``.

    Under torchrun (WORLD_SIZE > 1) the worker leaves through ``os._exit`` after flushing stdio: once a
    DistributedDataParallel model was built, torch keeps the gloo process group (and its
    ``pt_gloo_runloop`` / ``gloo_tcp_loop`` threads) alive even after ``destroy_process_group``, and
    tearing those threads down during interpreter finalisation intermittently aborts the process
    ("terminate called without an active exception", exit -6) after all results were written.
    Files are written atomically and closed before this point, so nothing is lost by skipping the
    finalisation.  A single process exits normally (``sys.exit``).
    """
    code = 0 if code is None else code
    if torchrun_env()[1] > 1:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)


@contextlib.contextmanager
def distributed_session(device=None, backend: str | None = None):
    """``with distributed_session() as ctx:`` = :func:`init_distributed` ... :func:`teardown`."""
    ctx = init_distributed(device=device, backend=backend)
    ok = False
    try:
        yield ctx
        ok = True
    finally:
        teardown(ctx, sync=ok)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and prints."""
    return get_rank() == 0


def main_only(fn):
    """Decorator: run ``fn`` on rank 0 only; other ranks get None."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def barrier() -> None:
    if is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------- data

def epoch_permutation(n: int, seed: int, epoch: int, device=None) -> torch.Tensor:
    """The global order of the n training examples in ``epoch``: same on every rank, new each epoch.

    A CPU generator seeded by (seed, epoch), so the order does not depend on the device or on the
    number of ranks.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    g = torch.Generator().manual_seed(mix_seed(seed, (epoch, 1), modulus=2 ** 63))
    perm = torch.randperm(n, generator=g)
    return perm if device is None else perm.to(device)


def shard_indices(order: torch.Tensor, rank: int | None = None, world_size: int | None = None,
                  drop_last: bool = False) -> torch.Tensor:
    """This rank's share of a global order of example indices: ``order[rank::world_size]``.

    Equal sizes on every rank: the order is first padded by wrapping around (or, with drop_last,
    truncated) to a multiple of world_size.  Strided sharding keeps global batches intact: with a
    per-rank batch b, the ranks' k-th batches together are ``order[k*W*b:(k+1)*W*b]``.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if world_size == 1:
        return order
    n = order.shape[0]
    if drop_last:
        total = n - n % world_size
        if total == 0:
            raise ValueError(f"drop_last with {n} examples leaves nothing for {world_size} ranks")
        order = order[:total]
    else:
        pad = (-n) % world_size
        if pad:
            reps = -(-pad // n)
            order = torch.cat([order] + [order] * reps)[: n + pad]
    return order[rank::world_size]


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> slice:
    """Contiguous, non-overlapping slice of n evaluation examples for this rank (no padding, so the
    counts summed over ranks are exact; sizes differ by at most one)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


# -------------------------------------------------------------------------------- collectives

def all_reduce_mean_(tensors) -> list:
    """Average a list of tensors over ranks, in place (None entries are skipped).  Returns the list.

    Tensors of one dtype and device are flattened into a single buffer, so there is one all-reduce
    per dtype rather than one per tensor.
    """
    tensors = list(tensors)
    world_size = get_world_size()
    if world_size == 1:
        return tensors
    groups: dict = {}
    for t in tensors:
        if t is not None:
            groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        offset = 0
        for t in ts:
            k = t.numel()
            t.copy_(flat[offset:offset + k].view_as(t))
            offset += k
    return tensors


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor (e.g. correct / total counts kept on the device) over ranks, in place."""
    if get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value of a picklable object, on every rank (e.g. a skip/resume decision)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers_(model: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Copy rank ``src``'s buffers (BatchNorm running mean/var and num_batches_tracked) to every rank, in
    place; returns ``model`` (its plain module, see :func:`unwrap`). DDP broadcasts buffers at the start of
    each forward, but each rank then updates them with its own batch, so after training the ranks hold
    different running statistics: call this before a sharded evaluation, so that every rank evaluates the
    model that rank 0 saves."""
    model = unwrap(model)
    if get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=src)
    return model


# ---------------------------------------------------------------------------------- the model

def wrap_model(model: torch.nn.Module, ctx: DistContext | None = None, **ddp_kwargs) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (already on ctx.device) when running on several ranks;
    the model itself otherwise.  Parameters and buffers are broadcast from rank 0 at construction, buffers
    again at every forward (DDP defaults)."""
    world_size = ctx.world_size if ctx is not None else get_world_size()
    if world_size == 1:
        return model
    device = ctx.device if ctx is not None else next(model.parameters()).device
    if device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [device.index])
        ddp_kwargs.setdefault("output_device", device.index)
    # buffers (BatchNorm running statistics) are broadcast from rank 0 at each forward: DDP's default
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers (for attacks, evaluation, saving)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def ascent_sync(model: torch.nn.Module, all_reduce_ascent: bool = False):
    """Context for SAM's first (ascent) backward.

    Local ascent (default, m-sharpness with m = per-rank batch): ``model.no_sync()`` on a DDP model,
    so the gradient stays each rank's own.  ``all_reduce_ascent=True``: no context, DDP averages the
    ascent gradient like any other (then W ranks match one process with the global batch).  Models
    outside DDP get a null context.
    """
    if isinstance(model, DistributedDataParallel) and not all_reduce_ascent:
        return model.no_sync()
    return contextlib.nullcontext()
