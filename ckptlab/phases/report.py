"""Plain-text and JSON views of a segmentation."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import ValidationError

__all__ = ["format_phase_table", "seg_to_json"]


def _check_seg(seg) -> None:
    if not isinstance(seg, xr.Dataset) or "event_step" not in seg or "phase" not in seg:
        raise ValidationError(f"seg must be a Dataset returned by segment() (with 'event_step' "
                              f"and 'phase'), got {type(seg).__name__}")


def _fmt_step(s: float) -> str:
    return "-" if not math.isfinite(s) else f"{round(s):,}"


def format_phase_table(seg: xr.Dataset) -> str:
    """Render a segmentation as a plain-text table plus phase and alignment summary lines.

    Parameters
    ----------
    seg : xarray.Dataset
        Output of :func:`ckptlab.phases.segment`.

    Returns
    -------
    str
        One row per event (event, step, log10 step, note; "-" for events that did not
        happen), then the phase boundaries and the alignment verdict.

    Raises
    ------
    ValidationError
        If ``seg`` is not a ``segment`` output.
    """
    _check_seg(seg)
    names = seg["event"].values.tolist()
    steps = seg["event_step"].values.astype(float)
    notes = seg["event_note"].values.tolist()
    w = max([len("event")] + [len(n) for n in names])
    sw = max([len("step")] + [len(_fmt_step(s)) for s in steps])
    lines = []
    run = seg.attrs.get("run_name")
    if run:
        lines.append(f"run: {run}")
    lines.append(f"{'event':<{w}}  {'step':>{sw}}  {'log10':>5}  note")
    lines.append(f"{'-' * w}  {'-' * sw}  {'-' * 5}  {'-' * 4}")
    for name, s, note in zip(names, steps, notes):
        lg = f"{math.log10(s):5.2f}" if math.isfinite(s) else f"{'-':>5}"
        lines.append(f"{name:<{w}}  {_fmt_step(s):>{sw}}  {lg}  {note}")
    lines.append("")
    lines.append("phases: " + _phase_line(seg))
    if "aligned" in seg:
        lines.append("alignment: " + str(seg["aligned"].attrs.get("summary", "")) +
                     f" [events: {seg['aligned'].attrs.get('events', '')}]")
    return "\n".join(lines)


def _phase_line(seg: xr.Dataset) -> str:
    """Phases in time order with the steps where each starts and ends."""
    labels = seg["phase"].values.tolist()
    steps = seg["step"].values.astype(float)
    if not labels:
        return "(no steps)"
    bounds = dict(zip(seg["boundary"].values.tolist(), seg["boundary_step"].values.astype(float)))
    starts = {"fitting": steps[0], "compression": bounds.get("compression_start", np.nan),
              "converged": bounds.get("converged_start", np.nan), "unknown": steps[0]}
    present = [p for p in ("fitting", "compression", "converged", "unknown") if p in labels]
    parts = []
    for k, p in enumerate(present):
        end = starts[present[k + 1]] if k + 1 < len(present) else steps[-1]
        parts.append(f"{p} {_fmt_step(starts[p])}..{_fmt_step(end)}")
    return ", ".join(parts)


def _clean(v):
    """Python scalars for JSON; NaN and infinities become None."""
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def seg_to_json(seg: xr.Dataset) -> dict:
    """A JSON-serialisable dict of a segmentation (NaN -> None).

    Parameters
    ----------
    seg : xarray.Dataset
        Output of :func:`ckptlab.phases.segment`.

    Returns
    -------
    dict
        Keys ``run_name``, ``events`` (list of {name, type, step, log10_step, note}),
        ``phases`` ({boundaries, step, label}), ``alignment``, ``separation``
        ({events, decades}), ``change_points`` ({curve: [steps]}) and ``attrs`` (options and
        rules).

    Raises
    ------
    ValidationError
        If ``seg`` is not a ``segment`` output.
    """
    _check_seg(seg)
    events = [
        {"name": n, "type": t, "step": _clean(s), "log10_step": _clean(lg), "note": note}
        for n, t, s, lg, note in zip(
            seg["event"].values.tolist(), seg["event_type"].values.tolist(),
            seg["event_step"].values.astype(float), seg["event_log10_step"].values.astype(float),
            seg["event_note"].values.tolist())
    ]
    out = {
        "run_name": seg.attrs.get("run_name", ""),
        "events": events,
        "phases": {
            "boundaries": ({b: _clean(v) for b, v in zip(seg["boundary"].values.tolist(),
                                                         seg["boundary_step"].values)}
                           if "boundary_step" in seg else {}),
            "step": _clean(seg["step"].values),
            "label": seg["phase"].values.tolist(),
        },
        "separation": {"events": seg["event"].values.tolist(),
                       "decades": _clean(seg["separation"].values)} if "separation" in seg
        else {},
        "attrs": {k: _clean(v) for k, v in seg.attrs.items()},
    }
    if "aligned" in seg:
        a = seg["aligned"].attrs
        out["alignment"] = {
            "aligned": bool(seg["aligned"].item()),
            "spread_decades": _clean(float(seg["alignment_spread"].item())),
            "n": int(seg["alignment_n"].item()),
            "events": [e for e in str(a.get("events", "")).split(", ") if e],
            "tolerance_decades": _clean(a.get("tolerance_decades")),
            "summary": a.get("summary", ""),
        }
    if "change_point" in seg:
        out["change_points"] = {
            c: [float(v) for v in row if math.isfinite(v)]
            for c, row in zip(seg["curve"].values.tolist(), seg["change_point"].values)
        }
    return out
