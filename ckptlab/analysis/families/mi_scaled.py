"""Mutual information at a resolution tied to the layer (metrics spec, section 1e).

On a wide layer the sources' estimators sit at their ceiling log2 N at every checkpoint:
distinct inputs stay far apart at any fixed scale. These families set the resolution relative
to the layer's own spread, so a global rescaling of T (weight decay shrinking the weights)
changes nothing, and report it. Estimators swept over a relative resolution ``c`` write
``mi_xt_rel`` / ``mi_ty_rel`` (dims ``rel_estimator``, ``resolution``, ``layer``); the others
join ``mi_xt`` / ``mi_ty`` (dim ``estimator``):

* ``kde_rel``: Kolchinsky-Tracey bounds with noise ``sigma = c x`` the mean distance to the
  k-th nearest neighbour, for several ``c`` at once;
* ``renyi_norm``: matrix Renyi on z-scored units, width ``s0 sqrt(d) N^(-1/(4+d))``;
* ``pca_binning``: whitened PCA to a few dimensions, then equal-mass bins (Butakov et al.);
* ``pca_knn``: the same projection plus Gaussian noise of ``c`` whitened units, then a
  Kozachenko-Leonenko estimate (``resolution`` dim).
"""

from __future__ import annotations

import numpy as np

from ..._checks import check_choice, check_float, check_int
from ...errors import ValidationError
from ...metrics import mi_relative as rel
from ..options import SUBSET_CAPS
from .base import Option, Output
from .mi import _col, _MIFamily, input_features, renyi_ceilings

__all__ = ["MIKDERelative", "MIRenyiNormalised", "MIProjectedBinning", "MIProjectedKNN"]


def _resolutions(name, value):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = (value,)
    out = tuple(check_float(name, v, min=0.0, min_inclusive=False) for v in value)
    if not out:
        raise ValidationError(f"{name} must not be empty")
    if len(set(out)) != len(out):
        raise ValidationError(f"{name} must not repeat entries, got {list(out)}")
    return tuple(sorted(out))


def _res_outputs(label: str, suffix: str = "") -> dict:
    return {
        f"mi_xt{suffix}": Output(("resolution", "layer"), "I(X;T)", "bits", var="mi_xt_rel",
                                 label=label, stack_dim="rel_estimator"),
        f"mi_ty{suffix}": Output(("resolution", "layer"), "I(T;Y)", "bits", var="mi_ty_rel",
                                 label=label, stack_dim="rel_estimator"),
    }


_RESOLUTIONS = Option((0.1, 0.3, 1.0, 3.0), _resolutions,
                      "relative resolutions c of the kde_rel and pca_knn estimators")


class MIKDERelative(_MIFamily):
    """KDE bounds with noise ``c x`` the layer's mean k-th-neighbour distance (Wickstrom et al.'s
    width rule); invariant to ``T -> a T + b``. Both bounds, every ``c``, one distance matrix."""

    name = "mi-kde-rel"
    estimator = "kde_rel"
    note = ("Kolchinsky-Tracey bounds with noise sigma = resolution x the layer's mean distance "
            "to its k-th nearest neighbour (per checkpoint); invariant to rescaling the layer")
    outputs = {**_res_outputs("kde_rel_upper", "_upper"),
               **_res_outputs("kde_rel_lower", "_lower"),
               "scale": Output(("layer",), "layer spread (mean distance to the k-th nearest "
                                          "neighbour)", "1", var="kde_rel_scale")}
    options = {
        "resolutions": _RESOLUTIONS,
        "scale_rule": Option("knn", lambda n, v: check_choice(n, v, ("knn", "rms", "median")),
                             "spread of a layer: knn, rms or median pairwise distance"),
        "scale_k": Option(10, lambda n, v: check_int(n, v, min=1),
                          "neighbour rank of the knn spread"),
    }

    def __init__(self, setup):
        super().__init__(setup)
        n_probe = len(setup.probe["y"])
        n = setup.size("kde_samples", SUBSET_CAPS["kde_samples"], n_probe, "probe examples")
        self.idx = setup.pick("kde", n_probe, n)
        self.subset_ceiling(setup.probe["y"][self.idx])
        self.res = setup.extra["resolutions"]
        self.rule, self.k = setup.extra["scale_rule"], setup.extra["scale_k"]
        if self.rule == "knn" and self.k >= n:
            raise ValidationError(f"scale_k must be < the KDE subset size {n}, got {self.k}")
        self.coords = {"layer": self.layers, "resolution": list(self.res)}
        self.params.update(n=int(n), resolutions=list(self.res), scale_rule=self.rule,
                           scale_k=self.k)

    def compute(self, block):
        hid, m = block.hidden, block.m
        y = block.y_probe[self.idx]
        shape = (m, len(self.res), len(self.layers))
        out = {k: np.full(shape, np.nan)
               for k in ("mi_xt_upper", "mi_ty_upper", "mi_xt_lower", "mi_ty_lower")}
        out["scale"] = np.full((m, len(self.layers)), np.nan)
        for j, layer in enumerate(self.layers):
            r = rel.mi_kde_relative(hid[layer][:, self.idx], y, resolutions=self.res,
                                    scale=self.rule, k=self.k)
            out["mi_xt_upper"][:, :, j] = r.xt_upper
            out["mi_ty_upper"][:, :, j] = r.ty_upper
            out["mi_xt_lower"][:, :, j] = r.xt_lower
            out["mi_ty_lower"][:, :, j] = r.ty_lower
            out["scale"][:, j] = r.scale
        return self.nan_rows(out, block.finite)


class MIRenyiNormalised(_MIFamily):
    """Matrix Renyi on z-scored units, width ``s0 sqrt(d) N^(-1/(4+d))`` (Tapia and Estevez
    2020, invariant to rescaling each unit); the sources' rule stays under ``renyi``."""

    name = "mi-renyi-norm"
    derived = ("ceiling",)  # S_alpha(A_X) from an eigensolver: not part of the key
    estimator = "renyi_norm"
    note = ("matrix-based Renyi alpha-entropy on z-scored units, kernel width "
            "s0 sqrt(d) N^(-1/(4+d)); invariant to rescaling each unit")
    outputs = {
        "mi_xt": Output(("layer",), "I(X;T)", "bits", var="mi_xt", label="renyi_norm"),
        "mi_ty": Output(("layer",), "I(T;Y)", "bits", var="mi_ty", label="renyi_norm"),
    }
    options = {"s0": Option(1.0, lambda n, v: check_float(n, v, min=0.0, min_inclusive=False),
                            "width factor of the normalised Renyi estimator")}

    def __init__(self, setup):
        super().__init__(setup)
        n_probe = len(setup.probe["y"])
        n = setup.size("renyi_samples", SUBSET_CAPS["renyi_samples"], n_probe, "probe examples")
        self.idx = setup.pick("renyi", n_probe, n)
        self.subset_ceiling(setup.probe["y"][self.idx])
        self.x = input_features(setup, setup.probe["x"][self.idx])
        self.alpha, self.s0 = setup.opts.alpha, setup.extra["s0"]
        self.params.update(alpha=self.alpha, s0=self.s0, n=int(n))
        z, d = rel._zscore(self.x[None])
        width = float(rel._tapia_width(self.s0, d, n)[0])
        self.params["ceiling"] = renyi_ceilings(z[0], setup.probe["y"][self.idx], self.alpha,
                                                width)

    def compute(self, block):
        hid, m, idx = block.hidden, block.m, self.idx
        y = block.y_probe[idx]
        res = [rel.mi_renyi_normalised(self.x, hid[k][:, idx], y, alpha=self.alpha, s0=self.s0)
               for k in self.layers]
        out = {"mi_xt": _col([r.xt for r in res], m), "mi_ty": _col([r.ty for r in res], m)}
        return self.nan_rows(out, block.finite)


_PCA_OPTIONS = {
    "pca_dims": Option(4, lambda n, v: check_int(n, v, min=1),
                       "dimensions of the whitened PCA projection"),
}


class _Projected(_MIFamily):
    def __init__(self, setup):
        super().__init__(setup)
        n_probe = len(setup.probe["y"])
        n = setup.size("kde_samples", SUBSET_CAPS["kde_samples"], n_probe, "probe examples")
        self.idx = setup.pick("kde", n_probe, n)
        self.subset_ceiling(setup.probe["y"][self.idx])
        self.k_dims = setup.extra["pca_dims"]
        self.params.update(n=int(n), pca_dims=self.k_dims)

    def _dims(self, t: np.ndarray) -> int:
        return min(self.k_dims, t.shape[-1])


class MIProjectedBinning(_Projected):
    """Whitened PCA of the layer to ``pca_dims`` dimensions, equal-mass bins per projected
    unit, plug-in MI (bounded by min(log2 N, pca_dims log2 pca_bins))."""

    name = "mi-pca-binning"
    estimator = "pca_binning"
    note = "whitened PCA to pca_dims dimensions, pca_bins equal-mass bins per unit, plug-in MI"
    outputs = {
        "mi_xt": Output(("layer",), "I(X;T)", "bits", var="mi_xt", label="pca_binning"),
        "mi_ty": Output(("layer",), "I(T;Y)", "bits", var="mi_ty", label="pca_binning"),
    }
    options = {**_PCA_OPTIONS,
               "pca_bins": Option(4, lambda n, v: check_int(n, v, min=2),
                                  "equal-mass bins per projected unit")}

    def __init__(self, setup):
        super().__init__(setup)
        self.n_bins = setup.extra["pca_bins"]
        self.params["pca_bins"] = self.n_bins
        cap = min(self.params["ceiling"]["xt"], self.k_dims * np.log2(self.n_bins))
        self.params["ceiling"]["xt"] = float(cap)

    def compute(self, block):
        hid, m, idx = block.hidden, block.m, self.idx
        y = block.y_probe[idx]
        res = [rel.mi_projected(hid[k][:, idx], y, k_dims=self._dims(hid[k]), method="binning",
                                n_bins=self.n_bins) for k in self.layers]
        out = {"mi_xt": _col([r.xt for r in res], m), "mi_ty": _col([r.ty for r in res], m)}
        return self.nan_rows(out, block.finite)


class MIProjectedKNN(_Projected):
    """Whitened PCA to ``pca_dims`` dimensions plus Gaussian noise of ``c`` whitened units
    (each resolution), I(X; Z + E) = h(Z + E) - h(E) by Kozachenko-Leonenko; not capped at
    log2 N (it estimates the population quantity)."""

    name = "mi-pca-knn"
    estimator = "pca_knn"
    note = ("whitened PCA to pca_dims dimensions plus Gaussian noise of resolution whitened "
            "units; Kozachenko-Leonenko estimate of I(X; Z + E) = h(Z + E) - h(E)")
    outputs = _res_outputs("pca_knn")
    options = {**_PCA_OPTIONS, "resolutions": _RESOLUTIONS}

    def __init__(self, setup):
        super().__init__(setup)
        self.res = setup.extra["resolutions"]
        self.seed = setup.opts.seed
        self.coords = {"layer": self.layers, "resolution": list(self.res)}
        self.params.update(resolutions=list(self.res), seed=self.seed, k=3)

    def compute(self, block):
        hid, m, idx = block.hidden, block.m, self.idx
        y = block.y_probe[idx]
        shape = (m, len(self.res), len(self.layers))
        out = {"mi_xt": np.full(shape, np.nan), "mi_ty": np.full(shape, np.nan)}
        for j, layer in enumerate(self.layers):
            for r, c in enumerate(self.res):
                xt, ty = rel.mi_projected(hid[layer][:, idx], y, k_dims=self._dims(hid[layer]),
                                          method="knn", noise=c, k=3, seed=self.seed)
                out["mi_xt"][:, r, j] = xt
                out["mi_ty"][:, r, j] = ty
        return self.nan_rows(out, block.finite)
