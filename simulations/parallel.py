"""Run a function in a forked child process and collect its value (to use a second CPU core).

The main job uses it to train part of the jobs, and to compute the Monte-Carlo claim S1 (which needs no
training), while the parent trains the rest. Fork keeps everything already imported and built (no
pickling of the arguments); only the result travels back, through a pipe. Where the platform cannot
fork, :func:`can_fork` is False and callers run the function in the parent instead.
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from typing import Any, Callable

__all__ = ["Forked", "can_fork"]


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

    def cancel(self) -> None:
        """Stop the child (e.g. when the parent is interrupted) and reap it."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._recv.close()
