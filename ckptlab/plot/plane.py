"""The information plane: I(X;T) against I(T;Y) per layer, coloured by log10(step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..errors import ValidationError
from ._mi import choose_mi
from ._style import check_dataset, label_of, positive_steps

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_information_plane"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def plot_information_plane(
    ds: xr.Dataset,
    *,
    estimator: str | None = None,
    resolution: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Plot each layer's trajectory in the information plane (Shwartz-Ziv and Tishby).

    I(X;T) on the x-axis, I(T;Y) on the y-axis; one thin line per layer (its own colour and
    marker, in the legend) through points coloured by log10(step) on one shared colour scale
    with one colour bar. Step 0 is left out (log10 undefined).

    Parameters
    ----------
    ds : xarray.Dataset
        Analysis Dataset with ``mi_xt`` and ``mi_ty`` over (step[, estimator][, layer]).
    estimator : str, optional
        Which estimator's values to plot (of ``mi_xt``, or of ``mi_xt_rel`` with
        ``resolution``); default: the one whose unsaturated curves span the widest range (see
        :func:`ckptlab.plot.plot_overview`). The title says which.
    resolution : float, optional
        Resolution of a relative-resolution estimator.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure (created without pyplot) with one axes.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValidationError
        If ``mi_xt`` or ``mi_ty`` is absent or ``estimator`` is not among the Dataset's.

    References
    ----------
    Shwartz-Ziv and Tishby, "Opening the black box of deep neural networks via information",
    arXiv:1703.00810 (2017).
    """
    check_dataset(ds, "plot_information_plane")
    if not (("mi_xt" in ds and "mi_ty" in ds) or ("mi_xt_rel" in ds and "mi_ty_rel" in ds)):
        raise ValidationError("plot_information_plane needs variables 'mi_xt' and 'mi_ty' (or "
                              "'mi_xt_rel' and 'mi_ty_rel') in ds")
    choice = choose_mi(ds, estimator, resolution)
    if choice.ty is None:
        raise ValidationError(f"plot_information_plane: no I(T;Y) for estimator "
                              f"{choice.label!r}")
    xt, ty = choice.xt, choice.ty

    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if ax is None:
        ax = Figure(figsize=(5.5, 4.2), layout="constrained").add_subplot()
    keep, steps = positive_steps(ds)
    logstep = np.log10(steps)
    norm = Normalize(vmin=logstep.min(), vmax=logstep.max()) if len(steps) else Normalize()
    layers = xt["layer"].values.tolist() if "layer" in xt.dims else [None]
    colors = [f"C{i % 10}" for i in range(len(layers))]
    sc = None
    for i, layer in enumerate(layers):
        x = xt.sel(layer=layer) if layer is not None else xt
        y = ty.sel(layer=layer) if layer is not None and "layer" in ty.dims else ty
        x = np.asarray(x.values, float)[keep]
        y = np.asarray(y.values, float)[keep]
        ok = np.isfinite(x) & np.isfinite(y)
        marker = _MARKERS[i % len(_MARKERS)]
        ax.plot(x[ok], y[ok], color=colors[i], lw=1.0, alpha=0.7, zorder=2,
                marker=marker, ms=0, label=str(layer) if layer is not None else "T")
        sc = ax.scatter(x[ok], y[ok], c=logstep[ok], cmap="viridis", norm=norm, s=16,
                        marker=marker, edgecolors=colors[i], linewidths=0.5, zorder=3)
    # legend shows each layer's colour and marker
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker=_MARKERS[i % len(_MARKERS)], markersize=5,
                      markerfacecolor="white", lw=1.0, label=str(layer))
               for i, (c, layer) in enumerate(zip(colors, layers))]
    ax.legend(handles=handles, fontsize=8, loc="best", frameon=False)
    ax.set_xlabel(label_of(xt, "I(X;T)"), fontsize=9)
    ax.set_ylabel(label_of(ty, "I(T;Y)"), fontsize=9)
    title = "information plane" + (f" ({choice.label})" if choice.label else "")
    if choice.saturated:
        title += f"\nsaturated: {', '.join(choice.saturated)}"
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.25, lw=0.5)
    if sc is not None:
        cb = ax.figure.colorbar(sc, ax=ax, pad=0.02)
        cb.set_label("log10(step)", fontsize=9)
        cb.ax.tick_params(labelsize=8)
    return ax
