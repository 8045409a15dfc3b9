"""Mutual information between each hidden layer and the input / the labels: the sources'
four estimators (fixed binning, adaptive binning, KDE bounds, matrix Renyi), each a family.

All four read the probe set's hidden representations (computed once per block for every
family that needs them) and write ``mi_xt`` / ``mi_ty`` with an ``estimator`` coordinate.
"""

from __future__ import annotations

import numpy as np

from ...errors import ValidationError
from ...metrics import mi as mi_k
from ..options import SUBSET_CAPS
from .base import Family, NotApplicable, Output

__all__ = ["MIBinning", "MIAdaptive", "MIKDE", "MIRenyi", "ActivationRange", "mi_outputs",
           "add_saturation", "SATURATION_FRACTION"]

#: A value within this fraction of its ceiling of the ceiling itself, or of 0, is saturated.
SATURATION_FRACTION = 0.01


def mi_outputs(label: str, suffix: str = "") -> dict:
    """``mi_xt`` and ``mi_ty`` entries of estimator ``label`` (cache names with ``suffix``)."""
    return {
        f"mi_xt{suffix}": Output(("layer",), "I(X;T)", "bits", var="mi_xt", label=label),
        f"mi_ty{suffix}": Output(("layer",), "I(T;Y)", "bits", var="mi_ty", label=label),
    }


def _col(values, m) -> np.ndarray:
    """Per-layer kernel outputs (each a scalar or an (m,) array) -> (m, n_layers)."""
    return np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)) for v in values], 1)


def ceilings(y: np.ndarray) -> dict:
    """What MI estimates on these samples can reach: log2 N for I(X;T) (every input its own
    value), the labels' entropy H(Y) for I(T;Y); both in bits."""
    _, counts = np.unique(np.asarray(y), return_counts=True)
    p = counts / counts.sum()
    return {"xt": float(np.log2(len(y))), "ty": float(-(p * np.log2(p)).sum())}


class _MIFamily(Family):
    metric = "mi"
    needs = frozenset({"model", "data", "hidden"})

    def __init__(self, setup):
        lm = setup.layer_map
        if not lm.layers:
            raise NotApplicable(lm.problems.get("layers", "the model has no hidden layers"))
        self.layers = lm.layer_names
        self.coords = {"layer": self.layers}
        self.params = {"probe": setup.probe["params"], "layers": lm.describe()["layers"]}
        if setup.probe["y"] is not None:
            self.params["ceiling"] = ceilings(setup.probe["y"])

    def subset_ceiling(self, y: np.ndarray) -> None:
        """The estimator works on a subset: its ceilings are those of the subset."""
        self.params["ceiling"] = ceilings(y)

    @classmethod
    def constants(cls, params: dict) -> dict:
        """``mi_xt_ceiling`` / ``mi_ty_ceiling`` per estimator label of this family."""
        ceil = params.get("ceiling")
        out = {}
        for o in cls.outputs.values():
            if not ceil or o.label is None or not (o.var or "").startswith("mi_"):
                continue
            which = "xt" if o.var.startswith("mi_xt") else "ty"
            what = "log2 N" if which == "xt" else "H(Y)"
            out[(f"{o.var}_ceiling", o.label)] = (
                ceil[which], f"ceiling of {o.long_name} ({what})", "bits", o.stack_dim)
        return out


class MIBinning(_MIFamily):
    """Fixed equal-width bins (Shwartz-Ziv and Tishby 2017).

    Bounded layers (tanh) use their own interval; unbounded ones the min and max over *all
    checkpoints* of the run (a pre-pass, :class:`ActivationRange`), so a bin means the same at
    every step. The range is part of the cache key: new checkpoints that widen it recompute.
    """

    name = "mi-binning"
    estimator = "binning"
    note = "plug-in entropy of rows of equal-width bin codes"
    outputs = mi_outputs("binning")

    def __init__(self, setup):
        super().__init__(setup)
        self.n_bins = setup.opts.n_bins
        self.rule = setup.opts.binning_range
        self.bounds = dict(setup.layer_map.bounds)
        self.params["n_bins"] = self.n_bins
        self.ranges: dict = {}

    def prepare(self, runner) -> None:
        if not isinstance(self.rule, str):
            self.ranges = {k: tuple(self.rule) for k in self.layers}
        else:
            self.ranges = {k: self.bounds.get(k) for k in self.layers}
            if any(v is None for v in self.ranges.values()):
                lo, hi = runner.activation_range()
                for j, k in enumerate(self.layers):
                    if self.ranges[k] is None:
                        a, b = float(lo[j]), float(hi[j])
                        if not (np.isfinite(a) and np.isfinite(b)):
                            a, b = -1.0, 1.0
                        self.ranges[k] = (a, b) if b > a else (a, a + 1.0)
        self.ranges = {k: tuple(map(float, v)) for k, v in self.ranges.items()}
        self.params["range"] = {k: list(v) for k, v in self.ranges.items()}
        self.params["range_rule"] = self.rule if isinstance(self.rule, str) else "fixed"

    def compute(self, block):
        hid, y, m = block.hidden, block.y_probe, block.m
        xt, ty = zip(*(mi_k.mi_binning(hid[k], y, n_bins=self.n_bins, lo=self.ranges[k][0],
                                       hi=self.ranges[k][1]) for k in self.layers))
        return self.nan_rows({"mi_xt": _col(xt, m), "mi_ty": _col(ty, m)}, block.finite)


class MIAdaptive(_MIFamily):
    """Equal-mass bins per layer and checkpoint (Chelombiev, Houghton and O'Donnell 2019)."""

    name = "mi-adaptive"
    estimator = "adaptive"
    note = "plug-in entropy of rows of equal-mass bin codes"
    outputs = mi_outputs("adaptive")

    def __init__(self, setup):
        super().__init__(setup)
        self.n_bins = setup.opts.n_bins
        self.params["n_bins"] = self.n_bins

    def compute(self, block):
        hid, y, m = block.hidden, block.y_probe, block.m
        xt, ty = zip(*(mi_k.mi_adaptive(hid[k], y, n_bins=self.n_bins) for k in self.layers))
        return self.nan_rows({"mi_xt": _col(xt, m), "mi_ty": _col(ty, m)}, block.finite)


class MIKDE(_MIFamily):
    """Kolchinsky-Tracey upper and lower bounds with noise variance ``sigma2`` (Saxe et al.)."""

    name = "mi-kde"
    estimator = "kde"
    note = "Kolchinsky-Tracey bounds (upper: KL, lower: Bhattacharyya) with noise variance sigma2"
    outputs = {**mi_outputs("kde_upper", "_upper"), **mi_outputs("kde_lower", "_lower")}

    def __init__(self, setup):
        super().__init__(setup)
        n_probe = len(setup.probe["y"])
        n = setup.size("kde_samples", SUBSET_CAPS["kde_samples"], n_probe, "probe examples")
        self.idx = setup.pick("kde", n_probe, n)
        self.subset_ceiling(setup.probe["y"][self.idx])
        self.sigma2 = setup.opts.sigma2
        self.params.update(sigma2=self.sigma2, n=int(n))

    def compute(self, block):
        hid, m = block.hidden, block.m
        y = block.y_probe[self.idx]
        # both bounds from one distance computation per layer
        per_layer = [mi_k.mi_kde_bounds(hid[k][:, self.idx], y, sigma2=self.sigma2)
                     for k in self.layers]
        names = ("mi_xt_upper", "mi_ty_upper", "mi_xt_lower", "mi_ty_lower")
        out = {v: _col([r[j] for r in per_layer], m) for j, v in enumerate(names)}
        return self.nan_rows(out, block.finite)


def _onehot_tokens(x: np.ndarray, vocab: int) -> np.ndarray:
    n, t = x.shape
    out = np.zeros((n, t * vocab), np.float64)
    out[np.arange(n)[:, None], np.arange(t) * vocab + x] = 1.0
    return out


def input_features(setup, x: np.ndarray) -> np.ndarray:
    """The probe inputs as float features: one-hot token ids, or the flattened inputs.

    The one-hot width is the largest id in the run's data plus one, per token position.
    """
    if setup.layer_map.input_kind == "tokens":
        ids = [np.asarray(setup.data[k]) for k in ("x_train", "x_test") if k in setup.data]
        vocab = int(max(int(a.max()) for a in ids)) + 1
        if x.ndim != 2:
            raise ValidationError(
                f"renyi: token inputs must be (N, n_tokens) ids, got shape {x.shape}")
        return _onehot_tokens(x.astype(np.int64), vocab)
    return x.reshape(len(x), -1).astype(np.float64)


def renyi_ceilings(x_features: np.ndarray, y: np.ndarray, alpha: float, width: float) -> dict:
    """Ceilings of the matrix Renyi estimators: I(X;T) <= S_alpha(A_X) (reached when T tells
    every input apart), I(T;Y) <= S_alpha(A_Y), the Renyi entropy of the class frequencies."""
    import torch

    gram = mi_k._gram(torch.from_numpy(np.ascontiguousarray(x_features[None], np.float64)), width)[0]
    _, counts = np.unique(np.asarray(y), return_counts=True)
    p = counts / counts.sum()
    return {"xt": float(mi_k.renyi_entropy(gram.numpy(), alpha=alpha)),
            "ty": float(np.log2(np.sum(p ** alpha)) / (1.0 - alpha))}


class MIRenyi(_MIFamily):
    """Matrix-based Renyi alpha-entropy (Giraldo, Rao and Principe; Yu et al.).

    I(X;T) needs X itself: token inputs enter one-hot encoded, other inputs flattened.
    """

    name = "mi-renyi"
    derived = ("ceiling",)  # S_alpha(A_X) from an eigensolver: not part of the key
    estimator = "renyi"
    note = "matrix-based Renyi alpha-entropy, Silverman-type kernel width gamma N^(-1/(4+d))"
    outputs = mi_outputs("renyi")

    def __init__(self, setup):
        super().__init__(setup)
        n_probe = len(setup.probe["y"])
        n = setup.size("renyi_samples", SUBSET_CAPS["renyi_samples"], n_probe, "probe examples")
        self.idx = setup.pick("renyi", n_probe, n)
        self.subset_ceiling(setup.probe["y"][self.idx])
        self.x = input_features(setup, setup.probe["x"][self.idx])
        self.alpha, self.gamma = setup.opts.alpha, setup.opts.gamma
        self.params.update(alpha=self.alpha, gamma=self.gamma, n=int(n))
        width = self.gamma * n ** (-1.0 / (4 + self.x.shape[1]))
        self.params["ceiling"] = renyi_ceilings(self.x, setup.probe["y"][self.idx], self.alpha,
                                                width)

    def compute(self, block):
        hid, m, idx = block.hidden, block.m, self.idx
        y = block.y_probe[idx]
        xt, ty = zip(*(mi_k.mi_renyi(self.x, hid[k][:, idx], y, alpha=self.alpha,
                                     gamma=self.gamma) for k in self.layers))
        return self.nan_rows({"mi_xt": _col(xt, m), "mi_ty": _col(ty, m)}, block.finite)


class ActivationRange(_MIFamily):
    """Min and max of each layer over the probe set (the pre-pass of :class:`MIBinning`)."""

    name = "range"
    metric = "_internal"
    outputs = {"act_min": Output(("layer",), "layer minimum", "1"),
               "act_max": Output(("layer",), "layer maximum", "1")}

    def compute(self, block):
        import torch

        # on the representations as computed (no float64 copy): min and max are exact in
        # any dtype; non-finite values are left out, an all-non-finite checkpoint gives NaN
        lo, hi = [], []
        for k in self.layers:
            a = block.reps[k].reshape(block.m, -1)
            mn, mx = a.amin(1), a.amax(1)
            if bool(torch.isfinite(mn).all() and torch.isfinite(mx).all()):
                lo.append(mn.double().cpu().numpy())
                hi.append(mx.double().cpu().numpy())
                continue
            fin = torch.isfinite(a)
            inf = torch.tensor(float("inf"), dtype=a.dtype, device=a.device)
            mn = torch.where(fin, a, inf).amin(1).double()
            mx = torch.where(fin, a, -inf).amax(1).double()
            none = ~fin.any(1)
            lo.append(torch.where(none, float("nan"), mn).cpu().numpy())
            hi.append(torch.where(none, float("nan"), mx).cpu().numpy())
        return {"act_min": np.stack(lo, 1), "act_max": np.stack(hi, 1)}


def add_saturation(ds):
    """``<var>_saturated``: per curve, the fraction of checkpoints at the estimator's ceiling
    or at 0 (within :data:`SATURATION_FRACTION` of the ceiling), for every MI variable with a
    ``<var>_ceiling``. A curve that sits there is not a measurement of the layer."""
    import xarray as xr

    for var in [v for v in ds.data_vars if f"{v}_ceiling" in ds]:
        ceil = ds[f"{var}_ceiling"]
        eps = SATURATION_FRACTION * ceil
        v = ds[var]
        at = (v >= ceil - eps) | (v <= eps)
        frac = at.where(v.notnull()).mean("step")
        ds[f"{var}_saturated"] = xr.Variable(frac.dims, frac.data, attrs={
            "long_name": f"fraction of checkpoints where {v.attrs.get('long_name', var)} is "
                         "saturated (at its ceiling or at 0)",
            "units": "1",
            "rule": f"within {SATURATION_FRACTION:g} x ceiling of the ceiling or of 0",
        })
    return ds
