"""torch.compile of a field, with the eager module wherever compilation is not available."""

from __future__ import annotations

import torch
from torch import nn


def compile_or_eager(module: nn.Module):
    """torch.compile(module) (dynamic batch sizes); the eager module when compilation is not
    available here (no C++ compiler, unsupported platform): one warning, same results."""
    import warnings

    try:
        compiled = torch.compile(module, dynamic=True)
    except Exception as err:  # noqa: BLE001 - any backend failure falls back to eager
        warnings.warn(
            f"torch.compile unavailable ({err}); running the field eagerly.", stacklevel=2
        )
        return module

    def call(*args):
        nonlocal compiled
        if compiled is module:
            return module(*args)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {err}); running the field eagerly.",
                stacklevel=2,
            )
            compiled = module
            return module(*args)

    return call
