"""The smoother at the ends of a run: no lag on a trend, no bias at the last checkpoint.

A running median sees a one-sided window at the first and last checkpoints and returns the
value from half a window back; the local-linear fit after it then extrapolates that lag (seen
on a quick-grok run stopped mid-rise: smoothed end value 0.81 against a raw 0.92). The truths
here are the noiseless formulas themselves, never the code under test.

The schedule is the quick-grok one, rebuilt independently: every step up to 20, plus 40
checkpoints per decade, up to 2200 steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from ckptlab.phases.events import generalisation_events, make_curve
from ckptlab.phases.smoothing import boundary_running_median, running_median, smooth_log

WIDTH = 0.1  # decades, segment()'s default


def quick_grok_x(last: int = 2200) -> np.ndarray:
    n = int(np.ceil(np.log10(last) * 40)) + 1
    steps = set(range(1, 21)) | {int(round(10 ** (i / 40))) for i in range(n)} | {last}
    return np.log10(np.array(sorted(s for s in steps if s <= last), dtype=float))


def sigmoid_ramp(x, centre, width):
    return 0.01 + 0.99 / (1.0 + np.exp(-(x - centre) / width))


def centre_for_end_value(x_end, width, frac):
    """Centre of a ramp whose sigmoid part is at ``frac`` of its rise at ``x_end``."""
    return x_end - width * np.log(frac / (1 - frac))


# ----------------------------------------------------------------------------- noiseless

def test_a_line_passes_through_unchanged_up_to_both_ends():
    x = quick_grok_x()
    y = 0.2 + 0.3 * x
    out = smooth_log(x, y, WIDTH)
    # the old smoother was off by 0.087 at step 1 (sparse steps 1, 2, 3, ...) and by 0.011
    # at the last checkpoint
    np.testing.assert_allclose(out, y, atol=1e-9)
    np.testing.assert_allclose(smooth_log(x, 5.0 - 2.0 * x, WIDTH), 5.0 - 2.0 * x, atol=1e-9)


@pytest.mark.parametrize("frac", [0.5, 0.75, 0.92])
def test_a_ramp_stopped_mid_rise_keeps_its_end_value(frac):
    x = quick_grok_x()
    y = sigmoid_ramp(x, centre_for_end_value(x[-1], 0.2, frac), 0.2)
    out = smooth_log(x, y, WIDTH)
    # Tolerance 0.01: what is left is the local-linear fit's curvature bias, under 0.005
    # here; the old smoother was low by 0.046, 0.031 and 0.010.
    assert abs(out[-1] - y[-1]) < 0.01


def test_the_median_step_returns_any_noiseless_monotone_curve_unchanged():
    # A symmetric window on a monotone curve has the curve's value at its centre as median,
    # once each checkpoint counts by the span of log-step it stands for.
    x = quick_grok_x()
    y = np.exp(3 * x) + sigmoid_ramp(x, x[-1] - 0.05, 0.03)
    h = np.full(x.shape, 0.15)
    np.testing.assert_allclose(boundary_running_median(x, y, h), y, rtol=1e-12)
    # the plain running median lags at the end (the situation the fix removes)
    plain = running_median(x, y, h)
    assert plain[-1] < y[-1] - 0.2 * (y[-1] - y[-2])


def test_a_spike_at_the_last_checkpoint_is_still_removed():
    x = quick_grok_x()
    y = 1.0 + 0.5 * x
    spiky = y.copy()
    spiky[-1] += 5.0
    spiky[-8] -= 5.0
    out = smooth_log(x, spiky, WIDTH)
    assert abs(out[-1] - y[-1]) < 0.01
    assert abs(out[-8] - y[-8]) < 0.01


# ----------------------------------------------------------------------------- with noise

def _end_errors(x, truth, sd, n_rep, seed):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sd, (n_rep, x.size))
    return np.array([smooth_log(x, truth + z, WIDTH)[[0, -1]] - truth[[0, -1]] for z in noise])


@pytest.mark.parametrize("which", ["line", "ramp"])
def test_noisy_end_values_are_unbiased_and_less_noisy_than_the_data(which):
    x = quick_grok_x()
    if which == "line":
        truth, curvature = 0.2 + 0.3 * x, 0.0
    else:
        truth = sigmoid_ramp(x, centre_for_end_value(x[-1], 0.2, 0.5), 0.2)
        curvature = 0.005  # the noiseless bias bound of the ramp test above
    sd, n_rep = 0.02, 200
    err = _end_errors(x, truth, sd, n_rep, seed=7)
    se = err.std(axis=0) / np.sqrt(n_rep)
    # unbiased within 4 standard errors (plus the noiseless curvature bias); the old smoother
    # was biased by +0.086 at the first checkpoint of the line and by -0.047 at the end of
    # the ramp, 70 and 35 standard errors
    assert np.all(np.abs(err.mean(axis=0)) < curvature + 4 * se)
    # still smoothing at the ends: the end values scatter less than the raw points
    assert np.all(err.std(axis=0) < 0.8 * sd)


# ----------------------------------------------------------------------------- grokking

def _rule_level(x, f):
    """a0 + 0.99 (a1 - a0), with a0, a1 the medians of the first and last 0.1 decade
    (at least 5 points), written independently of the code under test."""
    idx = np.arange(x.size)
    a0 = np.median(f[(x <= x[0] + 0.1) | (idx < 5)])
    a1 = np.median(f[(x >= x[-1] - 0.1) | (idx >= x.size - 5)])
    return a0 + 0.99 * (a1 - a0)


@pytest.mark.parametrize("width, seed", [(0.05, 0), (0.08, 1), (0.08, 2)])
def test_generalisation_end_of_a_rise_finished_just_before_the_end(width, seed):
    from scipy.optimize import brentq

    x = quick_grok_x()
    dense = np.linspace(0.0, x[-1], 200_001)

    def crossing(centre):
        level = _rule_level(x, sigmoid_ramp(x, centre, width))
        return dense[np.argmax(sigmoid_ramp(dense, centre, width) >= level)]

    truth = x[-1] - 0.1  # the rule's level is reached 0.1 decade before the last checkpoint
    centre = brentq(lambda c: crossing(c) - truth, x[-1] - 1.0, x[-1] - 0.1, xtol=1e-9)
    rng = np.random.default_rng(seed)
    y = np.clip(sigmoid_ramp(x, centre, width) + rng.normal(0, 0.003, x.size), 0, 1)
    curve = make_curve(x, y, smooth=WIDTH, snr=3.0)
    t, note = generalisation_events(curve, generalisation_fraction=0.9,
                                    end_fraction=0.99)["generalisation_end"]
    assert abs(t - truth) < 0.05, note
