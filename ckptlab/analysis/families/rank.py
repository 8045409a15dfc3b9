"""Effective rank of each hidden layer's representation over the probe set."""

from __future__ import annotations

import numpy as np

from ...metrics import weights as w_k
from .base import Family, NotApplicable, Output

__all__ = ["RepresentationRank"]


class RepresentationRank(Family):
    """``rep_effective_rank`` per layer (Roy and Vetterli's effective rank, centred)."""

    name = "rank"
    metric = "rank"
    needs = frozenset({"model", "data", "hidden"})
    outputs = {"rep_effective_rank": Output(("layer",), "effective rank of the representation",
                                            "1")}

    def __init__(self, setup):
        lm = setup.layer_map
        if not lm.layers:
            raise NotApplicable(lm.problems.get("layers", "the model has no hidden layers"))
        self.layers = lm.layer_names
        self.coords = {"layer": self.layers}
        self.params = {"probe": setup.probe["params"], "layers": lm.describe()["layers"]}

    def compute(self, block):
        hid = block.hidden
        out = {"rep_effective_rank": np.array(
            [[w_k.representation_effective_rank(hid[k][i]) for k in self.layers]
             for i in range(block.m)], dtype=np.float64).reshape(block.m, len(self.layers))}
        return self.nan_rows(out, block.finite)
