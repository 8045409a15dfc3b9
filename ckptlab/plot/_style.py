"""Shared labelling and styling of ckptlab figures (matplotlib imported lazily by callers)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import ValidationError

# Light fills so that curves stay readable on top of them.
PHASE_COLORS = {
    "fitting": "#cfe2f3",
    "compression": "#fce5cd",
    "converged": "#d9ead3",
    "unknown": "#eeeeee",
}

# One colour and line style per event type, the same on every panel.
EVENT_STYLES = {
    "fit_end": ("#000000", "-"),
    "test_loss_first_min": ("#7f7f7f", ":"),
    "test_loss_peak": ("#d62728", "--"),
    "second_descent_start": ("#ff7f0e", "--"),
    "generalisation_onset": ("#2ca02c", "-."),
    "generalisation_end": ("#1b5e20", ":"),
    "mi_peak": ("#9467bd", "-"),
    "plane_settled": ("#8c564b", "-."),
    "lc_peak": ("#17becf", "--"),
    "lmn_peak": ("#e377c2", ":"),
    "weight_norm_peak": ("#7f7f7f", "-."),
}


def label_of(da: xr.DataArray, fallback: str | None = None) -> str:
    """'long_name [units]' from a DataArray's attrs (the variable name if no long_name)."""
    name = str(da.attrs.get("long_name") or fallback or da.name or "")
    units = da.attrs.get("units")
    return f"{name} [{units}]" if units not in (None, "") else name


def common_label(das: list[xr.DataArray]) -> str:
    """Axis label for several variables: their shared trailing words and units.

    "train accuracy" and "test accuracy" share "accuracy"; if nothing is shared, the long
    names are joined with " / ".
    """
    names = [str(d.attrs.get("long_name") or d.name) for d in das]
    words = [n.split() for n in names]
    common: list[str] = []
    for tail in zip(*[w[::-1] for w in words]):
        if len(set(tail)) != 1:
            break
        common.insert(0, tail[0])
    text = " ".join(common) if common and len(names) > 1 else " / ".join(names)
    units = {d.attrs.get("units") for d in das} - {None, ""}
    return f"{text} [{', '.join(sorted(units))}]" if units else text


def positive_steps(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(mask of steps > 0, those steps as float): a log axis cannot show step 0."""
    steps = ds["step"].values.astype(float)
    keep = steps > 0
    return keep, steps[keep]


def check_dataset(ds, who: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise ValidationError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "step" not in ds.dims:
        raise ValidationError(f"{who} needs a 'step' dimension in ds, has dims {tuple(ds.dims)}")


def pick(da: xr.DataArray, dim: str, value, argname: str) -> xr.DataArray:
    """Select ``value`` along ``dim`` if ``da`` has that dim (first entry when value is None)."""
    if dim not in da.dims:
        return da
    choices = da[dim].values.tolist()
    if value is None:
        return da.isel({dim: 0})
    if value not in choices:
        raise ValidationError(f"{argname} must be one of {', '.join(map(repr, choices))}; "
                              f"got {value!r}")
    return da.sel({dim: value})
