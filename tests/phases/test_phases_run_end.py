"""Regressions at the end of a run: levels from a curve's final value, and "converged".

Two failures seen on real grokking runs (log-spaced checkpoints, quick-grok preset):

1. test accuracy levels off at 1.0 just at the last checkpoint; the smoothed curve
   (local-linear) extrapolates past 1 there, and the generalisation level derived from that
   "final value" came out as 1.04;
2. a run stopped while test accuracy was still rising (0.92 at the last step) was labelled
   "converged" from just before its end.

The truths come from the noiseless formulas on a dense grid, never from the code under test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from ckptlab.phases import segment
from ckptlab.phases.smoothing import edge_level, first_crossing, smooth_log

TOL = 0.15  # decades


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def log_steps(last: int, n: int = 70) -> np.ndarray:
    """Step 0 plus ~n log-spaced steps from 1 to ``last`` (quick-grok-like schedule)."""
    return np.concatenate([[0], np.unique(np.round(np.logspace(0, np.log10(last), n))
                                          .astype(np.int64))])


def acc_f(s, centre, width):
    return 0.01 + 0.99 * sig((s - centre) / width)


def grok_run(steps: np.ndarray, centre: float, width: float, seed: int) -> xr.Dataset:
    """Train accuracy fits at step ~100, I(X;T) peaks at ~60 and settles, test accuracy
    rises as a sigmoid in log-step; accuracies clipped to [0, 1] like real ones."""
    rng = np.random.default_rng(seed)
    s = np.log10(np.maximum(steps, 1)).astype(float)
    n = s.size
    ds = xr.Dataset(coords={"step": steps, "layer": ["hidden0"]})
    ds["train_acc"] = ("step", np.clip(0.1 + 0.9 * sig((s - 2.0) / 0.1)
                                       + rng.normal(0, 0.003, n), 0, 1))
    ds["test_acc"] = ("step", np.clip(acc_f(s, centre, width)
                                      + rng.normal(0, 0.003, n), 0, 1))
    ds["mi_xt"] = (("step", "layer"), (3 + 4 * np.exp(-0.5 * ((s - 1.8) / 0.3) ** 2))[:, None]
                   + rng.normal(0, 0.05, (n, 1)))
    return ds


def dense_crossing(xs, f_vals, level):
    hit = np.flatnonzero(f_vals >= level)
    return xs[hit[0]] if hit.size else np.nan


def note_of(seg, name) -> str:
    return str(seg["event_note"].sel(event=name).item())


def log_event(seg, name) -> float:
    return float(np.log10(seg["event_step"].sel(event=name)))


def levels_in_note(note: str) -> tuple[float, float, float]:
    """(level, a0, rise) from 'test_acc reaches L = a0 + f x rise R'."""
    m = re.search(r"reaches ([-\d.e]+) = ([-\d.e]+) \+ [\d.]+ x rise ([-\d.e]+)", note)
    assert m, note
    return float(m[1]), float(m[2]), float(m[3])


# ----------------------------------------------------------------------------- edge_level

def test_edge_level_is_the_median_over_the_last_or_first_tenth_of_a_decade():
    x = np.array([0.0, 0.5, 1.0, 1.5, 1.85, 1.92, 1.95, 1.97, 1.99, 2.0])
    y = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 0.3, 0.1, 0.5, 0.2, 5.0])
    # last 0.1 decade: x >= 1.9 -> 0.3, 0.1, 0.5, 0.2, 5.0 -> median 0.3
    assert edge_level(x, y) == pytest.approx(0.3)
    # first 0.1 decade holds one point: widened to the first 5 -> 9, 8, 7, 6, 5 -> 7
    assert edge_level(x, y, last=False) == pytest.approx(7.0)
    # decades=0: exactly the last 3 points -> 0.5, 0.2, 5.0 -> 0.5
    assert edge_level(x, y, decades=0.0, min_points=3) == pytest.approx(0.5)


def test_edge_level_pools_dense_schedules_and_stays_in_range():
    steps = np.arange(1, 10_001)
    x = np.log10(steps)
    # every-step schedule: 0 before step 8000, 1 from there; the last 0.1 decade starts at
    # step 7943, so after pooling to 1/200 decade most of its bins hold ones
    y = (steps >= 8000).astype(float)
    assert edge_level(x, y) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        z = rng.normal(size=x.size)
        assert z.min() <= edge_level(x, z) <= z.max()


# ----------------------------------------------------------------------------- overshoot

@pytest.mark.parametrize("seed", [0, 1])
def test_levels_from_a_rise_ending_at_the_last_checkpoint_stay_within_the_observed_range(seed):
    steps = log_steps(2200)
    s = np.log10(np.maximum(steps, 1)).astype(float)
    width = 0.08
    centre = s[-1] - width * np.log(999)  # the sigmoid reaches 99.9 % at the last checkpoint
    ds = grok_run(steps, centre, width, seed)
    raw = ds["test_acc"].values
    x = s[1:]
    # the situation of the bug: the smoothed curve's end value overshoots the data
    assert smooth_log(x, raw[1:], 0.1)[-1] > raw.max() + 0.01

    seg = segment(ds)
    for name in ("generalisation_onset", "generalisation_end"):
        level, a0, rise = levels_in_note(note_of(seg, name))
        assert level <= raw.max() <= 1.0
        assert raw.min() <= a0 and a0 + rise <= raw.max() + 1e-3  # note rounds to 3 digits

    # against the truth: the noiseless curve relative to its values at the first and last
    # checkpoints
    dense = np.linspace(0.0, s[-1], 100_001)
    f = acc_f(dense, centre, width)
    f0, f1 = acc_f(0.0, centre, width), acc_f(s[-1], centre, width)
    for name, frac in (("generalisation_onset", 0.9), ("generalisation_end", 0.99)):
        truth = dense_crossing(dense, f, f0 + frac * (f1 - f0))
        assert abs(log_event(seg, name) - truth) < TOL
    b2 = float(seg["boundary_step"].sel(boundary="converged_start"))
    assert np.log10(b2) == pytest.approx(log_event(seg, "generalisation_end"))
    assert seg["phase"].values[-1] == "converged"


# ----------------------------------------------------------------------------- still rising

@pytest.mark.parametrize("seed", [0, 1])
def test_run_stopped_mid_rise_has_no_generalisation_end_and_no_converged_phase(seed):
    steps = log_steps(1500)
    s = np.log10(np.maximum(steps, 1)).astype(float)
    width = 0.08
    centre = s[-1] - width * np.log(0.92 / 0.08)  # test accuracy ~0.92 and rising at the end
    ds = grok_run(steps, centre, width, seed)
    raw = ds["test_acc"].values[1:]
    # the old rule (0.99 of the way to the smoothed last value) is met inside the run
    ys = smooth_log(s[1:], raw, 0.1)
    assert first_crossing(s[1:], ys, ys[0] + 0.99 * (ys[-1] - ys[0]))[0] < s[-1]

    seg = segment(ds)
    assert np.isnan(seg["event_step"].sel(event="generalisation_end"))
    assert "still rising at the last checkpoint" in note_of(seg, "generalisation_end")
    # plane_settled happened, yet it alone must not declare convergence
    assert np.isfinite(seg["event_step"].sel(event="plane_settled"))
    assert "converged" not in seg["phase"].values.tolist()
    assert np.isnan(seg["boundary_step"].sel(boundary="converged_start"))
    assert "not reached inside the run" in seg.attrs["phase_rule"]
    assert seg["phase"].values[-1] == "compression"
    # the onset, relative to a level not yet final, is a lower bound of the true one
    dense = np.linspace(0.0, 5.0, 100_001)
    f = acc_f(dense, centre, width)
    true_onset = dense_crossing(dense, f, f[0] + 0.9 * (f[-1] - f[0]))
    assert log_event(seg, "generalisation_onset") < true_onset
    assert "lower bound" in note_of(seg, "generalisation_onset")

    # the same curve followed past its rise does converge, at generalisation_end
    longer = grok_run(log_steps(30_000, 110), centre, width, seed)
    seg = segment(longer)
    truth = dense_crossing(dense, f, f[0] + 0.99 * (f[-1] - f[0]))
    assert abs(log_event(seg, "generalisation_end") - truth) < TOL
    b2 = float(seg["boundary_step"].sel(boundary="converged_start"))
    assert np.log10(b2) == pytest.approx(log_event(seg, "generalisation_end"))


def test_flat_test_accuracy_leaves_convergence_to_plane_settled():
    """No generalisation at all is not "still generalising": plane_settled decides."""
    steps = log_steps(10_000)
    ds = grok_run(steps, centre=10.0, width=0.08, seed=3)  # the rise lies far after the run
    seg = segment(ds)
    assert "does not rise significantly" in note_of(seg, "generalisation_end")
    settled = log_event(seg, "plane_settled")
    assert settled > log_event(seg, "fit_end")
    b2 = float(seg["boundary_step"].sel(boundary="converged_start"))
    assert np.log10(b2) == pytest.approx(settled)
