"""Event detectors over smoothed curves (pure numpy; the Dataset plumbing is in ``segment``).

Each detector returns ``(log10_step, note)``: NaN and the reason when the event does not
happen, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .smoothing import (
    edge_level,
    first_crossing,
    global_peak,
    noise_sd,
    prominent_peak,
    refine_extremum,
    smooth_log,
)

__all__ = ["Curve", "make_curve", "fit_end", "test_loss_events", "rise_levels",
           "generalisation_events", "mi_peak", "peak_event", "plane_settled"]


@dataclass(frozen=True)
class Curve:
    """One curve on log-step: finite samples at positive steps, smoothed, with its noise level.

    ``threshold`` is ``snr`` times the robust noise standard deviation: the smallest change
    that counts as real.
    """

    x: np.ndarray  # log10(step), strictly increasing
    y: np.ndarray  # raw values
    ys: np.ndarray  # smoothed values
    sd: float
    threshold: float


def make_curve(logstep: np.ndarray, values: np.ndarray, *, smooth: float, snr: float
               ) -> Curve | None:
    """Build a :class:`Curve` from values on the positive-step grid; None if < 3 finite points."""
    ok = np.isfinite(values)
    if ok.sum() < 3:
        return None
    x, y = logstep[ok], np.asarray(values, float)[ok]
    ys = smooth_log(x, y, smooth)
    sd = noise_sd(y, ys)
    # A relative floor: a noiseless curve that is constant up to rounding has no events.
    floor = 1e-9 * float(np.abs(y).max())
    return Curve(x=x, y=y, ys=ys, sd=sd, threshold=max(snr * sd, floor))


def fit_end(acc: Curve | None, loss: Curve | None, *, fit_threshold: float,
            level_fraction: float) -> tuple[float, str]:
    """End of curve fitting: train accuracy reaches ``fit_threshold`` and train loss levels off.

    Train loss counts as levelled off once it has completed ``level_fraction`` of its total fall
    (from its highest smoothed value before its minimum down to that minimum). With both
    curves the event is the later of the two times; with one, that one alone.
    """
    t_acc = t_loss = np.nan
    notes = []
    if acc is not None:
        t_acc, at_start = first_crossing(acc.x, acc.ys, fit_threshold)
        if not np.isfinite(t_acc):
            return np.nan, (f"train accuracy never reaches fit_threshold={fit_threshold:g} "
                            f"(highest smoothed value {acc.ys.max():.3g})")
        notes.append(f"train_acc >= {fit_threshold:g} at step {10 ** t_acc:.4g}"
                     + (" (already at the first checkpoint)" if at_start else ""))
    if loss is not None:
        i_min = int(np.argmin(loss.ys))
        i_top = int(np.argmax(loss.ys[:i_min + 1]))
        fall = loss.ys[i_top] - loss.ys[i_min]
        if fall > loss.threshold:
            level = loss.ys[i_top] - level_fraction * fall
            t_loss, _ = first_crossing(loss.x, loss.ys, level, start=i_top, upward=False)
            notes.append(f"train_loss completed {level_fraction:g} of its fall at step "
                         f"{10 ** t_loss:.4g}")
        elif acc is None:
            return np.nan, (f"train loss does not fall significantly (fall {fall:.3g} <= "
                            f"threshold {loss.threshold:.3g}); no train_acc")
        else:
            notes.append("train_loss does not fall significantly; train_acc alone")
    if acc is None and loss is None:
        return np.nan, "no usable train_acc or train_loss"
    return float(np.nanmax([t_acc, t_loss])), "; ".join(notes)


def test_loss_events(loss: Curve | None, *, descent_fraction: float
                     ) -> dict[str, tuple[float, str]]:
    """First minimum, peak and second-descent start of the test loss (epoch-wise double descent).

    The peak is the most prominent interior local maximum of the smoothed test loss (its rise
    from the lowest point before it and its fall to the lowest point after it both exceed the
    noise threshold). The first minimum is the lowest point before the peak, if the loss fell
    significantly to get there. The second descent starts where the loss has fallen by
    ``descent_fraction`` of the peak's drop to its later minimum: right after a sharp peak,
    at the end of a plateau-shaped hump.
    """
    names = ("test_loss_first_min", "test_loss_peak", "second_descent_start")
    if loss is None:
        return {k: (np.nan, "test_loss absent") for k in names}
    x, ys = loss.x, loss.ys
    t_peak, note, ip = prominent_peak(x, ys, loss.threshold, "test loss")
    if ip < 0:
        return {k: (np.nan, note) for k in names}
    out = {}
    i_min = int(np.argmin(ys[:ip + 1]))
    first_fall = ys[0] - ys[i_min]
    if i_min == 0 or first_fall <= loss.threshold:
        out["test_loss_first_min"] = (np.nan, "test loss rises from the first checkpoint: "
                                      "no first descent before the peak")
    else:
        out["test_loss_first_min"] = (refine_extremum(x, -ys, i_min),
                                      f"lowest smoothed test loss before the peak; first "
                                      f"descent {first_fall:.3g}")
    out["test_loss_peak"] = (t_peak, note)
    drop = ys[ip] - ys[ip:].min()
    level = ys[ip] - descent_fraction * drop
    t_sd, _ = first_crossing(x, ys, level, start=ip, upward=False)
    out["second_descent_start"] = (t_sd, f"test loss has fallen {descent_fraction:g} of its "
                                         f"post-peak drop ({drop:.3g})")
    return out


def rise_levels(acc: Curve) -> tuple[float, float]:
    """Start and final levels (a0, a1) of a curve: medians of its raw values over the first
    and last 0.1 decade (:func:`edge_level`), so they never leave the observed range."""
    return edge_level(acc.x, acc.y, last=False), edge_level(acc.x, acc.y)


def generalisation_events(acc: Curve | None, *, generalisation_fraction: float,
                          end_fraction: float) -> dict[str, tuple[float, str]]:
    """Onset and end of generalisation from test accuracy, relative to its rise.

    With a0 and a1 the start and final levels of test accuracy (:func:`rise_levels`: medians
    of the raw values over the first and last 0.1 decade, never the smoothed curve's end
    values, which overshoot at the boundary), the onset is where the smoothed curve first
    reaches a0 + generalisation_fraction * (a1 - a0), the end where it first reaches
    a0 + end_fraction * (a1 - a0). Measuring from a0 rather than from zero keeps the rule
    meaningful when chance level is high (0.5 for a binary task); the levels never exceed the
    observed maximum.

    A curve still rising at the last checkpoint has no final level yet: if the median of its
    last 3 checkpoints exceeds a1 by more than the larger of the noise threshold and
    (1 - end_fraction) * (a1 - a0), the end is NaN (generalisation does not end inside the
    run) and the onset, relative to a provisional a1, is only a lower bound.
    """
    names = ("generalisation_onset", "generalisation_end")
    if acc is None:
        return {k: (np.nan, "test_acc absent") for k in names}
    a0, a1 = rise_levels(acc)
    rise = a1 - a0
    if rise <= acc.threshold:
        reason = (f"test accuracy does not rise significantly (from {a0:.3g} to {a1:.3g}, "
                  f"threshold {acc.threshold:.3g})")
        return {k: (np.nan, reason) for k in names}
    a_last = edge_level(acc.x, acc.y, decades=0.0, min_points=3)
    tol = max(acc.threshold, (1 - end_fraction) * rise)
    rising = a_last - a1 > tol
    out = {}
    for name, frac in zip(names, (generalisation_fraction, end_fraction)):
        level = a0 + frac * rise
        t, _ = first_crossing(acc.x, acc.ys, level)
        rule = f"{level:.3g} = {a0:.3g} + {frac:g} x rise {rise:.3g}"
        if rising and name == "generalisation_end":
            out[name] = (np.nan, f"test accuracy still rising at the last checkpoint (median "
                                 f"of the last 3 checkpoints {a_last:.3g} exceeds the median "
                                 f"of the last 0.1 decade {a1:.3g} by more than {tol:.3g}): "
                                 f"generalisation does not end inside the run")
        elif not np.isfinite(t):
            out[name] = (np.nan, f"smoothed test_acc does not reach {rule} inside the run")
        else:
            out[name] = (t, f"test_acc reaches {rule}" + (
                "; a lower bound: still rising at the last checkpoint, the final level is "
                "not known yet" if rising else ""))
    return out


def mi_peak(mi: Curve) -> tuple[float, str]:
    """Rightmost point of the information plane: the maximum of smoothed I(X;T), when I(X;T)
    rises to it and falls after it by more than the noise threshold."""
    t, note, _ = global_peak(mi.x, mi.ys, mi.threshold, "I(X;T)")
    return t, note


def peak_event(curve: Curve, what: str) -> tuple[float, str]:
    """Most prominent interior local maximum of a smoothed curve (LC, LMN)."""
    t, note, _ = prominent_peak(curve.x, curve.ys, curve.threshold, what)
    return t, note


def plane_settled(x: np.ndarray, coords: np.ndarray, sds: np.ndarray, *, snr: float,
                  settle_tol: float, min_settled_decades: float) -> tuple[float, str]:
    """Where the information-plane trajectory settles.

    ``coords`` is (n_steps, n_coords): the smoothed I(X;T) and I(T;Y) of every layer, in bits.
    With D(s) the distance from the final point and D_max its largest value, the trajectory
    has settled at the first step after which D(s) stays <= settle_tol * D_max (the settling
    time of control theory). A trajectory that settles only within the last
    ``min_settled_decades`` of the run is still moving: NaN.
    """
    dist = np.linalg.norm(coords - coords[-1], axis=1)
    dmax = float(dist.max())
    # A saturated estimator (I = log2 N throughout) has no measurable noise; movements below a
    # thousandth of a bit are round-off, not a trajectory.
    noise = max(snr * float(np.sqrt(np.sum(np.square(sds)))), 1e-3)
    if dmax <= noise:
        return np.nan, (f"the information-plane trajectory does not move (largest distance "
                        f"{dmax:.3g} bits <= threshold {noise:.3g})")
    band = settle_tol * dmax
    outside = np.flatnonzero(dist > band)
    k = int(outside[-1])  # last point outside the band; k < n - 1 since dist[-1] == 0
    frac = (dist[k] - band) / (dist[k] - dist[k + 1])
    t = float(x[k] + frac * (x[k + 1] - x[k]))
    if x[-1] - t < min_settled_decades:
        return np.nan, (f"still moving: the trajectory enters the {settle_tol:g} band only "
                        f"{x[-1] - t:.2f} decades before the last checkpoint "
                        f"(< min_settled_decades={min_settled_decades:g})")
    return t, (f"distance to the final point stays <= {settle_tol:g} x {dmax:.3g} bits")
