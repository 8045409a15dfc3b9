"""Weight statistics (no model and no data needed): total parameter L2 norm, and per weight
matrix its Frobenius and spectral norms, stable rank and effective rank."""

from __future__ import annotations

import numpy as np

from ...metrics import weights as w_k
from .base import Family, NotApplicable, Output

__all__ = ["WeightStats"]


class WeightStats(Family):
    """Reads the checkpoints' parameters only: works on every archive, model or not."""

    name = "weights"
    metric = "weights"
    needs = frozenset()
    outputs = {
        "weight_norm": Output((), "total parameter L2 norm", "1"),
        "frobenius_norm": Output(("matrix",), "Frobenius norm", "1"),
        "spectral_norm": Output(("matrix",), "spectral norm", "1"),
        "stable_rank": Output(("matrix",), "stable rank", "1"),
        "effective_rank": Output(("matrix",), "effective rank of the weights", "1"),
    }

    def __init__(self, setup):
        self.matrices = list(setup.matrix_names)
        if not self.matrices and not setup.float_names:
            raise NotApplicable("the checkpoints hold no floating-point parameters")
        self.coords = {"matrix": self.matrices}
        self.params = {}

    def compute(self, block):
        params, finite, m = block.params, block.finite, block.m
        stats = {k: np.full((m, len(self.matrices)), np.nan)
                 for k in ("frobenius_norm", "spectral_norm", "stable_rank", "effective_rank")}
        for j, name in enumerate(self.matrices):
            s = w_k.matrix_stats(params[name], batch_ndim=1)
            for k in stats:
                stats[k][:, j] = s[k]
        floats = [v for v in params.values() if np.issubdtype(v.dtype, np.floating)]
        out = {"weight_norm": np.asarray(w_k.total_l2_norm(floats), dtype=np.float64), **stats}
        return self.nan_rows(out, finite)
