"""Per-checkpoint analysis: rebuild the model, capture layers, run the kernels, with Dask."""

from .api import VAR_META, analyze, load_analysis

__all__ = ["analyze", "load_analysis", "VAR_META"]
