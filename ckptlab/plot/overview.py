"""Stacked overview of a run: every progress measure against log10(step)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .._checks import check_choice
from ..errors import ValidationError
from ._mi import choose_mi
from ._style import (
    EVENT_STYLES,
    PHASE_COLORS,
    check_dataset,
    common_label,
    label_of,
    pick,
    positive_steps,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_overview"]


def plot_overview(
    ds: xr.Dataset,
    seg: xr.Dataset | None = None,
    *,
    fig: Figure | None = None,
    estimator: str | None = None,
    resolution: float | None = None,
    radius: float | None = None,
    events: Sequence[str] | None = None,
) -> Figure:
    """Stacked panels of a run's curves on a shared log-step axis, with phases and events.

    Panels, top to bottom, each drawn only if its variables are present: accuracy (train,
    test), loss (train, test; log y-axis when it spans more than 1.5 decades), I(X;T) per
    layer for one estimator, total local complexity per split at one radius, linear mapping
    number, total parameter norm. With ``seg``, phases are shaded and events drawn as vertical
    lines, identically on every panel, with one legend for them above the panels. Axis labels
    come from the variables' ``long_name`` and ``units``. Step 0 is left out: a log axis
    cannot show it.

    Parameters
    ----------
    ds : xarray.Dataset
        Analysis Dataset with a ``step`` dimension.
    seg : xarray.Dataset, optional
        Output of :func:`ckptlab.phases.segment` for ``ds``.
    fig : matplotlib.figure.Figure, optional
        An empty figure to draw into; by default a new one sized to the number of panels
        (created without pyplot, so nothing is registered or shown).
    estimator : str, optional
        Estimator of the I(X;T) panel (of ``mi_xt`` or of the relative-resolution
        ``mi_xt_rel``); default: the estimator and resolution whose *unsaturated* curves span
        the widest range over the run, summed over layers (ties: the first listed). The panel's
        title says which; a layer whose curve sits at the estimator's ceiling or at 0 is drawn
        grey and dashed and marked "saturated", and a panel with nothing else says so.
    resolution : float, optional
        Resolution of a relative-resolution estimator (default: as above).
    radius : float, optional
        Radius of the local-complexity panel; default the first one.
    events : sequence of str, optional
        Event types to mark (e.g. ``["fit_end", "mi_peak"]``); default all that happened.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValidationError
        If ``ds`` holds none of the plotted variables, ``seg`` is not a ``segment`` output,
        or ``estimator``, ``radius`` or ``events`` name something absent.
    """
    check_dataset(ds, "plot_overview")
    if seg is not None and (not isinstance(seg, xr.Dataset) or "phase" not in seg
                            or "event_step" not in seg):
        raise ValidationError(f"seg must be a Dataset returned by segment() (with 'phase' and "
                              f"'event_step'), got {type(seg).__name__}")
    if events is not None:
        if isinstance(events, str) or not isinstance(events, Sequence):
            raise ValidationError(f"events must be a sequence of event types, got {events!r}")
        for e in events:
            check_choice("events entries", e, EVENT_STYLES)
    mi = choose_mi(ds, estimator, resolution)
    panels = _panels(ds, mi, radius)
    if not panels:
        raise ValidationError(
            "ds holds none of the variables plot_overview draws (train_acc, test_acc, "
            "train_loss, test_loss, mi_xt, lc_total, lc, lmn, weight_norm)")

    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(7.5, 1.75 * len(panels) + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    keep, steps = positive_steps(ds)

    for ax, (ylabel, lines, logy, title) in zip(axes, panels):
        for label, da, kw in lines:
            ax.plot(steps, np.asarray(da.values, float)[keep], label=label, **kw)
        if title:
            ax.set_title(title, fontsize=8, loc="left")
        if lines and all(kw.get("ls") == "--" for _, _, kw in lines):
            ax.text(0.5, 0.5, "saturated: not a measurement", transform=ax.transAxes,
                    ha="center", va="center", fontsize=9, color="#777777")
        ax.set_ylabel(textwrap.fill(ylabel, 24), fontsize=9)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.25, lw=0.5)
        if len(lines) > 1:
            ax.legend(fontsize=7, loc="best", ncols=min(len(lines), 4), frameon=False)
    if len(steps):
        axes[0].set_xlim(steps[0], steps[-1])
    axes[-1].set_xlabel(label_of(ds["step"], "training step") if ds["step"].attrs.get(
        "long_name") else "training step", fontsize=9)

    if seg is not None:
        handles = _draw_phases(axes, seg, steps) + _draw_events(axes, seg, events)
        if handles:
            # Below the panels: above them it would collide with the run's title.
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
                       fontsize=7, frameon=False)
    fig.align_ylabels(axes)
    if ds.attrs.get("run_name"):
        fig.suptitle(str(ds.attrs["run_name"]), fontsize=10)
    return fig


def _panels(ds, mi, radius):
    """[(ylabel, [(legend label, DataArray over step, plot kwargs)], log-y, title)]."""
    panels = []
    colors = {"train": "#1f77b4", "test": "#d62728", "random": "#7f7f7f"}
    for kind in ("acc", "loss"):
        das = [(s, ds[f"{s}_{kind}"]) for s in ("train", "test") if f"{s}_{kind}" in ds]
        das = [(s, d) for s, d in das if d.dims == ("step",)]
        if das:
            lines = [(str(d.attrs.get("long_name") or d.name), d, {"color": colors[s], "lw": 1.2})
                     for s, d in das]
            logy = kind == "loss" and _spans_decades([d for _, d in das])
            panels.append((common_label([d for _, d in das]), lines, logy, None))
    if mi is not None:
        lines = []
        for label, da, kw in _per(mi.xt, "layer", {}):
            if label in mi.saturated or (mi.saturated == ("",)):
                kw = {**kw, "ls": "--", "color": "#999999"}
                label = f"{label} (saturated)"
            lines.append((label, da, kw))
        ceiling = ds.get(f"{mi.xt.name}_ceiling")
        title = f"I(X;T): {mi.label}" if mi.label else "I(X;T)"
        if ceiling is not None and mi.saturated:
            c = ceiling.sel({d: mi.estimator for d in ceiling.dims})
            title += f" (ceiling log2 N = {float(c):.3g} bits)"
        ylabel = label_of(mi.xt, "I(X;T)")
        if mi.label:
            ylabel = (ylabel.replace(" [", f" ({mi.label}) [", 1) if "[" in ylabel
                      else f"{ylabel} ({mi.label})")
        panels.append((ylabel, lines, False, title))
    lc = ds["lc_total"] if "lc_total" in ds else (
        ds["lc"].sum("layer", skipna=False).assign_attrs(ds["lc"].attrs)
        if "lc" in ds and "layer" in ds["lc"].dims else None)
    if lc is not None:
        if radius is not None and "radius" not in lc.dims:
            raise ValidationError(f"radius must be None: the local complexity has no radius "
                                  f"dimension; got {radius!r}")
        r = radius if radius is not None or "radius" not in lc.dims else lc["radius"].values[0]
        lc = pick(lc, "radius", r, "radius")
        label = label_of(lc, "local complexity")
        if r is not None:
            label = label.replace(" [", f" (r={float(r):g}) [", 1)
        panels.append((label, _per(lc, "split", colors), False, None))
    for name in ("lmn", "weight_norm"):
        if name in ds and ds[name].dims == ("step",):
            panels.append((label_of(ds[name]), [(name, ds[name], {"color": "#333333",
                                                                  "lw": 1.2})], False, None))
    return panels


def _per(da: xr.DataArray, dim: str, colors: dict) -> list:
    """One line per entry of ``dim`` (reducing any other extra dims by their first entry)."""
    extra = [d for d in da.dims if d not in ("step", dim)]
    da = da.isel({d: 0 for d in extra})
    if dim not in da.dims:
        return [(str(da.name), da, {"lw": 1.2})]
    return [(str(v), da.sel({dim: v}), {"lw": 1.2, **({"color": colors[v]} if v in colors
                                                      else {})})
            for v in da[dim].values.tolist()]


def _spans_decades(das) -> bool:
    vals = np.concatenate([np.asarray(d.values, float).ravel() for d in das])
    vals = vals[np.isfinite(vals)]
    return bool(vals.size and vals.min() > 0 and vals.max() / vals.min() > 10 ** 1.5)


def _draw_phases(axes, seg, steps) -> list:
    from matplotlib.patches import Patch

    if len(steps) == 0:
        return []
    labels = seg["phase"].values.tolist()
    bounds = dict(zip(seg["boundary"].values.tolist(), seg["boundary_step"].values.astype(float)))
    starts = {"fitting": steps[0],
              "compression": bounds.get("compression_start", np.nan),
              "converged": bounds.get("converged_start", np.nan)}
    present = [p for p in ("fitting", "compression", "converged", "unknown") if p in labels]
    handles = []
    for k, p in enumerate(present):
        if p == "unknown":  # nothing to show: shading the whole run grey would only distract
            continue
        a = max(starts[p], steps[0]) if np.isfinite(starts[p]) else steps[0]
        b = starts[present[k + 1]] if k + 1 < len(present) else steps[-1]
        for ax in axes:
            ax.axvspan(a, b, color=PHASE_COLORS[p], alpha=0.6, lw=0, zorder=0)
        handles.append(Patch(color=PHASE_COLORS[p], alpha=0.6, label=p))
    return handles


def _draw_events(axes, seg, wanted) -> list:
    from matplotlib.lines import Line2D

    steps = seg["event_step"].values.astype(float)
    kinds = seg["event_type"].values.tolist()
    handles = []
    for kind, (color, ls) in EVENT_STYLES.items():
        if wanted is not None and kind not in wanted:
            continue
        at = [s for s, k in zip(steps, kinds) if k == kind and np.isfinite(s)]
        if not at:
            continue
        # Several per-layer events of one kind: thinner, lighter lines, one legend entry.
        lw, alpha = (1.3, 0.9) if len(at) == 1 else (0.9, 0.6)
        for ax in axes:
            for s in at:
                ax.axvline(s, color=color, ls=ls, lw=lw, alpha=alpha, zorder=1)
        label = kind if len(at) == 1 else f"{kind} (x{len(at)})"
        handles.append(Line2D([], [], color=color, ls=ls, lw=1.3, label=label))
    return handles
