"""ckptlab: progress measures over every checkpoint of a training run."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import CkptlabError  # noqa: E402

__all__ = ["__version__", "CkptlabError"]
