"""The archive format: one Zarr v3 group per training run.

Layout (every array has ``dimension_names``, so plain ``xarray.open_zarr`` reads each group)::

    run.zarr/                 root attrs["ckptlab"]: format_version, model_spec, task, config,
                              seed, versions, created, commit = {n, last_step, state_slot};
                              consolidated_metadata: the committed shape of every array
      params/<name>           (step, <name>_0, <name>_1, ...) one array per state_dict entry
      params/step             (step,) int64 training step of each checkpoint
      metrics/<name>          (step,) float64 per-checkpoint scalars (losses, accuracies, ...)
      metrics/step            (step,) int64, the same steps
      data/<name>             training and test data of the run (x_train, y_train, ...)
      state/<slot>/...        optimizer and trainer state at the newest checkpoint (for resume)
      analysis/...            results written by ``ckptlab.analyze``
    .run.zarr.lock            beside the archive: the writer lock (see :mod:`.lock`)

The commit record ``attrs["ckptlab"]["commit"]["n"]`` is the source of truth: arrays may be
longer than ``n`` after a crash (rows written but never committed); readers slice them to ``n``.
Every key is written atomically (zarr's LocalStore writes a temporary file and renames it), and
the commit record is written last, so a writer killed at any moment leaves the committed
checkpoints intact.

Format versions
---------------
1
    The layout above without checksums and without consolidated metadata.
2
    - Every chunk ends with a crc32c checksum of its compressed bytes (zarr's ``crc32c``
      codec, last in the codec chain, after the compressor), so a flipped bit or a truncated
      file is an error (:class:`~ckptlab.errors.ChecksumError`), never silently wrong numbers.
      Arrays carry their own codec chain, so a format-1 array appended to by a format-2
      writer keeps its old chain.
    - The root ``zarr.json`` holds, besides the commit record, zarr's consolidated metadata:
      the metadata of every array with the *committed* shape, written in the same atomic write
      as the commit record. Readers that use it (``xarray.open_zarr`` by default, and
      ``zarr.open_group``/``zarr.open_consolidated`` by path) see all arrays change length at
      once, at each commit, and never see uncommitted rows. The Recorder writes a batch's
      chunks first, then each array's own ``zarr.json`` (its new shape), then the root.
      ckptlab itself opens archives through :func:`open_store`, whose stores declare that they
      do not support consolidated metadata, so ckptlab always reads each array's own metadata
      and slices to the commit (the snapshot is for plain readers).

Format-1 archives still open and read; appending to one keeps it at format 1 (no snapshot is
added, so older ckptlab versions can still open it); new arrays in it carry checksums.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import ArchiveError, ArchiveNotFoundError, FormatVersionError, NotAnArchiveError

__all__ = [
    "FORMAT_VERSION", "ATTR_KEY", "open_store", "is_url", "read_header", "publish",
    "has_checksums", "chunk_checksum_ok",
]

#: Version of the layout above. Readers refuse archives with a larger version.
FORMAT_VERSION = 2
#: First version whose root holds the consolidated snapshot of the committed shapes.
SNAPSHOT_SINCE = 2
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


class _LocalStore(zarr.storage.LocalStore):
    # ckptlab reads each array's own metadata and the commit record; the consolidated
    # snapshot in the root is written by ckptlab for plain readers (see the module docstring).
    # Declaring no support makes zarr.open_group ignore it on these stores.
    supports_consolidated_metadata = False


class _FsspecStore(zarr.storage.FsspecStore):
    supports_consolidated_metadata = False


def open_store(path, *, read_only: bool):
    """Open the zarr store behind ``path`` (a directory or an fsspec URL).

    Groups opened on it ignore the consolidated snapshot in the root (ckptlab code must open
    archives through this function, never by a path string).
    """
    if is_url(path):
        return _FsspecStore.from_url(path, read_only=read_only)
    return _LocalStore(local_path(path), read_only=read_only)


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
    except PermissionError:
        raise ArchiveError(f"cannot read {path!s}: permission denied") from None
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

    Lossless: blosc-zstd with bit-shuffling; for tensors the step axis is moved innermost;
    a crc32c checksum of the compressed bytes ends each chunk.
    """
    kw: dict = {
        "compressors": [
            # level 1: twice the speed of level 3 for ~3% more bytes on real trajectories
            BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=max(1, itemsize)),
            Crc32cCodec(),
        ]
    }
    if ndim > 1:
        kw["filters"] = [TransposeCodec(order=tuple(range(1, ndim)) + (0,))]
    return kw


def plain_codecs(itemsize: int) -> dict:
    """Codec arguments for data, state and analysis arrays (zstd, then a crc32c checksum)."""
    return {
        "compressors": [
            BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=max(1, itemsize)),
            Crc32cCodec(),
        ]
    }


# ---------------------------------------------------------------------- checksums and chunks
def has_checksums(arr) -> bool:
    """Whether the chunks of a zarr array end with a crc32c checksum (format >= 2 arrays)."""
    codecs = getattr(arr.metadata, "codecs", ())
    return any(isinstance(c, Crc32cCodec) for c in codecs)


def chunk_checksum_ok(raw: bytes) -> bool:
    """Whether a stored chunk's trailing crc32c matches its bytes (as zarr's codec checks)."""
    import google_crc32c

    if len(raw) < 4:
        return False
    return np.uint32(google_crc32c.value(bytes(raw[:-4]))).tobytes() == bytes(raw[-4:])


def chunks(arr, rows: tuple[int, int] | None = None):
    """(storage key, (first row, stop row)) of each chunk of ``arr`` holding rows [a, b).

    Rows are positions along the first axis (all of them for ``rows=None``); every chunk of
    the trailing axes is listed. 0-d arrays have one chunk.
    """
    shape = tuple(arr.shape)
    if not shape:
        yield f"{arr.path}/{arr.metadata.encode_chunk_key(())}", (0, 1)
        return
    cs = tuple(arr.chunks)
    a, b = (0, shape[0]) if rows is None else rows
    first = range(a // cs[0], math.ceil(b / cs[0])) if b > a else range(0)
    rest = [range(math.ceil(n / c)) for n, c in zip(shape[1:], cs[1:])]
    for i in first:
        r = (i * cs[0], min((i + 1) * cs[0], shape[0]))
        for tail in itertools.product(*rest):
            yield f"{arr.path}/{arr.metadata.encode_chunk_key((i, *tail))}", r


def array_names(group) -> list[str]:
    """Names of the arrays in a zarr group, without zarr's warning about a temporary file a
    killed write left there (verify notes those; a resume or a repair removes them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        return list(group.array_keys())


def group_names(group) -> list[str]:
    """Names of the subgroups of a zarr group (see :func:`array_names`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        return list(group.group_keys())


def get_raw(store, key: str) -> bytes | None:
    """The stored bytes of ``key`` (None when absent)."""
    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


# ---------------------------------------------------------------------- the plain-reader snapshot
def array_doc(arr) -> dict:
    """An array's metadata document (what its own ``zarr.json`` holds)."""
    meta = arr.metadata
    return json.loads(meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())


def group_doc(attributes: dict | None = None) -> dict:
    return {"attributes": dict(attributes or {}), "zarr_format": 3, "node_type": "group"}


async def _read_tree(store, prefix: str, out: dict, skip: frozenset) -> None:
    try:
        names = [n async for n in store.list_dir(prefix)]
    except (OSError, FileNotFoundError):
        return
    keys = [f"{prefix}/{n}" if prefix else n for n in names
            if n != "zarr.json" and ".partial" not in n and not n.startswith(".")
            and (prefix or n not in skip)]

    async def get(key):
        try:
            return key, await store.get(f"{key}/zarr.json", prototype=default_buffer_prototype())
        except OSError:
            return key, None

    groups = []
    for key, buf in await asyncio.gather(*(get(k) for k in keys)):
        if buf is None:
            continue
        try:
            doc = json.loads(buf.to_bytes())
        except ValueError:
            continue
        doc.pop("consolidated_metadata", None)
        out[key] = doc
        if doc.get("node_type") == "group":
            groups.append(key)
    await asyncio.gather(*(_read_tree(store, g, out, skip) for g in groups))


def read_tree(store, prefix: str = "", *, skip=()) -> dict[str, dict]:
    """Metadata documents of every node below ``prefix``: path -> doc (no chunk is listed).

    ``skip`` names top-level nodes to leave out (only with ``prefix=""``). Nodes that vanish
    while being read (a concurrent analysis replacing its cache) are left out.
    """
    out: dict[str, dict] = {}
    sync(_read_tree(store, prefix, out, frozenset(skip)))
    return out


def list_children(store, prefix: str) -> list[str]:
    """Names directly below ``prefix``, nodes or not (a directory a killed writer left without
    its ``zarr.json`` included); ``zarr.json`` and temporary files left out."""

    async def names():
        return [n async for n in store.list_dir(prefix)]

    return sorted(n for n in sync(names()) if n != "zarr.json" and ".partial" not in n)


def delete_child(store, prefix: str, name: str) -> None:
    """Delete everything under ``prefix/name`` (a node or a half-made one)."""
    sync(store.delete_dir(f"{prefix}/{name}"))


def root_document(attributes: dict, nodes: dict[str, dict] | None) -> bytes:
    """The root ``zarr.json``: attributes (the commit record) and the snapshot.

    ``nodes`` maps each node's path to its metadata document, arrays with their committed
    shape; None gives no snapshot (format 1).
    """
    doc = group_doc(attributes)
    if nodes is not None:
        meta = {}
        for k in sorted(nodes, key=lambda k: (k.count("/"), k)):
            d = dict(nodes[k])
            if d.get("node_type") == "group":
                d["consolidated_metadata"] = {"kind": "inline", "must_understand": False,
                                              "metadata": {}}
            meta[k] = d
        doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False,
                                        "metadata": meta}
    return json.dumps(doc, indent=2, allow_nan=False).encode()


def put_root(store, raw: bytes) -> None:
    """Write the root ``zarr.json`` in one atomic put (a rename on local disks)."""
    sync(store.set("zarr.json", default_buffer_prototype().buffer.from_bytes(raw)))


def write_root(store, attributes: dict, nodes: dict[str, dict] | None) -> None:
    """:func:`put_root` of :func:`root_document`."""
    put_root(store, root_document(attributes, nodes))


def read_root_doc(store) -> dict | None:
    """The root ``zarr.json`` as a dict (snapshot included), None when unreadable."""
    raw = get_raw(store, "zarr.json")
    try:
        return None if raw is None else json.loads(raw)
    except ValueError:
        return None


def clamp_to_commit(nodes: dict[str, dict], n: int) -> dict[str, dict]:
    """Documents with the step-axis length of every params/metrics array cut to ``n``."""
    out = dict(nodes)
    for k, d in nodes.items():
        g = k.split("/", 1)[0]
        if g in (PARAMS, METRICS) and k.count("/") == 1 and d.get("node_type") == "array":
            shape = list(d.get("shape") or [])
            if shape and shape[0] > n:
                out[k] = {**d, "shape": [n, *shape[1:]]}
    return out


def publish(path) -> bool:
    """Rewrite the plain-reader snapshot of an archive for its committed checkpoints.

    For code that writes into an archive besides the Recorder (the analysis cache): plain
    ``xarray.open_zarr`` readers see nodes created after the last commit only once the snapshot
    is rewritten. Takes the writer lock for a moment; returns False (doing nothing) when a
    writer holds it, since its next commit rewrites the snapshot anyway, and for format-1
    archives, which have none.
    """
    from ..errors import ArchiveLockedError
    from .lock import WriterLock

    lock = WriterLock(path, purpose="publish")
    try:
        lock.acquire()
    except ArchiveLockedError:
        return False
    try:
        root = open_root(path, mode="r+")
        header = read_header(root)
        if header.get("format_version", 1) < SNAPSHOT_SINCE:
            return False
        n = int((header.get("commit") or {}).get("n", 0))
        store = root.store
        write_root(store, dict(root.attrs), clamp_to_commit(read_tree(store), n))
        return True
    finally:
        lock.release()


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
