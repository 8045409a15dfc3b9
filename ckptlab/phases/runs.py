"""Compare the segmentations of several runs (seeds): event times with error bars."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from ..errors import ValidationError

__all__ = ["align_runs"]


def align_runs(segments: Sequence[xr.Dataset]) -> xr.Dataset:
    """Pool the events of several runs: mean, spread and count of log10(step) per event.

    Events are matched by name; an event missing from a run, or NaN there, does not count
    towards that event's ``n``. Spreads are sample standard deviations (ddof = 1, NaN when
    fewer than two runs have the event): the seeds are a sample of the runs one could make.

    Parameters
    ----------
    segments : sequence of xarray.Dataset
        Outputs of :func:`ckptlab.phases.segment`, one per run.

    Returns
    -------
    xarray.Dataset
        Dimensions ``run`` (the runs' ``run_name`` attrs, else ``run0``, ``run1``, ...),
        ``event`` (union of the runs' events, in first-seen order) and ``event_b``:

        - ``log10_step`` (run, event): each run's event times.
        - ``log10_step_mean``, ``log10_step_std``, ``n`` (event); ``event_step_geomean``
          (event) = 10 ** mean, the geometric mean step.
        - ``separation_mean``, ``separation_std``, ``separation_n`` (event, event_b): the
          per-run separations |log10 s_a - log10 s_b| pooled over the runs with both events.
        - ``aligned``, ``alignment_spread`` (run) as in each segment; ``aligned_fraction`` (the
          fraction of runs with a determined alignment that are aligned),
          ``alignment_spread_mean`` and ``alignment_spread_std``.

    Raises
    ------
    ValidationError
        If ``segments`` is empty or holds something that is not a ``segment`` output.
    """
    if isinstance(segments, xr.Dataset) or not isinstance(segments, Sequence) or not segments:
        raise ValidationError(f"segments must be a non-empty sequence of segment Datasets, "
                              f"got {type(segments).__name__}")
    for i, seg in enumerate(segments):
        if not isinstance(seg, xr.Dataset) or "event_log10_step" not in seg:
            raise ValidationError(f"segments[{i}] must be a Dataset returned by segment() "
                                  f"(with 'event_log10_step'), got {type(seg).__name__}")

    events: list[str] = []
    types: dict[str, str] = {}
    for seg in segments:
        for name, kind in zip(seg["event"].values.tolist(),
                              seg["event_type"].values.tolist()):
            if name not in types:
                events.append(name)
                types[name] = kind
    logs = np.stack([
        seg["event_log10_step"].reindex(event=events).values.astype(float)
        for seg in segments])  # (run, event)
    mean, std, n = _pooled(logs)
    seps = np.abs(logs[:, :, None] - logs[:, None, :])  # (run, event, event_b)
    sep_mean, sep_std, sep_n = _pooled(seps)

    aligned = np.array([bool(seg["aligned"].item()) if "aligned" in seg else False
                        for seg in segments])
    spread = np.array([float(seg["alignment_spread"].item()) if "alignment_spread" in seg
                       else np.nan for seg in segments])
    determined = np.isfinite(spread)
    sp_mean, sp_std, _ = _pooled(spread[:, None])

    out = xr.Dataset(coords={
        "run": _run_names(segments),
        "event": np.array(events, dtype=str),
        "event_b": np.array(events, dtype=str),
        "event_type": ("event", np.array([types[e] for e in events], dtype=str)),
    })
    out["log10_step"] = (("run", "event"), logs, {"long_name": "log10 of the event step",
                                                  "units": "log10(step)"})
    out["log10_step_mean"] = ("event", mean, {"long_name": "mean log10 event step over runs",
                                              "units": "log10(step)"})
    out["log10_step_std"] = ("event", std, {
        "long_name": "standard deviation of log10 event step over runs", "units": "decades",
        "ddof": 1})
    out["n"] = ("event", n, {"long_name": "number of runs with the event", "units": "count"})
    out["event_step_geomean"] = ("event", 10.0 ** mean, {
        "long_name": "geometric mean event step over runs", "units": "step"})
    out["separation_mean"] = (("event", "event_b"), sep_mean, {
        "long_name": "mean separation of two events over runs", "units": "decades"})
    out["separation_std"] = (("event", "event_b"), sep_std, {
        "long_name": "standard deviation of the separation over runs", "units": "decades",
        "ddof": 1})
    out["separation_n"] = (("event", "event_b"), sep_n, {
        "long_name": "number of runs with both events", "units": "count"})
    out["aligned"] = ("run", aligned, {"long_name": "alignment events within tolerance",
                                       "units": ""})
    out["alignment_spread"] = ("run", spread, {
        "long_name": "largest separation among alignment events", "units": "decades"})
    frac = float(aligned[determined].mean()) if determined.any() else np.nan
    out["aligned_fraction"] = ((), frac, {
        "long_name": "fraction of runs (with a determined alignment) that align", "units": "1"})
    out["alignment_spread_mean"] = ((), float(sp_mean[0]), {
        "long_name": "mean alignment spread over runs", "units": "decades"})
    out["alignment_spread_std"] = ((), float(sp_std[0]), {
        "long_name": "standard deviation of the alignment spread over runs",
        "units": "decades", "ddof": 1})
    tols = {seg.attrs.get("tolerance_decades") for seg in segments}
    out.attrs = {
        "n_runs": len(segments),
        "alignment_events": str(segments[0].attrs.get("alignment_events", "")),
        "tolerance_decades": (float(tols.pop()) if len(tols) == 1 and None not in tols
                              else "differs between runs"),
    }
    return out


def _pooled(a: np.ndarray):
    """NaN-aware mean, sample std (ddof=1) and count over axis 0."""
    ok = np.isfinite(a)
    n = ok.sum(0)
    filled = np.where(ok, a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, filled.sum(0) / n, np.nan)
        dev = np.where(ok, a - mean, 0.0)
        var = np.where(n > 1, (dev ** 2).sum(0) / (n - 1), np.nan)
    return mean, np.sqrt(var), n.astype(np.int64)


def _run_names(segments) -> np.ndarray:
    names = [str(seg.attrs.get("run_name") or f"run{i}") for i, seg in enumerate(segments)]
    if len(set(names)) != len(names):  # seeds often share a run_name: keep them apart
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return np.array(names, dtype=str)
