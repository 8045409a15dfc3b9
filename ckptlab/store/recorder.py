"""Recorder: append checkpoints of any PyTorch training loop to a run archive.

The training thread only snapshots tensors (one copy each) and puts them on a bounded queue;
a writer thread drains the queue, writes every pending checkpoint in one batch (so fast loops
pay the per-write overhead once per batch, not once per step) and then commits. See
:mod:`ckptlab.store.format` for the layout and the commit protocol.
"""

from __future__ import annotations

import datetime as _dt
import asyncio
import math
import numbers
import platform
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import zarr
from zarr.core.array import AsyncArray
from zarr.core.sync import sync

from .._checks import check_choice, check_float, check_int
from ..errors import (
    ArchiveExistsError,
    ArchiveNotFoundError,
    CkptlabError,
    ShapeMismatchError,
    StepOrderError,
    ValidationError,
)
from . import format as fmt
from .lock import WriterLock
from .serial import flatten_state, tensor_to_numpy

__all__ = ["Recorder"]


@dataclass
class _Item:
    step: int
    params: dict[str, np.ndarray]
    metrics: dict[str, float]
    state: tuple[object, dict[str, np.ndarray]] | None

    @property
    def nbytes(self) -> int:
        n = sum(a.nbytes for a in self.params.values())
        if self.state is not None:
            n += sum(a.nbytes for a in self.state[1].values())
        return n


_STOP = object()  # close(): commit what is pending, then end the writer
_FLUSH = object()  # flush(): commit what is pending now


async def _gather(coros) -> None:
    await asyncio.gather(*coros)


def _versions() -> dict:
    import xarray

    from .. import __version__

    return {
        "ckptlab": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "xarray": xarray.__version__,
        "python": platform.python_version(),
    }


def _data_dims(name: str, ndim: int) -> list[str]:
    for split in ("train", "test"):
        if name.endswith("_" + split):
            return [f"sample_{split}"] + [f"{name}_{i}" for i in range(1, ndim)]
    return [f"{name}_{i}" for i in range(ndim)]


def describe_module(model: torch.nn.Module) -> dict:
    """What an archive records of a user's module: information only, never imported."""
    cls = type(model)
    params = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": params,
        "n_parameters": int(sum(math.prod(s) for s in params.values())),
    }


def _json_ready(name: str, obj):
    """Check that ``obj`` survives a JSON round trip (attrs are JSON, never pickles)."""
    import json

    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} must be JSON-serialisable (no NaN/Inf): {exc}") from None


class Recorder:
    """Write a training trajectory, checkpoint by checkpoint, to a Zarr archive.

    Parameters
    ----------
    path : str or path-like
        Directory of the archive (``run.zarr``) or an fsspec URL (``memory://run``).
    model_spec : dict, optional
        JSON-able spec that rebuilds the model (``{"name": ..., "kwargs": {...}}``); taken from
        ``model.spec`` when omitted and the model has one.
    model : torch.nn.Module, optional
        The model being trained. A ckptlab model (:class:`ckptlab.models.ProbeModel`) gives
        its ``spec``; any other module is recorded as information only: its class's qualified
        name and its parameter names and shapes (``model_info``; nothing in it is ever
        imported: analyse such a run with ``ckptlab.analyze(path, model=...)``).
    model_info : dict, optional
        JSON-able description of the model when there is no spec (taken from ``model`` when
        omitted), shown by ``ckptlab info``.
    data : mapping of str to array, optional
        The data the run used (``x_train``, ``y_train``, ``x_test``, ``y_test``, ...), stored
        once so analysis needs nothing else.
    config, task : dict, optional
        JSON-able trainer configuration and task description.
    seed : int, optional
        The run's seed, recorded in the attrs.
    mode : {"w-", "w", "a"}, default "w-"
        ``"w-"`` creates a new archive and refuses an existing path; ``"w"`` replaces an
        existing archive; ``"a"`` reopens one to append after its last committed checkpoint.
    queue_size : int, default 256
        Checkpoints that may wait for the writer before :meth:`save` blocks.
    commit_interval : float, default 1.0
        Seconds the writer gathers checkpoints before it writes and commits them (0: commit
        whenever the queue is empty). A SIGKILL loses at most the checkpoints of the last
        interval; :meth:`flush` and :meth:`close` commit at once.
    max_batch_bytes : int, default 256 MiB
        Commit earlier when the gathered checkpoints reach this size (bounds memory).
    state_interval : float, optional
        Seconds between two snapshots of the resume state (default: ``commit_interval``).
    truncate_after : int, optional
        With ``mode="a"``: drop the checkpoints after this step before appending.

    Raises
    ------
    ArchiveLockedError
        Another Recorder (a trainer, an importer, a repair) is writing the archive; the
        message names it (pid, host, since when).
    ArchiveExistsError, ArchiveNotFoundError, ValidationError

    Notes
    -----
    One writer per archive: the Recorder holds the archive's writer lock (a ``flock`` on
    ``.<name>.lock`` beside a local archive, see :mod:`ckptlab.store.lock`) from construction
    to :meth:`close`, and releases it on errors; the kernel releases it if the process dies.
    Readers never take it.

    A local archive is created in a temporary sibling directory and renamed into place, so a
    crash never leaves a half-made archive at ``path``. Each batch writes its chunks first,
    then each array's shape, then the root ``zarr.json`` holding the commit record and the
    committed shape of every array (consolidated metadata) in one atomic write: after a SIGKILL
    at any moment the archive opens with exactly the checkpoints committed before it, through
    ckptlab and through plain ``xarray.open_zarr``.
    """

    def __init__(
        self,
        path,
        *,
        model_spec: Mapping | None = None,
        model: torch.nn.Module | None = None,
        model_info: Mapping | None = None,
        data: Mapping | None = None,
        config: Mapping | None = None,
        task: Mapping | None = None,
        seed: int | None = None,
        mode: str = "w-",
        queue_size: int = 256,
        commit_interval: float = 1.0,
        max_batch_bytes: int = 256 << 20,
        state_interval: float | None = None,
        truncate_after: int | None = None,
    ):
        check_choice("mode", mode, ("w-", "w", "a"))
        check_int("queue_size", queue_size, min=1)
        self.commit_interval = check_float("commit_interval", commit_interval, min=0.0)
        self.max_batch_bytes = check_int("max_batch_bytes", max_batch_bytes, min=1)
        self._order_written = False
        self.state_interval = (self.commit_interval if state_interval is None
                               else check_float("state_interval", state_interval, min=0.0))
        self._state_due = 0.0
        if truncate_after is not None:
            check_int("truncate_after", truncate_after, min=0)
            if mode != "a":
                raise ValidationError("truncate_after needs mode='a'")
        self.path = path
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ValidationError(
                f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model_spec is None and model is not None:
            from ..models import ProbeModel

            # only ckptlab's own models have a registry spec; a user's `spec` attribute may be
            # anything (a spectrogram, a config object)
            if isinstance(model, ProbeModel):
                model_spec = model.spec
        if model_info is None and model is not None and not model_spec:
            model_info = describe_module(model)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._tails: dict[str, np.ndarray] = {}  # committed rows of each partial last chunk
        self._handles: dict[str, zarr.Array] = {}  # "group/name" -> open array
        self._param_meta: dict[str, tuple[tuple[int, ...], np.dtype, str | None]] | None = None
        self._docs: dict[str, dict] = {}  # "group/name" -> metadata document (snapshot)
        self._group_docs: dict[str, dict] = {}
        self._slot_doc: dict | None = None  # metadata document of the committed state slot

        local = fmt.local_path(path)
        if mode == "a" and not fmt.exists(path):
            raise ArchiveNotFoundError(f"no archive at {path!s}: the path does not exist")
        if local is not None and mode != "a":
            local.parent.mkdir(parents=True, exist_ok=True)
        # The writer lock first, before anything is read or written: it covers the final path
        # (a sibling lock file), so creation, replacement and appending are all one writer's.
        self._wlock = WriterLock(path, purpose="write").acquire()
        try:
            self._open(path, mode, truncate_after, model_spec, model_info, data, config, task,
                       seed)
            self._writer = threading.Thread(target=self._run, name="ckptlab-recorder",
                                            daemon=True)
            self._writer.start()
        except BaseException:
            self._wlock.release()
            raise

    def _open(self, path, mode, truncate_after, model_spec, model_info, data, config, task,
              seed) -> None:
        if mode == "a":
            self._root = fmt.open_root(path, mode="r+")
            self._recover(truncate_after)
        else:
            if fmt.exists(path) and mode == "w-":
                raise ArchiveExistsError(
                    f"an archive already exists at {path!s}: replace it (mode='w', ckptlab train "
                    "--overwrite) or append to it (mode='a', ckptlab train --resume)"
                )
            header = {
                "format_version": fmt.FORMAT_VERSION,
                "model_spec": _json_ready("model_spec", dict(model_spec or {})),
                "model_info": _json_ready("model_info", dict(model_info or {})),
                "task": _json_ready("task", dict(task or {})),
                "config": _json_ready("config", dict(config or {})),
                "seed": None if seed is None else check_int("seed", seed),
                "versions": _versions(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "commit": {"n": 0, "last_step": None, "state_slot": None},
            }
            self._root = self._create(path, header, dict(data or {}), replace=(mode == "w"))
            self._header = header
            self._root_attrs = {}
            self._snapshot = header["format_version"] >= fmt.SNAPSHOT_SINCE
            self._n = 0
            self._last_step: int | None = None
            self._slot: str | None = None
            self._read_group_docs()

    # ------------------------------------------------------------------ creation / recovery
    def _create(self, path, header: dict, data: dict, *, replace: bool) -> zarr.Group:
        local = fmt.local_path(path)
        target = local
        if local is not None:
            # Build next to the destination, then rename: the archive appears whole or not at all.
            local.parent.mkdir(parents=True, exist_ok=True)
            # Leftovers of a creation or replacement killed half-way: only a holder of this
            # path's writer lock makes them, and we hold it now, so their maker is gone.
            for junk in list(local.parent.glob(f".{local.name}.*.partial")) + list(
                    local.parent.glob(f".{local.name}.*.old")):
                shutil.rmtree(junk, ignore_errors=True)
            target = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.partial")
        store = fmt.open_store(str(target) if local is not None else path, read_only=False)
        root = zarr.open_group(store, mode="w")
        for name in (fmt.PARAMS, fmt.METRICS, fmt.STATE):
            root.create_group(name)
        dgroup = root.create_group(fmt.DATA)
        for name, value in data.items():
            arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
            if arr.dtype == object:
                raise ValidationError(f"data[{name!r}] must be a numeric array, got dtype object")
            z = dgroup.create_array(
                name,
                shape=arr.shape,
                dtype=arr.dtype,
                chunks=arr.shape if arr.ndim else (),
                dimension_names=_data_dims(name, arr.ndim),
                fill_value=0,
                config={"write_empty_chunks": True},
                **fmt.plain_codecs(arr.dtype.itemsize),
            )
            z[...] = arr
        # the header and the (empty) snapshot in one write
        snapshot = header["format_version"] >= fmt.SNAPSHOT_SINCE
        fmt.write_root(store, {fmt.ATTR_KEY: header},
                       fmt.read_tree(store) if snapshot else None)
        if local is None:
            return zarr.open_group(store, mode="r+")
        if local.exists():
            if not replace:  # raced with another writer
                shutil.rmtree(target, ignore_errors=True)
                raise ArchiveExistsError(f"an archive already exists at {path!s}")
            from .reader import check_replaceable

            check_replaceable(local)
            old = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.old")
            local.rename(old)
            target.rename(local)
            shutil.rmtree(old, ignore_errors=True)
        else:
            target.rename(local)
        fmt.fsync_dir(local.parent)
        return zarr.open_group(fmt.open_store(local, read_only=False), mode="r+")

    def _recover(self, truncate_after: int | None) -> None:
        """Reopen for appending: drop uncommitted rows and leftovers of a killed writer.

        With ``truncate_after``, checkpoints at later steps are dropped too (a trainer resuming
        from an older training state regenerates them). The commit record (and the snapshot
        plain readers use) is written first, then the arrays are cut back to it.
        """
        from .reader import read_rows

        header = fmt.read_header(self._root)
        self._header = header
        self._root_attrs = {k: v for k, v in self._root.attrs.items() if k != fmt.ATTR_KEY}
        # an archive keeps its format: a format-1 archive gets no snapshot (older readers)
        self._snapshot = int(header.get("format_version", 1)) >= fmt.SNAPSHOT_SINCE
        commit = header["commit"]
        self._n = int(commit["n"])
        self._last_step = commit["last_step"]
        self._slot = commit["state_slot"]
        if truncate_after is not None and self._n:
            steps = read_rows(self._root[f"{fmt.PARAMS}/{fmt.STEP}"], slice(0, self._n),
                              path=self.path)
            keep = int(np.searchsorted(steps, truncate_after, side="right"))
            if keep < self._n:
                self._n = keep
                self._last_step = int(steps[keep - 1]) if keep else None
        local = fmt.local_path(self.path)
        if local is not None:
            for junk in local.rglob("*.partial"):
                if junk.relative_to(local).parts[0] == fmt.ANALYSIS:
                    continue  # an analysis's group being built (verify --repair cleans leftovers)
                junk.unlink(missing_ok=True)
        pgroup = self._root[fmt.PARAMS]
        if self._n == 0:
            # nothing committed: arrays a killed first batch created (perhaps not all of them)
            # are dropped, so the next save defines the parameters afresh
            for gname in (fmt.PARAMS, fmt.METRICS):
                g = self._root[gname]
                for name in list(fmt.array_names(g)):
                    del g[name]
            if "order" in pgroup.attrs:
                del pgroup.attrs["order"]
        found = [k for k in fmt.array_names(pgroup) if k != fmt.STEP]
        order = list(pgroup.attrs.get("order", []))
        self._order_written = bool(order)
        names = [k for k in order if k in found] + sorted(k for k in found if k not in order)
        if names:
            self._param_meta = {}
            for name in names:
                arr = pgroup[name]
                self._param_meta[name] = (
                    tuple(arr.shape[1:]),
                    arr.dtype,
                    arr.attrs.get("torch_dtype"),
                )
        for gname in (fmt.PARAMS, fmt.METRICS):
            g = self._root[gname]
            for name in list(fmt.array_names(g)):
                self._handles[f"{gname}/{name}"] = g[name]
        self._read_group_docs()
        if self._slot is not None:
            try:
                self._slot_doc = fmt.array_doc(self._root[f"{fmt.STATE}/{self._slot}"])
            except KeyError:
                self._slot_doc = None
        self._commit(*self._commit_document(self._n, self._last_step, self._slot))
        for key, arr in self._handles.items():
            if arr.shape[0] != self._n:
                arr.resize((self._n,) + tuple(arr.shape[1:]))
            c = arr.chunks[0]
            start = (self._n // c) * c
            self._tails[key] = read_rows(arr, slice(start, self._n), path=self.path)
        # other slots, including one a killed writer left half-made (no zarr.json yet)
        for slot in fmt.list_children(self._root.store, fmt.STATE):
            if slot != self._slot:
                fmt.delete_child(self._root.store, fmt.STATE, slot)

    def _read_group_docs(self) -> None:
        for g in (fmt.PARAMS, fmt.METRICS, fmt.STATE):
            self._group_docs[g] = fmt.group_doc(self._root[g].attrs)

    # ------------------------------------------------------------------ public API
    @property
    def n_committed(self) -> int:
        """Number of checkpoints committed to the archive so far."""
        return self._n

    @property
    def last_step(self) -> int | None:
        """Step of the newest checkpoint accepted by :meth:`save` (committed or queued)."""
        return self._last_step

    def save(
        self,
        step: int,
        model,
        *,
        metrics: Mapping[str, float] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        state: Mapping | None = None,
        keep_state: bool | None = None,
    ) -> None:
        """Queue one checkpoint; returns once its tensors are copied.

        Parameters
        ----------
        step : int
            Training step, strictly larger than the previous checkpoint's.
        model : torch.nn.Module or mapping of str to tensor
            The model (its ``state_dict()`` is saved) or a state dict.
        metrics : mapping of str to float, optional
            Scalars for this checkpoint (losses, accuracies, ...). A name missing at some
            checkpoints is NaN there.
        optimizer : torch.optim.Optimizer, optional
            Its state is kept for the newest checkpoint only (for resuming).
        state : mapping, optional
            Further trainer state for resuming (RNG states, counters): tensors, arrays, numbers,
            strings, lists and dicts. Kept for the newest checkpoint only.
        keep_state : bool, optional
            Whether to snapshot ``optimizer`` and ``state`` at this checkpoint. By default they
            are snapshot at most once per ``state_interval`` seconds, so the stored state may
            be a little older than the newest checkpoint (see ``Recorder(..., mode="a",
            truncate_after=...)`` to resume from it); pass True at the last step.

        Raises
        ------
        StepOrderError
            ``step`` is not larger than the previous one.
        ShapeMismatchError
            The set of parameters, or a shape or dtype, differs from the first checkpoint.
        CkptlabError
            A previous write failed (the writer's error is re-raised here).
        """
        self._raise_pending()
        if self._closed:
            raise CkptlabError(f"Recorder for {self.path!s} is closed")
        step = check_int("step", step, min=0)
        if self._last_step is not None and step <= self._last_step:
            raise StepOrderError(
                f"step must increase from one checkpoint to the next: got step {step} after "
                f"step {self._last_step} in {self.path!s}"
            )
        sd = model.state_dict() if isinstance(model, torch.nn.Module) else model
        if not isinstance(sd, Mapping) or not sd:
            raise ValidationError(
                f"model must be a torch.nn.Module or a non-empty state dict, got {type(model).__name__}"
            )
        params = {}
        meta = {}
        for name, t in sd.items():
            if not isinstance(t, torch.Tensor):
                raise ValidationError(f"state dict entry {name!r} is not a tensor")
            if "/" in name or name == fmt.STEP or name.startswith("__"):
                raise ValidationError(
                    f"parameter name {name!r} cannot be stored: no '/', not 'step', not '__...'"
                )
            a, tdt = tensor_to_numpy(t)
            params[name] = a
            meta[name] = (tuple(a.shape), a.dtype, tdt)
        self._check_params(step, meta)
        clean_metrics = {}
        for k, v in (metrics or {}).items():
            if not isinstance(k, str) or not k or "/" in k or k == fmt.STEP:
                raise ValidationError(f"metric name must be a non-empty str without '/', got {k!r}")
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise ValidationError(f"metric {k!r} must be a real number, got {v!r}")
            clean_metrics[k] = float(v)
        snap = None
        now = time.monotonic()
        due = keep_state if keep_state is not None else now >= self._state_due
        if (optimizer is not None or state is not None) and due:
            # Copying optimizer state costs more than copying the parameters, and only the
            # newest copy is ever written: take one per state_interval, not per checkpoint.
            self._state_due = now + self.state_interval
            full = dict(state or {})
            if optimizer is not None:
                full["optimizer"] = optimizer.state_dict()
            snap = flatten_state(full)
        self._last_step = step
        self._put(_Item(step, params, clean_metrics, snap))

    def flush(self) -> None:
        """Commit every checkpoint saved so far, now; re-raise a write error."""
        if not self._closed:
            self._put(_FLUSH)
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Flush, stop the writer thread and re-raise any write error. Idempotent."""
        if self._closed:
            self._raise_pending()
            return
        self._closed = True
        try:
            self._put(_STOP)
            self._writer.join()
        finally:
            # only once the writer thread is done (or dead): a next writer may start right away
            self._wlock.release()
        self._raise_pending()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was committed; do not mask the original exception
            try:
                self.close()
            except CkptlabError:
                pass

    def __repr__(self) -> str:
        return f"Recorder({self.path!s}, committed={self._n}, last_step={self._last_step})"

    # ------------------------------------------------------------------ internals
    def _check_params(self, step: int, meta: dict) -> None:
        if self._param_meta is None:
            self._param_meta = meta
            return
        old = self._param_meta
        if set(old) != set(meta):
            missing = sorted(set(old) - set(meta))
            extra = sorted(set(meta) - set(old))
            raise ShapeMismatchError(
                f"parameters changed at step {step} in {self.path!s}: "
                f"missing {missing}, unexpected {extra}"
            )
        for name, (shape, dtype, tdt) in meta.items():
            oshape, odtype, otdt = old[name]
            if shape != oshape or dtype != odtype or tdt != otdt:
                raise ShapeMismatchError(
                    f"parameter {name!r} at step {step} has shape {shape} and dtype "
                    f"{tdt or dtype}; the archive {self.path!s} holds shape {oshape} and dtype "
                    f"{otdt or odtype}"
                )

    def _put(self, item) -> None:
        while True:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._writer.is_alive():
                    self._raise_pending()
                    raise CkptlabError(f"the writer thread of {self.path!s} stopped")

    def _raise_pending(self) -> None:
        err = self._error
        if err is not None:
            if isinstance(err, CkptlabError):
                raise err
            raise CkptlabError(
                f"writing to {self.path!s} failed: {type(err).__name__}: {err}"
            ) from err

    def _run(self) -> None:
        """Gather checkpoints for up to ``commit_interval`` seconds, then write and commit them.

        Each commit rewrites every array's partly filled last chunk and the commit record, so
        committing a handful of checkpoints at a time would rewrite (and recompress) the same
        chunk again and again; gathering for an interval makes that cost per interval.
        """
        pending: list[_Item] = []
        held: list = []  # queue entries to acknowledge once the batch is written
        nbytes = 0
        deadline = 0.0
        stop = False
        while not stop:
            wait = None if not pending else deadline - time.monotonic()
            try:
                item = self._queue.get() if wait is None else (
                    self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
            except queue.Empty:
                item = None  # the interval is over
            commit = item is None or item is _STOP or item is _FLUSH
            if item is not None:
                held.append(item)
            stop = item is _STOP
            if isinstance(item, _Item):
                if not pending:
                    deadline = time.monotonic() + self.commit_interval
                if item.state is not None:  # only the newest state is ever written
                    for old in pending:
                        old.state = None
                pending.append(item)
                nbytes += item.nbytes
                commit = nbytes >= self.max_batch_bytes
            if commit:
                try:
                    if pending and self._error is None:
                        self._write(pending)
                except BaseException as exc:  # surfaced by save()/flush()/close()
                    self._error = exc
                finally:
                    for _ in held:
                        self._queue.task_done()
                    pending, held, nbytes = [], [], 0

    def _write(self, batch: list[_Item]) -> None:
        n0, m = self._n, len(batch)
        steps = np.array([it.step for it in batch], dtype=np.int64)
        jobs = []  # (array key, rows): appended concurrently below
        if not self._order_written:
            # state_dict order, so readers list parameters as the model does (the store's
            # own listing order is arbitrary)
            pgroup = self._root[fmt.PARAMS]
            if "order" not in pgroup.attrs:
                pgroup.attrs["order"] = list(self._param_meta)
            self._group_docs[fmt.PARAMS] = fmt.group_doc(pgroup.attrs)
            self._order_written = True
        for name, (shape, dtype, tdt) in self._param_meta.items():
            key = f"{fmt.PARAMS}/{name}"
            if key not in self._handles:
                self._handles[key] = self._root[fmt.PARAMS].create_array(
                    name,
                    shape=(0,) + shape,
                    dtype=dtype,
                    chunks=(fmt.steps_per_chunk(dtype.itemsize * math.prod(shape)),) + shape,
                    dimension_names=[fmt.STEP] + [f"{name}_{i}" for i in range(len(shape))],
                    fill_value=0,
                    config={"write_empty_chunks": True},
                    attributes={"torch_dtype": tdt} if tdt else {},
                    **fmt.trajectory_codecs(len(shape) + 1, dtype.itemsize),
                )
                self._tails[key] = np.empty((0,) + shape, dtype)
            jobs.append((key, np.stack([it.params[name] for it in batch])))
        prefix = fmt.METRICS + "/"
        known = {k[len(prefix) :] for k in self._handles if k.startswith(prefix)}
        for name in sorted((set().union(*(it.metrics for it in batch)) | known) - {fmt.STEP}):
            if prefix + name not in self._handles:
                self._new_scalar(fmt.METRICS, name, np.float64, n0, fill=np.nan)
            vals = np.array([it.metrics.get(name, np.nan) for it in batch], dtype=np.float64)
            jobs.append((prefix + name, vals))
        for g in (fmt.PARAMS, fmt.METRICS):
            if f"{g}/{fmt.STEP}" not in self._handles:
                self._new_scalar(g, fmt.STEP, np.int64, n0, fill=0)
            jobs.append((f"{g}/{fmt.STEP}", steps))
        # 1. The rows, in chunks past each array's visible shape (no metadata changes yet).
        # One trip through zarr's event loop for every array of the batch: the writes of
        # different arrays overlap instead of paying the sync round trip one by one.
        sync(_gather([self._append(key, rows, n0) for key, rows in jobs]))

        slot = self._slot
        with_state = [it for it in batch if it.state is not None]
        if with_state:
            newest = with_state[-1]
            slot = f"step{newest.step}"
            self._write_state(slot, newest.state)
        commit = self._commit_document(n0 + m, int(steps[-1]), slot)  # built before 2.
        # 2. Each array's own shape: readers of per-array metadata see the rows from here on
        # (all of them written, but until 3. not yet committed: keep this window short).
        sync(_gather([self._grow(key, n0 + m) for key, _ in jobs]))
        # 3. The commit: record and snapshot of every committed shape in one atomic write.
        self._commit(*commit)
        if slot != self._slot and self._slot is not None:
            try:
                del self._root[f"{fmt.STATE}/{self._slot}"]
            except KeyError:
                pass
        self._slot = slot
        self._n = n0 + m

    def _new_scalar(self, group: str, name: str, dtype, n0: int, *, fill) -> None:
        dtype = np.dtype(dtype)
        kw = dict(
            shape=(n0,),
            dtype=dtype,
            chunks=(fmt.steps_per_chunk(dtype.itemsize) * 16,),
            dimension_names=[fmt.STEP],
            fill_value=fill,
            config={"write_empty_chunks": True},
            **fmt.trajectory_codecs(1, dtype.itemsize),
        )
        if n0:
            # A metric first seen after some commits: its committed rows are fill values, and
            # a reader must never find a committed row without its chunk. So the chunks come
            # first, through an in-memory twin of the array, and its metadata after them.
            twin = zarr.create_array(zarr.storage.MemoryStore(), **kw)._async_array
            ahead = AsyncArray(twin.metadata, self._root.store_path / group / name,
                               twin.config)
            sync(ahead.setitem(slice(0, n0), np.full(n0, fill, dtype)))
        arr = self._root[group].create_array(name, **kw)
        c = arr.chunks[0]
        start = (n0 // c) * c
        self._handles[f"{group}/{name}"] = arr
        self._tails[f"{group}/{name}"] = np.full(n0 - start, fill, dtype)

    async def _append(self, key: str, values: np.ndarray, n0: int) -> None:
        """Write rows n0.. of array ``key``, rewriting the partial tail chunk whole.

        Only chunks are written: through a copy of the array's handle with the new length,
        held in memory, so the stored shape (what readers see) is unchanged until
        :meth:`_grow`. The rewritten tail chunk holds the committed rows unchanged.
        """
        arr = self._handles[key]._async_array  # zarr's async handle; resize updates it in place
        c = arr.chunks[0]
        start = (n0 // c) * c
        tail = self._tails[key]
        rows = np.concatenate([tail, values]) if len(tail) else values
        new_n = n0 + len(values)
        ahead = AsyncArray(arr.metadata.update_shape((new_n,) + tuple(arr.shape[1:])),
                           arr.store_path, arr.config)
        # From a chunk boundary to the end of the array: zarr sees whole chunks and never has
        # to read one back.
        await ahead.setitem(slice(start, new_n), rows)
        tail_start = (new_n // c) * c
        self._tails[key] = rows[tail_start - start :].copy()

    async def _grow(self, key: str, new_n: int) -> None:
        arr = self._handles[key]._async_array
        if arr.shape[0] != new_n:
            await arr.resize((new_n,) + tuple(arr.shape[1:]))

    def _commit_document(self, n: int, last_step: int | None, slot: str | None):
        """(header, root document or None): the commit, ready to write."""
        header = dict(self._header)
        header["commit"] = {"n": n, "last_step": last_step, "state_slot": slot}
        raw = None
        if self._snapshot:
            raw = fmt.root_document({**self._root_attrs, fmt.ATTR_KEY: header},
                                    self._nodes(n, slot))
        return header, raw

    def _commit(self, header: dict, raw: bytes | None) -> None:
        """Write the commit record (and, format >= 2, the snapshot) in one atomic put."""
        if raw is not None:
            fmt.put_root(self._root.store, raw)
        else:
            self._root.attrs[fmt.ATTR_KEY] = header
        self._header = header

    def _nodes(self, n: int, slot: str | None) -> dict[str, dict]:
        """Metadata documents of the committed archive: what plain readers are shown."""
        # nodes others may write (analysis results) are read afresh; ours come from memory
        nodes = fmt.read_tree(self._root.store, skip=(fmt.PARAMS, fmt.METRICS, fmt.STATE))
        nodes.update(self._group_docs)
        for key, h in self._handles.items():
            doc = self._docs.get(key)
            if doc is None:
                doc = self._docs[key] = fmt.array_doc(h)
            nodes[key] = {**doc, "shape": [n, *doc["shape"][1:]]}
        if slot is not None and self._slot_doc is not None:
            nodes[f"{fmt.STATE}/{slot}"] = self._slot_doc
        return nodes

    def _write_state(self, slot: str, snap) -> None:
        """Write resume state as one byte array plus a JSON index (two writes, not dozens)."""
        skeleton, arrays = snap
        index, parts, offset = {}, [], 0
        for name, a in arrays.items():
            b = np.asarray(a, order="C").reshape(-1).view(np.uint8)
            index[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
            parts.append(b)
            offset += b.size
        blob = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        z = self._root[fmt.STATE].create_array(
            slot,
            shape=blob.shape,
            dtype=np.uint8,
            chunks=(max(1, blob.size),),
            dimension_names=["byte"],
            fill_value=0,
            config={"write_empty_chunks": True},
            attributes={"skeleton": skeleton, "index": index},
            overwrite=True,
            **fmt.plain_codecs(1),
        )
        z[...] = blob
        self._slot_doc = fmt.array_doc(z)
