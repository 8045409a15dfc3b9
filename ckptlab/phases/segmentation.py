"""Segment a training run into phases from its analysis Dataset.

Everything here works on log10(step): the phenomena under study (fitting, compression,
grokking, double descent) unfold over decades of steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .._checks import check_float, check_int
from ..errors import ValidationError
from . import events as ev
from .events import Curve, make_curve
from .smoothing import smooth_log

__all__ = ["segment", "EVENT_TYPES", "PHASES", "DEFAULT_CHANGE_POINT_VARS", "separation_matrix"]

#: Every kind of event ``segment`` reports, in reporting order. Per-layer (or per-split) kinds
#: are flattened into names such as ``mi_peak[binning,hidden0]``.
EVENT_TYPES = (
    "fit_end",
    "test_loss_first_min",
    "test_loss_peak",
    "second_descent_start",
    "generalisation_onset",
    "generalisation_end",
    "test_acc_reached",
    "mi_peak",
    "plane_settled",
    "lc_peak",
    "lmn_peak",
    "weight_norm_peak",
)

#: Phase labels, in their order in time. "unknown" only when nothing tells where fitting ends.
PHASES = ("fitting", "compression", "converged", "unknown")

#: Curves searched for change points by default.
DEFAULT_CHANGE_POINT_VARS = ("train_loss", "test_loss", "train_acc", "test_acc", "mi_xt",
                             "mi_ty", "lc_total", "lmn", "weight_norm")

#: MI variables whose curves give I(X;T) peak events (and, with I(T;Y), the plane): the
#: sources' estimators (dim ``estimator``) and the relative-resolution ones (``rel_estimator``,
#: ``resolution``).
MI_VARS = (("mi_xt", "mi_ty"), ("mi_xt_rel", "mi_ty_rel"))
#: A curve with at least this fraction of its checkpoints at the estimator's ceiling or at 0
#: (``<var>_saturated``) is not a measurement: its events are not searched.
SATURATED_SKIP = 0.9

_KNOWN_VARS = {
    "train_loss", "test_loss", "train_acc", "test_acc", "mi_xt", "mi_ty", "mi_xt_rel",
    "mi_ty_rel", "lc", "lc_std",
    "lc_total", "lc_total_std", "lmn", "weight_norm", "frobenius_norm", "spectral_norm",
    "stable_rank", "effective_rank", "rep_effective_rank",
}

_LOG_STEP_RULE = (
    "searches run on log10(step) over the checkpoints with step > 0; step 0 is dropped rather "
    "than shifted to log10(step + 1), which would squeeze the first decade (step 1 -> 0.30) "
    "and move early events; for the phase labels step 0 lies before every event"
)


def segment(
    ds: xr.Dataset,
    *,
    fit_threshold: float = 0.99,
    level_fraction: float = 0.95,
    generalisation_fraction: float = 0.9,
    end_fraction: float = 0.99,
    test_acc_level: float = 0.95,
    descent_fraction: float = 0.1,
    smooth: float = 0.1,
    snr: float = 3.0,
    settle_tol: float = 0.05,
    min_settled_decades: float = 0.25,
    penalty: float = 3.0,
    cp_per_decade: int = 10,
    tolerance_decades: float = 0.5,
    align_events: Sequence[str] = ("fit_end", "mi_peak", "test_loss_peak"),
    change_point_vars: Sequence[str] | None = None,
) -> xr.Dataset:
    """Locate events, phases and change points of a training run, on log10(step).

    Every curve is smoothed on log10(step) (``smooth``), its noise level estimated from the
    residuals, and only changes larger than ``snr`` times that noise count. An event that does
    not happen is NaN with the reason in ``event_note``; absent variables give NaN events,
    never an exception.

    Events (steps, float):

    - ``fit_end``: train accuracy first reaches ``fit_threshold`` and train loss has completed
      ``level_fraction`` of its total fall (the later of the two; either alone if only one is
      present).
    - ``test_loss_first_min``, ``test_loss_peak``, ``second_descent_start``: epoch-wise double
      descent. The peak is the most prominent interior local maximum of the smoothed test
      loss; the first minimum the lowest point before it (if the loss fell to get there); the
      second descent starts where the loss has fallen ``descent_fraction`` of the way from
      the peak to its later minimum (just after a sharp peak; at the end of a plateau).
    - ``generalisation_onset``, ``generalisation_end``: smoothed test accuracy first reaches
      a0 + f * (a1 - a0) with f ``generalisation_fraction`` resp. ``end_fraction`` (relative
      to the rise, not to zero, so that chance level does not count as generalisation) and
      a0, a1 its start and final levels: medians of the raw values over the first and last
      0.1 decade (at least 5 checkpoints), which cannot leave the observed range as the
      smoothed end values can. If test accuracy is still rising at the last checkpoint (the
      median of the last 3 checkpoints exceeds a1 by more than the larger of the noise
      threshold and (1 - ``end_fraction``) * (a1 - a0)), ``generalisation_end`` is NaN.
    - ``test_acc_reached``: the first checkpoint whose raw test accuracy is at least
      ``test_acc_level`` (an absolute level, as grokking papers report "steps to 95%").
    - ``mi_peak[estimator,layer]``: the rightmost point of the information plane, the maximum
      of smoothed I(X;T), when it is reached by a rise and followed by a fall.
    - ``plane_settled[estimator]``: the information-plane trajectory of all layers (I(X;T) and,
      if present, I(T;Y), in bits) stays within ``settle_tol`` times its largest distance from
      its final point (a settling time); NaN if that happens only in the last
      ``min_settled_decades``.
    - ``lc_peak[split,radius]`` (total local complexity; summed from ``lc`` if ``lc_total`` is
      absent) and ``lmn_peak``: the most prominent interior local maximum.
    - ``weight_norm_peak``: the turn of the total parameter norm (``weight_norm``), its most
      prominent interior local maximum: where weight decay starts to shrink the weights that
      fitting grew (NaN when the norm only rises or only falls).

    Phases (label per step): ``fitting`` before the compression start, ``compression`` up to
    the converged start, ``converged`` after. Compression starts at ``fit_end``; if the run has
    no train curves, at the median of the ``mi_peak`` events; if train curves exist but never
    fit, the whole run is ``fitting``; with no information at all, ``unknown``. Converged
    starts at the latest of ``generalisation_end`` and the median of ``plane_settled`` (never
    before the compression start); without either, there is no ``converged`` phase, and
    neither is there one when test accuracy rises significantly but ``generalisation_end`` is
    not reached inside the run, whatever ``plane_settled`` says.

    Change points: for each curve of ``change_point_vars``, PELT (ruptures, model "l2") on the
    smoothed curve resampled to ``cp_per_decade`` points per decade of log10(step), with
    penalty ``pen = penalty * log(n) * var(curve)`` (BIC-like, in the curve's own scale so that
    the number of change points does not depend on units); curves whose total change is below
    the noise threshold get none.

    Alignment: ``separation[event, event_b] = |log10 s_a - log10 s_b|`` in decades; the run's
    time scales align when every event matched by ``align_events`` happened and they lie within
    ``tolerance_decades`` of each other (spread = largest pairwise separation). They do not
    align when the events that happened already span more; otherwise the verdict is
    undetermined, and names the events it could not compare (did not happen, saturated: the
    estimator at its ceiling, or not measured).

    Parameters
    ----------
    ds : xarray.Dataset
        Analysis Dataset with a ``step`` dimension; any of ``train_loss``, ``test_loss``,
        ``train_acc``, ``test_acc``, ``mi_xt``, ``mi_ty``, ``lc``, ``lc_total``, ``lmn``,
        ``weight_norm`` may be present.
    fit_threshold : float, default 0.99
        Train accuracy that counts as fitted, in (0, 1].
    level_fraction : float, default 0.95
        Fraction of its total fall after which train loss counts as levelled off, in (0, 1].
    generalisation_fraction : float, default 0.9
        Fraction of the test-accuracy rise that marks ``generalisation_onset``, in (0, 1).
    test_acc_level : float, default 0.95
        Test accuracy that marks ``test_acc_reached``, in (0, 1].
    end_fraction : float, default 0.99
        Fraction of the test-accuracy rise that marks ``generalisation_end``, in
        [``generalisation_fraction``, 1].
    descent_fraction : float, default 0.1
        Fraction of the post-peak drop of test loss that marks ``second_descent_start``, in
        (0, 1).
    smooth : float, default 0.1
        Smoothing scale in decades of step: running median over +-smooth (spacing-weighted,
        mirrored past the run's ends so end trends are not lagged), then Gaussian
        local-linear regression with this standard deviation (both widened where checkpoints
        are sparser than 5 per window). 0 disables smoothing.
    snr : float, default 3.0
        A rise, fall or peak counts only if larger than ``snr`` times the curve's robust noise
        standard deviation (1.4826 x MAD of the residuals from the smoothed curve).
    settle_tol : float, default 0.05
        Tolerance band of ``plane_settled``, relative to the trajectory's extent, in (0, 1).
    min_settled_decades : float, default 0.25
        The settled stretch must last at least this many decades before the last checkpoint.
    penalty : float, default 3.0
        The constant c of the change-point penalty c * log(n) * variance, > 0.
    cp_per_decade : int, default 10
        Resampling density of the change-point search, points per decade (>= 2).
    tolerance_decades : float, default 0.5
        Largest spread, in decades, for the alignment events to count as aligned, > 0.
    align_events : sequence of str, default ("fit_end", "mi_peak", "test_loss_peak")
        Events whose alignment is tested: an event type (all its per-layer events) or a full
        event name such as ``"mi_peak[binning,hidden0]"``.
    change_point_vars : sequence of str, optional
        Variables searched for change points; default ``DEFAULT_CHANGE_POINT_VARS``.

    Returns
    -------
    xarray.Dataset
        Dimensions ``event``, ``event_b``, ``step``, ``boundary``, ``curve``, ``cp``:

        - ``event_step`` (event): the step of each event, NaN if it did not happen;
          ``event_log10_step`` its log10; ``event_note`` (event) the reason or how it was found;
          coordinate ``event_type`` (event) its kind (e.g. ``mi_peak``).
        - ``phase`` (step): "fitting", "compression", "converged" (or "unknown").
        - ``boundary_step`` (boundary): steps where compression and converged phases start.
        - ``separation`` (event, event_b): separations in decades (NaN where either is NaN).
        - ``alignment_verdict`` (str): "aligned", "not aligned" or "undetermined";
          ``aligned`` (bool, True only for "aligned"), ``alignment_spread`` (decades, among
          the events that happened), ``alignment_n`` (int, how many happened). Their attrs
          name what the verdict rests on: ``compared``, ``did_not_happen``, ``saturated``,
          ``not_measured`` (comma-separated event names) and the sentence ``summary``.
        - ``change_point`` (curve, cp): change-point steps, NaN-padded; ``n_change_points`` and
          ``change_point_penalty`` (curve).

        Attrs hold every option, the rules above and ``run_name`` from ``ds``.

    Raises
    ------
    ValidationError
        If ``ds`` is not a Dataset with a numeric, duplicate-free ``step`` dimension, a known
        variable lacks the ``step`` dimension, or an option is out of range.

    References
    ----------
    de Mello Koch and Ghosh, "A Two-Phase Perspective on Deep Learning Dynamics",
    arXiv:2504.12700 (2025). Killick, Fearnhead and Eckley, "Optimal detection of changepoints
    with a linear computational cost", JASA 107 (2012) (PELT). Truong, Oudre and Vayatis,
    "Selective review of offline change point detection methods", Signal Processing 167
    (2020) (ruptures).
    """
    opts = _validate_options(
        fit_threshold=fit_threshold, level_fraction=level_fraction,
        generalisation_fraction=generalisation_fraction, end_fraction=end_fraction,
        test_acc_level=test_acc_level,
        descent_fraction=descent_fraction, smooth=smooth, snr=snr, settle_tol=settle_tol,
        min_settled_decades=min_settled_decades, penalty=penalty, cp_per_decade=cp_per_decade,
        tolerance_decades=tolerance_decades, align_events=align_events,
        change_point_vars=change_point_vars,
    )
    ds = _validate_dataset(ds)

    steps = ds["step"].values.astype(float)
    positive = steps > 0
    logstep = np.log10(steps[positive])
    found, fit_data, gen_open = _detect_events(ds, positive, logstep, opts)

    names = np.array([f[0] for f in found], dtype=str)
    kinds = np.array([f[1] for f in found], dtype=str)
    logs = np.array([f[2] for f in found], dtype=float)
    notes = np.array([f[3] for f in found], dtype=str)

    out = xr.Dataset(coords={
        "step": ds["step"].values,
        "event": names,
        "event_b": names,
        "event_type": ("event", kinds),
    })
    out["event_step"] = ("event", 10.0 ** logs, {
        "long_name": "step of the event", "units": "step",
        "description": "NaN when the event does not happen; the reason is in event_note"})
    out["event_log10_step"] = ("event", logs, {"long_name": "log10 of the event step",
                                               "units": "log10(step)"})
    out["event_note"] = ("event", notes, {"long_name": "how the event was found, or why not",
                                          "units": ""})

    # phases
    labels, b1, b2, phase_note = _phases(steps, names, kinds, logs, fit_data, gen_open)
    out["phase"] = ("step", labels, {"long_name": "training phase", "units": "",
                                     "rule": phase_note})
    out = out.assign_coords(boundary=np.array(["compression_start", "converged_start"]))
    out["boundary_step"] = ("boundary", _to_step(np.array([b1, b2])), {
        "long_name": "step at which the phase starts", "units": "step",
        "description": "NaN when the phase does not occur"})

    # alignment
    out["separation"] = (("event", "event_b"), separation_matrix(logs), {
        "long_name": "separation of two events", "units": "decades",
        "description": "|log10 step_a - log10 step_b|; NaN where either event did not happen"})
    sel = _match_events(names, opts["align_events"])
    verdict, spread, n_al, al_note, basis = _alignment(names[sel], logs[sel], notes[sel],
                                                       opts["tolerance_decades"])
    aligned = verdict == "aligned"
    al_attrs = {"events": ", ".join(names[sel]), "tolerance_decades": opts["tolerance_decades"],
                "summary": al_note, **basis}
    out["aligned"] = ((), aligned, {
        "long_name": "alignment events within tolerance", "units": "", **al_attrs,
        "description": "True only when every alignment event happened and they lie within "
                       "tolerance; see alignment_verdict"})
    out["alignment_verdict"] = ((), verdict, {
        "long_name": "alignment verdict", "units": "", **al_attrs,
        "rule": _ALIGNMENT_RULE})
    out["alignment_spread"] = ((), spread, {
        "long_name": "largest separation among alignment events", "units": "decades",
        **al_attrs})
    out["alignment_n"] = ((), n_al, {"long_name": "number of alignment events that happened",
                                     "units": "count"})

    # change points
    cp_names, cp_steps, cp_pen = _change_points(ds, positive, logstep, opts)
    width = max((len(s) for s in cp_steps), default=0)
    cp_arr = np.full((len(cp_names), width), np.nan)
    for i, s in enumerate(cp_steps):
        cp_arr[i, :len(s)] = s
    out = out.assign_coords(curve=np.array(cp_names, dtype=str), cp=np.arange(width))
    cp_rule = (f"ruptures PELT, model 'l2', min_size 0.2 decade, on the smoothed curve resampled "
               f"to {opts['cp_per_decade']} points per decade of log10(step); penalty = "
               f"{opts['penalty']:g} * log(n) * var(resampled curve); change points whose "
               f"neighbouring segment means differ by <= snr x noise sd are dropped (weakest "
               f"first), so a curve without a real change has none")
    out["change_point"] = (("curve", "cp"), cp_arr, {"long_name": "change point",
                                                     "units": "step", "rule": cp_rule})
    out["n_change_points"] = ("curve", np.array([len(s) for s in cp_steps], dtype=np.int64),
                              {"long_name": "number of change points", "units": "count"})
    out["change_point_penalty"] = ("curve", np.array(cp_pen, dtype=float), {
        "long_name": "PELT penalty used", "units": "curve units squared", "rule": cp_rule})

    out["step"].attrs.update({"long_name": "training step", "units": "step"})
    out.attrs = {
        "run_name": str(ds.attrs.get("run_name", "")),
        "log_step_rule": _LOG_STEP_RULE,
        "smoothing": (f"checkpoints closer than 1/200 decade pooled (median), then a running "
                      f"median over +-{opts['smooth']:g} decades (each checkpoint weighted by "
                      f"the log-step it covers; the series mirrored past both ends about a "
                      f"Theil-Sen end level, so trends are not lagged there) and Gaussian local-linear "
                      f"regression with sigma {opts['smooth']:g} decades, both widened to the "
                      f"4th nearest checkpoint where checkpoints are sparse"),
        "significance": (f"a change counts if larger than snr={opts['snr']:g} x the robust "
                         "noise sd (1.4826 x MAD of residuals from the smoothed curve)"),
        "phase_rule": phase_note,
        "change_point_rule": cp_rule,
        "alignment_events": ", ".join(opts["align_events"]),
        "alignment_summary": al_note,
        **{k: v for k, v in opts.items() if isinstance(v, (int, float))},
        "change_point_vars": ", ".join(opts["change_point_vars"]),
    }
    return out


# ----------------------------------------------------------------------------- events

def _detect_events(ds, positive, logstep, opts):
    """All events as [(name, type, log10 step or NaN, note)], whether usable train curves
    exist (only they can tell that a run never fitted), and whether test accuracy rises
    significantly without reaching generalisation_end inside the run."""

    def curves(name: str) -> list[tuple[str, Curve | None]]:
        if name not in ds:
            return []
        return [(label, make_curve(logstep, col[positive], smooth=opts["smooth"],
                                   snr=opts["snr"]))
                for label, col in _flatten(ds[name])]

    def single(name: str) -> Curve | None:
        items = curves(name)
        return items[0][1] if items else None

    found: list[tuple[str, str, float, str]] = []  # (name, type, log10 step, note)

    def add(name: str, kind: str, value: float, note: str) -> None:
        found.append((name, kind, float(value), note))

    # fit_end
    train_acc, train_loss = single("train_acc"), single("train_loss")
    t, note = ev.fit_end(train_acc, train_loss, fit_threshold=opts["fit_threshold"],
                         level_fraction=opts["level_fraction"])
    short = [v for v, c in (("train_acc", train_acc), ("train_loss", train_loss))
             if v in ds and c is None]
    if short:
        note += f"; {' and '.join(short)} ignored: fewer than 3 finite values at step > 0"
    add("fit_end", "fit_end", t, note)
    fit_data = train_acc is not None or train_loss is not None

    # double descent of the test loss
    for name, (t, note) in ev.test_loss_events(
            single("test_loss"), descent_fraction=opts["descent_fraction"]).items():
        add(name, name, t, note)

    # generalisation
    test_acc = single("test_acc")
    gen = ev.generalisation_events(test_acc,
                                   generalisation_fraction=opts["generalisation_fraction"],
                                   end_fraction=opts["end_fraction"])
    for name, (t, note) in gen.items():
        add(name, name, t, note)
    add("test_acc_reached", "test_acc_reached",
        *_first_reaching(ds, "test_acc", positive, logstep, opts["test_acc_level"]))
    gen_open = False  # test accuracy rises but does not finish rising inside the run
    if test_acc is not None and np.isnan(gen["generalisation_end"][0]):
        a0, a1 = ev.rise_levels(test_acc)
        gen_open = bool(a1 - a0 > test_acc.threshold)

    # information plane
    if "mi_xt" in ds or "mi_xt_rel" in ds:
        for xt, _ in MI_VARS:
            if xt not in ds:
                continue
            skip = dict(_saturated_columns(ds, xt))
            for label, c in curves(xt):
                if label in skip:
                    t, note = np.nan, skip[label]
                elif c is None:
                    t, note = np.nan, "fewer than 3 finite points"
                else:
                    t, note = ev.mi_peak(c)
                add(_name("mi_peak", label), "mi_peak", t, note)
        for label, (t, note) in _plane_events(ds, positive, logstep, opts):
            add(_name("plane_settled", label), "plane_settled", t, note)
    else:
        add("mi_peak", "mi_peak", np.nan, "mi_xt absent")
        add("plane_settled", "plane_settled", np.nan, "mi_xt absent")

    # local complexity and linear mapping number
    lc_items, lc_source = _lc_total(ds)
    if lc_items is None:
        add("lc_peak", "lc_peak", np.nan, "lc_total and lc absent")
    for label, col in lc_items or []:
        c = make_curve(logstep, col[positive], smooth=opts["smooth"], snr=opts["snr"])
        t, note = (ev.peak_event(c, "total local complexity") if c is not None
                   else (np.nan, "fewer than 3 finite points"))
        add(_name("lc_peak", label), "lc_peak", t, note + lc_source)
    for var, kind, what in (("lmn", "lmn_peak", "linear mapping number"),
                            ("weight_norm", "weight_norm_peak", "total parameter norm")):
        c = single(var)
        if c is None:
            add(kind, kind, np.nan,
                f"{var} absent" if var not in ds else "fewer than 3 finite points")
        else:
            add(kind, kind, *ev.peak_event(c, what))
    return found, fit_data, gen_open


# ----------------------------------------------------------------------------- validation

def _validate_options(**o) -> dict:
    out = {
        "fit_threshold": check_float("fit_threshold", o["fit_threshold"], min=0, max=1,
                                     min_inclusive=False),
        "level_fraction": check_float("level_fraction", o["level_fraction"], min=0, max=1,
                                      min_inclusive=False),
        "generalisation_fraction": check_float(
            "generalisation_fraction", o["generalisation_fraction"], min=0, max=1,
            min_inclusive=False, max_inclusive=False),
        "test_acc_level": check_float("test_acc_level", o["test_acc_level"], min=0, max=1,
                                      min_inclusive=False),
        "descent_fraction": check_float("descent_fraction", o["descent_fraction"], min=0,
                                        max=1, min_inclusive=False, max_inclusive=False),
        "smooth": check_float("smooth", o["smooth"], min=0, max=2),
        "snr": check_float("snr", o["snr"], min=0, min_inclusive=False),
        "settle_tol": check_float("settle_tol", o["settle_tol"], min=0, max=1,
                                  min_inclusive=False, max_inclusive=False),
        "min_settled_decades": check_float("min_settled_decades", o["min_settled_decades"],
                                           min=0),
        "penalty": check_float("penalty", o["penalty"], min=0, min_inclusive=False),
        "cp_per_decade": check_int("cp_per_decade", o["cp_per_decade"], min=2, max=1000),
        "tolerance_decades": check_float("tolerance_decades", o["tolerance_decades"], min=0,
                                         min_inclusive=False),
    }
    out["end_fraction"] = check_float("end_fraction", o["end_fraction"],
                                      min=out["generalisation_fraction"], max=1)
    out["align_events"] = _check_str_seq("align_events", o["align_events"], allow_empty=False)
    for pattern in out["align_events"]:
        if pattern.split("[", 1)[0] not in EVENT_TYPES:
            raise ValidationError(
                f"align_events entries must be an event type or event name starting with one of "
                f"{', '.join(EVENT_TYPES)}; got {pattern!r}")
    cpv = o["change_point_vars"]
    out["change_point_vars"] = (DEFAULT_CHANGE_POINT_VARS if cpv is None
                                else _check_str_seq("change_point_vars", cpv, allow_empty=True))
    return out


def _first_reaching(ds, name, positive, logstep, level):
    """(log10 step, note) of the first checkpoint (step > 0) whose raw ``name`` is >= level."""
    if name not in ds or ds[name].ndim != 1:
        return np.nan, f"{name} absent"
    vals = np.asarray(ds[name].values, dtype=float)[positive]
    hit = np.flatnonzero(vals >= level)
    if not hit.size:
        top = np.nanmax(vals) if np.isfinite(vals).any() else np.nan
        return np.nan, f"{name} never reaches {level:g} (largest {top:.3g})"
    return float(logstep[hit[0]]), f"{name} first >= {level:g} (raw, {vals[hit[0]]:.3g})"


def _check_str_seq(name: str, value, *, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(
            isinstance(v, str) for v in value) or (not allow_empty and len(value) == 0):
        rule = "a non-empty sequence of strings" if not allow_empty else "a sequence of strings"
        raise ValidationError(f"{name} must be {rule}, got {value!r}")
    return tuple(value)


def _validate_dataset(ds) -> xr.Dataset:
    if not isinstance(ds, xr.Dataset):
        raise ValidationError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "step" not in ds.dims:
        raise ValidationError(f"ds must have a 'step' dimension, has dims {tuple(ds.dims)}")
    steps = ds["step"].values
    if not np.issubdtype(steps.dtype, np.number) or not np.all(np.isfinite(steps)):
        raise ValidationError(f"ds 'step' coordinate must hold finite numbers, got dtype "
                              f"{steps.dtype}")
    uniq, counts = np.unique(steps, return_counts=True)
    if (counts > 1).any():
        raise ValidationError(f"ds 'step' coordinate must not repeat a step, got duplicates "
                              f"{uniq[counts > 1][:5].tolist()}")
    for name in _KNOWN_VARS & set(ds.data_vars):
        if "step" not in ds[name].dims:
            raise ValidationError(f"variable {name!r} must have dimension 'step', has dims "
                                  f"{ds[name].dims}")
    if np.any(np.diff(steps) < 0):
        ds = ds.sortby("step")
    return ds


# ----------------------------------------------------------------------------- helpers

def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def _name(base: str, label: str) -> str:
    return f"{base}[{label}]" if label else base


def _flatten(da: xr.DataArray) -> list[tuple[str, np.ndarray]]:
    """Split a (step, ...) array into 1-D columns labelled "a,b" by their other coordinates."""
    other = [d for d in da.dims if d != "step"]
    values = np.asarray(da.transpose("step", *other).values, dtype=float)
    values = values.reshape(da.sizes["step"], -1)
    axes = [[_fmt(v) for v in (da[d].values if d in da.coords else range(da.sizes[d]))]
            for d in other]
    labels = [",".join(p) for p in itertools.product(*axes)]
    return list(zip(labels, values.T))


def _lc_total(ds: xr.Dataset):
    if "lc_total" in ds:
        return _flatten(ds["lc_total"]), ""
    if "lc" in ds and "layer" in ds["lc"].dims:
        return (_flatten(ds["lc"].sum("layer", skipna=False)),
                " (lc_total absent: lc summed over layers)")
    return None, ""


def _saturated_columns(ds: xr.Dataset, var: str) -> list[tuple[str, str]]:
    """``(label, reason)`` of the columns of ``var`` that sit at their ceiling or at 0."""
    sat, ceil = ds.get(f"{var}_saturated"), ds.get(f"{var}_ceiling")
    if sat is None or ceil is None:
        return []
    da = ds[var]
    other = [d for d in da.dims if d != "step"]
    frac = sat.broadcast_like(da.isel(step=0)).transpose(*other)
    top = ceil.broadcast_like(da.isel(step=0)).transpose(*other)
    vals = np.asarray(da.transpose("step", *other).values, dtype=float)
    labels = [lab for lab, _ in _flatten(da)]
    out = []
    for lab, f, c, col in zip(labels, np.ravel(frac.values), np.ravel(top.values),
                              vals.reshape(len(vals), -1).T):
        if not (np.isfinite(f) and f >= SATURATED_SKIP):
            continue
        ok = col[np.isfinite(col)]
        near_top = np.mean(ok >= 0.99 * c) if len(ok) else 0.0
        name = "log2 N" if var.startswith("mi_xt") else "H(Y)"
        where = (f"at the ceiling {name} = {c:.3g} bits" if near_top >= 0.5
                 else "at 0 bits")
        out.append((lab, f"saturated {where} ({f:.0%} of checkpoints within 1% of the ceiling "
                         "or of 0): not a measurement of the layer"))
    return out


def _plane_events(ds, positive, logstep, opts):
    """plane_settled per estimator (and resolution), from all layers' I(X;T) and I(T;Y)."""
    out = []
    for xt, ty in MI_VARS:
        if xt not in ds:
            continue
        parts = [ds[xt]] + ([ds[ty]] if ty in ds else [])
        groups = [d for d in ds[xt].dims if d not in ("step", "layer")]
        combos = (itertools.product(*(ds[xt][d].values for d in groups)) if groups else [()])
        saturated = {lab for lab, _ in _saturated_columns(ds, xt)}
        for combo in combos:
            sel = dict(zip(groups, combo))
            label = ",".join(_fmt(v) for v in combo)
            cols, labs = [], []
            for da in parts:
                sub = da.sel({k: v for k, v in sel.items() if k in da.dims})
                for lab, c in _flatten(sub):
                    cols.append(c)
                    labs.append(f"{label},{lab}" if label and lab else (label or lab))
            if all(lab in saturated for lab in labs[:len(labs) // len(parts)]):
                out.append((label, (np.nan, "every layer's I(X;T) is saturated (at its ceiling "
                                            "or at 0): the trajectory is not measured")))
                continue
            mat = np.stack(cols, axis=1)[positive]
            ok = np.all(np.isfinite(mat), axis=1)
            if ok.sum() < 3:
                out.append((label, (np.nan, "fewer than 3 steps with every coordinate finite")))
                continue
            x = logstep[ok]
            sm = np.stack([smooth_log(x, c, opts["smooth"]) for c in mat[ok].T], axis=1)
            sds = np.array([ev.noise_sd(c, s) for c, s in zip(mat[ok].T, sm.T)])
            out.append((label, ev.plane_settled(
                x, sm, sds, snr=opts["snr"], settle_tol=opts["settle_tol"],
                min_settled_decades=opts["min_settled_decades"])))
    return out


def _phases(steps, names, kinds, logs, fit_data, gen_open):
    """Phase label per step from the events (rule in the returned note)."""
    fit = logs[names == "fit_end"][0]
    mi = logs[(kinds == "mi_peak") & np.isfinite(logs)]
    if np.isfinite(fit):
        b1, src1 = fit, "fit_end"
    elif fit_data:
        b1, src1 = math.inf, "never (train curves present but the run does not fit)"
    elif mi.size:
        b1, src1 = float(np.median(mi)), "median of mi_peak (no train curves)"
    else:
        b1, src1 = math.nan, "unknown (no train curves and no mi_peak)"
    ends = logs[(names == "generalisation_end") & np.isfinite(logs)].tolist()
    settled = logs[(kinds == "plane_settled") & np.isfinite(logs)]
    if settled.size:
        ends.append(float(np.median(settled)))
    if gen_open:
        # plane_settled alone must not declare convergence while test accuracy still rises
        b2, src2 = math.inf, ("never (test accuracy rises but generalisation_end is not "
                              "reached inside the run)")
    elif ends:
        b2, src2 = max(max(ends), b1), "latest of generalisation_end and median plane_settled"
    else:
        b2, src2 = math.inf, "never (no generalisation_end and no plane_settled)"
    with np.errstate(divide="ignore"):
        ls = np.where(steps > 0, np.log10(np.where(steps > 0, steps, 1.0)), -np.inf)
    if math.isnan(b1):
        labels = np.full(len(steps), "unknown", dtype=object)
    else:
        labels = np.where(ls < b1, "fitting", np.where(ls < b2, "compression", "converged"))
    note = (f"fitting before the compression start, compression before the converged start, "
            f"converged after; compression starts at {src1}; converged starts at {src2} "
            f"(never before the compression start)")
    return np.asarray(labels, dtype=str), b1, b2, note


def _to_step(logs: np.ndarray) -> np.ndarray:
    out = 10.0 ** np.where(np.isfinite(logs), logs, np.nan)
    return out


def separation_matrix(logs: np.ndarray) -> np.ndarray:
    """|log10 s_a - log10 s_b| for every pair (NaN where either is NaN)."""
    logs = np.asarray(logs, float)
    return np.abs(logs[:, None] - logs[None, :])


def _match_events(names: np.ndarray, patterns: Sequence[str]) -> np.ndarray:
    sel = np.zeros(len(names), bool)
    for p in patterns:
        sel |= np.array([n == p or n.startswith(p + "[") for n in names], bool)
    return sel


_ALIGNMENT_RULE = (
    "aligned: every alignment event happened and they span <= tolerance_decades; not aligned: "
    "the events that happened span > tolerance_decades (whatever the others do); "
    "undetermined: fewer than 2 happened, or those that happened lie within tolerance but "
    "others did not happen, are saturated (the estimator at its ceiling or at 0) or were not "
    "measured, so they could not be compared")

#: Why an event could not be compared, by status (see :func:`event_status`).
EVENT_STATUSES = ("happened", "did not happen", "saturated", "not measured")


def event_status(log10_step: float, note: str) -> str:
    """Whether an event happened and, if not, why: one of :data:`EVENT_STATUSES`.

    ``"saturated"``: the curve sat at its estimator's ceiling or at 0 (notes starting with
    "saturated", or a plane whose every layer is saturated); ``"not measured"``: its variable
    is absent or has fewer than 3 finite points; ``"did not happen"``: measured, and the event
    is not there.
    """
    if np.isfinite(log10_step):
        return "happened"
    note = str(note)
    if note.startswith("saturated") or note.startswith("every layer's I(X;T) is saturated"):
        return "saturated"
    if (note.endswith(" absent") or note.startswith("fewer than 3")
            or note.startswith("no usable")):
        return "not measured"
    return "did not happen"


def _alignment(names, logs, notes, tol):
    """Verdict, spread, number compared, a sentence, and the events it rests on."""
    status = [event_status(lg, nt) for lg, nt in zip(logs, notes)]
    ok = np.array([s == "happened" for s in status], bool)
    by = {k: [str(n) for n, s in zip(names, status) if s == k] for k in EVENT_STATUSES}
    basis = {"compared": ", ".join(by["happened"]),
             "did_not_happen": ", ".join(by["did not happen"]),
             "saturated": ", ".join(by["saturated"]),
             "not_measured": ", ".join(by["not measured"])}
    missing = [f"{k} ({', '.join(v)})" for k, v in
               (("did not happen", by["did not happen"]),
                ("saturated (the estimator at its ceiling or at 0)", by["saturated"]),
                ("not measured", by["not measured"])) if v]
    miss = "; ".join(missing)
    n = int(ok.sum())
    if n < 2:
        got = f" ({', '.join(by['happened'])})" if n else ""
        return ("undetermined", np.nan, n,
                f"undetermined: only {n} of the {len(names)} alignment events happened{got}"
                + (f"; could not compare: {miss}" if miss else ""), basis)
    spread = float(logs[ok].max() - logs[ok].min())
    within = spread <= tol
    span = (f"{', '.join(by['happened'])} span {spread:.2f} decades "
            f"({'<=' if within else '>'} tolerance {tol:g})")
    if not within:
        return ("not aligned", spread, n, f"not aligned: {span}"
                + (f"; not compared: {miss}" if miss else ""), basis)
    if miss:
        return ("undetermined", spread, n,
                f"undetermined for the events it could not compare: {miss}; the {n} compared "
                f"events {span}", basis)
    return "aligned", spread, n, f"aligned: {span}", basis


def _change_points(ds, positive, logstep, opts):
    names, steps, pens = [], [], []
    per = opts["cp_per_decade"]
    min_size = max(2, int(round(0.2 * per)))
    for var in opts["change_point_vars"]:
        if var not in ds or "step" not in ds[var].dims:
            continue
        for label, col in _flatten(ds[var]):
            names.append(_name(var, label))
            c = make_curve(logstep, col[positive], smooth=opts["smooth"], snr=opts["snr"])
            if c is None or np.ptp(c.ys) <= c.threshold:
                steps.append([])
                pens.append(np.nan)
                continue
            n = int(math.floor((c.x[-1] - c.x[0]) * per)) + 1
            if n < 2 * min_size + 1:
                steps.append([])
                pens.append(np.nan)
                continue
            grid = c.x[0] + np.arange(n) / per
            sig = np.interp(grid, c.x, c.ys)
            pen = opts["penalty"] * math.log(n) * float(np.var(sig))
            bkps = _prune(sig, _pelt(sig, pen, min_size), c.threshold)
            steps.append([10.0 ** (0.5 * (grid[b - 1] + grid[b])) for b in bkps[:-1]])
            pens.append(pen)
    return names, steps, pens


def _prune(signal: np.ndarray, bkps: list[int], threshold: float) -> list[int]:
    """Drop change points whose neighbouring segment means differ by <= threshold.

    PELT on a smoothed curve happily splits slow noise wiggles; a change point must separate
    levels that differ by more than the curve's noise threshold. The weakest one goes first,
    then the means are recomputed, so merging never hides a real step.
    """
    bkps = list(bkps)
    while len(bkps) > 1:
        edges = [0] + bkps
        means = [signal[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
        jumps = np.abs(np.diff(means))
        k = int(np.argmin(jumps))
        if jumps[k] > threshold:
            break
        del bkps[k]
    return bkps


def _pelt(signal: np.ndarray, pen: float, min_size: int) -> list[int]:
    import ruptures as rpt  # imported here: it costs ~0.5 s and only change points need it

    return rpt.Pelt(model="l2", min_size=min_size, jump=1).fit(signal).predict(pen=pen)
