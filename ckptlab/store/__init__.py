"""The run archive: Zarr v3 layout, writer (:class:`Recorder`) and reader (:func:`open_run`)."""

from .format import FORMAT_VERSION
from .importer import ImportResult, import_checkpoints
from .reader import Run, open_run, run_info
from .recorder import Recorder
from .lock import WriterLock
from .verify import VerifyReport, verify

__all__ = [
    "FORMAT_VERSION", "Recorder", "Run", "open_run", "run_info", "import_checkpoints",
    "ImportResult",
    "verify", "VerifyReport", "WriterLock",
]
