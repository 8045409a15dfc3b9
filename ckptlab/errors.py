"""The one error hierarchy of ckptlab.

Every error ckptlab raises on bad input derives from :class:`CkptlabError`, so a caller (and
the CLI, which turns it into a one-line ``Error: ...``) can catch them all at once. Messages
name the argument, the rule and the offending value.
"""

from __future__ import annotations

__all__ = [
    "CkptlabError",
    "ValidationError",
    "ArchiveError",
    "ArchiveNotFoundError",
    "NotAnArchiveError",
    "FormatVersionError",
    "CorruptArchiveError",
    "ShapeMismatchError",
    "StepOrderError",
    "ArchiveExistsError",
    "ModelSpecError",
    "DataError",
    "TrainingDivergedError",
    "SchedulerError",
    "CheckpointSourceError",
    "NoCheckpointsError",
    "UnsafeCheckpointError",
    "StepParseError",
    "DuplicateStepError",
    "StepMismatchError",
    "ChecksumError",
    "ArchiveLockedError",
]


class CkptlabError(Exception):
    """Base class of every error ckptlab raises on purpose."""


class ValidationError(CkptlabError, ValueError):
    """An argument breaks a rule (wrong type, out of range, unknown name)."""


class ArchiveError(CkptlabError):
    """Something is wrong with a run archive."""


class ArchiveNotFoundError(ArchiveError, FileNotFoundError):
    """No archive exists at the given path."""


class ArchiveExistsError(ArchiveError, FileExistsError):
    """An archive already exists where a new one was to be created."""


class NotAnArchiveError(ArchiveError):
    """The path holds a Zarr store (or something else) that is not a ckptlab archive."""


class FormatVersionError(ArchiveError):
    """The archive was written by a newer, unknown format version."""


class CorruptArchiveError(ArchiveError):
    """A chunk or metadata document is missing or unreadable."""


class ShapeMismatchError(ArchiveError, ValueError):
    """A parameter's shape differs from the shape recorded at the first save."""


class StepOrderError(ArchiveError, ValueError):
    """Steps must increase strictly from one checkpoint to the next."""


class ModelSpecError(CkptlabError, ValueError):
    """A model spec names an unknown architecture or carries invalid arguments."""


class DataError(CkptlabError, ValueError):
    """A data file (npz, IDX) or data array is malformed."""


class TrainingDivergedError(CkptlabError):
    """The loss became NaN or infinite; training stopped."""


class SchedulerError(CkptlabError):
    """A Dask scheduler could not be reached or created."""


class CheckpointSourceError(CkptlabError, ValueError):
    """Checkpoint files to import are unreadable or inconsistent (``ckptlab import``)."""


class NoCheckpointsError(CheckpointSourceError):
    """The source of an import is empty or holds no recognised checkpoint."""


class UnsafeCheckpointError(CheckpointSourceError):
    """A torch.save file needs unpickling of arbitrary Python objects; it is refused."""


class StepParseError(CheckpointSourceError):
    """No training step can be read from a checkpoint's name or its step entry."""


class DuplicateStepError(CheckpointSourceError):
    """Two checkpoints to import have the same training step."""


class StepMismatchError(CheckpointSourceError):
    """A checkpoint's name and its ``global_step``/``step`` entry give different steps."""


class ChecksumError(CorruptArchiveError):
    """A stored chunk fails its crc32c checksum: its bytes changed after they were written.

    Attributes ``array`` (e.g. ``"params/0.weight"``), ``chunk`` (the storage key),
    ``rows`` (first and last checkpoint position it holds, or None) and ``steps`` (first and
    last training step, or None) name what is lost.
    """

    def __init__(self, message: str, *, array: str | None = None, chunk: str | None = None,
                 rows: tuple[int, int] | None = None, steps: tuple[int, int] | None = None):
        super().__init__(message)
        self.array, self.chunk, self.rows, self.steps = array, chunk, rows, steps


class ArchiveLockedError(ArchiveError):
    """Another process is writing the archive (one writer per archive).

    Attribute ``holder`` is the lock record of that process (pid, host, since, command) or
    None when it could not be read.
    """

    def __init__(self, message: str, *, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder
