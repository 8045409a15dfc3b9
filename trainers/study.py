"""``study``: one preset over several seeds (and conditions), from training to the alignment table.

Each seed is one Dask task that trains its run (or finishes an interrupted one), analyses the
archive and segments it; the segmentations are then pooled per condition
(:func:`ckptlab.phases.runs.align_runs`) and, with ``vary``, compared between conditions
(:func:`ckptlab.phases.runs.compare_conditions`). Everything lands in one folder::

    study/
      study.json              the study's definition (preset, overrides, vary, analysis options,
                              resolved configs) and the options of the latest report
      seed0.zarr ...          one archive per seed (with vary: <condition>/seed0.zarr ...)
      events.zarr             every event of every seed, and the alignment tables (xarray)
      alignment.txt           the same tables as text
      timeline.png            every event per seed on a log-step axis, phases shaded

Running a study again trains only what is missing: a complete archive is not trained again
(its analysis comes from the archive's cache), an interrupted one is resumed, new seeds are
added.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from ckptlab._checks import check_float, check_int
from ckptlab.analysis import analyze
from ckptlab.analysis.api import _resolve_scheduler
from ckptlab.errors import ArchiveError, CkptlabError, ValidationError
from ckptlab.models import build_model
from ckptlab.phases import segment
from ckptlab.phases.report import format_alignment_table, format_shift_table
from ckptlab.phases.runs import align_runs, bootstrap_mean_interval, compare_conditions
from ckptlab.store import Run

from .config import TrainConfig, apply_overrides
from .loop import build_task, model_spec_for, train
from .presets import get_preset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["study", "StudyResult", "StudyMismatchError", "plot_timeline", "STUDY_FILE",
           "EVENTS_FILE", "TABLE_FILE", "FIGURE_FILE"]

STUDY_FILE = "study.json"
EVENTS_FILE = "events.zarr"
TABLE_FILE = "alignment.txt"
FIGURE_FILE = "timeline.png"
#: Bumped when the layout of a study folder changes.
STUDY_FORMAT = 1
#: The label of the only condition of a study without ``vary``.
DEFAULT_CONDITION = "default"
#: Fields of study.json that define a study: a folder holding other values is another study.
_IDENTITY = ("preset", "overrides", "vary", "analysis", "configs")


class StudyMismatchError(ValidationError):
    """The output folder holds a different study (or something that is not a study)."""


@dataclasses.dataclass
class StudyResult:
    """What :func:`study` did and wrote."""

    path: str  # the study folder
    events: xr.Dataset  # what events.zarr holds
    table: str  # what alignment.txt holds
    actions: dict  # condition -> {seed: "trained" | "resumed" | "restarted" | "finished earlier"}
    seconds: float
    warnings: list  # messages of the analyses (families skipped, ...), once each

    @property
    def trained(self) -> int:
        """How many seeds were trained (or resumed, or restarted) by this call."""
        return sum(a != "finished earlier" for d in self.actions.values() for a in d.values())


# ----------------------------------------------------------------------------- public API

def study(
    preset: str,
    out,
    *,
    seeds: int = 3,
    overrides: Sequence[str] = (),
    vary: str | Mapping | None = None,
    metrics: Sequence[str] | None = None,
    estimators: Sequence[str] | None = None,
    analysis: Mapping | None = None,
    tolerance_decades: float = 0.5,
    n_boot: int = 2000,
    confidence: float = 0.95,
    bootstrap_seed: int = 0,
    scheduler: str = "threads",
    n_workers: int | None = None,
    figure: bool = True,
    report: Callable[[str], None] | None = None,
) -> StudyResult:
    """Train ``preset`` for seeds 0..seeds-1, analyse and segment every run, align them.

    Every input is checked before any training starts. Each seed (per condition) is one Dask
    task that trains the run (seed set through the config's ``seed`` field), analyses the
    archive with ``scheduler="synchronous"`` inside the task (no nested pools) and segments
    it. A seed whose archive is complete is not trained again (its analysis is read from the
    archive's cache, or completed there), an interrupted archive is resumed
    (``train(None, path, resume=True)``), an archive without resumable state is trained
    anew; asking for more seeds than before adds only the new ones.

    Parameters
    ----------
    preset : str
        A preset name (``trainers.PRESETS``).
    out : str or path-like
        The study folder (local or on a file system every Dask worker sees). New, empty, or
        holding this same study.
    seeds : int, default 3
        Number of seeds, >= 1: seeds 0 .. seeds - 1.
    overrides : sequence of str, default ()
        ``key=value`` config overrides applied to every seed (as ``ckptlab train --set``);
        ``seed`` is not allowed (the study sets it).
    vary : str or mapping, optional
        One config field run under several values, as ``"key=v1,v2"`` (JSON values, split at
        top-level commas: ``"model_args.widths=[16],[32,32]"``) or ``{"key": [v1, v2]}``. The
        same seeds run under every value (condition ``key=v``); the first value is the
        reference the others are compared with.
    metrics, estimators : sequence of str, optional
        Passed to :func:`ckptlab.analyze` (default: its defaults).
    analysis : mapping, optional
        Further keyword arguments of :func:`ckptlab.analyze` (``n_bins``, ``probe_size``, ...);
        not ``scheduler``, ``store`` or ``progress``, which the study sets.
    tolerance_decades : float, default 0.5
        Tolerance of every alignment verdict, > 0.
    n_boot : int, default 2000
        Bootstrap resamples over seeds, >= 100.
    confidence : float, default 0.95
        Coverage of the bootstrap intervals, in (0, 1).
    bootstrap_seed : int, default 0
        Seed of the bootstrap (the intervals are reproducible).
    scheduler : str, default "threads"
        Where the seeds run: ``"threads"``, ``"processes"``, ``"synchronous"`` or the address
        of a running Dask scheduler (``tcp://host:port``), as in :func:`ckptlab.analyze`.
    n_workers : int, optional
        Workers of a local scheduler (default: the number of CPUs).
    figure : bool, default True
        Write ``timeline.png``.
    report : callable, optional
        Called with one line of text per seed as it finishes (the CLI prints them).

    Returns
    -------
    StudyResult
        The folder, the events Dataset, the table text, what was done per seed.

        The Dataset (``events.zarr``) has dims ``condition``, ``seed``, ``event`` (coordinate
        ``event_type``), ``event_b``, ``bound`` and, with ``vary``, ``contrast``: the
        variables of :func:`ckptlab.phases.runs.align_runs` per condition (``event_step``,
        ``log10_step``, ``event_note``, ``status`` per seed; means, sds, bootstrap intervals,
        pair separations and verdicts), ``phase_start`` (condition, seed, phase) and
        ``last_step``, ``run_alignment_summary`` and ``archive`` (condition, seed), and the
        shifts of :func:`ckptlab.phases.runs.compare_conditions`. Attrs hold the study's
        definition.

    Raises
    ------
    ValidationError
        An unknown preset, ``seeds`` < 1, an override or ``vary`` key that is not a config
        field (or is ``seed``), fewer than two distinct ``vary`` values, a bad analysis
        option.
    StudyMismatchError
        ``out`` holds a different study, an archive trained with another config, or
        something that is not a study.
    SchedulerError
        The scheduler address does not answer.
    """
    t0 = time.perf_counter()
    spec = _define(preset, seeds, overrides, vary, metrics, estimators, analysis)
    tol = check_float("tolerance_decades", tolerance_decades, min=0, min_inclusive=False)
    bootstrap_mean_interval(np.zeros((1, 2)), n_boot=n_boot, confidence=confidence,
                            seed=bootstrap_seed)
    if not isinstance(figure, bool):
        raise ValidationError(f"figure must be a bool, got {figure!r}")
    root = Path(os.fspath(out)).absolute()
    _check_folder(root, spec)
    jobs = _plan(root, spec)  # checks every existing archive against its config
    kind, client = _resolve_scheduler(scheduler, n_workers)
    if kind != "distributed":  # a cluster's workers may have the GPU this machine lacks
        for label, _, cfg in spec["conditions"]:
            if cfg.device == "cuda" and not _cuda_available():
                if client is not None:
                    client.close()
                where = "" if label == DEFAULT_CONDITION else f", condition {label}"
                raise ValidationError(
                    f"device 'cuda' was asked for (preset {preset!r}{where}) but torch sees no "
                    f"CUDA device: --set device=cpu, or a scheduler whose workers have one")
    try:
        _write_json(root / STUDY_FILE, {**spec["definition"], "seeds": spec["seeds"],
                                        "report": {"tolerance_decades": tol, "n_boot": n_boot,
                                                   "confidence": confidence,
                                                   "bootstrap_seed": bootstrap_seed}})
        results = _run_jobs(jobs, spec, tol, kind, client, n_workers, report)
    finally:
        if client is not None:
            client.close()

    msgs = list(dict.fromkeys(m for r in results.values() for m in r["warnings"]))
    for m in msgs:
        warnings.warn(m, UserWarning, stacklevel=2)
    events, per_cond = _assemble(root, spec, results, tol, n_boot, confidence, bootstrap_seed)
    table = _table_text(spec, events, per_cond, tol)
    _write_events(events, root / EVENTS_FILE)
    (root / TABLE_FILE).write_text(table + "\n")
    if figure:
        fig = plot_timeline(events)
        fig.savefig(root / FIGURE_FILE, dpi=120, bbox_inches="tight")
    elif (root / FIGURE_FILE).exists():  # an older study's figure would not match the tables
        (root / FIGURE_FILE).unlink()
    actions: dict = {}
    for (label, seed), r in sorted(results.items(), key=lambda kv: (
            [c[0] for c in spec["conditions"]].index(kv[0][0]), kv[0][1])):
        actions.setdefault(label, {})[seed] = r["action"]
    return StudyResult(path=str(root), events=events, table=table, actions=actions,
                       seconds=time.perf_counter() - t0, warnings=msgs)


# ----------------------------------------------------------------------------- definition

def _define(preset, seeds, overrides, vary, metrics, estimators, analysis) -> dict:
    """Validate the inputs; the study's definition and its conditions' configs."""
    if not isinstance(preset, str):
        raise ValidationError(f"preset must be a preset name (str), got {preset!r}")
    base = get_preset(preset)
    n_seeds = check_int("seeds", seeds, min=1)
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ValidationError(f"overrides must be a sequence of 'key=value' strings, got "
                              f"{overrides!r}")
    overrides = [o.strip() for o in overrides]
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if "seed" in keys:
        raise ValidationError("overrides must not set 'seed': the study runs seeds 0 .. "
                              "seeds - 1 (use seeds=N, --seeds N)")
    base = apply_overrides(base, overrides)
    conditions = [(DEFAULT_CONDITION, "", base)]
    vary_def = None
    if vary is not None:
        key, texts = _parse_vary(vary)
        if key.split(".", 1)[0] == "seed":
            raise ValidationError("vary must not be 'seed': the seeds are the study's samples "
                                  "(use seeds=N)")
        if key in keys:
            raise ValidationError(f"vary key {key!r} is also set by an override: give it once")
        conditions, seen = [], []
        for text in texts:
            try:
                cfg = apply_overrides(base, [f"{key}={text}"])
            except ValidationError as exc:
                raise ValidationError(str(exc).replace("--set: ", "vary: ", 1)
                                      .replace("--set expects", "vary expects", 1)) from None
            label = f"{key}={text}"
            for other, prev in seen:  # == on the dicts: 1 and 1.0 are the same value
                if other == cfg.to_dict():
                    raise ValidationError(f"vary values {prev!r} and {text!r} of {key!r} "
                                          f"give the same config: give distinct values")
            seen.append((cfg.to_dict(), text))
            conditions.append((label, _folder_name(label), cfg))
        folders = [c[1] for c in conditions]
        if len(set(folders)) != len(folders):
            raise ValidationError(f"vary values of {key!r} map to the same folder names "
                                  f"{folders}: give values that differ in letters or digits")
        vary_def = {"key": key, "values": list(texts)}
    akw = dict(analysis or {})
    if not isinstance(analysis, (Mapping, type(None))):
        raise ValidationError(f"analysis must be a mapping of analyze() options, got "
                              f"{analysis!r}")
    for reserved in ("scheduler", "store", "progress", "compute", "n_workers", "model"):
        if reserved in akw:
            raise ValidationError(f"analysis must not set {reserved!r}: the study sets it")
    if metrics is not None:
        akw["metrics"] = _names("metrics", metrics)
    if estimators is not None:
        akw["estimators"] = _names("estimators", estimators)
    akw = json.loads(json.dumps(akw))  # as study.json will hold it (tuples -> lists)
    _check_analysis(akw)
    for label, _, cfg in conditions:
        _check_buildable(label, cfg)
    configs = {label: _without_seed(cfg) for label, _, cfg in conditions}
    definition = {"format": "ckptlab-study", "format_version": STUDY_FORMAT, "preset": preset,
                  "overrides": overrides, "vary": vary_def, "analysis": akw,
                  "configs": configs}
    return {"definition": definition, "conditions": conditions, "seeds": n_seeds,
            "analysis": akw}


def _names(arg, value) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        out = [str(v) for v in value]
    except TypeError:
        raise ValidationError(f"{arg} must be a sequence of names, got {value!r}") from None
    return out


def _parse_vary(vary) -> tuple[str, list[str]]:
    """("key", [JSON texts]) from "key=v1,v2" or {"key": [v1, v2]}."""
    if isinstance(vary, Mapping):
        if len(vary) != 1:
            raise ValidationError(f"vary must name exactly one config field, got "
                                  f"{list(vary)!r}")
        (key, values), = vary.items()
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValidationError(f"vary[{key!r}] must be a list of values, got {values!r}")
        texts = [json.dumps(v) for v in values]
    elif isinstance(vary, str):
        if "=" not in vary:
            raise ValidationError(f"vary must look like key=v1,v2, got {vary!r}")
        key, text = vary.split("=", 1)
        texts = _split_top_level(text)
    else:
        raise ValidationError(f"vary must be 'key=v1,v2' or {{key: [v1, v2]}}, got {vary!r}")
    key = str(key).strip()
    if not key:
        raise ValidationError(f"vary must name a config field before '=', got {vary!r}")
    texts = [t.strip() for t in texts]
    if len(texts) < 2 or any(not t for t in texts):
        raise ValidationError(f"vary must give at least two non-empty values for {key!r}, got "
                              f"{texts!r}")
    return key, texts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: "[16],[32,32]" -> ["[16]", "[32,32]"]."""
    parts, depth, quote, cur = [], 0, False, []
    for ch in text:
        if ch == '"':
            quote = not quote
        elif not quote and ch in "[{":
            depth += 1
        elif not quote and ch in "]}":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_") or "condition"


def _without_seed(cfg: TrainConfig) -> dict:
    d = cfg.to_dict()
    d.pop("seed")
    return d


def _seed_config(cfg: TrainConfig, seed: int) -> TrainConfig:
    return dataclasses.replace(cfg, seed=seed).validate()


def _check_buildable(label: str, cfg: TrainConfig) -> None:
    """Build the task and the model once, so a bad task or model argument fails now."""
    try:
        build_model(model_spec_for(cfg, build_task(cfg)), seed=0)
    except CkptlabError as exc:
        where = f" (condition {label})" if label != DEFAULT_CONDITION else ""
        raise ValidationError(f"the config{where} cannot be built: {exc}") from None
    except TypeError as exc:  # an argument the task or model does not take
        where = f" (condition {label})" if label != DEFAULT_CONDITION else ""
        raise ValidationError(f"the config{where} cannot be built: {exc}") from None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _check_analysis(akw: dict) -> None:
    """The analysis options, validated by analyze itself before it opens an archive."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            analyze(os.path.join(tmp, "none.zarr"), scheduler="synchronous", progress=False,
                    **akw)
        except ArchiveError:
            return  # every option passed; only the (deliberately missing) archive did not
        except TypeError as exc:
            raise ValidationError(f"analysis options: {exc}") from None


# ----------------------------------------------------------------------------- the folder

def _check_folder(root: Path, spec: dict) -> None:
    if root.exists() and not root.is_dir():
        raise StudyMismatchError(f"out must be a folder, got the file {str(root)!r}")
    meta = root / STUDY_FILE
    if meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StudyMismatchError(f"{meta}: cannot read the study definition: {exc}") from None
        new = spec["definition"]
        for key in _IDENTITY:
            if old.get(key) != new[key]:
                why = _difference(key, old.get(key), new[key])
                raise StudyMismatchError(f"out {str(root)!r} holds a different study: {why}; "
                                         f"choose another folder (or remove this one)")
        return
    if root.is_dir() and any(root.iterdir()):
        raise StudyMismatchError(f"out {str(root)!r} exists and does not hold a study (no "
                                 f"{STUDY_FILE}): choose a new or empty folder")


def _difference(key, old, new) -> str:
    if key == "configs" and isinstance(old, dict) and isinstance(new, dict):
        for label in dict.fromkeys([*new, *old]):
            a, b = old.get(label), new.get(label)
            if a == b:
                continue
            if a is None or b is None:
                return f"condition {label!r} is {'new' if a is None else 'gone'}"
            fields = [k for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k)]
            f = fields[0]
            return (f"the config of condition {label!r} differs ({f}: {a.get(f)!r} there, "
                    f"{b.get(f)!r} now)")
    return f"{key} is {json.dumps(old)} there, {json.dumps(new)} now"


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _archive_path(root: Path, folder: str, seed: int) -> Path:
    return (root / folder if folder else root) / f"seed{seed}.zarr"


def _action(path: Path, cfg: TrainConfig) -> str:
    """What a seed needs: "new", "resume", "restart" or "done" (checks the archive's config)."""
    if not path.exists():
        return "new"
    try:
        run = Run(path)
    except ArchiveError:
        # killed before its first commit (or damaged): nothing of it can be resumed
        return "restart"
    stored = run.config
    try:
        same = TrainConfig.from_dict(stored).to_dict() == cfg.to_dict()
    except CkptlabError:
        same = False
    if not same:
        raise StudyMismatchError(
            f"archive {str(path)!r} was trained with another config than this study asks "
            f"for ({_first_difference(stored, cfg.to_dict())}): remove it or choose another "
            f"folder")
    if run.n and int(run.steps[-1]) == cfg.steps:
        return "done"
    if run.n and run.training_state(as_tensors=False) is not None:
        return "resume"
    return "restart"


def _first_difference(stored: dict, want: dict) -> str:
    for k in dict.fromkeys([*want, *stored]):
        a, b = stored.get(k), want.get(k)
        if isinstance(a, list) and isinstance(b, (list, tuple)):
            b = list(b)
        if a != b:
            return f"{k}: {a!r} there, {b!r} here"
    return "unreadable config"


def _plan(root: Path, spec: dict) -> list[dict]:
    jobs = []
    for label, folder, cfg in spec["conditions"]:
        for seed in range(spec["seeds"]):
            scfg = _seed_config(cfg, seed)
            path = _archive_path(root, folder, seed)
            jobs.append({"label": label, "seed": seed, "path": str(path),
                         "config": scfg.to_dict(), "planned": _action(path, scfg)})
    return jobs


# ----------------------------------------------------------------------------- the seeds

def _exit_with_parent() -> None:
    """In a local process-pool worker, exit when the study's process is gone.

    A study killed with SIGTERM (``kill``, a job scheduler) cannot shut its pool down, and the
    workers would go on training for minutes, holding the archives' writer locks; the archive
    a worker leaves is resumable by the next run. Ctrl-C reaches the workers anyway.
    """
    import multiprocessing
    import threading

    if multiprocessing.parent_process() is None:  # threads, synchronous, a Dask cluster
        return
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if not any(t.name == "ckptlab-study-parent-watch" for t in threading.enumerate()):
        threading.Thread(target=watch, name="ckptlab-study-parent-watch", daemon=True).start()


def _seed_task(config: dict, path: str, analysis: dict, segment_kw: dict) -> dict:
    """Train (or finish) one seed, analyse and segment it. Runs inside a Dask worker."""
    _exit_with_parent()
    cfg = TrainConfig.from_dict(config)
    p = Path(path)
    action = _action(p, cfg)
    t0 = time.perf_counter()
    if action != "done":
        p.parent.mkdir(parents=True, exist_ok=True)
    if action == "new":
        train(cfg, path, progress=False)
    elif action == "resume":
        train(None, path, resume=True, progress=False)
    elif action == "restart":
        train(cfg, path, overwrite=True, progress=False)
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = analyze(path, scheduler="synchronous", progress=False, **analysis)
        seg = segment(ds, **segment_kw)
    t2 = time.perf_counter()
    names = {"new": "trained", "resume": "resumed", "restart": "restarted",
             "done": "finished earlier"}
    return {"action": names[action], "seg": seg, "train_s": t1 - t0, "analysis_s": t2 - t1,
            "last_step": int(ds["step"].values.max()),
            "warnings": [str(w.message) for w in seen
                         if issubclass(w.category, (UserWarning, RuntimeWarning))]}


def _run_jobs(jobs, spec, tol, kind, client, n_workers, report) -> dict:
    import dask

    seg_kw = {"tolerance_decades": tol}
    keys = {}
    tasks = []
    for j in jobs:
        key = f"ckptlab-study-{_folder_name(j['label'])}-seed{j['seed']}"
        keys[key] = (j["label"], j["seed"])
        tasks.append(dask.delayed(_seed_task, pure=False)(
            j["config"], j["path"], spec["analysis"], seg_kw, dask_key_name=key))
    results: dict = {}
    multi = len(spec["conditions"]) > 1

    def accept(key, res):
        label, seed = keys[key]
        results[(label, seed)] = res
        if report is not None:
            where = f"{label} " if multi else ""
            n_ev = int(np.isfinite(res["seg"]["event_log10_step"].values).sum())
            done = ("trained in" if res["action"] != "finished earlier" else "train skipped,")
            report(f"{where}seed {seed}: {res['action']} ({done} {res['train_s']:.1f} s), "
                   f"analysed in {res['analysis_s']:.1f} s; {n_ev} of "
                   f"{res['seg'].sizes['event']} events happened; "
                   f"{res['seg']['alignment_verdict'].item()}")

    if kind == "distributed":
        from distributed import as_completed

        futures = client.compute(tasks)
        names = {f.key: k for f, k in zip(futures, keys)}
        for fut, res in as_completed(futures, with_results=True, loop=client.loop):
            accept(names[fut.key], res)
        return results
    from dask.callbacks import Callback

    class _Collect(Callback):
        def _posttask(self, key, result, dsk, state, id):
            if key in keys:
                accept(key, result)

    kw = {"scheduler": kind}
    if n_workers is not None and kind != "synchronous":
        kw["num_workers"] = n_workers
    if kind == "processes":
        kw["chunksize"] = 1  # dask batches 6 tasks per process by default: seeds ran one by one
    with _Collect():
        dask.compute(*tasks, **kw)
    return results


# ----------------------------------------------------------------------------- assembly

def _assemble(root, spec, results, tol, n_boot, confidence, bseed):
    labels = [c[0] for c in spec["conditions"]]
    n = spec["seeds"]
    segs = {label: [results[(label, s)]["seg"] for s in range(n)] for label in labels}
    events = list(dict.fromkeys(e for ss in segs.values() for seg in ss
                                for e in seg["event"].values.tolist()))
    boot = {"n_boot": n_boot, "confidence": confidence, "seed": bseed}
    per_cond = {}
    for label in labels:
        al = align_runs(segs[label], events=events, tolerance_decades=tol, **boot)
        al = al.rename(run="seed").assign_coords(seed=np.arange(n))
        per_cond[label] = al
    ds = xr.concat([per_cond[c] for c in labels], dim="condition", data_vars="all",
                   coords="different", compat="equals", join="exact",
                   combine_attrs="override")
    ds = ds.assign_coords(condition=np.array(labels, dtype=str))
    phases = np.array(["fitting", "compression", "converged", "unknown"])
    ds = ds.assign_coords(phase=phases)
    ds["phase_start"] = (("condition", "seed", "phase"), np.array(
        [[_phase_starts(seg, phases) for seg in segs[c]] for c in labels], dtype=float), {
        "long_name": "first step labelled with the phase", "units": "step",
        "description": "NaN where the run never enters the phase (segment's phase labels)"})
    ds["last_step"] = (("condition", "seed"), np.array(
        [[results[(c, s)]["last_step"] for s in range(n)] for c in labels], dtype=np.int64),
        {"long_name": "last checkpoint of the run", "units": "step"})
    ds["run_alignment_summary"] = (("condition", "seed"), np.array(
        [[str(seg["aligned"].attrs.get("summary", "")) for seg in segs[c]] for c in labels],
        dtype=str), {"long_name": "the run's own alignment verdict (segment)", "units": ""})
    ds["archive"] = (("condition", "seed"), np.array(
        [[os.path.relpath(_archive_path(root, folder, s), root) for s in range(n)]
         for _, folder, _ in spec["conditions"]], dtype=str),
        {"long_name": "run archive, relative to the study folder", "units": ""})
    ds["seed"].attrs = {"long_name": "seed (TrainConfig.seed)", "units": ""}
    ds["condition"].attrs = {"long_name": "condition", "units": "",
                             "description": "key=value of the varied config field, or "
                                            f"{DEFAULT_CONDITION!r} without vary"}
    if len(labels) > 1:
        cmp = compare_conditions(segs, events=events, **boot)
        cmp = cmp.rename(run="seed").assign_coords(seed=np.arange(n))
        per_cond["__shift__"] = cmp
        ds = ds.merge(cmp.drop_vars("event_type"), compat="override", combine_attrs="drop")
    d = spec["definition"]
    ds.attrs = {
        "title": f"ckptlab study of preset {d['preset']}",
        "preset": d["preset"],
        "overrides": json.dumps(d["overrides"]),
        "vary": json.dumps(d["vary"]),
        "analysis": json.dumps(d["analysis"]),
        "seeds": n,
        "tolerance_decades": tol,
        "n_boot": int(n_boot), "confidence": float(confidence), "bootstrap_seed": int(bseed),
        "pair_rule": per_cond[labels[0]].attrs["pair_rule"],
        **({"reference": labels[0], "shift_rule": per_cond["__shift__"].attrs["shift_rule"]}
           if len(labels) > 1 else {}),
    }
    return ds, per_cond


def _write_events(ds: xr.Dataset, path: Path) -> None:
    # Zarr format 2: its fixed-width strings (the notes and verdicts) are specified there, so
    # plain xarray opens the file without warnings; the archives themselves stay Zarr v3.
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)


def _table_text(spec, events, per_cond, tol) -> str:
    d = spec["definition"]
    n = spec["seeds"]
    labels = [c[0] for c in spec["conditions"]]
    head = [f"ckptlab study: preset {d['preset']}, seeds 0..{n - 1}"
            + (f", overrides {' '.join(d['overrides'])}" if d["overrides"] else "")
            + (f", vary {d['vary']['key']} over {', '.join(d['vary']['values'])}"
               if d["vary"] else ""),
            f"analysis: {json.dumps(d['analysis']) if d['analysis'] else 'analyze() defaults'}; "
            f"tolerance {tol:g} decades", ""]
    parts = ["\n".join(head)]
    for label, folder, _ in spec["conditions"]:
        al = per_cond[label]
        title = (f"== condition {label} ({folder}/seed0..{n - 1}.zarr)" if len(labels) > 1
                 else f"== {n} seeds")
        text = format_alignment_table(al, title=title)
        per_seed = events["run_alignment_summary"].sel(condition=label).values.tolist()
        runs = "\n".join(f"  seed {s}: {v}" for s, v in enumerate(per_seed))
        parts.append(text + "\n\nper-seed verdicts (segment, alignment events "
                     f"{al.attrs.get('alignment_events', '')}):\n" + runs)
    if "__shift__" in per_cond:
        parts.append("== conditions compared (reference " + labels[0] + ")\n"
                     + format_shift_table(per_cond["__shift__"]))
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- figure

def plot_timeline(events: xr.Dataset, *, fig: Figure | None = None) -> Figure:
    """Every event of every seed on a log-step axis, one row per seed, phases shaded.

    Parameters
    ----------
    events : xarray.Dataset
        The Dataset of :func:`study` (``events.zarr``): ``event_step`` (condition, seed,
        event), ``phase_start``, ``last_step``, ``log10_step_mean`` and ``log10_step_ci``.
    fig : matplotlib.figure.Figure, optional
        An empty figure to draw into; by default a new one (made without pyplot).

    Returns
    -------
    matplotlib.figure.Figure
        Rows grouped by condition, seed 0 on top; within a row each event type has its own
        lane and colour (per-layer events share their type's); below each condition's seeds,
        a row of the mean log10 step with its bootstrap interval for events with >= 2 seeds.
        A seed's row is shaded by its phases (from the first step of each).

    Raises
    ------
    ValidationError
        If ``events`` lacks the variables above.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from ckptlab.plot._style import EVENT_STYLES, PHASE_COLORS

    need = ("event_step", "phase_start", "last_step", "log10_step_mean", "log10_step_ci")
    if not isinstance(events, xr.Dataset) or any(v not in events for v in need):
        raise ValidationError(f"events must be a study's events Dataset with {', '.join(need)}, "
                              f"got {type(events).__name__}")
    conds = events["condition"].values.tolist()
    seeds = events["seed"].values.tolist()
    types = events["event_type"].values.tolist()
    ok = np.isfinite(events["event_step"].values).reshape(-1, len(types)).any(0)
    seen = {t for t, o in zip(types, ok) if o}  # types that happened somewhere
    kinds = [t for t in EVENT_STYLES if t in seen] + sorted(seen - set(EVENT_STYLES))
    kinds = kinds or ["fit_end"]
    lane = {t: i for i, t in enumerate(kinds)}
    n_rows = len(conds) * (len(seeds) + 1)
    if fig is None:
        fig = Figure(figsize=(9, 1.2 + 0.32 * n_rows + 0.1 * len(kinds)), layout="constrained")
    ax = fig.add_subplot()
    steps = events["event_step"].values
    positive = steps[np.isfinite(steps) & (steps > 0)]
    last = float(events["last_step"].max())
    x0 = max(1.0, float(positive.min()) / 2 if positive.size else 1.0)
    h = 0.8
    yticks, ylabels = [], []
    y = 0
    for c in conds:
        for s in seeds:
            starts = events["phase_start"].sel(condition=c, seed=s)
            end = float(events["last_step"].sel(condition=c, seed=s))
            spans = _phase_spans(x0, end, dict(zip(starts["phase"].values.tolist(),
                                                   starts.values.astype(float))))
            for phase, a, z in spans:
                ax.barh(y, z - a, left=a, height=h, color=PHASE_COLORS[phase], lw=0)
            row = events["event_step"].sel(condition=c, seed=s).values.astype(float)
            for t, st in zip(types, row):
                if np.isfinite(st) and st > 0 and t in lane:
                    color = EVENT_STYLES.get(t, ("#444444", "-"))[0]
                    yy = y - h / 2 + h * (lane[t] + 0.5) / len(kinds)
                    ax.plot(st, yy, marker="o", ms=3.5, color=color, ls="none")
            yticks.append(y)
            ylabels.append(f"{c}  seed {s}" if len(conds) > 1 else f"seed {s}")
            y += 1
        mean = events["log10_step_mean"].sel(condition=c).values.astype(float)
        ci = events["log10_step_ci"].sel(condition=c).values.astype(float)
        for t, m, (lo, hi) in zip(types, mean, ci):
            if np.isfinite(lo) and np.isfinite(hi) and t in lane:
                color = EVENT_STYLES.get(t, ("#444444", "-"))[0]
                yy = y - h / 2 + h * (lane[t] + 0.5) / len(kinds)
                ax.errorbar(10 ** m, yy, xerr=[[10 ** m - 10 ** lo], [10 ** hi - 10 ** m]],
                            fmt="s", ms=3.5, color=color, capsize=2, lw=1)
        yticks.append(y)
        ylabels.append(f"{c}  mean, {events.attrs.get('confidence', 0.95):.0%} interval"
                       if len(conds) > 1 else
                       f"mean, {events.attrs.get('confidence', 0.95):.0%} interval")
        y += 1
    ax.set_xscale("log")
    ax.set_xlim(x0, last * 1.15)
    ax.set_ylim(y - 0.5, -0.5)
    ax.set_yticks(yticks, ylabels, fontsize=8)
    ax.set_xlabel("training step")
    ax.set_title(str(events.attrs.get("title", "study")) + ": events per seed", fontsize=10)
    handles = [Patch(color=PHASE_COLORS[p], label=p) for p in ("fitting", "compression",
                                                                 "converged")]
    handles += [ax.plot([], [], marker="o", ls="none", color=EVENT_STYLES.get(t, ("#444",))[0],
                        label=t)[0] for t in kinds]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)),
               fontsize=7, frameon=False)
    return fig


def _phase_starts(seg: xr.Dataset, phases) -> list[float]:
    labels = seg["phase"].values.astype(str)
    steps = seg["step"].values.astype(float)
    return [float(steps[labels == p][0]) if (labels == p).any() else np.nan for p in phases]


def _phase_spans(x0: float, end: float, starts: dict):
    """[(phase, start, stop)] of one run from the first step of each phase (NaN: absent)."""
    present = sorted(((max(v, x0), p) for p, v in starts.items() if np.isfinite(v)))
    out = []
    for k, (a, p) in enumerate(present):
        z = present[k + 1][0] if k + 1 < len(present) else end
        if z > a:
            out.append((p, a, z))
    return out
