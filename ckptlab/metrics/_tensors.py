"""Shared by the kernels: array-likes to tensors (one error wording), the chunk budget."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import ValidationError

__all__ = ["as_tensor", "CHUNK_ELEMENTS"]

#: Values one chunked call aims at by default: 2^20 float32 values are 4 MiB, about what stays
#: in a core's caches; larger calls measured 2-2.5x slower on the digits MLP and a small CNN
#: (the bias adds, ReLUs and min/max run from memory).
CHUNK_ELEMENTS = 2**20


def as_tensor(value, message: Callable[[], str]) -> torch.Tensor:
    """``value`` as a tensor (tensors pass through); ``message()`` is the error if it cannot be.

    The message is built only on failure: a repr of a large array costs milliseconds, and the
    kernels run once per checkpoint block.
    """
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValidationError(message()) from exc
