"""The resolution curve: I(X;T) against the estimator's resolution, at a few checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ..errors import ValidationError
from ._style import check_dataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_resolution_curve"]


def _fit_end_step(seg) -> float | None:
    if seg is None or "event_step" not in seg:
        return None
    names = [str(e) for e in seg["event"].values]
    if "fit_end" not in names:
        return None
    v = float(seg["event_step"].sel(event="fit_end"))
    return v if np.isfinite(v) else None


def plot_resolution_curve(
    ds: xr.Dataset,
    seg: xr.Dataset | None = None,
    *,
    estimator: str | None = None,
    steps=None,
    fig: Figure | None = None,
) -> Figure:
    """I(X;T) against the relative resolution (log axis), per layer, at a few checkpoints.

    In high dimension the answer of an MI estimator depends on its resolution: at a fine one
    every input is told apart (the ceiling log2 N), at a coarse one none is (0). This figure
    shows where each estimate comes from: one panel per layer, one line per checkpoint (by
    default the first after step 0, the end of fitting when ``seg`` locates it, and the last),
    the ceiling as a dotted line. Where the lines of different checkpoints separate, the
    estimator sees the layer change at that resolution.

    Parameters
    ----------
    ds : xarray.Dataset
        Analysis Dataset with ``mi_xt_rel`` (dims step, rel_estimator, resolution, layer).
    seg : xarray.Dataset, optional
        Output of :func:`ckptlab.phases.segment`, for the end of fitting.
    estimator : str, optional
        A ``rel_estimator`` (default the first, ``kde_rel_upper`` when present).
    steps : sequence of int, optional
        Checkpoints to draw (nearest stored steps); default as above.
    fig : matplotlib.figure.Figure, optional
        An empty figure to draw into.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValidationError
        If ``mi_xt_rel`` is absent or ``estimator`` is not among its estimators.
    """
    check_dataset(ds, "plot_resolution_curve")
    if "mi_xt_rel" not in ds:
        raise ValidationError(
            "plot_resolution_curve needs 'mi_xt_rel' in ds: analyse with a relative-resolution "
            "estimator (estimators=('kde_rel',) or ('pca_knn',))")
    mi = ds["mi_xt_rel"]
    ests = [str(e) for e in mi["rel_estimator"].values]
    if estimator is None:
        estimator = "kde_rel_upper" if "kde_rel_upper" in ests else ests[0]
    if estimator not in ests:
        raise ValidationError(f"estimator must be one of {', '.join(map(repr, ests))}; got "
                              f"{estimator!r}")
    mi = mi.sel(rel_estimator=estimator)
    all_steps = np.asarray(ds["step"].values)
    if steps is None:
        pos = all_steps[all_steps > 0]
        chosen = [int(pos[0]) if len(pos) else int(all_steps[0])]
        fit = _fit_end_step(seg)
        if fit is not None:
            chosen.append(int(all_steps[np.argmin(np.abs(all_steps - fit))]))
        chosen.append(int(all_steps[-1]))
        labels = ["start"] + (["end of fitting"] if fit is not None else []) + ["end of run"]
    else:
        chosen = [int(all_steps[np.argmin(np.abs(all_steps - s))]) for s in steps]
        labels = [""] * len(chosen)
    seen, pairs = set(), []
    for s, lab in zip(chosen, labels):
        if s not in seen:
            seen.add(s)
            pairs.append((s, lab))

    from matplotlib.figure import Figure

    layers = [str(v) for v in mi["layer"].values] if "layer" in mi.dims else [""]
    ncols = min(len(layers), 3)
    nrows = int(np.ceil(len(layers) / ncols))
    if fig is None:
        fig = Figure(figsize=(3.2 * ncols + 0.6, 2.6 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    res = np.asarray(mi["resolution"].values, float)
    ceiling = ds.get("mi_xt_rel_ceiling")
    cmap = __import__("matplotlib").colormaps["viridis"]
    for ax, layer in zip(axes, layers):
        da = mi.sel(layer=layer) if layer else mi
        for i, (s, lab) in enumerate(pairs):
            y = np.asarray(da.sel(step=s).values, float)
            ax.plot(res, y, marker="o", ms=3, lw=1.2,
                    color=cmap(i / max(len(pairs) - 1, 1)),
                    label=f"step {s}" + (f" ({lab})" if lab else ""))
        if ceiling is not None:
            c = float(ceiling.sel(rel_estimator=estimator))
            ax.axhline(c, color="#999999", ls=":", lw=1.0, label=f"ceiling log2 N = {c:.3g}")
        ax.set_xscale("log")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel(mi["resolution"].attrs.get("long_name", "resolution"), fontsize=8)
        ax.set_ylabel("I(X;T) [bits]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.25, lw=0.5)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, frameon=False)
    title = f"resolution curve ({estimator})"
    if ds.attrs.get("run_name"):
        title = f"{ds.attrs['run_name']}: {title}"
    fig.suptitle(title, fontsize=10)
    return fig
