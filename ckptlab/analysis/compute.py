"""Per-block computation: what one Dask task runs, for any family and any model.

:func:`compute_block` receives the archive *path* (never the parameters: the worker reads its
block of checkpoints itself) and a :class:`Plan` holding the small fixed inputs shared by all
blocks (the model source, its taps, the families with their fixed subsets), builds a
:class:`Block` and lets each requested family compute its variables. It has no side effects.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..store import Run
from .batched_mlp import batched_model
from .capture import BatchedModel, CapturedModel, LayerMap, ModelSource
from .memory import release_free_heap

__all__ = ["Plan", "Block", "compute_block"]


@dataclass
class Plan:
    """Fixed inputs shared by every block of one analysis (small; shipped to workers)."""

    path: str
    families: dict  # name -> Family (its fixed inputs inside)
    source: ModelSource | None = None
    layer_map: LayerMap | None = None
    x_ref: np.ndarray | None = None  # one raw input row (see CapturedModel)
    x_probe: np.ndarray | None = None  # probe inputs for the hidden representations
    y_probe: np.ndarray | None = None
    position: int | None = None
    threads: int = 1
    device: str = "cpu"
    batched: bool = True  # evaluate a block's checkpoints together (vmap); False: one by one
    narrow: bool = False  # substituted passes run the modules before the cut on one row
    extra: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _open(path: str, n_hint: int) -> Run:
    # one Run per worker process and archive state; n_hint keys it to the archive's length
    return Run(path)


class Block:
    """Checkpoints ``[start, stop)`` as the families see them.

    Attributes
    ----------
    m : int
        Number of checkpoints.
    params : dict of ndarray
        ``name -> (m, ...)`` parameters as stored.
    finite : ndarray of bool
        ``(m,)``: the checkpoint's parameters are all finite.
    y_probe : ndarray
        Labels of the probe set.
    """

    def __init__(self, plan: Plan, params: dict):
        self.plan = plan
        self.params = params
        names = list(params)
        self.m = len(next(iter(params.values()))) if params else 0
        self._states = [{k: torch.from_numpy(np.ascontiguousarray(params[k][i])) for k in names}
                        for i in range(self.m)]
        self.finite = np.ones(self.m, dtype=bool)
        for v in params.values():  # one pass per parameter over the block, not per checkpoint
            if np.issubdtype(v.dtype, np.floating) and v.size:
                self.finite &= np.isfinite(v.reshape(self.m, -1)).all(1)
        self.y_probe = plan.y_probe
        self._model = None
        self._hidden = None
        self._reps = None
        self._batched = None

    @property
    def model(self) -> CapturedModel:
        """The model (built once per block) with whichever checkpoint :meth:`each` loaded."""
        if self._model is None:
            plan = self.plan
            module = plan.source.build().to(torch.device(plan.device))
            self._model = CapturedModel(module, plan.layer_map, plan.x_ref,
                                        position=plan.position, narrow=plan.narrow)
        return self._model

    def each(self):
        """Yield ``i`` for every checkpoint, with checkpoint ``i`` loaded into :attr:`model`."""
        dev = torch.device(self.plan.device)
        for i, sd in enumerate(self._states):
            self.model.load({k: v.to(dev) for k, v in sd.items()})
            yield i

    @property
    def batched(self) -> BatchedModel | None:
        """Every checkpoint of the block at once (None when the plan evaluates one by one)."""
        if not self.plan.batched or self.m == 0:
            return None
        if self._batched is None:
            dev = torch.device(self.plan.device)
            self.model.load({k: v.to(dev) for k, v in self._states[0].items()})  # dtype, device
            stacked = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev)
                       for k, v in self.params.items()}
            self._batched = batched_model(self.model, stacked)
        return self._batched

    @property
    def reps(self) -> dict:
        """``label -> (m, N, d)`` hidden representations of the probe set, as computed (the
        model's dtype and device)."""
        if self._reps is None:
            taps = self.plan.layer_map.layers
            with torch.no_grad():
                if self.batched is not None:
                    self._reps = self.batched.representations(self.plan.x_probe, taps)
                else:
                    parts = {t.label: [] for t in taps}
                    for _ in self.each():
                        for k, v in self.model.representations(self.plan.x_probe,
                                                               taps).items():
                            parts[k].append(v)
                    self._reps = {k: torch.stack(v) for k, v in parts.items()}
        return self._reps

    @property
    def hidden(self) -> dict:
        """``label -> (m, N, d)`` hidden representations of the probe set, as numpy arrays in
        the dtype they were computed in (float16 and bfloat16 as float32).

        Not widened to float64 here: every MI and rank kernel widens what it reads (exact),
        and the KDE a subset only. A float64 copy of the block was the largest buffer of
        its MI pass (50 MB for 1024 probes through the digits MLP) and 1 ms per checkpoint.
        """
        if self._hidden is None:
            reps, self._reps = self.reps, None  # one copy held at a time
            self._hidden = {k: (v if v.dtype in (torch.float32, torch.float64) else v.float())
                            .cpu().numpy() for k, v in reps.items()}
        return self._hidden


def compute_block(plan: Plan, start: int, stop: int, families: tuple, n_hint: int = 0) -> dict:
    """Results of ``families`` for checkpoints [start, stop) of the archive ``plan.path``.

    Returns ``{"finite": bool (m,), family: {var: ndarray (m, ...)}}``. A checkpoint whose
    parameters hold NaN or Inf yields NaN for every measure (the orchestrator warns).
    """
    torch.set_num_threads(plan.threads)
    run = _open(plan.path, n_hint)
    block = Block(plan, run.params(start, stop))
    out: dict = {"finite": block.finite}
    for name in families:
        with warnings.catch_warnings():
            # NaN checkpoints: the kernels' own warnings would repeat the orchestrator's one
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = plan.families[name].compute(block)
    del block
    release_free_heap()  # bounds what the heap holds from block to block
    return out
