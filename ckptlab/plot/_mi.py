"""Which I(X;T) curves a figure shows: the estimator (and resolution) that measures the most.

A saturated estimator (every input its own bin, or noise far below the inputs' spacing) draws
a flat line at log2 N that looks like a measurement and is not; a figure therefore picks, by
default, the estimator and resolution whose curves span the widest range *outside* saturation,
and says which it picked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import ValidationError

__all__ = ["MIChoice", "choose_mi", "mi_choices"]

#: A curve with at least this fraction of its checkpoints saturated is not drawn as a measurement
#: (the same rule as ckptlab.phases.segment).
SATURATED = 0.9


@dataclass(frozen=True)
class MIChoice:
    """One estimator (and resolution) of I(X;T), and I(T;Y) where present."""

    estimator: str
    resolution: float | None
    xt: xr.DataArray  # (step[, layer])
    ty: xr.DataArray | None
    saturated: tuple  # layers whose curve is saturated
    score: float  # summed range of the unsaturated layers' curves, bits

    @property
    def label(self) -> str:
        return self.estimator + ("" if self.resolution is None else f", c={self.resolution:g}")


def _sel(ds, var, sel):
    da = ds[var]
    return da.sel({k: v for k, v in sel.items() if k in da.dims})


def _saturated_layers(ds, var, sel, xt) -> tuple:
    sat = ds.get(f"{var}_saturated")
    if sat is None:
        return ()
    sat = sat.sel({k: v for k, v in sel.items() if k in sat.dims})
    if "layer" not in sat.dims:
        return ("",) if float(sat) >= SATURATED else ()
    return tuple(str(lay) for lay, f in zip(sat["layer"].values, np.asarray(sat.values, float))
                 if np.isfinite(f) and f >= SATURATED)


def mi_choices(ds: xr.Dataset) -> list[MIChoice]:
    """Every estimator of ``mi_xt`` and every (estimator, resolution) of ``mi_xt_rel``."""
    out = []
    for xt, ty, dim in (("mi_xt", "mi_ty", "estimator"), ("mi_xt_rel", "mi_ty_rel", "rel_estimator")):
        if xt not in ds:
            continue
        ests = [None] if dim not in ds[xt].dims else [str(e) for e in ds[xt][dim].values]
        res = ([None] if "resolution" not in ds[xt].dims
               else [float(r) for r in ds[xt]["resolution"].values])
        for est in ests:
            for r in res:
                sel = {}
                if est is not None:
                    sel[dim] = est
                if r is not None:
                    sel["resolution"] = r
                a = _sel(ds, xt, sel)
                b = _sel(ds, ty, sel) if ty in ds else None
                saturated = _saturated_layers(ds, xt, sel, a)
                span = (a.max("step") - a.min("step"))
                if "layer" in span.dims:
                    keep = [lay for lay in span["layer"].values if str(lay) not in saturated]
                    span = span.sel(layer=keep).sum("layer") if keep else xr.DataArray(0.0)
                elif saturated:
                    span = xr.DataArray(0.0)
                score = float(np.nan_to_num(float(span), nan=0.0))
                out.append(MIChoice(est or "", r, a, b, saturated, score))
    return out


def choose_mi(ds: xr.Dataset, estimator: str | None = None,
              resolution: float | None = None) -> MIChoice | None:
    """The I(X;T) curves to show: the given estimator (and resolution), or by default the one
    whose unsaturated curves span the widest range (ties: the first listed). None without MI.

    Raises
    ------
    ValidationError
        ``estimator`` or ``resolution`` names nothing in ``ds``.
    """
    choices = mi_choices(ds)
    if not choices:
        return None
    if estimator is not None:
        if not isinstance(estimator, str):
            raise ValidationError(f"estimator must be a string, got {estimator!r}")
        known = sorted({c.estimator for c in choices})
        choices = [c for c in choices if c.estimator == estimator]
        if not choices:
            raise ValidationError(f"estimator must be one of {', '.join(map(repr, known))}; "
                                  f"got {estimator!r}")
    if resolution is not None:
        known = sorted({c.resolution for c in choices if c.resolution is not None})
        choices = [c for c in choices if c.resolution is not None
                   and np.isclose(c.resolution, float(resolution))]
        if not choices:
            raise ValidationError(
                f"resolution must be one of {known} for this estimator; got {resolution!r}")
    return max(choices, key=lambda c: c.score)  # max keeps the first of equal scores
