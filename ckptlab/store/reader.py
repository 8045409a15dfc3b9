"""Reading run archives: a lazy xarray view and eager accessors for analysis and resume."""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path

import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr
from zarr.core.sync import sync

from ..errors import ArchiveError, ChecksumError, CorruptArchiveError
from . import format as fmt
from .serial import numpy_to_tensor, unflatten_state

__all__ = ["Run", "open_run", "run_info", "check_replaceable", "read_rows"]


def check_replaceable(path: Path) -> None:
    """Refuse to overwrite a directory that is not a ckptlab archive (never delete user data)."""
    try:
        fmt.open_root(path, mode="r")
    except ArchiveError:
        if path.is_dir() and any(path.iterdir()) or path.is_file():
            raise ArchiveError(
                f"refusing to replace {path!s}: it exists and is not a ckptlab archive"
            ) from None


def _chunk_keys(arr: zarr.Array, n: int) -> list[str]:
    """Storage keys of the chunks holding rows [0, n) (chunks span whole trailing axes)."""
    c = arr.chunks[0] if arr.ndim else 1
    tail = "/".join("0" for _ in range(max(arr.ndim - 1, 0)))
    if arr.ndim == 0:
        return [f"{arr.path}/c"]
    return [f"{arr.path}/c/{i}" + (f"/{tail}" if tail else "") for i in range(math.ceil(n / c))]


def _rows_of(sel, length: int) -> tuple[int, int]:
    """First and stop row (first axis) that an index expression reads."""
    first = sel[0] if isinstance(sel, tuple) and sel else sel
    if isinstance(first, slice):
        a, b, _ = first.indices(length)
        return a, max(a, b)
    if isinstance(first, (int, np.integer)):
        i = int(first) + (length if first < 0 else 0)
        return i, i + 1
    return 0, length


def _steps_of(store, rows: tuple[int, int]) -> tuple[int, int] | None:
    """Training steps of checkpoint positions [a, b) (None when params/step is unreadable)."""
    try:
        st = zarr.open_array(store, path=f"{fmt.PARAMS}/{fmt.STEP}", mode="r")
        b = min(rows[1], st.shape[0])
        if b <= rows[0]:
            return None
        v = np.asarray(st[rows[0] : b])
        return int(v[0]), int(v[-1])
    except Exception:
        return None


def read_error(arr: zarr.Array, rows, *, path, exc: BaseException | None = None,
               n: int | None = None) -> CorruptArchiveError:
    """The error to raise when reading rows [a, b) of ``arr`` failed: which chunk, why.

    Every chunk under the read is fetched raw and its crc32c checked; a mismatch gives a
    :class:`ChecksumError` naming the array, the chunk, the checkpoint positions and the
    training steps it holds (from ``params/step``; ``n``, the committed count, marks rows past
    the commit). Otherwise a :class:`CorruptArchiveError` carrying zarr's own message.
    """
    name = arr.path
    store = arr.store
    stepped = name.split("/", 1)[0] in (fmt.PARAMS, fmt.METRICS) and arr.ndim > 0
    if fmt.has_checksums(arr):
        for key, (r0, r1) in fmt.chunks(arr, rows):
            try:
                raw = fmt.get_raw(store, key)
            except Exception:
                raw = None
            if raw is None or fmt.chunk_checksum_ok(raw):
                continue
            where, srows, ssteps = "", None, None
            if stepped:
                srows = (r0, r1 - 1)
                ssteps = _steps_of(store, (r0, r1 if n is None else min(r1, n)))
                last = r1 - 1 if n is None else min(r1, n) - 1
                where = (f" (checkpoints {r0}..{last}" if last >= r0 else
                         f" (rows {r0}..{r1 - 1}, past the commit")
                if ssteps is not None and last >= r0:
                    where += f", steps {ssteps[0]}..{ssteps[1]}"
                where += ")"
            advice = (f"`ckptlab verify {path!s} --repair` drops the checkpoints from there on"
                      if stepped else "this array cannot be recovered from the archive")
            return ChecksumError(
                f"cannot read array {name!r} of {path!s}: chunk {key!r}{where} fails its "
                "crc32c checksum: its bytes changed after they were written (a disk fault, a "
                f"truncated or partial copy); {advice}",
                array=name, chunk=key, rows=srows, steps=ssteps,
            )
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return CorruptArchiveError(f"cannot read array {name!r} of {path!s}{detail}")


def read_rows(arr: zarr.Array, sel, *, path, n: int | None = None) -> np.ndarray:
    """``arr[sel]`` as a numpy array; a failure becomes :func:`read_error`'s error."""
    try:
        return np.asarray(arr[sel])
    except Exception as exc:
        raise read_error(arr, _rows_of(sel, arr.shape[0] if arr.ndim else 1), path=path,
                         exc=exc, n=n) from None


class _ArchiveArray:
    """An array-like over rows [0, n) of one archive array, opened lazily in each process.

    Holds only the path and the array's name, so a dask graph built from it ships no data,
    and workers read the archive themselves. Read failures become CorruptArchiveError.
    """

    def __init__(self, path, name: str, shape: tuple, dtype: np.dtype):
        self.path, self.name = path, name
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._arr = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_arr"] = None
        return d

    def _array(self) -> zarr.Array:
        if self._arr is None:
            store = fmt.open_store(self.path, read_only=True)
            self._arr = zarr.open_array(store, path=self.name, mode="r")
        return self._arr

    def __getitem__(self, key):
        try:
            arr = self._array()
        except Exception as exc:
            raise CorruptArchiveError(
                f"cannot open array {self.name!r} of {self.path!s}: {type(exc).__name__}: {exc}"
            ) from None
        return read_rows(arr, key, path=self.path, n=self.shape[0] if self.ndim else None)


class Run:
    """An open run archive.

    Parameters
    ----------
    path : str or path-like
        Directory or fsspec URL of the archive.

    Raises
    ------
    ArchiveNotFoundError, NotAnArchiveError, FormatVersionError, CorruptArchiveError
    """

    def __init__(self, path):
        self.path = str(path) if isinstance(path, Path) else path
        self._root = fmt.open_root(path, mode="r")
        self.header = fmt.read_header(self._root)
        commit = self.header.get("commit") or {}
        self.n = int(commit.get("n", 0))
        self._arrays: dict[str, zarr.Array] = {}
        self._kept: dict[str, dict[int, np.ndarray]] = {}  # see _param_rows
        for gname in (fmt.PARAMS, fmt.METRICS):
            if gname not in self._root:
                raise CorruptArchiveError(f"{self.path!s} lacks the group {gname!r}")
            g = self._root[gname]
            found = set(fmt.array_names(g))
            order = [k for k in g.attrs.get("order", []) if k in found]
            for name in order + sorted(found - set(order)):
                arr = g[name]
                if arr.shape[0] < self.n:
                    raise CorruptArchiveError(
                        f"array {gname}/{name} of {self.path!s} has {arr.shape[0]} rows but "
                        f"{self.n} checkpoints are committed"
                    )
                self._arrays[f"{gname}/{name}"] = arr
        self._check_chunks()

    def _check_chunks(self) -> None:
        """A missing chunk would read back as fill values: refuse it at open."""
        local = fmt.local_path(self.path)
        store = None if local is not None else fmt.open_store(self.path, read_only=True)
        for name, arr in self._arrays.items():
            for key in _chunk_keys(arr, self.n):
                ok = (local / key).is_file() if local is not None else sync(store.exists(key))
                if not ok:
                    row = int(key.split("/c/")[1].split("/")[0]) * arr.chunks[0]
                    raise CorruptArchiveError(
                        f"chunk {key!r} of {self.path!s} is missing: array {name!r} has no data "
                        f"for checkpoints {row}..{min(row + arr.chunks[0], self.n) - 1}"
                    )

    # ------------------------------------------------------------------ metadata
    @property
    def model_spec(self) -> dict:
        return dict(self.header.get("model_spec") or {})

    @property
    def model_info(self) -> dict:
        """What the Recorder noted of a user's model (class name, parameter shapes); info only."""
        return dict(self.header.get("model_info") or {})

    @property
    def config(self) -> dict:
        return dict(self.header.get("config") or {})

    @property
    def task(self) -> dict:
        return dict(self.header.get("task") or {})

    @cached_property
    def steps(self) -> np.ndarray:
        """Training step of each committed checkpoint, int64 (n,)."""
        arr = self._arrays.get(f"{fmt.PARAMS}/{fmt.STEP}")
        if arr is None or self.n == 0:
            return np.zeros(0, np.int64)
        return self._read(f"{fmt.PARAMS}/{fmt.STEP}", slice(0, self.n))

    @property
    def param_names(self) -> list[str]:
        p = fmt.PARAMS + "/"
        return [k[len(p) :] for k in self._arrays if k.startswith(p) and k != p + fmt.STEP]

    @property
    def metric_names(self) -> list[str]:
        p = fmt.METRICS + "/"
        return [k[len(p) :] for k in self._arrays if k.startswith(p) and k != p + fmt.STEP]

    def _read(self, key: str, sel) -> np.ndarray:
        return read_rows(self._arrays[key], sel, path=self.path, n=self.n)

    # ------------------------------------------------------------------ data
    def params(self, start: int, stop: int | None = None, *, names=None) -> dict[str, np.ndarray]:
        """Parameters of checkpoints [start, stop) by position: name -> (m, *shape) arrays.

        Reading a block at once reads each chunk once; use it rather than one call per step.
        ``names`` restricts the read to some parameters (default: all).
        """
        stop = start + 1 if stop is None else stop
        if not (0 <= start < stop <= self.n):
            raise IndexError(f"checkpoint range [{start}, {stop}) outside [0, {self.n})")
        all_names = self.param_names
        if names is None:
            names = all_names
        else:
            unknown = sorted(set(names) - set(all_names))
            if unknown:
                raise KeyError(f"no parameter(s) {unknown} in {self.path!s}")
        return {n: self._param_rows(f"{fmt.PARAMS}/{n}", start, stop) for n in names}

    def _param_rows(self, key: str, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a parameter, keeping the chunks at both ends for the blocks beside it.

        zarr decodes whole chunks, and a chunk often holds more checkpoints than one block (a
        bias: up to 256): reading block by block decoded the same chunk once per block, and
        each zarr call costs about 0.5 ms even for a few bytes. The first and the last chunk
        of a read are kept when the read used only part of them (at most two chunks, about
        2 x CHUNK_BYTES, per parameter), and serve the block before or after, whichever order
        the scheduler runs the blocks in. Only committed rows (< n) are kept.
        """
        arr = self._arrays[key]
        if arr.ndim == 0 or arr.chunks[0] <= 1:
            return self._read(key, slice(a, b))
        c = arr.chunks[0]
        first, last = a // c, (b - 1) // c
        kept = self._kept.get(key, {})  # chunk index -> its committed rows; replaced whole
        have = {k: kept[k] for k in (first, last) if k in kept}
        lo = first + 1 if first in have else first
        hi = last - 1 if last in have else last
        got = {}
        if lo <= hi:  # the chunks not kept, in one call
            rows = self._read(key, slice(lo * c, min(self.n, (hi + 1) * c)))
            got = {k: rows[(k - lo) * c : (k - lo + 1) * c] for k in range(lo, hi + 1)}
        chunks = {**have, **got}
        parts = [chunks[k][max(a, k * c) - k * c : min(b, (k + 1) * c) - k * c]
                 for k in range(first, last + 1)]
        ends = {k: chunks[k] for k in {first, last}
                if (k == first and a > k * c) or (k == last and b < min(self.n, (k + 1) * c))}
        if ends:
            # copies: a kept chunk must not pin the whole read, nor share memory with the
            # caller's rows
            self._kept[key] = {k: v if k in have else v.copy() for k, v in ends.items()}
        if len(parts) > 1:
            return np.concatenate(parts)
        return parts[0].copy() if first in have or first in ends else parts[0]

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """The state dict of checkpoint ``index`` (position, negative counts from the end)."""
        i = index + self.n if index < 0 else index
        block = self.params(i)
        out = {}
        for name, a in block.items():
            tdt = self._arrays[f"{fmt.PARAMS}/{name}"].attrs.get("torch_dtype")
            out[name] = numpy_to_tensor(a[0], tdt)
        return out

    def metrics(self) -> dict[str, np.ndarray]:
        """Every per-checkpoint scalar, name -> (n,) float64."""
        return {n: self._read(f"{fmt.METRICS}/{n}", slice(0, self.n)) for n in self.metric_names}

    def data(self) -> dict[str, np.ndarray]:
        """The data the run was trained on (x_train, y_train, ...), eagerly."""
        if fmt.DATA not in self._root:
            return {}
        g = self._root[fmt.DATA]
        return {name: read_rows(g[name], ..., path=self.path) for name in fmt.array_names(g)}

    def training_state(self, *, as_tensors: bool = True) -> dict | None:
        """Optimizer and trainer state saved with the newest checkpoint, or None."""
        slot = (self.header.get("commit") or {}).get("state_slot")
        if slot is None:
            return None
        try:
            z = self._root[f"{fmt.STATE}/{slot}"]
            blob = read_rows(z, ..., path=self.path)
            skeleton, index = z.attrs["skeleton"], z.attrs["index"]
            arrays = {}
            for name, e in index.items():
                dt = np.dtype(e["dtype"])
                count = int(np.prod(e["shape"], dtype=np.int64))
                raw = blob[e["offset"] : e["offset"] + count * dt.itemsize]
                arrays[name] = raw.view(dt).reshape(e["shape"]).copy()
        except CorruptArchiveError:
            raise
        except Exception as exc:
            raise CorruptArchiveError(
                f"cannot read the training state {slot!r} of {self.path!s}: {exc}"
            ) from None
        return unflatten_state(skeleton, arrays, as_tensors=as_tensors)

    # ------------------------------------------------------------------ xarray
    def _lazy(self, key: str) -> xr.Variable:
        arr = self._arrays[key]
        shape = (self.n,) + tuple(arr.shape[1:])
        proxy = _ArchiveArray(self.path, arr.path, shape, arr.dtype)
        # several zarr chunks per dask block: fewer tasks, same reads
        step_bytes = max(1, arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
        per_block = max(1, (32 << 20) // (step_bytes * arr.chunks[0])) * arr.chunks[0]
        chunks = (per_block,) + tuple(arr.shape[1:])
        dims = list(arr.metadata.dimension_names or [])
        return xr.Variable(dims, da.from_array(proxy, chunks=chunks, asarray=True, name=False))

    def dataset(self) -> xr.Dataset:
        """Parameters and metrics as one lazy (dask-backed) Dataset with a ``step`` coordinate."""
        variables = {}
        for key in self._arrays:
            group, name = key.split("/", 1)
            if name == fmt.STEP:
                continue
            var = self._lazy(key)
            var.attrs = {"group": group}
            tdt = self._arrays[key].attrs.get("torch_dtype")
            if tdt:
                var.attrs["torch_dtype"] = tdt
            variables[name] = var
        ds = xr.Dataset(variables, coords={fmt.STEP: (fmt.STEP, self.steps)})
        ds[fmt.STEP].attrs = {"long_name": "training step", "units": "step"}
        ds.attrs = {
            "path": str(self.path),
            "model_spec": self.model_spec,
            "task": self.task,
            "config": self.config,
            "seed": self.header.get("seed"),
            "format_version": self.header["format_version"],
            "versions": self.header.get("versions", {}),
        }
        return ds

    # ------------------------------------------------------------------ summary
    def info(self) -> dict:
        """A summary: model, task, checkpoints, step range, size on disk, metrics, analyses."""
        steps = self.steps
        local = fmt.local_path(self.path)
        size = None
        if local is not None:
            size = sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(local) for f in fs
            )
        analyses = []
        if fmt.ANALYSIS in self._root:
            analyses = sorted(k for k in fmt.group_names(self._root[fmt.ANALYSIS])
                              if not k.startswith("."))
        n_params = sum(
            int(np.prod(self._arrays[f"{fmt.PARAMS}/{n}"].shape[1:])) for n in self.param_names
        )
        return {
            "path": str(self.path),
            "format_version": self.header["format_version"],
            "model": self.model_spec,
            "model_info": self.model_info,
            "n_parameters": n_params,
            "task": self.task,
            "seed": self.header.get("seed"),
            "checkpoints": self.n,
            "first_step": int(steps[0]) if len(steps) else None,
            "last_step": int(steps[-1]) if len(steps) else None,
            "bytes_on_disk": size,
            "metrics": self.metric_names,
            "analyses": analyses,
            "created": self.header.get("created"),
            "resumable": (self.header.get("commit") or {}).get("state_slot") is not None,
        }


def open_run(path) -> xr.Dataset:
    """Open a run archive as a lazy :class:`xarray.Dataset` of parameters and metrics.

    Parameters
    ----------
    path : str or path-like
        Directory (``run.zarr``) or fsspec URL of the archive.

    Returns
    -------
    xarray.Dataset
        Dims ``step`` plus each tensor's own; dask-backed; only committed checkpoints (an
        archive still being written shows those committed so far).

    Raises
    ------
    ArchiveNotFoundError, NotAnArchiveError, FormatVersionError, CorruptArchiveError
    """
    return Run(path).dataset()


def run_info(path) -> dict:
    """Summary of an archive (see :meth:`Run.info`)."""
    return Run(path).info()
