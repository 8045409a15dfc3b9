"""Nested training state (optimizer state_dict, RNG states) <-> JSON skeleton + named arrays.

Archives never hold pickles. A nested structure of dicts, lists, tensors, arrays and scalars is
split into a JSON skeleton (kept in attrs) and flat named arrays (kept as Zarr arrays); the
skeleton refers to arrays by name. Dict keys keep their type (optimizer state is keyed by int).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..errors import ValidationError

__all__ = ["flatten_state", "unflatten_state", "tensor_to_numpy", "numpy_to_tensor"]

_TORCH_VIEW = {torch.bfloat16: (torch.int16, "bfloat16")}


def tensor_to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """A detached CPU copy of ``t`` as numpy, and the torch dtype name when numpy lacks it."""
    t = t.detach()
    if t.dtype in _TORCH_VIEW:
        view, name = _TORCH_VIEW[t.dtype]
        return t.view(view).to("cpu", copy=True).numpy(), name
    return t.to("cpu", copy=True).numpy(), None


def numpy_to_tensor(a: np.ndarray, torch_dtype: str | None = None) -> torch.Tensor:
    """Inverse of :func:`tensor_to_numpy`."""
    t = torch.from_numpy(np.asarray(a, order="C"))  # (ascontiguousarray would make 0-d 1-d)
    if torch_dtype is not None:
        t = t.view(getattr(torch, torch_dtype))
    return t


def flatten_state(obj, prefix: str = "s") -> tuple[object, dict[str, np.ndarray]]:
    """Split ``obj`` into a JSON-able skeleton and a dict of named numpy arrays."""
    arrays: dict[str, np.ndarray] = {}

    def walk(o, key):
        if isinstance(o, torch.Tensor):
            a, tdt = tensor_to_numpy(o)
            arrays[key] = a
            return {"__tensor__": key, "torch_dtype": tdt}
        if isinstance(o, np.ndarray):
            arrays[key] = np.array(o, copy=True)
            return {"__ndarray__": key}
        if isinstance(o, dict):
            items = []
            for i, (k, v) in enumerate(o.items()):
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise ValidationError(
                        f"state dict keys must be str or int, got {k!r} of type {type(k).__name__}"
                    )
                items.append([k, walk(v, f"{key}.{i}")])
            return {"__dict__": items}
        if isinstance(o, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(o)]}
        if o is None or isinstance(o, (bool, str)):
            return o
        if isinstance(o, numbers.Integral):
            return int(o)
        if isinstance(o, numbers.Real):
            v = float(o)
            return v if math.isfinite(v) else {"__float__": repr(v)}
        raise ValidationError(
            f"state value at {key!r} has unsupported type {type(o).__name__}: only tensors, "
            "arrays, dicts, lists, numbers, strings and None can be stored (never pickles)"
        )

    return walk(obj, prefix), arrays


def unflatten_state(skeleton, arrays, *, as_tensors: bool = True):
    """Rebuild the structure from :func:`flatten_state`; ``arrays`` maps names to arrays."""

    def walk(o):
        if isinstance(o, dict):
            if "__tensor__" in o:
                a = np.asarray(arrays[o["__tensor__"]])
                return numpy_to_tensor(a, o.get("torch_dtype")) if as_tensors else a
            if "__ndarray__" in o:
                return np.asarray(arrays[o["__ndarray__"]])
            if "__dict__" in o:
                return {k: walk(v) for k, v in o["__dict__"]}
            if "__list__" in o:
                return [walk(v) for v in o["__list__"]]
            if "__float__" in o:
                return float(o["__float__"])
        return o

    return walk(skeleton)
