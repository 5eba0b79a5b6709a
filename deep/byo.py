"""Bring your own model: ``deep.run --archs module:callable`` (or ``path/to/file.py:callable``).

The callable is called as ``callable(num_classes=K, in_channels=C)`` and must return a ``torch.nn.Module``
that takes images in [0, 1] of shape (N, C, H, W) and returns logits (N, K): like the built-in models
(deep/archs.py) it does any input normalisation itself, so that attacks work in pixel space. ``--width``
does not apply to it. The name ``module:callable`` is stored as the run's ``arch`` and prefixes its run id
(``mypkg.nets-small_sam_rho0.1_s0``).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from torch import nn

__all__ = ["ArchError", "is_custom_arch", "load_builder", "build_custom", "check_custom_arch", "arch_tag"]


class ArchError(ValueError):
    """A ``module:callable`` architecture that cannot be imported, called, or returns no nn.Module."""


def is_custom_arch(name: str) -> bool:
    """Whether ``name`` names a user model (``module:callable``) rather than a built-in architecture."""
    return ":" in str(name)


def arch_tag(name: str) -> str:
    """``name`` as a file-name part: ``mypkg.nets:small`` -> ``mypkg.nets-small`` (path separators and
    colons replaced)."""
    return str(name).replace(":", "-").replace("/", "-").replace("\\", "-")


def _import(target: str):
    """The module ``target`` (dotted name, or a ``.py`` file path); the current folder is importable."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ArchError(f"no such file {target}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())        # console scripts do not put the current folder on the path
    return importlib.import_module(target)


def load_builder(name: str) -> Callable[..., nn.Module]:
    """The callable named by ``module:callable`` (the attribute may be dotted: ``module:Class.method``);
    ArchError with a one-line reason otherwise."""
    target, _, attr = str(name).partition(":")
    if not target or not attr:
        raise ArchError(f"architecture {name!r} must look like module:callable")
    try:
        obj = _import(target)
    except ArchError:
        raise
    except Exception as err:  # noqa: BLE001 - any import failure is reported in one line
        raise ArchError(f"cannot import {target!r} for --archs {name}: {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ArchError(f"{target!r} has no attribute {attr!r} (--archs {name})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ArchError(f"{name} is not callable")
    return obj


def build_custom(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``callable(num_classes=..., in_channels=...)`` of ``module:callable``; ArchError when the call
    fails or returns something that is not an nn.Module."""
    builder = load_builder(name)
    try:
        model = builder(num_classes=num_classes, in_channels=in_channels)
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise ArchError(f"{name}(num_classes={num_classes}, in_channels={in_channels}) failed: "
                        f"{type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ArchError(f"{name}(num_classes=..., in_channels=...) returned {type(model).__name__}, "
                        f"not a torch.nn.Module")
    return model


def check_custom_arch(name: str, num_classes: int, in_channels: int) -> None:
    """Build the model once (ArchError when that fails): deep.run checks every ``module:callable`` before
    the first run starts."""
    build_custom(name, num_classes, in_channels)
