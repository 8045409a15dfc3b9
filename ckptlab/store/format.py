"""The archive format: one Zarr v3 group per training run.

Layout (every array has ``dimension_names``, so plain ``xarray.open_zarr`` reads each group)::

    run.zarr/                 root attrs["ckptlab"]: format_version, model_spec, task, config,
                              seed, versions, created, commit = {n, last_step, state_slot}
      params/<name>           (step, <name>_0, <name>_1, ...) one array per state_dict entry
      params/step             (step,) int64 training step of each checkpoint
      metrics/<name>          (step,) float64 per-checkpoint scalars (losses, accuracies, ...)
      metrics/step            (step,) int64, the same steps
      data/<name>             training and test data of the run (x_train, y_train, ...)
      state/<slot>/...        optimizer and trainer state at the newest checkpoint (for resume)
      analysis/...            results written by ``ckptlab.analyze``

The commit record ``attrs["ckptlab"]["commit"]["n"]`` is the source of truth: arrays may be
longer than ``n`` after a crash (rows written but never committed); readers slice them to ``n``.
Every key is written atomically (zarr's LocalStore writes a temporary file and renames it), and
the commit record is written last, so a writer killed at any moment leaves the committed
checkpoints intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import zarr
import zarr.storage
from zarr.codecs import BloscCodec, TransposeCodec

from ..errors import ArchiveNotFoundError, FormatVersionError, NotAnArchiveError

__all__ = ["FORMAT_VERSION", "ATTR_KEY", "open_store", "is_url", "read_header"]

#: Version of the layout above. Readers refuse archives with a larger version.
FORMAT_VERSION = 1
#: Key of the root attribute that marks a Zarr group as a ckptlab archive.
ATTR_KEY = "ckptlab"

PARAMS, METRICS, DATA, STATE, ANALYSIS = "params", "metrics", "data", "state", "analysis"
STEP = "step"

# Chunks span many consecutive checkpoints of one tensor (up to this many bytes), so that
# a small model does not create one file per tensor per step and the compressor sees the
# trajectory: with the step axis stored innermost (TransposeCodec), consecutive values of one
# parameter sit side by side and bit-shuffling turns their shared sign/exponent/high-mantissa
# bits into long runs.
CHUNK_BYTES = 1 << 20
MAX_STEPS_PER_CHUNK = 256


def is_url(path) -> bool:
    """True for fsspec URLs such as ``memory://run`` or ``s3://bucket/run.zarr``."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def local_path(path) -> Path | None:
    """The filesystem path of a local archive, or None for a URL."""
    if is_url(path):
        return None
    p = str(path)
    return Path(p[len("file://") :] if p.startswith("file://") else p)


def open_store(path, *, read_only: bool):
    """Open the zarr store behind ``path`` (a directory or an fsspec URL)."""
    if is_url(path):
        return zarr.storage.FsspecStore.from_url(path, read_only=read_only)
    return zarr.storage.LocalStore(local_path(path), read_only=read_only)


def exists(path) -> bool:
    """Whether something exists at ``path`` (directory or URL)."""
    if is_url(path):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        return fs.exists(p.rstrip("/") + "/zarr.json") or fs.exists(p)
    return local_path(path).exists()


def open_root(path, *, mode: str = "r") -> zarr.Group:
    """Open an archive's root group, checking that it is a ckptlab archive we can read.

    Raises
    ------
    ArchiveNotFoundError, NotAnArchiveError, FormatVersionError
    """
    if not exists(path):
        raise ArchiveNotFoundError(f"no archive at {path!s}: the path does not exist")
    store = open_store(path, read_only=(mode == "r"))
    try:
        root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
    except Exception as exc:  # zarr raises several types for "no group here"
        raise NotAnArchiveError(
            f"{path!s} is not a ckptlab archive: no Zarr v3 group there ({type(exc).__name__})"
        ) from None
    header = root.attrs.get(ATTR_KEY)
    if not isinstance(header, dict) or "format_version" not in header:
        raise NotAnArchiveError(
            f"{path!s} is a Zarr group but not a ckptlab archive: "
            f"attribute {ATTR_KEY!r} with a format_version is missing"
        )
    version = header["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path!s} has archive format version {version!r}; this ckptlab reads versions "
            f"<= {FORMAT_VERSION}: upgrade ckptlab to read it"
        )
    return root


def read_header(root: zarr.Group) -> dict:
    """The archive's ``ckptlab`` attribute (a plain dict)."""
    return dict(root.attrs[ATTR_KEY])


def steps_per_chunk(nbytes_per_step: int) -> int:
    """Checkpoints per chunk for a tensor of the given size (see CHUNK_BYTES)."""
    return int(max(1, min(MAX_STEPS_PER_CHUNK, CHUNK_BYTES // max(1, nbytes_per_step))))


def trajectory_codecs(ndim: int, itemsize: int) -> dict:
    """Codec arguments for an array whose first axis is ``step``.

    Lossless: blosc-zstd with bit-shuffling; for tensors the step axis is moved innermost.
    """
    kw: dict = {
        "compressors": [
            # level 1: twice the speed of level 3 for ~3% more bytes on real trajectories
            BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=max(1, itemsize))
        ]
    }
    if ndim > 1:
        kw["filters"] = [TransposeCodec(order=tuple(range(1, ndim)) + (0,))]
    return kw


def plain_codecs(itemsize: int) -> dict:
    """Codec arguments for data and state arrays (no step axis)."""
    return {
        "compressors": [
            BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=max(1, itemsize))
        ]
    }


def fsync_dir(path: Path) -> None:
    """Best-effort fsync of a directory entry (after a rename)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
