"""Matplotlib figures from analysis Datasets, on a log-step axis.

Headless-safe: figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot,
no backend chosen, nothing shown); matplotlib itself is imported only when a plot is drawn.
"""

from __future__ import annotations

from .overview import plot_overview
from .plane import plot_information_plane
from .resolution import plot_resolution_curve

__all__ = ["plot_overview", "plot_information_plane", "plot_resolution_curve"]
