"""Faster forward passes, with the same results bit for bit, for standard torch modules.

The analysis runs a model's forward pass on many rows (every probe input, every LC vertex,
every LMN path point) and for a block of checkpoints at once. Some torch CPU kernels are far
from the machine's speed at these shapes: ``max_pool2d`` on contiguous ``(N, C, H, W)``
inputs ran at 0.17 G values/s (a 2x2 pool of (969, 16, 8, 8): 5.7 ms), where the maximum of
its strided slices takes 0.5 ms. A maximum is exact, so the slices give the same values,
NaN included (both propagate it).

:func:`use_fast_forwards` gives the analysis's own copy of a model (never the caller's
object, never the class) these forwards; a module whose settings the fast form does not
cover keeps its own.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn

__all__ = ["use_fast_forwards"]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _tiling_max_pool(mod: nn.Module) -> tuple[int, int] | None:
    """``(kh, kw)`` when ``mod`` is a plain ``nn.MaxPool2d`` whose windows tile the input
    (stride = kernel, no padding or dilation, no indices), else None."""
    if type(mod) is not nn.MaxPool2d or mod.return_indices:
        return None
    k = _pair(mod.kernel_size)
    s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
    if k != s or _pair(mod.padding) != (0, 0) or _pair(mod.dilation) != (1, 1):
        return None
    return k


def _strided_max_pool(self: nn.MaxPool2d, x: Tensor) -> Tensor:
    kh, kw = self._ckptlab_window
    if x.ndim not in (3, 4):
        return type(self).forward(self, x)  # its own kernel: its result or its error
    h, w = x.shape[-2:]
    if h < kh or w < kw or (self.ceil_mode and (h % kh or w % kw)):
        return type(self).forward(self, x)
    ho, wo = h // kh, w // kw
    x = x[..., : ho * kh, : wo * kw]  # floor mode drops the rows and columns left over
    rows = x[..., 0::kh, :]
    for i in range(1, kh):
        rows = torch.maximum(rows, x[..., i::kh, :])
    out = rows[..., 0::kw]
    for j in range(1, kw):
        out = torch.maximum(out, rows[..., j::kw])
    return out


def use_fast_forwards(module: nn.Module) -> int:
    """Give ``module``'s standard submodules forwards that compute the same values faster.

    Replaced: ``nn.MaxPool2d`` (the class itself, not a subclass) with non-overlapping windows
    (stride equal to the kernel, no padding or dilation, no indices), by the elementwise
    maximum of its strided slices. An input the fast form does not cover (not 3-D or 4-D,
    smaller than a window, ``ceil_mode`` with a partial window) goes to the module's own
    forward. Hooks still run: only the instance's ``forward`` changes.

    Parameters
    ----------
    module : torch.nn.Module
        Changed in place: pass a copy that nobody else uses.

    Returns
    -------
    int
        The number of submodules whose forward was replaced.
    """
    n = 0
    for mod in module.modules():
        window = _tiling_max_pool(mod)
        if window is None or "forward" in vars(mod):
            continue
        mod._ckptlab_window = window
        mod.forward = types.MethodType(_strided_max_pool, mod)
        n += 1
    return n
