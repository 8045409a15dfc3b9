"""Local complexity (Humayun, Balestriero and Baraniuk 2024): neurons whose zero set cuts a
cross-polytope neighbourhood of train, test and random points, per layer and radius.

Neighbourhoods live in the first continuous representation (the embedding for token inputs,
the input itself otherwise); directions and points are drawn once, from generators of their
own, and reused at every checkpoint.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ...errors import ValidationError
from ...metrics import local_complexity as lc_k
from ..options import SUBSET_CAPS
from .base import Family, NotApplicable, Output

__all__ = ["LocalComplexity"]

_PARTS = {"train": "x_train", "test": "x_test"}


class LocalComplexity(Family):
    """Local complexity per split, radius and layer (``lc``, ``lc_std``, ``lc_total``)."""

    name = "lc"
    metric = "lc"
    needs = frozenset({"model", "data"})
    outputs = {
        "lc": Output(("split", "radius", "lc_layer"), "local complexity", "count"),
        "lc_std": Output(("split", "radius", "lc_layer"), "local complexity spread over points",
                         "count"),
        "lc_total": Output(("split", "radius"), "local complexity, all layers", "count"),
        "lc_total_std": Output(("split", "radius"),
                               "local complexity spread over points, all layers", "count"),
    }

    def __init__(self, setup):
        opts, lm = setup.opts, setup.layer_map
        if lm.input_kind == "tokens" and lm.embedding is None:
            raise NotApplicable(lm.problems.get("embedding", "no embedding"))
        taps = list(lm.preacts)
        explicit = setup.explicit.get("preacts") is not None
        if not taps:
            raise NotApplicable(lm.problems.get("preacts", "the model has no pre-activations"))
        if opts.lc_activations == "piecewise_linear" and not explicit:
            smooth = [t for t in taps if not lm.piecewise_linear.get(t.label, False)]
            taps = [t for t in taps if lm.piecewise_linear.get(t.label, False)]
            if not taps:
                kinds = sorted({lm.kinds.get(t.label, "?") for t in smooth})
                raise NotApplicable(
                    f"the model has no piecewise-linear activations (found {', '.join(kinds)}): "
                    "local complexity counts the boundaries of linear regions, which smooth "
                    "activations do not have; pass lc_activations='any' to count the neurons "
                    "whose pre-activation changes sign anyway")
            if smooth:
                warnings.warn(
                    f"lc: counting the piecewise-linear layers only; left out the smooth "
                    f"{', '.join(t.label for t in smooth)} (lc_activations='any' counts them too)",
                    RuntimeWarning, stacklevel=5)
        self.taps = tuple(taps)
        model = setup.model
        if lm.embedding is not None:
            x_chk = setup.data["x_train"][:8]
            if not all(m.cut_is_complete(m.embed, lambda e, m=m: m.from_embedding(e)[0], x_chk)
                       for m in (model, setup.last_model) if m is not None):
                raise NotApplicable(
                    f"the model's output depends on its raw input other than through the "
                    f"embedding {lm.embedding.label!r}, so a neighbourhood there does not "
                    "determine it")
        width = int(model.embed(setup.data["x_train"][:1]).shape[1])
        self.splits = list(opts.lc_splits)
        self.radii = list(opts.radii)
        self.include_output = opts.include_output
        self.points: dict = {}
        n_pts = {}
        for split in self.splits:
            if split == "random":
                continue
            xs = setup.data[_PARTS[split]]
            k = setup.size("lc_points", SUBSET_CAPS["lc_points"], len(xs), f"{split} examples",
                           minimum=1)
            n_pts[split] = k
            self.points[split] = xs[setup.pick(f"lc-{split}", len(xs), k)]
        n_dir = setup.explicit.get("n_directions")
        if n_dir is None:
            n_dir = min(SUBSET_CAPS["n_directions"], width)
        elif n_dir > width:
            raise ValidationError(
                f"n_directions must be <= the input (embedding) width {width}, got {n_dir}")
        if "random" in self.splits:
            n_rand = setup.explicit.get("lc_points") or SUBSET_CAPS["lc_points"]
            n_pts["random"] = int(n_rand)
            self.points["random"] = setup.rng("lc-random").uniform(size=(n_rand, width))
            self.x_box = setup.probe["x"]  # random points fill the probe set's bounding box
        self.directions = lc_k.cross_polytope_directions(
            width, n_directions=n_dir, seed=opts.seed).numpy()
        self.bounds = None
        if lm.embedding is None and opts.clip:  # vertices stay in the data's value range
            x = setup.data["x_train"]
            self.bounds = (float(np.min(x)), float(np.max(x)))
        labels = [t.label for t in self.taps] + (["output"] if self.include_output else [])
        self.coords = {"lc_layer": labels, "split": self.splits, "radius": self.radii}
        self.params = {
            "radii": self.radii, "splits": self.splits, "n_directions": int(n_dir),
            "points": n_pts, "include_output": self.include_output,
            "clip": None if self.bounds is None else list(self.bounds), "seed": opts.seed,
            "preacts": [t.to_json() for t in self.taps],
            "embedding": None if lm.embedding is None else lm.embedding.to_json(),
        }
        if "random" in self.splits:
            self.params["probe"] = setup.probe["params"]

    def compute(self, block):
        shape = (block.m, len(self.splits), len(self.radii))
        n_layers = len(self.coords["lc_layer"])
        out = {"lc": np.full(shape + (n_layers,), np.nan),
               "lc_std": np.full(shape + (n_layers,), np.nan),
               "lc_total": np.full(shape, np.nan), "lc_total_std": np.full(shape, np.nan)}
        if block.batched is not None:
            with torch.no_grad():
                self._all(block.batched, out)
            return self.nan_rows(out, block.finite)
        model = block.model
        for i in block.each():
            if not block.finite[i]:
                continue
            with torch.no_grad():
                self._one(model, out, i)
        return out

    def _all(self, bm, out) -> None:
        """Every checkpoint of the block in one batched kernel call per split and radius."""
        cm = bm.cm
        dtype, dev = cm.dtype, cm.device
        directions = torch.from_numpy(self.directions).to(dev, dtype)
        lower = upper = None
        if self.bounds is not None:
            lower, upper = self.bounds
        fn = bm.preact_fn(self.taps, logits=self.include_output)
        for si, split in enumerate(self.splits):
            if split == "random":
                e = bm.embed(self.x_box)  # (m, N, D): each checkpoint's own bounding box
                lo, hi = e.amin(1, keepdim=True), e.amax(1, keepdim=True)
                u = torch.from_numpy(self.points["random"]).to(dev, dtype)
                points = lo + u * (hi - lo)
            else:
                points = bm.embed(self.points[split])
            for ri, r in enumerate(self.radii):
                counts = lc_k.local_complexity(
                    points, fn, directions=directions, radius=r, lower=lower, upper=upper,
                    include_output=self.include_output).double()  # (m, N, L)
                total = counts.sum(2)
                out["lc"][:, si, ri] = counts.mean(1).cpu().numpy()
                out["lc_std"][:, si, ri] = counts.std(1).cpu().numpy()
                out["lc_total"][:, si, ri] = total.mean(1).cpu().numpy()
                out["lc_total_std"][:, si, ri] = total.std(1).cpu().numpy()

    def _one(self, model, out, i) -> None:
        dtype, dev = model.dtype, model.device
        directions = torch.from_numpy(self.directions).to(dev, dtype)
        lower = upper = None
        if self.bounds is not None:
            lower, upper = self.bounds
        fn = model.preact_fn(self.taps, logits=self.include_output)
        for si, split in enumerate(self.splits):
            if split == "random":
                e = model.embed(self.x_box)
                lo, hi = e.amin(0), e.amax(0)
                points = lo + torch.from_numpy(self.points["random"]).to(dev, dtype) * (hi - lo)
            else:
                points = model.embed(self.points[split])
            for ri, r in enumerate(self.radii):
                counts = lc_k.local_complexity(
                    points, fn, directions=directions, radius=r, lower=lower, upper=upper,
                    include_output=self.include_output).double()
                total = counts.sum(1)
                out["lc"][i, si, ri] = counts.mean(0).cpu().numpy()
                out["lc_std"][i, si, ri] = counts.std(0).cpu().numpy()
                out["lc_total"][i, si, ri] = total.mean().item()
                out["lc_total_std"][i, si, ri] = total.std().item()
