"""The run archive: Zarr v3 layout, writer (:class:`Recorder`) and reader (:func:`open_run`)."""

from .format import FORMAT_VERSION
from .reader import Run, open_run, run_info
from .recorder import Recorder

__all__ = ["FORMAT_VERSION", "Recorder", "Run", "open_run", "run_info"]
