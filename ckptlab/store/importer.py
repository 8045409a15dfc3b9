"""Import checkpoints already on disk into a run archive (``ckptlab import SRC DEST``).

Sources: a folder of ``torch.save`` files (``*.pt``, ``*.pth``, ``*.bin``, ``*.ckpt``) or
``*.safetensors`` files, a Hugging Face Trainer output folder (``checkpoint-N/`` subfolders
holding ``model.safetensors``, ``pytorch_model.bin`` or sharded weights with an index), one
such ``checkpoint-N/`` folder, or a single checkpoint file.

Nothing from the files is ever executed: torch files are read with
``torch.load(..., weights_only=True)`` only (a file that needs arbitrary Python objects is
refused), safetensors files with the ``safetensors`` package, and index files as JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._progress import progress_bar
from ..errors import (
    ArchiveExistsError,
    CheckpointSourceError,
    CkptlabError,
    DataError,
    DuplicateStepError,
    NoCheckpointsError,
    ShapeMismatchError,
    StepMismatchError,
    StepParseError,
    UnsafeCheckpointError,
    ValidationError,
)
from . import format as fmt
from .reader import Run
from .recorder import Recorder

__all__ = ["import_checkpoints", "ImportResult"]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SAFETENSORS_SUFFIX = ".safetensors"
# Weights of one Hugging Face checkpoint folder, in the order transformers itself prefers
# them (safetensors before pickles); the first one present is used.
_HF_WEIGHTS = (
    ("model.safetensors.index.json", "hf-safetensors-sharded"),
    ("model.safetensors", "hf-safetensors"),
    ("pytorch_model.bin.index.json", "hf-torch-sharded"),
    ("pytorch_model.bin", "hf-torch"),
)
# Where training loops put the model's state dict inside a torch.save'd dict (Lightning:
# state_dict; hand-written loops: model_state_dict or model).
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_STEP_KEYS = ("global_step", "step")

# The default step rule: the number after "step" (step=120, step_1000, global_step5), else
# the last number in the name. _DEFAULT_RULE describes it in error messages.
_DEFAULT_RULE = "(default: the number after 'step', else the last number)"
_STEP_LABELLED = re.compile(r"step[=_-]?(\d+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")

_STORABLE = {
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
} | {getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)}

# Checkpoints gathered by the Recorder before this importer waits for a commit: bounds the
# memory held in its queue (a large checkpoint is committed before the next one is loaded).
_BATCH_BYTES = 64 << 20
_DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_checkpoints` did.

    Attributes
    ----------
    path : str
        The archive.
    source : str
        Absolute path of the imported file or folder.
    format : str
        Kind(s) of the source checkpoints, e.g. ``"torch"``, ``"safetensors"``,
        ``"hf-safetensors-sharded"`` (several joined by ``+``).
    imported : int
        Checkpoints written by this call.
    skipped : int
        Checkpoints of the source at or before the archive's last step (already imported).
    first_step, last_step : int or None
        Steps of the first and last checkpoint written by this call (None if none).
    checkpoints : int
        Checkpoints in the archive afterwards.
    metrics : tuple of str
        Metric names taken from the metrics file.
    unmatched_metric_steps : int
        Steps of the metrics file that match no checkpoint of the source.
    """

    path: str
    source: str
    format: str
    imported: int
    skipped: int
    first_step: int | None
    last_step: int | None
    checkpoints: int
    metrics: tuple[str, ...] = ()
    unmatched_metric_steps: int = 0


@dataclass
class _Ckpt:
    path: Path  # the file, or the Hugging Face checkpoint folder
    kind: str  # "torch", "safetensors" or one of _HF_WEIGHTS' kinds
    weights: Path  # the file to read (the folder's weights or index file for HF kinds)
    step: int | None = None


# ---------------------------------------------------------------------------------- public
def import_checkpoints(
    src,
    dest,
    *,
    step_pattern: str | re.Pattern | None = None,
    data=None,
    metrics=None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Import checkpoints already on disk into a ckptlab run archive.

    Parameters
    ----------
    src : str or path-like
        A folder of checkpoint files (``*.pt``, ``*.pth``, ``*.bin``, ``*.ckpt`` written by
        ``torch.save``; ``*.safetensors``), a Hugging Face Trainer output folder (subfolders
        such as ``checkpoint-500/`` holding ``model.safetensors``, ``pytorch_model.bin`` or
        sharded weights with ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``),
        one such checkpoint folder (any folder holding one of those weight files or indexes
        is taken as one checkpoint), or a single checkpoint file. The folder is not searched
        recursively. When it has Hugging Face checkpoint subfolders only those are imported
        (files next to them, such as the Trainer's final ``model.safetensors`` and
        ``training_args.bin``, are ignored); other files and subfolders are ignored too.
    dest : str or path-like
        The archive (a directory or an fsspec URL). A new archive is created; an existing one
        imported from the same ``src`` is appended to (see Notes).
    step_pattern : str or re.Pattern, optional
        Regular expression searched (``re.search``) in each file or folder name, extension
        included; its group named ``step``, else its first group, else the whole match is
        the step. By default the number after "step" (``epoch=3-step=120.ckpt`` gives 120,
        ``step_1000.pt`` 1000), else the last number in the name (``ckpt-20.pth``,
        ``checkpoint-500``, ``model_00042.safetensors``).
    data : str, path-like or mapping of str to array, optional
        Probe data stored once in the archive for analysis: an ``.npz`` file (loaded without
        pickle) or a mapping, with ``x_train``, ``y_train``, ``x_test`` and ``y_test``
        (labels: 1-D integers >= 0, one per example); other keys are ignored.
    metrics : str or path-like, optional
        A CSV (``.csv``) or JSON-lines (``.jsonl``, ``.ndjson``, ``.json``) file with a
        ``step`` column. Its numeric columns become per-checkpoint metrics, matched by step
        (``train_loss``, ``test_loss``, ``train_acc`` and ``test_acc`` are the curves the
        analysis shows). Rows of one step are merged, the last value winning; a ``/`` in a
        column name becomes ``_``; checkpoints without a row hold NaN; non-numeric columns
        are ignored.
    progress : bool, optional
        Show a progress bar; by default only on a terminal or in a notebook.
    overwrite : bool, default False
        Replace an existing archive at ``dest`` (one that is not a ckptlab archive is never
        replaced).

    Returns
    -------
    ImportResult
        Counts and the step range written.

    Raises
    ------
    ValidationError
        A bad argument: ``src`` does not exist, ``step_pattern`` is no regular expression, ...
    NoCheckpointsError
        ``src`` is empty or holds no recognised checkpoint.
    StepParseError
        A checkpoint's step can be read neither from its name nor from a step entry.
    DuplicateStepError
        Two checkpoints have the same step.
    StepMismatchError
        A file's name and its ``global_step``/``step`` entry give different steps.
    UnsafeCheckpointError
        A torch file needs unpickling of arbitrary objects (it is not loaded).
    CheckpointSourceError
        A file is unreadable, holds no state dict, a tensor that cannot be stored, or an
        index names a missing shard.
    ShapeMismatchError
        A checkpoint's tensor names, shapes or dtypes differ from those imported before.
    ArchiveExistsError
        ``dest`` exists, was not imported from ``src``, and ``overwrite`` is False.
    DataError
        The data or metrics file is malformed.

    Notes
    -----
    *Steps.* The name gives the step. A torch file whose dict carries an integer
    ``global_step`` (else ``step``) entry, as Lightning's do, is checked against it: the two
    must agree (else :class:`StepMismatchError`); when the name has no step (``last.ckpt``)
    the entry gives it. Checkpoints are imported in increasing step order.

    *What is stored.* The state dict: the whole dict of a bare ``torch.save(state_dict)``, or
    the one under ``state_dict``, ``model_state_dict`` or ``model``; names stay as they are
    (Lightning's ``model.`` prefix included). Only floating and integer tensors are stored;
    other entries (optimizer state, epochs, hyper-parameters, bool or complex tensors) are
    ignored. Safetensors metadata is ignored.

    *Appending.* Run again on a folder that gained checkpoints (a run still training), only
    those after the archive's last committed step are imported; the others are counted as
    skipped. The data is written when the archive is created; passed again it must equal the
    stored data. Metrics are matched for the new checkpoints only.

    *Errors.* Problems found while planning (no checkpoints, unparseable or duplicate steps,
    bad data or metrics files) are raised before anything is written. A checkpoint that
    fails later (unreadable, unsafe, another shape) stops the import with an error naming
    the file; the checkpoints before it stay committed and readable, and running the import
    again continues after them. One checkpoint is held in memory at a time (for sharded
    checkpoints: that checkpoint's shards, one shard file at a time while loading).
    """
    if not isinstance(src, (str, os.PathLike)):
        raise ValidationError(f"src must be a path to a folder or file, got {type(src).__name__}")
    if not isinstance(dest, (str, os.PathLike)):
        raise ValidationError(f"dest must be a path or URL, got {type(dest).__name__}")
    if not isinstance(overwrite, bool):
        raise ValidationError(f"overwrite must be True or False, got {overwrite!r}")
    if progress is not None and not isinstance(progress, bool):
        raise ValidationError(f"progress must be None, True or False, got {progress!r}")
    pattern = _compile_pattern(step_pattern)
    src_path = Path(src).expanduser()
    if not src_path.exists():
        raise ValidationError(
            f"src must be an existing folder or checkpoint file, got {str(src)!r}")
    src_path = src_path.resolve()
    source = str(src_path)
    dest = str(dest) if isinstance(dest, os.PathLike) else dest

    # ---- plan: everything that can fail on the source is checked before anything is written
    ckpts = _discover(src_path)
    for ck in ckpts:
        _plan_step(ck, pattern)
    ckpts.sort(key=lambda c: c.step)
    for a, b in zip(ckpts, ckpts[1:]):
        if a.step == b.step:
            raise DuplicateStepError(
                f"two checkpoints have step {a.step}: {a.path} and {b.path}; remove one, or "
                "pass step_pattern= (--step-pattern) to read the steps differently"
            )
    kinds = "+".join(sorted({c.kind for c in ckpts}))
    rows = _load_metrics(metrics) if metrics is not None else {}
    data_arrays = _load_data(data) if data is not None else None

    # ---- the archive: new, replaced, or appended to
    mode, last_step, ref, n_before = ("w" if overwrite else "w-"), None, None, 0
    if not overwrite and fmt.exists(dest):
        mode = "a"
        last_step, ref, n_before = _existing(dest, source, data_arrays)
    todo = [c for c in ckpts if last_step is None or c.step > last_step]
    skipped = len(ckpts) - len(todo)
    metric_names = tuple(sorted({k for r in rows.values() for k in r}))
    unmatched = len(set(rows) - {c.step for c in ckpts})
    task = {"name": "import", "source": source, "format": kinds,
            # `ckptlab info` shows the task's params
            "params": {"source": source, "format": kinds,
                       "step_pattern": None if pattern is None else pattern.pattern}}

    rec = None
    written: list[int] = []
    failed = True
    bar = progress_bar(len(todo), enabled=progress, desc="import", unit="ckpt")
    try:
        pending = 0
        for ck in todo:
            tensors = _read_checkpoint(ck)
            ref = _check_same(ck, tensors, ref)
            if rec is None:  # opened only once the first checkpoint has loaded
                rec = Recorder(dest, task=task, data=data_arrays, mode=mode, queue_size=2,
                               max_batch_bytes=_BATCH_BYTES)
            rec.save(ck.step, tensors, metrics=rows.get(ck.step))
            written.append(ck.step)
            pending += sum(t.element_size() * t.nelement() for t in tensors.values())
            del tensors
            if pending >= _BATCH_BYTES:
                rec.flush()  # before the next load: bounds what the writer holds
                pending = 0
            bar.set_postfix_str(f"step {ck.step}", refresh=False)
            bar.update(1)
        failed = False
    finally:
        bar.close()
        if rec is not None:
            try:
                rec.close()  # commits what was saved, also after an error
            except CkptlabError:
                if not failed:
                    raise
    total = rec.n_committed if rec is not None else n_before
    return ImportResult(
        path=str(dest), source=source, format=kinds, imported=len(written), skipped=skipped,
        first_step=written[0] if written else None, last_step=written[-1] if written else None,
        checkpoints=total, metrics=metric_names, unmatched_metric_steps=unmatched,
    )


# ---------------------------------------------------------------------------------- discovery
def _hf_weights(folder: Path) -> tuple[Path, str] | None:
    for name, kind in _HF_WEIGHTS:
        p = folder / name
        if p.is_file():
            return p, kind
    return None


def _file_kind(p: Path) -> str | None:
    suffix = p.suffix.lower()
    if suffix == _SAFETENSORS_SUFFIX:
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    return None


def _discover(src: Path) -> list[_Ckpt]:
    recognised = f"{', '.join('*' + s for s in _TORCH_SUFFIXES)}, *{_SAFETENSORS_SUFFIX}"
    if src.is_file():
        kind = _file_kind(src)
        if kind is None:
            raise NoCheckpointsError(
                f"src {src} is not a recognised checkpoint file: expected a name ending in "
                f"{recognised}"
            )
        return [_Ckpt(src, kind, src)]
    if not src.is_dir():
        raise ValidationError(f"src must be a folder or a checkpoint file, got {src}")
    entries = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    if not entries:
        raise NoCheckpointsError(f"src folder {src} is empty: there is nothing to import")
    hf = [(p, w) for p in entries if p.is_dir() and (w := _hf_weights(p)) is not None]
    if hf:
        return [_Ckpt(p, kind, weights) for p, (weights, kind) in hf]
    own = _hf_weights(src)
    if own is not None:  # src is one Hugging Face checkpoint folder
        return [_Ckpt(src, own[1], own[0])]
    files = [_Ckpt(p, k, p) for p in entries if p.is_file() and (k := _file_kind(p)) is not None]
    if not files:
        shown = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise NoCheckpointsError(
            f"src folder {src} holds no recognised checkpoint: expected files named "
            f"{recognised}, or Hugging Face checkpoint folders (checkpoint-N/ with "
            f"model.safetensors or pytorch_model.bin); found {shown}"
        )
    return files


# ---------------------------------------------------------------------------------- steps
def _compile_pattern(step_pattern) -> re.Pattern | None:
    if step_pattern is None:
        return None
    if isinstance(step_pattern, re.Pattern):
        return step_pattern
    if not isinstance(step_pattern, str) or not step_pattern:
        raise ValidationError(
            f"step_pattern must be a non-empty regular expression (str), got {step_pattern!r}"
        )
    try:
        return re.compile(step_pattern)
    except re.error as exc:
        raise ValidationError(
            f"step_pattern must be a valid regular expression, got {step_pattern!r}: {exc}"
        ) from None


def _step_from_name(name: str, pattern: re.Pattern | None) -> int | None:
    """The step in a file or folder name, or None when the rule finds none."""
    if pattern is None:
        m = _STEP_LABELLED.search(name) or _LAST_NUMBER.search(name)
        return int(m.group(1)) if m else None
    m = pattern.search(name)
    if m is None:
        return None
    if "step" in pattern.groupindex:
        text = m.group("step")
    elif pattern.groups:
        text = m.group(1)
    else:
        text = m.group(0)
    if text is None:  # an optional group that did not take part
        return None
    if not text.isdecimal():
        raise StepParseError(
            f"step_pattern {pattern.pattern!r} matched {text!r} in the name {name!r}, which is "
            "not a whole number: make its group (or a group named 'step') capture the digits"
        )
    return int(text)


def _plan_step(ck: _Ckpt, pattern: re.Pattern | None) -> None:
    ck.step = _step_from_name(ck.path.name, pattern)
    if ck.step is not None:
        return
    if ck.kind != "torch":
        raise StepParseError(_no_step_message(ck, pattern, entry_possible=False))
    # No step in the name: a torch.save'd dict may carry it (Lightning's last.ckpt).
    _, entry = _state_and_entry(_torch_load(ck.weights), ck.weights)
    if entry is None:
        raise StepParseError(_no_step_message(ck, pattern, entry_possible=True))
    ck.step = entry


def _no_step_message(ck: _Ckpt, pattern, *, entry_possible: bool) -> str:
    rule = _DEFAULT_RULE if pattern is None else repr(pattern.pattern)
    entry = (" and the file has no integer 'global_step' or 'step' entry" if entry_possible
             else "")
    return (
        f"cannot read a training step for {ck.path}: the step pattern {rule} finds none in "
        f"the name {ck.path.name!r}{entry}; rename it or pass step_pattern= (--step-pattern) "
        "whose first group captures the step"
    )


def _step_entry(obj: Mapping, wrapped: bool, path: Path) -> int | None:
    for key in _STEP_KEYS:
        v = obj.get(key)
        if isinstance(v, torch.Tensor) and wrapped and v.ndim == 0 and not (
                v.is_floating_point() or v.is_complex() or v.dtype == torch.bool):
            v = int(v.item())
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            if v < 0:
                raise StepParseError(f"{path}: entry {key!r} must be a step >= 0, got {v}")
            return int(v)
    return None


# ---------------------------------------------------------------------------------- loading
def _torch_load(path: Path):
    """``torch.load`` with ``weights_only=True``; unsafe or unreadable files become errors."""
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then reads (or refuses) anyway
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        if m:
            why = f"it needs the Python object {m.group(1)}, which is not a tensor or container"
        else:
            op = re.search(r"Unsupported operand (\d+)", text)
            why = ("it is not a weights-only torch.save file" +
                   (f" (pickle opcode {op.group(1)} refused)" if op else ""))
        raise UnsafeCheckpointError(
            f"refusing to load {path}: {why}. Only tensors, numbers, strings and containers "
            "are loaded (torch.load weights_only=True); objects in a pickle could run code. "
            "Save the state dict alone (torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointSourceError(
            f"cannot read {path} as a torch.save file: {type(exc).__name__}: {first}"
        ) from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointSourceError(
            f"cannot read {path} as a safetensors file: {type(exc).__name__}: {exc}"
        ) from None


def _state_and_entry(obj, path: Path) -> tuple[Mapping, int | None]:
    """The state dict inside a loaded torch file, and its step entry (or None)."""
    if not isinstance(obj, Mapping):
        raise CheckpointSourceError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a dict with one under "
            f"{', '.join(map(repr, _STATE_KEYS))}"
        )
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), Mapping):
            return obj[key], _step_entry(obj, True, path)
    return obj, _step_entry(obj, False, path)


def _select(raw: Mapping, path: Path) -> dict[str, torch.Tensor]:
    """The floating and integer tensors of a state dict, checked to be storable."""
    out = {}
    for name, t in raw.items():
        if not isinstance(t, torch.Tensor):
            continue
        integer = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
        if not (t.is_floating_point() or integer):
            continue  # bool and complex tensors: not parameters we analyse
        if t.dtype not in _STORABLE or t.layout != torch.strided:
            raise CheckpointSourceError(
                f"{path}: tensor {name!r} has dtype {t.dtype} and layout {t.layout}; the "
                "archive stores dense float16/bfloat16/float32/float64 and integer tensors"
            )
        if not isinstance(name, str) or not name or "/" in name or name == fmt.STEP \
                or name.startswith("__"):
            raise CheckpointSourceError(
                f"{path}: tensor name {name!r} cannot be stored: names must be non-empty "
                "strings without '/', not 'step' and not starting with '__'"
            )
        out[name] = t
    if not out:
        keys = ", ".join(map(repr, list(raw)[:8])) + (", ..." if len(raw) > 8 else "")
        raise CheckpointSourceError(
            f"{path} holds no floating or integer tensors to import (its entries: "
            f"{keys or 'none'})"
        )
    return out


def _read_checkpoint(ck: _Ckpt) -> dict[str, torch.Tensor]:
    """Load one checkpoint's storable tensors; checks its step entry against the name."""
    if ck.kind == "safetensors" or ck.kind == "hf-safetensors":
        return _select(_safetensors_load(ck.weights), ck.weights)
    if ck.kind in ("torch", "hf-torch"):
        raw, entry = _state_and_entry(_torch_load(ck.weights), ck.weights)
        if ck.kind == "torch" and entry is not None and entry != ck.step:
            raise StepMismatchError(
                f"{ck.path}: its name gives step {ck.step} but its step entry says {entry}; "
                "fix the name, or pass step_pattern= (--step-pattern) so that both agree"
            )
        return _select(raw, ck.weights)
    return _read_sharded(ck)


def _read_sharded(ck: _Ckpt) -> dict[str, torch.Tensor]:
    index = ck.weights
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointSourceError(f"cannot read the index {index}: {exc}") from None
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise CheckpointSourceError(
            f"the index {index} must hold a non-empty 'weight_map' of tensor name -> shard file"
        )
    by_shard: dict[str, list[str]] = {}
    for name, shard in wmap.items():
        by_shard.setdefault(shard, []).append(name)
    folder = index.parent.resolve()
    loaded: dict[str, torch.Tensor] = {}
    for shard, names in by_shard.items():
        path = (folder / shard).resolve()
        if path.parent != folder:
            raise CheckpointSourceError(
                f"the index {index} names shard {shard!r} outside its folder; shards must be "
                "plain file names next to the index"
            )
        if not path.is_file():
            raise CheckpointSourceError(
                f"the index {index} names shard {shard!r}, which is missing")
        if path.suffix.lower() == _SAFETENSORS_SUFFIX:
            tensors = _safetensors_load(path)
        else:
            tensors, _ = _state_and_entry(_torch_load(path), path)
        for name in names:
            if name not in tensors:
                raise CheckpointSourceError(
                    f"the index {index} puts tensor {name!r} in shard {shard!r}, which lacks it"
                )
            loaded[name] = tensors[name]
        del tensors  # only the tensors the index names are kept
    # the index's order, so the archive lists parameters as the model does
    return _select({name: loaded[name] for name in wmap}, index)


# ---------------------------------------------------------------------------------- checks
def _check_same(ck: _Ckpt, tensors: dict, ref):
    """Every checkpoint has the tensors (names, shapes, dtypes) of the first one."""
    meta = {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}
    if ref is None:
        return (meta, str(ck.path))
    old, where = ref
    if set(old) != set(meta):
        missing = sorted(set(old) - set(meta))
        extra = sorted(set(meta) - set(old))
        raise ShapeMismatchError(
            f"{ck.path}: its tensors differ from those of {where}: missing {missing[:10]}, "
            f"unexpected {extra[:10]}"
        )
    for name, (shape, dtype) in meta.items():
        oshape, odtype = old[name]
        if shape != oshape or dtype != odtype:
            raise ShapeMismatchError(
                f"{ck.path}: tensor {name!r} has shape {shape} ({dtype}) but {where} has "
                f"shape {oshape} ({odtype})"
            )
    return ref


def _existing(dest, source: str, data_arrays) -> tuple[int | None, tuple | None, int]:
    """For appending: the archive's last step, its tensors and its number of checkpoints.

    Refuses an archive that was not imported from ``source``, and data other than the stored.
    """
    run = Run(dest)
    task = run.task
    if task.get("name") != "import" or task.get("source") != source:
        what = (f"imported from {task.get('source')}" if task.get("name") == "import"
                else f"of task {task.get('name')!r}" if task else "not made by an import")
        raise ArchiveExistsError(
            f"an archive already exists at {dest} and it is {what}, not imported from "
            f"{source}: pass overwrite=True (--overwrite) to replace it"
        )
    if data_arrays is not None:
        stored = run.data()
        if not stored:
            raise ValidationError(
                f"data can only be stored when the archive is created, and {dest} holds none: "
                "pass overwrite=True (--overwrite) to import again with the data"
            )
        same = set(stored) >= set(data_arrays) and all(
            stored[k].shape == v.shape and np.array_equal(stored[k], v)
            for k, v in data_arrays.items())
        if not same:
            raise ValidationError(
                f"data differs from the data stored in {dest}: pass overwrite=True "
                "(--overwrite) to import again with the new data"
            )
    if run.n == 0:
        return None, None, 0
    ds = run.dataset()
    meta = {}
    for name in run.param_names:
        var = ds[name]
        tdt = var.attrs.get("torch_dtype")
        dtype = getattr(torch, tdt) if tdt else torch.from_numpy(np.zeros(0, var.dtype)).dtype
        meta[name] = (tuple(var.shape[1:]), dtype)
    return int(run.steps[-1]), (meta, f"the archive {dest}"), run.n


# ---------------------------------------------------------------------------------- data
def _load_data(data) -> dict[str, np.ndarray]:
    if isinstance(data, (str, os.PathLike)):
        arrays = _read_npz(Path(data).expanduser())
        where = f"npz file {data}"
    elif isinstance(data, Mapping):
        arrays = {}
        for k in _DATA_KEYS:
            if k in data:
                v = data[k]
                v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                arrays[k] = v
        where = "data"
    else:
        raise ValidationError(
            f"data must be a path to an .npz file or a mapping of arrays, got {type(data).__name__}"
        )
    missing = [k for k in _DATA_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{where} lacks {', '.join(map(repr, missing))}: analysis needs "
                        f"{', '.join(_DATA_KEYS)}")
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = arrays[xk], arrays[yk]
        if x.dtype.kind not in "iuf":
            raise DataError(f"{where}: {xk!r} must be numeric (integer or float), got {x.dtype}")
        if x.ndim < 1 or len(x) < 1:
            raise DataError(f"{where}: {xk!r} must hold at least one example, got shape {x.shape}")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise DataError(
                f"{where}: {yk!r} must be a 1-D array of integer labels, got {y.dtype} {y.shape}"
            )
        if len(y) != len(x):
            raise DataError(f"{where}: {xk!r} has {len(x)} examples but {yk!r} has {len(y)} "
                            "labels; they must match")
        if y.min() < 0:
            raise DataError(f"{where}: {yk!r} labels must be >= 0, got {y.min()}")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{where}: 'x_test' examples have shape {arrays['x_test'].shape[1:]} but "
                        f"'x_train' examples have {arrays['x_train'].shape[1:]}; they must match")
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        npz = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz file {path} is not a readable .npz archive: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"npz file {path} holds a single array, not an .npz archive with keys "
                        f"{', '.join(_DATA_KEYS)}")
    out = {}
    with npz:
        for key in _DATA_KEYS:
            if key not in npz.files:
                continue
            try:
                arr = npz[key]
            except ValueError as exc:  # object arrays need pickle, which is never allowed
                raise DataError(f"npz file {path}: key {key!r} cannot be loaded without pickle: "
                                f"{exc}") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataError(f"npz file {path}: key {key!r} is unreadable: {exc}") from None
            out[key] = arr
    return out


# ---------------------------------------------------------------------------------- metrics
def _load_metrics(metrics) -> dict[int, dict[str, float]]:
    """step -> {name: value} from a CSV or JSON-lines file."""
    if not isinstance(metrics, (str, os.PathLike)):
        raise ValidationError(
            f"metrics must be a path to a .csv or .jsonl file, got {type(metrics).__name__}"
        )
    path = Path(metrics).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson", ".json"):
        raise ValidationError(
            "metrics must be a .csv or JSON-lines (.jsonl, .ndjson, .json) file, got "
            f"{str(metrics)!r}"
        )
    if not path.is_file():
        raise DataError(f"metrics file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"metrics file {path} is unreadable: {exc}") from None
    records = _csv_records(text, path) if suffix == ".csv" else _jsonl_records(text, path)

    columns: dict[str, bool] = {}  # name -> numeric in every row that has it
    parsed: list[tuple[int, dict[str, float]]] = []
    for line, rec in records:
        if "step" not in rec or _missing(rec["step"]):
            raise DataError(f"metrics file {path}, line {line}: no 'step' value (every row needs "
                            "the step of its checkpoint)")
        step = _as_step(rec["step"])
        if step is None:
            raise DataError(f"metrics file {path}, line {line}: 'step' must be a whole number "
                            f">= 0, got {rec['step']!r}")
        values = {}
        for k, v in rec.items():
            if k == "step" or not isinstance(k, str) or not k.strip() or _missing(v):
                continue
            x = _as_number(v)
            columns[k] = columns.get(k, True) and x is not None
            if x is not None:
                values[k] = x
        parsed.append((step, values))
    names = {}
    for k, numeric in columns.items():
        if not numeric:
            continue  # text columns (timestamps, paths) are not metrics
        clean = k.strip().replace("/", "_")
        if clean == "step":
            continue
        if clean in names.values():
            other = next(o for o, c in names.items() if c == clean)
            raise DataError(f"metrics file {path}: columns {other!r} and {k!r} both become "
                            f"metric {clean!r}; rename one")
        names[k] = clean
    out: dict[int, dict[str, float]] = {}
    for step, values in parsed:
        row = out.setdefault(step, {})
        row.update({names[k]: v for k, v in values.items() if k in names})
    return out


def _csv_records(text: str, path: Path):
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "step" not in [f.strip() for f in reader.fieldnames if f]:
        raise DataError(f"metrics file {path} has no 'step' column (columns: "
                        f"{reader.fieldnames or []})")
    for rec in reader:
        yield reader.line_num, {(k.strip() if isinstance(k, str) else k): v
                                for k, v in rec.items() if k is not None}


def _jsonl_records(text: str, path: Path):
    found = False
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"metrics file {path}, line {i}: not a JSON object: {exc}") from None
        if not isinstance(rec, dict):
            raise DataError(f"metrics file {path}, line {i}: expected one JSON object per line, "
                            f"got {type(rec).__name__}")
        found = True
        yield i, rec
    if not found:
        raise DataError(f"metrics file {path} holds no rows")


def _missing(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _as_number(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _as_step(v) -> int | None:
    x = _as_number(v)
    if x is None or not math.isfinite(x) or x < 0 or x != int(x):
        return None
    return int(x)
