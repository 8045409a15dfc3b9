"""``ds.ckpt``: the phase and plot functions as methods of an analysis Dataset.

Importing this module registers the accessor. It keeps no state beyond the Dataset it is
attached to and forwards every call, so the library functions stay the one documented API
(the methods reuse their docstrings).
"""

from __future__ import annotations

import xarray as xr

from .phases import segment as _segment
from .plot import plot_information_plane as _plot_information_plane
from .plot import plot_overview as _plot_overview
from .plot import plot_resolution_curve as _plot_resolution_curve

__all__ = ["CkptAccessor"]


def _forwards(func, public: str):
    """Give the decorated method the docstring of the library function it forwards to."""

    def deco(method):
        method.__doc__ = (f"Forward to :func:`{public}` with this Dataset as ``ds``.\n\n"
                          f"{func.__doc__}")
        return method

    return deco


@xr.register_dataset_accessor("ckpt")
class CkptAccessor:
    """ckptlab methods on an analysis Dataset: ``ds.ckpt.segment()``, ``ds.ckpt.plot()``,
    ``ds.ckpt.information_plane()``, ``ds.ckpt.resolution_curve()``."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @_forwards(_segment, "ckptlab.phases.segment")
    def segment(self, **kwargs) -> xr.Dataset:
        return _segment(self._ds, **kwargs)

    @_forwards(_plot_overview, "ckptlab.plot.plot_overview")
    def plot(self, seg: xr.Dataset | None = None, **kwargs):
        return _plot_overview(self._ds, seg, **kwargs)

    @_forwards(_plot_information_plane, "ckptlab.plot.plot_information_plane")
    def information_plane(self, **kwargs):
        return _plot_information_plane(self._ds, **kwargs)

    @_forwards(_plot_resolution_curve, "ckptlab.plot.plot_resolution_curve")
    def resolution_curve(self, seg: xr.Dataset | None = None, **kwargs):
        return _plot_resolution_curve(self._ds, seg, **kwargs)
