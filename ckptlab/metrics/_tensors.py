"""Input conversion shared by the kernels: array-likes to tensors, with one error wording."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ValidationError

__all__ = ["as_tensor"]


def as_tensor(value, message: str) -> torch.Tensor:
    """``value`` as a tensor (tensors pass through); ``message`` is the error if it cannot be."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValidationError(message) from exc
