"""Plain-text and JSON views of a segmentation."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import ValidationError

__all__ = ["format_phase_table", "seg_to_json", "mi_summary", "format_mi_summary"]


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
    mi = _mi_line(seg)
    if mi:
        lines.append("I(X;T): " + mi)
    lines.append("phases: " + _phase_line(seg))
    if "aligned" in seg:
        lines.append("alignment: " + str(seg["aligned"].attrs.get("summary", "")) +
                     f" [events: {seg['aligned'].attrs.get('events', '')}]")
    return "\n".join(lines)


def _mi_line(seg: xr.Dataset) -> str:
    """Whether any I(X;T) curve rises then falls, counting saturated curves apart."""
    types = seg["event_type"].values.tolist()
    steps = seg["event_step"].values.astype(float)
    notes = seg["event_note"].values.tolist()
    peaks = [(s, n) for t, s, n in zip(types, steps, notes) if t == "mi_peak"]
    if not peaks or (len(peaks) == 1 and peaks[0][1] == "mi_xt absent"):
        return ""
    saturated = sum(n.startswith("saturated") for _, n in peaks)
    measured = len(peaks) - saturated
    found = sum(math.isfinite(s) for s, _ in peaks)
    sat = f"; {saturated} more saturated (at a ceiling or at 0: not measurements)" if saturated \
        else ""
    if measured == 0:
        return f"every curve is saturated ({saturated}): nothing measured"
    if found == 0:
        return (f"no compression found: none of the {measured} measured curves rises to a peak "
                f"and falls after it{sat}")
    return f"a peak, then compression, in {found} of {measured} measured curves{sat}"


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


def mi_summary(ds: xr.Dataset, seg: xr.Dataset | None = None):
    """One row per I(X;T) curve: its range over the run, saturation and peak.

    Parameters
    ----------
    ds : xarray.Dataset
        Analysis Dataset with ``mi_xt`` and/or ``mi_xt_rel``.
    seg : xarray.Dataset, optional
        Its segmentation (for the peak and the end of fitting); computed when omitted.

    Returns
    -------
    pandas.DataFrame
        Columns ``estimator``, ``resolution`` (NaN for estimators without one), ``layer``,
        ``min``, ``max``, ``range`` (bits), ``saturated`` (fraction of checkpoints at the
        ceiling or at 0), ``ceiling`` (bits), ``peak_step`` (NaN where no peak was found or the
        curve is saturated) and ``peak_minus_fit_end`` (decades; negative: before the end of
        fitting).
    """
    import pandas as pd

    from .segmentation import segment

    if seg is None:
        seg = segment(ds)
    _check_seg(seg)
    events = dict(zip(seg["event"].values.tolist(), seg["event_step"].values.astype(float)))
    fit = events.get("fit_end", np.nan)
    rows = []
    for var, dim in (("mi_xt", "estimator"), ("mi_xt_rel", "rel_estimator")):
        if var not in ds:
            continue
        da = ds[var]
        res_values = da["resolution"].values if "resolution" in da.dims else [None]
        for est in da[dim].values:
            for r in res_values:
                for layer in da["layer"].values:
                    sel = {dim: est, "layer": layer}
                    if r is not None:
                        sel["resolution"] = r
                    v = np.asarray(da.sel(sel).values, float)
                    sat = ds.get(f"{var}_saturated")
                    ceil = ds.get(f"{var}_ceiling")
                    label = ",".join([str(est)] + ([f"{float(r):g}"] if r is not None else [])
                                     + [str(layer)])
                    peak = events.get(f"mi_peak[{label}]", np.nan)
                    rows.append({
                        "estimator": str(est),
                        "resolution": np.nan if r is None else float(r),
                        "layer": str(layer),
                        "min": float(np.nanmin(v)), "max": float(np.nanmax(v)),
                        "range": float(np.nanmax(v) - np.nanmin(v)),
                        "saturated": np.nan if sat is None else float(
                            sat.sel({k: x for k, x in sel.items() if k in sat.dims})),
                        "ceiling": np.nan if ceil is None else float(ceil.sel({dim: est})),
                        "peak_step": peak,
                        "peak_minus_fit_end": (math.log10(peak) - math.log10(fit)
                                               if peak > 0 and fit > 0 else np.nan),
                    })
    return pd.DataFrame(rows)


def format_mi_summary(table) -> str:
    """:func:`mi_summary` as a plain-text table ("sat" marks curves at >= 90% saturation)."""
    lines = [f"{'estimator':<14} {'c':>5} {'layer':<14} {'min':>6} {'max':>6} {'range':>6} "
             f"{'sat':>5}  {'peak':>7} {'peak-fit':>8}"]
    for r in table.itertuples():
        c = "-" if not math.isfinite(r.resolution) else f"{r.resolution:g}"
        flag = f"{r.saturated:4.0%}" if math.isfinite(r.saturated) else "-"
        if math.isfinite(r.saturated) and r.saturated >= 0.9:
            flag += "*"
        peak = _fmt_step(r.peak_step)
        sep = f"{r.peak_minus_fit_end:+.2f}" if math.isfinite(r.peak_minus_fit_end) else "-"
        lines.append(f"{r.estimator:<14} {c:>5} {r.layer:<14} {r.min:6.2f} {r.max:6.2f} "
                     f"{r.range:6.2f} {flag:>5}  {peak:>7} {sep:>8}")
    lines.append("sat: fraction of checkpoints within 1% of the ceiling or of 0; * saturated "
                 "curve (>= 90%): its peak is not searched")
    return "\n".join(lines)
