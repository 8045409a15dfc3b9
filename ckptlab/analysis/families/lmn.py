"""Linear mapping number (Liu, Zhong and Tegmark 2023) between the representation at the cut
(``lmn_from``: the embedding for token inputs, the first hidden layer otherwise) and the logits,
on a fixed subset of training inputs."""

from __future__ import annotations

import numpy as np
import torch

from ...metrics import lmn as lmn_k
from ..options import SUBSET_CAPS
from .base import Family, NotApplicable, Output

__all__ = ["LinearMappingNumber"]


class LinearMappingNumber(Family):
    """``lmn``: 2 ** (entropy of the normalised spectrum of the pairwise linearity matrix)."""

    name = "lmn"
    metric = "lmn"
    needs = frozenset({"model", "data"})
    outputs = {"lmn": Output((), "linear mapping number", "1")}

    def __init__(self, setup):
        lm = setup.layer_map
        cut = lm.lmn_from if lm.lmn_from is not None else lm.embedding
        if cut is None and lm.input_kind == "tokens":
            raise NotApplicable(lm.problems.get("lmn_from", "no representation to cut at"))
        if cut is None and "lmn_from" in lm.problems:
            raise NotApplicable(lm.problems["lmn_from"])
        x_train = setup.data["x_train"]
        n = setup.size("lmn_samples", SUBSET_CAPS["lmn_samples"], len(x_train),
                       "training examples")
        self.x = x_train[setup.pick("lmn", len(x_train), n)]
        self.constant_rule = setup.opts.constant_rule
        for model in (m for m in (setup.model, setup.last_model) if m is not None):
            to_h, head = model.lmn_split()
            if not model.cut_is_complete(to_h, head, x_train[:8]):
                where = "the input" if cut is None else repr(cut.label)
                raise NotApplicable(
                    f"the logits depend on the input other than through {where} (a residual "
                    "connection or another path bypasses it), so f: h -> logits is not a "
                    "function of h there; pass lmn_from= naming a module every path goes "
                    "through")
        self.cut = self._affine_cut(setup, cut, x_train[:8])
        # cache-sized calls: about CHUNK_ELEMENTS values in the widest layer's output
        widest = max(setup.model.widest_output(x_train[:2]), 1) if setup.model else 1
        self.chunk_rows = max(21, lmn_k.CHUNK_ELEMENTS // widest)
        self.coords = {}
        self.params = {"n": int(n), "constant_rule": self.constant_rule,
                       "seed": setup.opts.seed, "n_interp": 21,
                       "lmn_from": None if cut is None else cut.to_json()}

    @staticmethod
    def _affine_cut(setup, cut, x):
        """The ``nn.Linear`` output right after the cut, where one takes the cut's output and
        nothing else does: the same matrix (paths map through an affine layer onto paths), one
        matmul fewer on every path point. None keeps the cut."""
        models = [m for m in (setup.model, setup.last_model) if m is not None]
        if cut is None or cut == setup.layer_map.embedding or not models:
            return None
        found = {m.affine_successor(cut, x) for m in models}
        nxt = found.pop() if len(found) == 1 else None
        if nxt is None or not all(m.cut_is_complete(*m.lmn_split(nxt), x) for m in models):
            return None
        return nxt

    def compute(self, block):
        vals = np.full(block.m, np.nan)
        if block.batched is not None:
            # the kernel hands head fresh path points it may overwrite
            to_h, head = block.batched.lmn_split(self.cut, scratch=True)
            with torch.no_grad():
                vals = np.asarray(lmn_k.linear_mapping_number(
                    to_h(self.x), head, constant_rule=self.constant_rule,
                    chunk_rows=self.chunk_rows), dtype=np.float64)
            vals[~block.finite] = np.nan
            return {"lmn": vals}
        for i in block.each():
            if not block.finite[i]:
                continue
            to_h, head = block.model.lmn_split(self.cut)
            with torch.no_grad():
                vals[i] = float(lmn_k.linear_mapping_number(
                    to_h(self.x), head, constant_rule=self.constant_rule,
                    chunk_rows=self.chunk_rows))
        return {"lmn": vals}
