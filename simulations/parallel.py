"""Run a function in a forked child process and collect its value (to use a second CPU core).

The main job uses it to train part of the jobs, and to compute the Monte-Carlo claim S1 (which needs no
training), while the parent trains the rest. Fork keeps everything already imported and built (no
pickling of the arguments); only the result travels back, through a pipe. Where the platform cannot
fork, :func:`can_fork` is False and callers run the function in the parent instead.
"""
from __future__ import annotations

import mmap
import multiprocessing as mp
import traceback
from typing import Any, Callable, Sequence, Tuple

import numpy as np
import torch

__all__ = ["Forked", "can_fork", "EpochFeed"]


def can_fork() -> bool:
    """Whether the ``fork`` start method exists here (Linux; not Windows)."""
    return "fork" in mp.get_all_start_methods()


def _child(send, fn: Callable, args: tuple) -> None:
    try:
        send.send((True, fn(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        send.send((False, traceback.format_exc()))
    finally:
        send.close()


class Forked:
    """``fn(*args)`` running in a forked child; :meth:`result` waits for it and returns its value, or
    raises RuntimeError with the child's traceback (or its exit code if it died without a value)."""

    def __init__(self, fn: Callable, *args: Any):
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
        self._proc.start()
        send.close()

    def result(self) -> Any:
        """The child's return value (waits for it); RuntimeError if the child failed or died."""
        try:
            ok, value = self._recv.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"worker process exited with code {self._proc.exitcode} "
                               f"without a result") from None
        finally:
            self._recv.close()
        self._proc.join()
        if not ok:
            raise RuntimeError(f"worker process failed:\n{value}")
        return value

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self._proc.is_alive()

    def cancel(self) -> None:
        """Stop the child (e.g. when the parent is interrupted) and reap it."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._recv.close()


def _shared_tensor(shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor in anonymous shared memory (MAP_SHARED): a process forked later sees the same bytes."""
    n = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(n, 1))
    return torch.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).view(*shape)


class EpochFeed:
    """One epoch's training data computed once, by the parent, and read by forked children.

    ``data(epoch) -> (X, y)`` is called by the parent only (through :meth:`producer`), in epoch order;
    each epoch goes into one of ``slots`` buffers of shared memory (in ``dtype``), which every child
    reads through :meth:`reader` (a copy, in the same order). The parent runs at most ``slots`` epochs
    ahead of the slowest reader. Create it *before* forking the readers; ``first`` is data(0), which
    gives the shapes. A reader that dies makes the parent raise instead of waiting for ever.
    """

    def __init__(self, data: Callable, first, readers: int, dtype: torch.dtype, slots: int = 4):
        ctx = mp.get_context("fork")
        X, y = first
        self._data, self._first, self._slots, self._readers = data, first, int(slots), int(readers)
        self._X = _shared_tensor((self._slots, *X.shape), dtype)
        self._y = _shared_tensor((self._slots, *y.shape), dtype)
        self._ready = [[ctx.Semaphore(0) for _ in range(self._slots)] for _ in range(self._readers)]
        self._free = [ctx.Semaphore(self._readers) for _ in range(self._slots)]
        self._children: Sequence[Forked] = ()

    def watch(self, children: Sequence["Forked"]) -> None:
        """The reader processes, checked while the parent waits for a free slot."""
        self._children = children

    def _wait_free(self, k: int) -> None:
        for _ in range(self._readers):
            while not self._free[k].acquire(timeout=1.0):
                dead = [c for c in self._children if not c.alive()]
                if dead:
                    dead[0].result()  # raises with the worker's traceback if it failed
                    raise RuntimeError("a worker process stopped before reading its training data")

    def producer(self) -> Callable:
        """The parent's ``data(epoch)``: computes the epoch, publishes it to the readers, returns it."""
        def data(epoch: int):
            if epoch == 0:   # computed before forking; not kept once published
                (X, y), self._first = self._first, None
            else:
                X, y = self._data(epoch)
            k = epoch % self._slots
            self._wait_free(k)
            self._X[k].copy_(X)
            self._y[k].copy_(y)
            for ready in self._ready:
                ready[k].release()
            return X, y
        return data

    def reader(self, r: int) -> Callable:
        """Child ``r``'s ``data(epoch)``: waits for the parent's epoch and returns a copy of it."""
        def data(epoch: int):
            k = epoch % self._slots
            self._ready[r][k].acquire()
            out = self._X[k].clone(), self._y[k].clone()
            self._free[k].release()
            return out
        return data
