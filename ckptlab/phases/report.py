"""Plain-text and JSON views of a segmentation."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ..errors import ValidationError

__all__ = ["format_phase_table", "seg_to_json", "mi_summary", "format_mi_summary",
           "format_runs", "format_alignment_table", "format_shift_table"]


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

        def names(key):
            return [e for e in str(a.get(key, "")).split(", ") if e]

        out["alignment"] = {
            "aligned": bool(seg["aligned"].item()),
            "verdict": (str(seg["alignment_verdict"].item()) if "alignment_verdict" in seg
                        else ("aligned" if bool(seg["aligned"].item()) else "")),
            "spread_decades": _clean(float(seg["alignment_spread"].item())),
            "n": int(seg["alignment_n"].item()),
            "events": names("events"),
            "compared": names("compared"),
            "did_not_happen": names("did_not_happen"),
            "saturated": names("saturated"),
            "not_measured": names("not_measured"),
            "tolerance_decades": _clean(a.get("tolerance_decades")),
            "summary": a.get("summary", ""),
        }
    if "change_point" in seg:
        out["change_points"] = {
            c: [float(v) for v in row if math.isfinite(v)]
            for c, row in zip(seg["curve"].values.tolist(), seg["change_point"].values)
        }
    return out


# ----------------------------------------------------------------------------- across runs

def _check_runs(al, need: str, who: str) -> None:
    if not isinstance(al, xr.Dataset) or need not in al:
        raise ValidationError(f"al must be a Dataset returned by {who} (with {need!r}), got "
                              f"{type(al).__name__}")


def _fmt_ci(ci) -> str:
    lo, hi = (float(v) for v in ci)
    return "-" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"


def _fmt_num(v, fmt: str = ".3f") -> str:
    v = float(v)
    return "-" if not math.isfinite(v) else format(v, fmt)


def _why(al, event) -> str:
    """'did not happen in 3' / 'saturated in 2, did not happen in 1' for one event."""
    st = al["status"].sel(event=event).values.tolist() if "status" in al else []
    parts = [f"{s} in {st.count(s)}" for s in ("did not happen", "saturated", "not measured",
                                                "absent") if st.count(s)]
    return ", ".join(parts)


def format_runs(al: xr.Dataset) -> str:
    """The events of several runs (mean, sd, interval of log10 step) and the runs' verdicts.

    Parameters
    ----------
    al : xarray.Dataset
        Output of :func:`ckptlab.phases.align_runs`.

    Returns
    -------
    str
        One row per event (n, mean, sd, bootstrap interval, and for events some runs lack,
        why), then the line ``alignment across runs: ...`` naming the verdicts and the
        events they rest on.

    Raises
    ------
    ValidationError
        If ``al`` is not an ``align_runs`` output.
    """
    _check_runs(al, "log10_step_mean", "align_runs()")
    names = [str(e) for e in al["event"].values]
    w = max([len("event")] + [len(e) for e in names])
    n_runs = al.sizes["run" if "run" in al.dims else "seed"]  # a study names its runs seeds
    conf = al.attrs.get("confidence", 0.95)
    lines = [f"{'event':<{w}}  {'n':>5}  {'mean log10 step':>15}  {'std':>6}  "
             f"{f'{conf:.0%} interval':>16}  not found"]
    for e in names:
        row = al.sel(event=e)
        ci = _fmt_ci(row["log10_step_ci"].values) if "log10_step_ci" in al else "-"
        k = int(row["n"])
        lines.append(f"{e:<{w}}  {f'{k}/{n_runs}':>5}  {_fmt_num(row['log10_step_mean']):>15}  "
                     f"{_fmt_num(row['log10_step_std']):>6}  {ci:>16}  "
                     f"{_why(al, e) if k < n_runs else ''}".rstrip())
    if "alignment_summary" in al:
        lines.append("alignment across runs: " + str(al["alignment_summary"].item()))
    frac = float(al["aligned_fraction"])
    if math.isfinite(frac):
        lines.append(f"aligned in {frac:.0%} of the runs with a determined verdict")
    else:
        lines.append("no run has a determined alignment verdict (see above)")
    return "\n".join(lines)


def format_alignment_table(al: xr.Dataset, *, title: str | None = None) -> str:
    """Every pair of events that happened together in some run, with its verdict.

    Parameters
    ----------
    al : xarray.Dataset
        Output of :func:`ckptlab.phases.align_runs`.
    title : str, optional
        A first line (e.g. the condition).

    Returns
    -------
    str
        The per-event table of :func:`format_runs`, then one row per pair of events (a
        before b in reporting order) where both happened in at least one run: runs with
        both, mean signed offset (b - a) and mean separation in decades, sd, bootstrap
        interval, verdict; then the events that happened in no run, each once, with why
        (their pairs are all undetermined).

    Raises
    ------
    ValidationError
        If ``al`` is not an ``align_runs`` output.
    """
    _check_runs(al, "pair_verdict", "align_runs()")
    names = [str(e) for e in al["event"].values]
    n = al["n"].values
    tol = al.attrs.get("pair_tolerance_decades", al["pair_verdict"].attrs.get(
        "tolerance_decades"))
    conf = al.attrs.get("confidence", 0.95)
    lines = [title] if title else []
    lines.append(format_runs(al))
    lines.append("")
    happened = [e for e, k in zip(names, n) if k > 0]
    w = max([len("event a")] + [len(e) for e in happened])
    lines.append(f"pairs (separation |log10 b - log10 a| over the runs with both; tolerance "
                 f"{tol} decades; {conf:.0%} bootstrap intervals over runs, "
                 f"{al.attrs.get('n_boot', '?')} resamples)")
    lines.append(f"{'event a':<{w}}  {'event b':<{w}}  {'n':>3}  {'b - a':>6}  {'|b - a|':>7}  "
                 f"{'std':>5}  {'interval':>14}  verdict")
    sep_n = al["separation_n"]
    for i, a in enumerate(happened):
        for b in happened[i + 1:]:
            k = int(sep_n.sel(event=a, event_b=b))
            if k == 0:
                continue
            sel = {"event": a, "event_b": b}
            v = str(al["pair_verdict"].sel(sel).item())
            if v == "undetermined":
                note = str(al["pair_note"].sel(sel).item())
                if "contains the tolerance" in note:
                    v = "undetermined (interval contains the tolerance)"
                elif "only 1 of" in note:
                    v = "undetermined (1 run has both)"
            lines.append(
                f"{a:<{w}}  {b:<{w}}  {k:>3}  {_fmt_num(al['offset_mean'].sel(sel), '+.2f'):>6}"
                f"  {_fmt_num(al['separation_mean'].sel(sel), '.2f'):>7}  "
                f"{_fmt_num(al['separation_std'].sel(sel), '.2f'):>5}  "
                f"{_fmt_ci(al['separation_ci'].sel(sel).values):>14}  {v}")
    never = [e for e, k in zip(names, n) if k == 0]
    if never:
        lines.append("")
        lines.append("not compared with anything (the event happened in no run):")
        for e in never:
            lines.append(f"  {e}: {_why(al, e)}")
    return "\n".join(lines)


def format_shift_table(cmp: xr.Dataset) -> str:
    """Every event's shift between conditions, with its interval and verdict.

    Parameters
    ----------
    cmp : xarray.Dataset
        Output of :func:`ckptlab.phases.compare_conditions`.

    Returns
    -------
    str
        For each contrast, one row per event: seeds with the event under the reference and
        under the condition, seeds with both, mean shift (decades, + later), sd, bootstrap
        interval and verdict.

    Raises
    ------
    ValidationError
        If ``cmp`` is not a ``compare_conditions`` output.
    """
    if not isinstance(cmp, xr.Dataset) or "shift_verdict" not in cmp:
        raise ValidationError(f"cmp must be a Dataset returned by compare_conditions() (with "
                              f"'shift_verdict'), got {type(cmp).__name__}")
    names = [str(e) for e in cmp["event"].values]
    w = max([len("event")] + [len(e) for e in names])
    conf = cmp.attrs.get("confidence", 0.95)
    lines = []
    for c in cmp["contrast"].values.tolist():
        lines.append(f"shift {c} (log10 step under the condition minus under the reference, "
                     f"same seed; {conf:.0%} bootstrap intervals over seeds)")
        lines.append(f"{'event':<{w}}  {'ref':>3}  {'cond':>4}  {'both':>4}  {'shift':>6}  "
                     f"{'std':>5}  {'interval':>14}  verdict")
        for e in names:
            r = cmp.sel(contrast=c, event=e)
            lines.append(
                f"{e:<{w}}  {int(r['n_reference']):>3}  {int(r['n_condition']):>4}  "
                f"{int(r['shift_n']):>4}  {_fmt_num(r['shift_mean'], '+.2f'):>6}  "
                f"{_fmt_num(r['shift_std'], '.2f'):>5}  {_fmt_ci(r['shift_ci'].values):>14}  "
                f"{str(r['shift_verdict'].item())}")
        lines.append("")
    return "\n".join(lines).rstrip()


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
