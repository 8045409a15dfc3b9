"""Compare the segmentations of several runs (seeds, conditions): event times with intervals.

Every verdict here says what it rests on: which events it compared, in how many runs, and
which it could not compare and why (the event did not happen, its curve was saturated, or it
was not measured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from .._checks import check_float, check_int
from ..errors import ValidationError
from .segmentation import EVENT_STATUSES, event_status

__all__ = ["align_runs", "compare_conditions", "bootstrap_mean_interval"]

#: Name of the interval bounds dimension.
BOUNDS = ("lower", "upper")

_PAIR_RULE = (
    "per pair of events, over the runs where both happened: separation = |log10 s_b - log10 "
    "s_a| (decades), its mean, sample sd (ddof 1) and a percentile bootstrap interval of the "
    "mean over runs; aligned: the interval's upper end <= tolerance_decades; not aligned: its "
    "lower end > tolerance_decades; undetermined: the interval contains the tolerance, or "
    "fewer than 2 runs have both events")
_SHIFT_RULE = (
    "per event, paired by run (the k-th run of each condition is the same seed): shift = "
    "log10 s(condition) - log10 s(reference) (decades), over the runs where the event happened "
    "under both; its mean, sample sd and a percentile bootstrap interval of the mean; later / "
    "earlier: the interval excludes 0; no shift resolved: it contains 0; undetermined: fewer "
    "than 2 runs have the event under both conditions")


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_mean_interval(values, *, n_boot: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over the last axis, ignoring NaN.

    Each row is resampled over its finite entries (k of them, with replacement); rows with
    the same k share the resamples of ``numpy.random.default_rng([seed, k])``, so the result
    depends on the values only, not on the order of rows or on other rows.

    Parameters
    ----------
    values : array_like, shape (..., n)
        Samples along the last axis (the runs); NaN entries are left out.
    n_boot : int, default 2000
        Bootstrap resamples, >= 100.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).
    seed : int, default 0
        Seed of the resampling, >= 0.

    Returns
    -------
    lower, upper : numpy.ndarray, shape (...)
        Interval bounds; NaN where fewer than 2 entries are finite.

    Raises
    ------
    ValidationError
        If an option is out of range.

    References
    ----------
    Efron and Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall (1993), ch. 13.
    """
    n_boot = check_int("n_boot", n_boot, min=100)
    confidence = check_float("confidence", confidence, min=0, max=1, min_inclusive=False,
                             max_inclusive=False)
    seed = check_int("seed", seed, min=0)
    a = np.asarray(values, dtype=float)
    shape = a.shape[:-1]
    a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    ok = np.isfinite(a)
    k = ok.sum(1)
    lo = np.full(len(a), np.nan)
    hi = np.full(len(a), np.nan)
    order = np.argsort(~ok, axis=1, kind="stable")  # finite entries first, in their order
    compact = np.take_along_axis(a, order, axis=1)
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    for kk in np.unique(k[k >= 2]):
        rows = np.flatnonzero(k == kk)
        rng = np.random.default_rng([seed, int(kk)])
        weights = rng.multinomial(int(kk), np.full(int(kk), 1.0 / kk), size=n_boot) / kk
        for start in range(0, len(rows), 1024):  # bounds memory: 1024 x n_boot at a time
            r = rows[start:start + 1024]
            boot = compact[r, :kk] @ weights.T
            lo[r], hi[r] = np.quantile(boot, q, axis=1)
    return lo.reshape(shape), hi.reshape(shape)


# ----------------------------------------------------------------------------- align_runs

def align_runs(
    segments: Sequence[xr.Dataset],
    *,
    events: Sequence[str] | None = None,
    tolerance_decades: float | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Pool the events of several runs: event times, pair separations and verdicts.

    Events are matched by name; an event missing from a run, or NaN there, does not count
    towards that event's ``n``. Spreads are sample standard deviations (ddof = 1, NaN when
    fewer than two runs have the event): the seeds are a sample of the runs one could make.
    Intervals are percentile bootstrap intervals of the mean over runs
    (:func:`bootstrap_mean_interval`), NaN with fewer than two runs.

    Parameters
    ----------
    segments : sequence of xarray.Dataset
        Outputs of :func:`ckptlab.phases.segment`, one per run.
    events : sequence of str, optional
        Event names, in this order (events of the runs not named are left out; named events
        no run has are kept, with ``n`` 0). Default: the union of the runs' events, in
        first-seen order.
    tolerance_decades : float, optional
        Tolerance of the pair verdicts, > 0. Default: the segments' own (0.5 if they differ
        or do not say).
    n_boot : int, default 2000
        Bootstrap resamples of the intervals, >= 100.
    confidence : float, default 0.95
        Coverage of the intervals, in (0, 1).
    seed : int, default 0
        Seed of the bootstrap: the same inputs give the same intervals.

    Returns
    -------
    xarray.Dataset
        Dimensions ``run`` (the runs' ``run_name`` attrs, else ``run0``, ``run1``, ...),
        ``event`` (with coordinate ``event_type``), ``event_b`` and ``bound`` ("lower",
        "upper"):

        - ``log10_step``, ``event_step``, ``event_note``, ``status`` (run, event): each run's
          event times, how each was found or why not, and whether it happened ("happened",
          "did not happen", "saturated", "not measured", or "absent" from that run).
        - ``log10_step_mean``, ``log10_step_std``, ``log10_step_ci`` (+ bound), ``n``
          (event); ``event_step_geomean`` (event) = 10 ** mean, the geometric mean step.
        - ``separation_mean``, ``separation_std``, ``separation_ci`` (+ bound),
          ``separation_n`` (event, event_b): the per-run separations |log10 s_a - log10 s_b|
          pooled over the runs with both events; ``offset_mean`` the mean signed offset
          log10 s_b - log10 s_a; ``pair_verdict`` ("aligned", "not aligned",
          "undetermined", "" on the diagonal) and ``pair_note``, the sentence it rests on.
        - ``alignment_verdict``, ``aligned``, ``alignment_spread`` (run) as in each segment;
          ``aligned_fraction`` (the fraction of runs with a determined verdict, aligned or
          not aligned, that are aligned; NaN when no run has one), ``alignment_spread_mean``,
          ``alignment_spread_std`` and ``alignment_summary`` (str: the verdicts counted, and
          which alignment events were compared in every run, in some, in none and why).

    Raises
    ------
    ValidationError
        If ``segments`` is empty or holds something that is not a ``segment`` output, or an
        option is out of range.
    """
    _check_segments("segments", segments)
    if tolerance_decades is None:
        tols = {seg.attrs.get("tolerance_decades") for seg in segments}
        tol = float(tols.pop()) if len(tols) == 1 and None not in tols else 0.5
    else:
        tol = check_float("tolerance_decades", tolerance_decades, min=0, min_inclusive=False)
    bootstrap_mean_interval(np.zeros((1, 2)), n_boot=n_boot, confidence=confidence, seed=seed)

    names, types = _event_union(segments, events)
    logs, notes, status = _per_run(segments, names)
    n_runs = len(segments)
    happened = status == "happened"
    mean, std, n = _pooled(logs)
    lo, hi = bootstrap_mean_interval(logs.T, n_boot=n_boot, confidence=confidence, seed=seed)

    diff = logs[:, None, :] - logs[:, :, None]  # (run, event a, event b): log b - log a
    seps = np.abs(diff)
    sep_mean, sep_std, sep_n = _pooled(seps)
    off_mean, _, _ = _pooled(diff)
    m = len(names)
    iu = np.triu_indices(m, k=1)
    ci = np.full((m, m, 2), np.nan)
    if m > 1:
        plo, phi = bootstrap_mean_interval(seps[:, iu[0], iu[1]].T, n_boot=n_boot,
                                           confidence=confidence, seed=seed)
        ci[iu[0], iu[1], 0], ci[iu[0], iu[1], 1] = plo, phi
        ci[iu[1], iu[0], 0], ci[iu[1], iu[0], 1] = plo, phi
    verdict = np.full((m, m), "", dtype=object)
    note = np.full((m, m), "", dtype=object)
    for i, j in zip(*iu):
        v, s = _pair_verdict(names[i], names[j], status[:, i], status[:, j], seps[:, i, j],
                             sep_mean[i, j], ci[i, j], tol, confidence, n_runs)
        verdict[i, j] = verdict[j, i] = v
        note[i, j] = note[j, i] = s

    run_verdict, aligned, spread = _run_verdicts(segments)
    determined = np.isin(run_verdict, ("aligned", "not aligned"))
    sp_mean, sp_std, _ = _pooled(spread[:, None])

    out = xr.Dataset(coords={
        "run": _run_names(segments),
        "event": np.array(names, dtype=str),
        "event_b": np.array(names, dtype=str),
        "event_type": ("event", np.array(types, dtype=str)),
        "bound": np.array(BOUNDS),
    })
    out["log10_step"] = (("run", "event"), logs, {"long_name": "log10 of the event step",
                                                  "units": "log10(step)"})
    out["event_step"] = (("run", "event"), 10.0 ** logs, {
        "long_name": "step of the event", "units": "step",
        "description": "NaN when the event did not happen; the reason is in event_note"})
    out["event_note"] = (("run", "event"), notes.astype(str), {
        "long_name": "how the event was found, or why not", "units": ""})
    out["status"] = (("run", "event"), status.astype(str), {
        "long_name": "whether the event happened", "units": "",
        "values": ", ".join(EVENT_STATUSES + ("absent",)),
        "description": "saturated: the estimator sat at its ceiling or at 0 (not a "
                       "measurement); not measured: the variable is absent or too short; "
                       "absent: the run's segmentation has no such event"})
    out["log10_step_mean"] = ("event", mean, {"long_name": "mean log10 event step over runs",
                                              "units": "log10(step)"})
    out["log10_step_std"] = ("event", std, {
        "long_name": "standard deviation of log10 event step over runs", "units": "decades",
        "ddof": 1})
    out["log10_step_ci"] = (("event", "bound"), np.stack([lo, hi], -1), _ci_attrs(
        "bootstrap interval of the mean log10 event step", "log10(step)", n_boot, confidence,
        seed))
    out["n"] = ("event", n, {"long_name": "number of runs with the event", "units": "count"})
    out["event_step_geomean"] = ("event", 10.0 ** mean, {
        "long_name": "geometric mean event step over runs", "units": "step"})
    out["separation_mean"] = (("event", "event_b"), sep_mean, {
        "long_name": "mean separation of two events over runs", "units": "decades"})
    out["separation_std"] = (("event", "event_b"), sep_std, {
        "long_name": "standard deviation of the separation over runs", "units": "decades",
        "ddof": 1})
    out["separation_ci"] = (("event", "event_b", "bound"), ci, _ci_attrs(
        "bootstrap interval of the mean separation", "decades", n_boot, confidence, seed))
    out["separation_n"] = (("event", "event_b"), sep_n, {
        "long_name": "number of runs with both events", "units": "count"})
    out["offset_mean"] = (("event", "event_b"), off_mean, {
        "long_name": "mean offset of event_b after event", "units": "decades",
        "description": "log10 step of event_b minus log10 step of event, mean over the runs "
                       "with both"})
    out["pair_verdict"] = (("event", "event_b"), verdict.astype(str), {
        "long_name": "alignment verdict of the pair", "units": "", "rule": _PAIR_RULE,
        "tolerance_decades": tol})
    out["pair_note"] = (("event", "event_b"), note.astype(str), {
        "long_name": "what the pair verdict rests on", "units": ""})
    out["alignment_verdict"] = ("run", run_verdict.astype(str), {
        "long_name": "alignment verdict of each run (segment)", "units": ""})
    out["aligned"] = ("run", aligned, {"long_name": "alignment events within tolerance",
                                       "units": ""})
    out["alignment_spread"] = ("run", spread, {
        "long_name": "largest separation among alignment events", "units": "decades"})
    frac = float(aligned[determined].mean()) if determined.any() else np.nan
    out["aligned_fraction"] = ((), frac, {
        "long_name": "fraction of runs with a determined verdict that align", "units": "1",
        "description": "runs whose verdict is undetermined (events that did not happen or "
                       "are saturated) are left out; NaN when every run is undetermined"})
    out["alignment_spread_mean"] = ((), float(sp_mean[0]), {
        "long_name": "mean alignment spread over runs", "units": "decades"})
    out["alignment_spread_std"] = ((), float(sp_std[0]), {
        "long_name": "standard deviation of the alignment spread over runs",
        "units": "decades", "ddof": 1})
    out["alignment_summary"] = ((), _runs_summary(segments, run_verdict), {
        "long_name": "what the runs' alignment verdicts rest on", "units": ""})
    seg_tols = {seg.attrs.get("tolerance_decades") for seg in segments}
    out.attrs = {
        "n_runs": n_runs,
        "alignment_events": str(segments[0].attrs.get("alignment_events", "")),
        "tolerance_decades": (float(seg_tols.pop()) if len(seg_tols) == 1
                              and None not in seg_tols else "differs between runs"),
        "pair_tolerance_decades": tol,
        "n_boot": int(n_boot), "confidence": float(confidence), "bootstrap_seed": int(seed),
        "pair_rule": _PAIR_RULE,
    }
    return out


# ----------------------------------------------------------------------------- conditions

def compare_conditions(
    conditions: Mapping[str, Sequence[xr.Dataset]],
    *,
    reference: str | None = None,
    events: Sequence[str] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Shift of every event between conditions, paired by run, with bootstrap intervals.

    The same seeds run under several conditions (an intervention and its control): the k-th
    segmentation of every condition must be the same seed. For each condition other than the
    reference and each event, the shift is log10 s(condition) - log10 s(reference) per seed,
    over the seeds where the event happened under both.

    Parameters
    ----------
    conditions : mapping of str to sequence of xarray.Dataset
        Condition label -> its :func:`ckptlab.phases.segment` outputs, one per seed, all of
        the same length (at least 2 conditions).
    reference : str, optional
        The condition the others are compared with (default: the first).
    events : sequence of str, optional
        Event names, in this order (default: the union over all runs, first-seen order).
    n_boot, confidence, seed
        As in :func:`align_runs`.

    Returns
    -------
    xarray.Dataset
        Dimensions ``contrast`` (one per non-reference condition, labelled
        "<condition> vs <reference>"; coordinate ``contrast_condition``), ``run``, ``event``
        (with ``event_type``) and ``bound``:

        - ``shift`` (contrast, run, event): per-seed shifts in decades (NaN where the event
          did not happen under both).
        - ``shift_mean``, ``shift_std``, ``shift_ci`` (+ bound), ``shift_n`` (contrast,
          event); ``shift_verdict`` ("later", "earlier", "no shift resolved",
          "undetermined") and ``shift_note``, the sentence it rests on.
        - ``n_reference``, ``n_condition`` (contrast, event): seeds with the event under
          each.

        Attrs ``reference`` and the rule.

    Raises
    ------
    ValidationError
        Fewer than 2 conditions, conditions of different numbers of runs, an unknown
        ``reference``, or an option out of range.
    """
    if not isinstance(conditions, Mapping) or len(conditions) < 2:
        raise ValidationError(f"conditions must be a mapping of at least 2 condition labels to "
                              f"segment lists, got {type(conditions).__name__} of "
                              f"{len(conditions) if hasattr(conditions, '__len__') else '?'}")
    labels = [str(k) for k in conditions]
    for label, segs in conditions.items():
        _check_segments(f"conditions[{label!r}]", segs)
    sizes = {label: len(segs) for label, segs in conditions.items()}
    if len(set(sizes.values())) != 1:
        raise ValidationError(f"conditions must hold the same number of runs (paired by seed), "
                              f"got {sizes}")
    reference = labels[0] if reference is None else reference
    if reference not in conditions:
        raise ValidationError(f"reference must be one of {', '.join(map(repr, labels))}; got "
                              f"{reference!r}")
    bootstrap_mean_interval(np.zeros((1, 2)), n_boot=n_boot, confidence=confidence, seed=seed)
    everything = [s for segs in conditions.values() for s in segs]
    names, types = _event_union(everything, events)
    per = {label: _per_run(segs, names) for label, segs in conditions.items()}
    others = [c for c in labels if c != reference]
    ref_logs, _, ref_status = per[reference]
    n_runs = sizes[reference]
    shift = np.stack([per[c][0] - ref_logs for c in others])  # (contrast, run, event)
    mean, std, n = _pooled(np.moveaxis(shift, 1, 0))
    lo, hi = bootstrap_mean_interval(np.moveaxis(shift, 1, -1), n_boot=n_boot,
                                     confidence=confidence, seed=seed)
    verdict = np.full(mean.shape, "", dtype=object)
    note = np.full(mean.shape, "", dtype=object)
    for c, cond in enumerate(others):
        st = per[cond][2]
        for j, name in enumerate(names):
            verdict[c, j], note[c, j] = _shift_verdict(
                cond, reference, st[:, j], ref_status[:, j], mean[c, j], lo[c, j], hi[c, j],
                int(n[c, j]), confidence, n_runs)
    out = xr.Dataset(coords={
        "contrast": np.array([f"{c} vs {reference}" for c in others], dtype=str),
        "contrast_condition": ("contrast", np.array(others, dtype=str)),
        "run": np.array([f"run{i}" for i in range(n_runs)], dtype=str),
        "event": np.array(names, dtype=str),
        "event_type": ("event", np.array(types, dtype=str)),
        "bound": np.array(BOUNDS),
    })
    out["shift"] = (("contrast", "run", "event"), shift, {
        "long_name": "shift of the event from the reference condition", "units": "decades",
        "description": "log10 step under the condition minus under the reference, same seed"})
    out["shift_mean"] = (("contrast", "event"), mean, {
        "long_name": "mean shift over seeds", "units": "decades"})
    out["shift_std"] = (("contrast", "event"), std, {
        "long_name": "standard deviation of the shift over seeds", "units": "decades",
        "ddof": 1})
    out["shift_ci"] = (("contrast", "event", "bound"), np.stack([lo, hi], -1), _ci_attrs(
        "bootstrap interval of the mean shift", "decades", n_boot, confidence, seed))
    out["shift_n"] = (("contrast", "event"), n, {
        "long_name": "seeds with the event under both conditions", "units": "count"})
    out["n_reference"] = (("contrast", "event"), np.broadcast_to(
        (ref_status == "happened").sum(0), mean.shape).astype(np.int64), {
        "long_name": "seeds with the event under the reference", "units": "count"})
    out["n_condition"] = (("contrast", "event"), np.stack(
        [(per[c][2] == "happened").sum(0) for c in others]).astype(np.int64), {
        "long_name": "seeds with the event under the condition", "units": "count"})
    out["shift_verdict"] = (("contrast", "event"), verdict.astype(str), {
        "long_name": "verdict on the shift", "units": "", "rule": _SHIFT_RULE})
    out["shift_note"] = (("contrast", "event"), note.astype(str), {
        "long_name": "what the shift verdict rests on", "units": ""})
    out.attrs = {"reference": reference, "conditions": ", ".join(labels),
                 "n_boot": int(n_boot), "confidence": float(confidence),
                 "bootstrap_seed": int(seed), "shift_rule": _SHIFT_RULE}
    return out


# ----------------------------------------------------------------------------- helpers

def _check_segments(arg: str, segments) -> None:
    if isinstance(segments, xr.Dataset) or not isinstance(segments, Sequence) or not segments:
        raise ValidationError(f"{arg} must be a non-empty sequence of segment Datasets, "
                              f"got {type(segments).__name__}")
    for i, seg in enumerate(segments):
        if not isinstance(seg, xr.Dataset) or "event_log10_step" not in seg:
            raise ValidationError(f"{arg}[{i}] must be a Dataset returned by segment() "
                                  f"(with 'event_log10_step'), got {type(seg).__name__}")


def _event_union(segments, events):
    names: list[str] = []
    types: dict[str, str] = {}
    for seg in segments:
        for name, kind in zip(seg["event"].values.tolist(), seg["event_type"].values.tolist()):
            if name not in types:
                names.append(name)
                types[name] = kind
    if events is not None:
        if isinstance(events, str) or not all(isinstance(e, str) for e in events):
            raise ValidationError(f"events must be a sequence of event names, got {events!r}")
        names = list(dict.fromkeys(events))
        for e in names:
            types.setdefault(e, e.split("[", 1)[0])
    return names, [types[e] for e in names]


def _per_run(segments, names):
    """(logs, notes, status), each (run, event), for the given event names."""
    logs = np.full((len(segments), len(names)), np.nan)
    notes = np.full((len(segments), len(names)), "", dtype=object)
    status = np.full((len(segments), len(names)), "absent", dtype=object)
    col = {e: j for j, e in enumerate(names)}
    for i, seg in enumerate(segments):
        seg_notes = (seg["event_note"].values.tolist() if "event_note" in seg
                     else [""] * seg.sizes["event"])
        for name, lg, nt in zip(seg["event"].values.tolist(),
                                seg["event_log10_step"].values.astype(float), seg_notes):
            j = col.get(name)
            if j is None:
                continue
            logs[i, j], notes[i, j] = lg, str(nt)
            status[i, j] = event_status(lg, nt)
    return logs, notes, status


def _ci_attrs(long_name, units, n_boot, confidence, seed):
    return {"long_name": long_name, "units": units, "method": "percentile bootstrap over runs",
            "n_boot": int(n_boot), "confidence": float(confidence), "bootstrap_seed": int(seed)}


def _why_not(name: str, status: np.ndarray, n_runs: int) -> str:
    """'<name> did not happen in 2, saturated in 1 of 3 runs' (empty if it always happened)."""
    parts = []
    for s in ("did not happen", "saturated", "not measured", "absent"):
        k = int((status == s).sum())
        if k:
            parts.append(f"{s} in {k}")
    return f"{name} {', '.join(parts)} of {n_runs} runs" if parts else ""


def _interval(lo, hi) -> str:
    return f"[{lo:.2f}, {hi:.2f}]"


def _pair_verdict(a, b, st_a, st_b, seps, mean, ci, tol, confidence, n_runs):
    both = (st_a == "happened") & (st_b == "happened")
    k = int(both.sum())
    why = "; ".join(w for w in (_why_not(a, st_a, n_runs), _why_not(b, st_b, n_runs)) if w)
    if k == 0:
        reason = why or "the two events never happened in the same run"
        if why and (st_a == "happened").any() and (st_b == "happened").any():
            reason = "the two events never happened in the same run: " + why
        return "undetermined", f"undetermined: no run has both events ({reason})"
    if k == 1:
        sep = float(seps[both][0])
        return "undetermined", (f"undetermined: only 1 of {n_runs} runs has both events "
                                f"(separation {sep:.2f} decades)" + (f"; {why}" if why else ""))
    lo, hi = ci
    head = (f"mean separation {mean:.2f} decades, {confidence:.0%} interval "
            f"{_interval(lo, hi)}")
    if hi <= tol:
        v, rel = "aligned", f"<= tolerance {tol:g}"
    elif lo > tol:
        v, rel = "not aligned", f"> tolerance {tol:g}"
    else:
        v, rel = "undetermined", f"contains the tolerance {tol:g}"
    tail = f" ({k} of {n_runs} runs" + (f"; {why})" if why and k < n_runs else ")")
    return v, f"{v}: {head} {rel}{tail}"


def _shift_verdict(cond, ref, st_c, st_r, mean, lo, hi, k, confidence, n_runs):
    counts = (f"happened in {int((st_r == 'happened').sum())} of {n_runs} seeds under {ref}, "
              f"{int((st_c == 'happened').sum())} under {cond}")
    if k < 2:
        return "undetermined", (f"undetermined: only {k} seed{'s' if k != 1 else ''} "
                                f"{'have' if k != 1 else 'has'} the event under both "
                                f"conditions ({counts})")
    head = f"mean shift {mean:+.2f} decades, {confidence:.0%} interval {_interval(lo, hi)}"
    if lo > 0:
        v = "later"
    elif hi < 0:
        v = "earlier"
    else:
        v = "no shift resolved"
    rel = "contains 0" if v == "no shift resolved" else "excludes 0"
    tail = f"{k} of {n_runs} seeds" + (f"; {counts}" if k < n_runs else "")
    return v, f"{v}: {head} {rel} ({tail})"


def _run_verdicts(segments):
    verdicts, aligned, spread = [], [], []
    for seg in segments:
        a = bool(seg["aligned"].item()) if "aligned" in seg else False
        sp = float(seg["alignment_spread"].item()) if "alignment_spread" in seg else np.nan
        if "alignment_verdict" in seg:
            v = str(seg["alignment_verdict"].item())
        else:  # a segmentation made before verdicts named their basis
            v = "aligned" if a else ("not aligned" if np.isfinite(sp) else "undetermined")
        verdicts.append(v)
        aligned.append(v == "aligned")
        spread.append(sp)
    return np.array(verdicts, dtype=object), np.array(aligned, bool), np.array(spread, float)


def _runs_summary(segments, verdicts) -> str:
    """Verdicts counted, and where each alignment event was compared."""
    n = len(segments)
    counts = ", ".join(f"{v} in {int((verdicts == v).sum())}"
                       for v in ("aligned", "not aligned", "undetermined"))
    al_names: list[str] = []
    for seg in segments:
        if "aligned" in seg:
            for e in str(seg["aligned"].attrs.get("events", "")).split(", "):
                if e and e not in al_names:
                    al_names.append(e)
    if not al_names:
        return f"{counts} of {n} runs"
    _, _, status = _per_run(segments, al_names)
    always, some, never = [], [], []
    for j, e in enumerate(al_names):
        k = int((status[:, j] == "happened").sum())
        (always if k == n else some if k else never).append((e, status[:, j]))
    parts = [f"{counts} of {n} runs"]
    if always:
        parts.append("compared in every run: " + ", ".join(e for e, _ in always))
    if some:
        parts.append("compared in some runs: " + "; ".join(
            f"{e} (happened in {int((s == 'happened').sum())}; "
            f"{_why_not('', s, n).strip()})" for e, s in some))
    if never:
        parts.append("compared in no run: " + "; ".join(
            f"{_why_not(e, s, n)}" for e, s in never))
    return "; ".join(parts)


def _pooled(a: np.ndarray):
    """NaN-aware mean, sample std (ddof=1) and count over axis 0."""
    ok = np.isfinite(a)
    n = ok.sum(0)
    filled = np.where(ok, a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, filled.sum(0) / np.maximum(n, 1), np.nan)
        dev = np.where(ok, a - mean, 0.0)
        var = np.where(n > 1, (dev ** 2).sum(0) / np.maximum(n - 1, 1), np.nan)
    return mean, np.sqrt(var), n.astype(np.int64)


def _run_names(segments) -> np.ndarray:
    names = [str(seg.attrs.get("run_name") or f"run{i}") for i, seg in enumerate(segments)]
    if len(set(names)) != len(names):  # seeds often share a run_name: keep them apart
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return np.array(names, dtype=str)
