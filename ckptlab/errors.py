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
