"""Robust smoothing and shape primitives for curves sampled on log10(step).

Pure numpy, no xarray: every function takes ``x`` (log10 of the step, strictly increasing,
finite) and ``y`` (finite values at those points) and works in log-step units (decades), so a
checkpoint schedule that is dense early (every step) and log-spaced later is treated fairly:
windows are a fixed width in decades, not a fixed number of samples.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "smooth_log",
    "noise_sd",
    "first_crossing",
    "refine_extremum",
    "global_peak",
    "prominent_peak",
    "edge_level",
]

# Bound on the (rows x window) scratch arrays of the windowed operations, in elements.
_MAX_SCRATCH = 2_000_000


# Every smoothing window holds at least this many neighbours besides the point itself:
# where checkpoints are sparse on log-step (steps 1, 2, 3, ... span 0.5 decade) a fixed width
# would hold a single point and pass its noise straight through.
_MIN_NEIGHBOURS = 4
# Resolution of the pooling of dense schedules, far below any smoothing scale.
_BINS_PER_DECADE = 200


def _windows(x: np.ndarray, half_width) -> tuple[np.ndarray, np.ndarray]:
    """Index ranges [lo, hi) of the points within +-half_width decades of each point."""
    lo = np.searchsorted(x, x - half_width, side="left")
    hi = np.searchsorted(x, x + half_width, side="right")
    return lo, hi


def knn_distance(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point of sorted ``x`` to its k-th nearest other point."""
    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros(n)
    offs = np.concatenate([np.arange(-k, 0), np.arange(1, k + 1)])
    idx = np.arange(n)[:, None] + offs
    inside = (idx >= 0) & (idx < n)
    d = np.where(inside, np.abs(x[np.clip(idx, 0, n - 1)] - x[:, None]), np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def _row_chunks(n: int, width: int):
    rows = max(1, _MAX_SCRATCH // max(width, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def running_median(x: np.ndarray, y: np.ndarray, half_width) -> np.ndarray:
    """Median of ``y`` over the points within ``half_width`` decades of each point
    (a scalar or one half-width per point)."""
    return _window_median(x, np.broadcast_to(np.asarray(half_width, float), x.shape), x, y)


def _window_median(xq: np.ndarray, hq: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                   by_span: bool = False) -> np.ndarray:
    """Median of the ``y`` at the ``x`` within ``hq`` decades of each query point ``xq``.

    With ``by_span`` each point counts by the stretch of log-step it stands for (its share of
    the window: half the gaps to its neighbours, clipped to the window) rather than once, so
    the median is taken over the window's length, not over its points: on a monotone curve
    it is then the value at the window's centre even where checkpoints are unevenly spaced
    (steps 1, 2, 3, ...), where a plain median returns the value of the middle checkpoint,
    which lies on the denser side.
    """
    lo = np.searchsorted(x, xq - hq, side="left")
    hi = np.searchsorted(x, xq + hq, side="right")
    width = int((hi - lo).max())
    out = np.empty(len(xq), dtype=float)
    offsets = np.arange(width)
    if by_span:
        mid = 0.5 * (x[1:] + x[:-1])
        cell_lo = np.concatenate([[-np.inf], mid])
        cell_hi = np.concatenate([mid, [np.inf]])
    for rows in _row_chunks(len(xq), width):
        idx = lo[rows, None] + offsets
        inside = idx < hi[rows, None]
        idx = np.minimum(idx, len(y) - 1)
        if not by_span:
            out[rows] = np.nanmedian(np.where(inside, y[idx], np.nan), axis=1)
            continue
        a = xq[rows, None] - hq[rows, None]
        b = xq[rows, None] + hq[rows, None]
        w = np.where(inside, np.clip(cell_hi[idx], a, b) - np.clip(cell_lo[idx], a, b), 0.0)
        vals = np.where(inside, y[idx], np.inf)
        order = np.argsort(vals, axis=1, kind="stable")
        vals = np.take_along_axis(vals, order, 1)
        cum = np.cumsum(np.take_along_axis(w, order, 1), axis=1)
        half = 0.5 * cum[:, -1:]
        tol = 1e-9 * cum[:, -1:]
        # Where the cumulative weight meets half exactly, average the two middle values,
        # as the plain median does for an even count.
        i_lo = np.argmax(cum >= half - tol, axis=1)
        i_hi = np.argmax(cum > half + tol, axis=1)
        r = np.arange(len(i_lo))
        out[rows] = 0.5 * (vals[r, i_lo] + vals[r, i_hi])
    return out


def _end_pivot(x: np.ndarray, y: np.ndarray, half_width: float) -> float:
    """Theil-Sen line through the points within ``half_width`` decades of ``x[-1]``,
    evaluated at ``x[-1]``: a robust estimate of the curve's value at the end of the run
    that, unlike a median of the last points, does not lag a trend."""
    inside = x >= x[-1] - half_width
    xs, ys = x[inside], y[inside]
    i, j = np.triu_indices(len(xs), k=1)
    slope = float(np.median((ys[j] - ys[i]) / (xs[j] - xs[i]))) if len(i) else 0.0
    return float(np.median(ys - slope * (xs - xs[-1])))


def boundary_running_median(x: np.ndarray, y: np.ndarray, half_width: np.ndarray
                            ) -> np.ndarray:
    """Running median over +-``half_width`` decades that follows trends up to the ends of
    the run and where checkpoints are unevenly spaced.

    Two changes from :func:`running_median`, both so that a straight line (in log-step)
    passes through unchanged everywhere while isolated spikes are still removed:

    - Near an end a plain running median sees a one-sided window and returns the value from
      about half a window back, so the curve lags there (a still-rising test accuracy ends
      low, and the local-linear fit that follows extrapolates the lag). Here the series is
      first extended past each end by its point reflection about (end, robust end value),
      the 'odd' padding of :func:`scipy.signal.filtfilt`, so every window is symmetric.
      ckptlab differs from filtfilt in the pivot: filtfilt reflects about the last sample
      itself, which passes its noise (or a spike) into every value near the end; here the
      pivot is the Theil-Sen line through the points within ``half_width`` of the end,
      evaluated at the end: robust to spikes and, unlike a median of the last points,
      without lag on a trend.
    - Each checkpoint counts by the stretch of log-step it stands for (half the gaps to its
      neighbours, clipped to the window), not once: where checkpoints are uneven (steps
      1, 2, 3, ... at the start of a run) a plain median returns the value of the middle
      checkpoint, which lies on the denser side of the window. On any noiseless monotone
      curve the result is then the curve itself.

    Parameters
    ----------
    x : ndarray of float
        log10(step), strictly increasing and finite, at least 2 points.
    y : ndarray of float
        Finite values at ``x``.
    half_width : ndarray of float
        Half-width of each point's window in decades, > 0.

    Returns
    -------
    ndarray of float
        The running median at every ``x``.

    References
    ----------
    P. K. Sen, "Estimates of the regression coefficient based on Kendall's tau", Journal of
    the American Statistical Association 63 (1968) 1379-1389 (the Theil-Sen line).
    """
    # How far past each end the windows reach, hence how much to mirror there.
    reach_r = float(np.max(x + half_width)) - x[-1]
    reach_l = x[0] - float(np.min(x - half_width))
    pr = _end_pivot(x, y, float(half_width[-1]))
    pl = -_end_pivot(-x[::-1], -y[::-1], float(half_width[0]))
    # The end points themselves are the centres of the reflections, not mirrored.
    right = np.flatnonzero(x[:-1] >= x[-1] - reach_r)[::-1]
    left = np.flatnonzero(x[1:] <= x[0] + reach_l)[::-1] + 1
    xa = np.concatenate([2 * x[0] - x[left], x, 2 * x[-1] - x[right]])
    ya = np.concatenate([2 * pl - y[left], y, 2 * pr - y[right]])
    return _window_median(x, half_width, xa, ya, by_span=True)


def local_linear(x: np.ndarray, y: np.ndarray, sigma) -> np.ndarray:
    """Gaussian-weighted local-linear regression of ``y`` on ``x`` evaluated at ``x``.

    ``sigma`` is the kernel's standard deviation in decades, a scalar or one per point.

    Local-linear rather than a plain kernel average: it has no bias at the ends of the run
    (a curve still falling at the last checkpoint is not flattened) and does not shift the
    extremum of a symmetric peak.
    """
    sigma = np.broadcast_to(np.asarray(sigma, float), x.shape)
    lo, hi = _windows(x, 3.0 * sigma)
    width = int((hi - lo).max())
    out = np.empty_like(y, dtype=float)
    offsets = np.arange(width)
    for rows in _row_chunks(len(x), width):
        idx = lo[rows, None] + offsets
        inside = idx < hi[rows, None]
        idx = np.minimum(idx, len(x) - 1)
        dx = np.where(inside, x[idx] - x[rows, None], 0.0)
        w = np.where(inside, np.exp(-0.5 * (dx / sigma[rows, None]) ** 2), 0.0)
        yy = y[idx]
        s0 = w.sum(1)
        s1 = (w * dx).sum(1)
        s2 = (w * dx * dx).sum(1)
        t0 = (w * yy).sum(1)
        t1 = (w * dx * yy).sum(1)
        det = s0 * s2 - s1 * s1
        # A window holding a single point (sparse schedule) has no slope: plain average there.
        ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
        out[rows] = np.where(ok, (s2 * t0 - s1 * t1) / np.where(ok, det, 1.0), t0 / s0)
    return out


def smooth_log(x: np.ndarray, y: np.ndarray, width: float) -> np.ndarray:
    """Robustly smooth ``y`` sampled at log-steps ``x``.

    Points closer than 1/200 decade are first pooled (median per bin). Then a running median
    over +-h decades (removes isolated spikes, e.g. loss spikes or a bad batch; made
    unbiased on trends at the ends of the run and on uneven schedules by
    :func:`boundary_running_median`) is followed by
    Gaussian local-linear regression with standard deviation h, where h = ``width`` or, where
    checkpoints are sparse on log-step, the distance to the 4th nearest checkpoint (so every
    window holds at least 5 points). The result is interpolated back to every ``x``.
    ``width = 0`` returns ``y`` unchanged.

    Parameters
    ----------
    x : ndarray of float
        log10(step), strictly increasing and finite.
    y : ndarray of float
        Finite values at ``x``.
    width : float
        Smoothing scale in decades.

    Returns
    -------
    ndarray of float
        The smoothed values at ``x``.
    """
    y = np.asarray(y, dtype=float)
    if width <= 0 or len(y) < 3:
        return y.copy()
    xb, yb = bin_medians(x, y)
    if len(xb) < 3:
        return np.full_like(y, np.median(y))
    h = np.maximum(width, knn_distance(xb, _MIN_NEIGHBOURS))
    return np.interp(x, xb, local_linear(xb, boundary_running_median(xb, yb, h), h))


def bin_medians(x: np.ndarray, y: np.ndarray, per_decade: int = _BINS_PER_DECADE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pool points into bins of 1/per_decade decade: (mean x, median y) per occupied bin.

    An every-step schedule puts thousands of checkpoints in the last decade; pooling them
    keeps the smoothing cost bounded and gives each stretch of log-step equal say.
    """
    b = np.floor(x * per_decade).astype(np.int64)
    if len(b) < 2 or np.all(np.diff(b) > 0):
        return x, y
    order = np.lexsort((y, b))
    bs, ys, xs = b[order], y[order], x[order]
    _, start, count = np.unique(bs, return_index=True, return_counts=True)
    med = 0.5 * (ys[start + (count - 1) // 2] + ys[start + count // 2])
    xm = np.add.reduceat(xs, start) / count
    return xm, med


def edge_level(x: np.ndarray, y: np.ndarray, *, last: bool = True, decades: float = 0.1,
               min_points: int = 5) -> float:
    """Robust level of a curve at the end (or start) of the run, from its raw values.

    The median of ``y`` over the last (first if not ``last``) ``decades`` of log-step, widened
    to hold at least ``min_points`` points after pooling to 1/200 decade. Being a median of
    observed values it always lies within [min(y), max(y)]: unlike the smoothed curve's end
    value, which local-linear regression extrapolates at the boundary (an accuracy that
    levels off at 1.0 just before the last checkpoint can come out at 1.04).

    Parameters
    ----------
    x : ndarray of float
        log10(step), strictly increasing and finite.
    y : ndarray of float
        Finite values at ``x``.
    last : bool, default True
        The end of the run; False for its start.
    decades : float, default 0.1
        Width of the window in decades; 0 for exactly ``min_points`` pooled points.
    min_points : int, default 5
        Fewest pooled points in the window.

    Returns
    -------
    float
        The median level.
    """
    xb, yb = bin_medians(np.asarray(x, float), np.asarray(y, float))
    if not last:
        xb, yb = -xb[::-1], yb[::-1]
    inside = xb >= xb[-1] - decades
    inside[-min_points:] = True
    return float(np.median(yb[inside]))


def noise_sd(y: np.ndarray, smoothed: np.ndarray) -> float:
    """Robust standard deviation of the residuals ``y - smoothed`` (1.4826 * MAD)."""
    r = np.asarray(y, float) - np.asarray(smoothed, float)
    if r.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def first_crossing(x: np.ndarray, y: np.ndarray, level: float, *, start: int = 0,
                   upward: bool = True) -> tuple[float, bool]:
    """First log-step at which ``y`` reaches ``level`` (from below, or from above if not upward).

    The crossing is interpolated linearly between the two samples that bracket it.

    Returns
    -------
    x_cross : float
        NaN if ``y`` never reaches ``level`` at or after index ``start``.
    at_start : bool
        True when ``y`` had already reached ``level`` at index ``start`` (the crossing happened
        at or before that sample, so ``x_cross`` is an upper bound).
    """
    seg = y[start:] if upward else -y[start:]
    lev = level if upward else -level
    reached = seg >= lev
    if not reached.any():
        return float("nan"), False
    i = int(np.argmax(reached))
    if i == 0:
        return float(x[start]), True
    j = start + i
    y0, y1 = seg[i - 1], seg[i]
    frac = (lev - y0) / (y1 - y0) if y1 != y0 else 1.0
    return float(x[j - 1] + frac * (x[j] - x[j - 1])), False


def refine_extremum(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """Vertex of the parabola through samples i-1, i, i+1 (sub-sample extremum location).

    Falls back to ``x[i]`` at the ends of the array or when the three points are collinear.
    """
    if i <= 0 or i >= len(x) - 1:
        return float(x[i])
    xs, ys = x[i - 1:i + 2], y[i - 1:i + 2]
    a, b, _ = np.polyfit(xs - xs[1], ys, 2)
    if a == 0 or not np.isfinite(a):
        return float(x[i])
    return float(np.clip(xs[1] - b / (2 * a), xs[0], xs[2]))


def global_peak(x: np.ndarray, ys: np.ndarray, threshold: float, what: str
                ) -> tuple[float, str, int]:
    """Global maximum of ``ys`` if it is a real peak: a rise before it and a fall after it,
    each larger than ``threshold``.

    Returns (log-step or NaN, note, index or -1).
    """
    i = int(np.argmax(ys))
    rise = ys[i] - ys[:i + 1].min()
    fall = ys[i] - ys[i:].min()
    if i == len(ys) - 1:
        return np.nan, f"{what} is still rising at the last checkpoint: no peak yet", -1
    if rise <= threshold:
        return (np.nan, f"no significant rise before the maximum of {what} "
                f"(rise {rise:.3g} <= threshold {threshold:.3g})", -1)
    if fall <= threshold:
        return (np.nan, f"no significant fall after the maximum of {what} "
                f"(fall {fall:.3g} <= threshold {threshold:.3g})", -1)
    return (refine_extremum(x, ys, i),
            f"maximum of smoothed {what}; rise {rise:.3g}, fall {fall:.3g}", i)


def prominent_peak(x: np.ndarray, ys: np.ndarray, threshold: float, what: str
                   ) -> tuple[float, str, int]:
    """The interior local maximum of ``ys`` with the largest prominence, if above ``threshold``.

    Prominence is scipy's: the height of the peak over the higher of the two lowest points
    that separate it from higher ground (or the ends) on either side. A maximum at the first
    or last checkpoint is not a peak.

    Returns (log-step or NaN, note, index or -1).
    """
    from scipy.signal import find_peaks

    peaks, props = find_peaks(ys, prominence=0.0)
    if len(peaks) == 0:
        if int(np.argmax(ys)) == len(ys) - 1:
            return np.nan, f"no local maximum of {what}: still rising at the last checkpoint", -1
        return np.nan, f"no local maximum of {what} (monotone)", -1
    k = int(np.argmax(props["prominences"]))
    prom = float(props["prominences"][k])
    if prom <= threshold:
        return (np.nan, f"no significant local maximum of {what} (largest prominence "
                f"{prom:.3g} <= threshold {threshold:.3g})", -1)
    i = int(peaks[k])
    return refine_extremum(x, ys, i), f"local maximum of smoothed {what}; prominence {prom:.3g}", i
