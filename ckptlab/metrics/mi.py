"""Mutual information between a layer and the input / the labels (metrics spec, section 1).

Pure numpy / torch kernels: no xarray, no dask, no I/O. Each estimator takes one layer's
representation ``t`` of shape ``(N, d)`` for a fixed probe set of N inputs with integer labels
``y`` of shape ``(N,)`` and returns ``(I(X;T), I(T;Y))`` in **bits**. A batch of checkpoints of
the same layer may be passed as ``t`` of shape ``(..., N, d)`` (the probe set, hence ``y``, is
shared); the results are then arrays of shape ``t.shape[:-2]``. Batching amortises the per-call
overhead and, for :func:`mi_renyi`, the input's Gram spectrum.

X is the sample index, uniform over the N probe inputs, and the map X -> T is deterministic, so
``I(X;T) = H(T)`` for the binning estimators. For continuous T this quantity is degenerate
(log2 N for any injective discretisation); every estimator here measures a coarse-grained or
noisy T, and its parameter (bin count, noise variance, kernel width) is part of the result.

A NaN or infinite value anywhere in one checkpoint's ``t`` makes that checkpoint's outputs NaN
(a diverged network has no meaningful information content); it never raises. The helpers that
return integer codes or bin edges (:func:`bin_codes`, :func:`adaptive_edges`) cannot represent
NaN and raise :class:`~ckptlab.errors.ValidationError` instead.

References
----------
Shwartz-Ziv, R. and Tishby, N. (2017). Opening the black box of deep neural networks via
information. arXiv:1703.00810.

Chelombiev, I., Houghton, C. and O'Donnell, C. (2019). Adaptive estimators show information
compression in deep neural networks. ICLR 2019, arXiv:1902.09037.

Kolchinsky, A. and Tracey, B. D. (2017). Estimating mixture entropy with pairwise distances.
Entropy 19(7), 361.

Saxe, A. M. et al. (2018). On the information bottleneck theory of deep learning. ICLR 2018.

Giraldo, L. G. S., Rao, M. and Principe, J. C. (2015). Measures of entropy from data using
infinitely divisible kernels. IEEE Trans. Inf. Theory 61(1), 535-548, arXiv:1211.2459.

Yu, S. and Principe, J. C. (2019). Understanding autoencoders with information theoretic
concepts. Neural Networks 117, 104-123 (the kernel-width rule used by :func:`mi_renyi`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .._checks import check_choice, check_float, check_int
from ..errors import ValidationError
from ._tensors import CHUNK_ELEMENTS

__all__ = [
    "bin_codes",
    "adaptive_edges",
    "row_labels",
    "entropy_bits",
    "renyi_entropy",
    "mi_binning",
    "mi_adaptive",
    "mi_kde",
    "mi_renyi",
]

_LN2 = math.log(2.0)
# Entries of one (batch, rows, N) float64 distance block in mi_kde: the chunk budget's bytes
# (4 MiB), so the exponentials and sums over it run in cache; 128 MiB blocks measured 1.8x
# slower on (9, 512, 200) layers.
_BLOCK_ELEMENTS = CHUNK_ELEMENTS // 2
# exp() of arguments below about -708 (results under 1e-307) takes torch's slow path, 20-130 ns
# instead of 1-4 ns per value (measured), and widely spread layers give many of them. Kernel
# values are clamped at exp(-700) ~ 1e-304 instead: every sum they enter includes a self term
# of exactly 1, so the change is below float64's resolution.
EXP_FLOOR = -700.0


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_real_array(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"{name} must be a real numeric array, got {type(value).__name__}"
        ) from exc
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValidationError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _as_layer(name: str, value) -> np.ndarray:
    """A representation of shape (N, d) or a batch (..., N, d) with N >= 2 and d >= 1."""
    arr = _as_real_array(name, value)
    if arr.ndim < 2 or arr.shape[-2] < 2 or arr.shape[-1] < 1 or arr.size == 0:
        raise ValidationError(
            f"{name} must be an array of shape (N, d), or (..., N, d) for a non-empty batch, "
            f"with N >= 2 rows and d >= 1 columns, got shape {arr.shape}"
        )
    return arr


def _as_labels(y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense class ids 0..K-1 of ``y`` and the class counts."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError(
            f"y must be a 1-D array of {n} integer class labels (one per row of t), "
            f"got shape {arr.shape} and dtype {arr.dtype}"
        )
    _, yid, counts = np.unique(arr, return_inverse=True, return_counts=True)
    return yid.reshape(-1).astype(np.int64), counts


def _check_range(lo, hi, d: int) -> tuple[np.ndarray, np.ndarray]:
    """lo and hi as float64 scalars or per-unit (d,) arrays with lo < hi everywhere."""
    out = []
    for name, value in (("lo", lo), ("hi", hi)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"{name} must be a finite number or an array of shape ({d},) of finite numbers, "
                f"got {value!r}"
            ) from exc
        if arr.shape not in ((), (d,)) or not np.isfinite(arr).all():
            raise ValidationError(
                f"{name} must be a finite number or an array of shape ({d},) of finite numbers, "
                f"got {value!r}"
            )
        out.append(arr)
    lo_a, hi_a = out
    bad = ~(lo_a < hi_a)
    if bad.any():
        if bad.ndim == 0:
            raise ValidationError(
                f"lo must be less than hi, got lo={float(lo_a)!r} and hi={float(hi_a)!r}"
            )
        u = int(np.flatnonzero(np.broadcast_to(bad, (d,)))[0])
        lo_u = float(np.broadcast_to(lo_a, (d,))[u])
        hi_u = float(np.broadcast_to(hi_a, (d,))[u])
        raise ValidationError(
            f"lo must be less than hi for every unit, got lo={lo_u!r} and hi={hi_u!r} at unit {u}"
        )
    return lo_a, hi_a


def _check_alpha(alpha) -> float:
    ok = isinstance(alpha, (int, float, np.integer, np.floating)) and not isinstance(alpha, bool)
    if ok:
        a = float(alpha)
        if math.isfinite(a) and a > 0 and a != 1.0:
            return a
    raise ValidationError(
        "alpha must be a finite number > 0 and != 1 (alpha -> 1 is the Shannon limit), "
        f"got {alpha!r}"
    )


def _flatten_batch(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """(B, N, d) float64 view of ``arr``, the batch shape, and which items are all finite.

    Non-finite items are replaced by zeros so the vectorised code runs undisturbed; their
    results are overwritten with NaN afterwards.
    """
    batch_shape = arr.shape[:-2]
    flat = arr.reshape((-1,) + arr.shape[-2:])
    finite = np.isfinite(flat).all(axis=(1, 2))
    if not finite.all():
        flat = np.where(finite[:, None, None], flat, 0)
    return flat, batch_shape, finite


def _finish(i_xt, i_ty, batch_shape, finite):
    i_xt = np.asarray(i_xt, dtype=np.float64).copy()
    i_ty = np.asarray(i_ty, dtype=np.float64).copy()
    i_xt[~finite] = np.nan
    i_ty[~finite] = np.nan
    if batch_shape == ():
        return float(i_xt[0]), float(i_ty[0])
    return i_xt.reshape(batch_shape), i_ty.reshape(batch_shape)


# --------------------------------------------------------------------------------------------
# discrete building blocks
# --------------------------------------------------------------------------------------------


def bin_codes(t, *, n_bins: int, lo, hi) -> np.ndarray:
    """Equal-width bin index of every activation value.

    Unit ``k`` is cut into ``n_bins`` intervals of width ``(hi_k - lo_k) / n_bins``; a value
    gets ``floor((t - lo) / width)`` clipped into ``[0, n_bins - 1]``. Values below ``lo`` go
    into the first bin and values at or above ``hi`` into the last one: they are never wrapped
    around (the Shwartz-Ziv and Tishby code indexed its bin array with ``digitize(...) - 1``,
    which sends values below the bottom edge to the top bin).

    Parameters
    ----------
    t : array_like of shape (..., d)
        Activations, units along the last axis. Must be finite.
    n_bins : int
        Number of intervals, >= 2. ckptlab counts *intervals*; the source's "30 bin edges
        spanning [-1, 1]" (``np.linspace(-1, 1, 30)``) are 29 intervals, so
        ``n_bins=29, lo=-1, hi=1`` reproduces its bins. ckptlab's estimators default to 30
        intervals.
    lo, hi : float or array_like of shape (d,)
        Range, one for all units or one per unit; finite with ``lo < hi``.

    Returns
    -------
    numpy.ndarray of int64, same shape as ``t``
        Bin codes in ``[0, n_bins - 1]``.

    Raises
    ------
    ValidationError
        If ``n_bins`` is not an integer >= 2, ``lo``/``hi`` are not finite with ``lo < hi``
        (or have the wrong shape), or ``t`` is not a finite real array.
    """
    n_bins = check_int("n_bins", n_bins, min=2)
    arr = _as_real_array("t", t)
    if arr.ndim < 1:
        raise ValidationError(f"t must have at least one axis (units last), got shape {arr.shape}")
    lo_a, hi_a = _check_range(lo, hi, arr.shape[-1])
    if not np.isfinite(arr).all():
        raise ValidationError("t must contain only finite values to be binned, got NaN or Inf")
    return _bin_codes(arr, n_bins, lo_a, hi_a).astype(np.int64)


#: Values per chunk of the bin codes: a 512 KiB float64 buffer (2^15..2^17 measured alike,
#: 2^20 15-25% slower, out of cache)
_BIN_CHUNK = 2**16


def _bin_codes(arr: np.ndarray, n_bins: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """floor((arr - lo) / width) clipped, in float64; uint8 codes up to 256 bins, else int64.

    In row chunks of about ``_BIN_CHUNK`` values through one float64 buffer that stays in
    cache: the whole layer's float64 quotient was the peak of an analysis's memory (16 MB
    for 10 checkpoints x 1024 probes x 200 units), and chunks are 10% faster.
    """
    width = (hi - lo) / n_bins
    codes = np.empty(arr.shape, dtype=np.uint8 if n_bins <= 256 else np.int64)
    if arr.size == 0:
        return codes
    d = arr.shape[-1]
    rows, out = arr.reshape(-1, d), codes.reshape(-1, d)
    step = max(1, _BIN_CHUNK // max(1, d))
    buf = np.empty((min(step, len(rows)), d), dtype=np.float64)
    for a in range(0, len(rows), step):
        chunk = rows[a : a + step]
        q = buf[: len(chunk)]
        np.subtract(chunk, lo, out=q, dtype=np.float64)
        q /= width
        np.floor(q, out=q)
        np.clip(q, 0, n_bins - 1, out=q)
        out[a : a + step] = q
    return codes


def adaptive_edges(t, *, n_bins: int = 30) -> np.ndarray:
    """Equal-mass bin edges over the sorted distinct values of a layer (all units pooled).

    With ``u_0 < u_1 < ... < u_{M-1}`` the M distinct values of ``t``, bin ``k`` holds the
    values of rank ``r`` with ``floor(r * n_bins / M) == k``: every bin holds the same number of
    distinct values (up to one). Its lower edge is ``u_{ceil(k M / n_bins)}`` and the last edge
    is the maximum, so bin ``k`` is ``[edges[k], edges[k+1])`` and the last bin also holds the
    maximum. When ``M < n_bins`` each distinct value has a bin of its own, some bins are empty and
    the surplus edges repeat the maximum.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        One layer's activations (a batch gets one set of edges per item). Must be finite.
    n_bins : int, default 30
        Number of bins, >= 2.

    Returns
    -------
    numpy.ndarray of float64, shape (..., n_bins + 1)
        Non-decreasing edges.

    Raises
    ------
    ValidationError
        If ``n_bins`` is not an integer >= 2, or ``t`` is not a finite real array of shape
        (..., N, d) with N >= 2.

    References
    ----------
    Chelombiev, Houghton and O'Donnell (2019), arXiv:1902.09037.
    """
    n_bins = check_int("n_bins", n_bins, min=2)
    arr = _as_layer("t", t)
    if not np.isfinite(arr).all():
        raise ValidationError(
            "t must contain only finite values to place bin edges, got NaN or Inf"
        )
    flat = arr.reshape((-1, arr.shape[-2] * arr.shape[-1])).astype(np.float64, copy=False)
    k = np.arange(n_bins, dtype=np.int64)
    edges = np.empty((flat.shape[0], n_bins + 1))
    for b in range(flat.shape[0]):  # loop over checkpoints only; this helper is not the hot path
        u = np.unique(flat[b])
        m = u.shape[0]
        idx = np.minimum(-((-k * m) // n_bins), m - 1)  # ceil(k m / n_bins), exact in integers
        edges[b, :n_bins] = u[idx]
        edges[b, n_bins] = u[-1]
    return edges.reshape(arr.shape[:-2] + (n_bins + 1,))


def _adaptive_codes(flat: np.ndarray, n_bins: int) -> np.ndarray:
    """Codes floor(rank * n_bins / M) of every value, rank among its item's distinct values.

    Vectorised over the batch: one sort per item, no loop. Identical to locating values among
    :func:`adaptive_edges` when M >= n_bins, and the same partition otherwise.
    """
    b, n, d = flat.shape
    v = flat.reshape(b, n * d)
    order = np.argsort(v, axis=1, kind="stable")
    s = np.take_along_axis(v, order, axis=1)
    rank = np.zeros(s.shape, dtype=np.int64)
    np.cumsum(s[:, 1:] != s[:, :-1], axis=1, out=rank[:, 1:])
    m = rank[:, -1:] + 1
    codes = np.empty_like(rank)
    np.put_along_axis(codes, order, (rank * n_bins) // m, axis=1)
    return codes.reshape(b, n, d)


def row_labels(codes) -> np.ndarray:
    """Dense integer ids of the distinct rows of a code matrix.

    Rows are packed into one int64 key (mixed radix over each column's range) when the product
    of the column ranges fits, else viewed as one opaque byte string per row; then one
    ``np.unique`` on a 1-D array. Both are O(N d + N log N).

    Parameters
    ----------
    codes : array_like of int, shape (N, d)

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
        ``labels[i] == labels[j]`` exactly when rows i and j are equal; ids are 0..U-1 for U
        distinct rows.

    Raises
    ------
    ValidationError
        If ``codes`` is not a 2-D integer array.
    """
    c = np.asarray(codes)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
        raise ValidationError(
            f"codes must be a 2-D integer array (N, d), got shape {c.shape} and dtype {c.dtype}"
        )
    n, d = c.shape
    if n == 0 or d == 0:
        return np.zeros(n, dtype=np.int64)
    cmin = c.min(axis=0)
    span = c.max(axis=0).astype(np.float64) - cmin.astype(np.float64) + 1.0
    if np.log2(span).sum() < 62.0:
        # float log2 is exact enough here: the margin to 63 bits absorbs its rounding
        shifted = c.astype(np.int64) - cmin.astype(np.int64)
        radix = np.ones(d, dtype=np.int64)
        np.cumprod(span[:-1].astype(np.int64), out=radix[1:])
        key = shifted @ radix
    else:
        top = span.max()
        if top <= 2.0**32:
            dtype = np.uint8 if top <= 256 else np.uint16 if top <= 65536 else np.uint32
            packed = (c.astype(np.int64) - cmin.astype(np.int64)).astype(dtype)
        else:
            packed = c.astype(np.int64)
        packed = np.ascontiguousarray(packed)
        key = packed.view(np.dtype((np.void, packed.itemsize * d))).reshape(n)
    _, inv = np.unique(key, return_inverse=True)
    return inv.reshape(n).astype(np.int64, copy=False)


def _entropy_from_counts(counts: np.ndarray, n: int) -> float:
    c = counts[counts > 0].astype(np.float64)
    return math.log2(n) - float(np.dot(c, np.log2(c))) / n


def entropy_bits(labels) -> float:
    """Plug-in (maximum-likelihood) entropy of a label vector, in bits.

    ``H = log2 N - (1/N) sum_u c_u log2 c_u`` with ``c_u`` the count of each distinct label.

    Parameters
    ----------
    labels : array_like, shape (N,)
        Any 1-D array of hashable, sortable values (N >= 1).

    Returns
    -------
    float

    Raises
    ------
    ValidationError
        If ``labels`` is not a non-empty 1-D array.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] == 0:
        raise ValidationError(f"labels must be a non-empty 1-D array, got shape {lab.shape}")
    _, counts = np.unique(lab, return_counts=True)
    return _entropy_from_counts(counts, lab.shape[0])


def _item_row_labels(c: np.ndarray) -> np.ndarray:
    """Dense ids of the distinct rows of one (N, d) code matrix."""
    if c.dtype == np.uint8 or (c.size and 0 <= c.min() and c.max() < 256):
        # one opaque d-byte string per row: one sort, exact, no packing arithmetic
        c8 = np.ascontiguousarray(c, dtype=np.uint8)
        key = c8.view(np.dtype((np.void, c8.shape[1]))).reshape(c8.shape[0])
        return np.unique(key, return_inverse=True)[1].reshape(-1)
    return row_labels(c)


def _plugin_mi(codes: np.ndarray, yid: np.ndarray, class_counts: np.ndarray):
    """H(T) and I(T;Y) in bits for a batch of code matrices (B, N, d)."""
    b, n, _ = codes.shape
    n_classes = class_counts.shape[0]
    log2n = math.log2(n)
    h_t, h_ty = np.empty(b), np.empty(b)
    for i in range(b):  # per item: B sorts of N rows cost less than one of B N longer rows
        lab = _item_row_labels(codes[i])
        c = np.bincount(lab).astype(np.float64)
        h_t[i] = log2n - float(np.dot(c, np.log2(c))) / n
        jc = np.bincount(lab * n_classes + yid).astype(np.float64)
        jc = jc[jc > 0]
        h_ty[i] = log2n - float(np.dot(jc, np.log2(jc))) / n
    h_y = _entropy_from_counts(class_counts, n)
    # plug-in MI is >= 0; clip the last-bit rounding so downstream logs and plots stay clean
    i_ty = np.maximum(h_t + h_y - h_ty, 0.0)
    return h_t, i_ty


def mi_binning(t, y, *, n_bins: int = 30, lo=-1.0, hi=1.0):
    """I(X;T) and I(T;Y) by fixed equal-width binning (Shwartz-Ziv and Tishby 2017).

    Each unit is cut into ``n_bins`` equal intervals over ``[lo, hi]`` (see :func:`bin_codes`),
    each sample's row of bin codes is one symbol, and the plug-in estimator gives
    ``I(X;T) = H(T)`` and ``I(T;Y) = H(T) + H(Y) - H(T, Y)``.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer for the N probe inputs (a batch of checkpoints allowed).
    y : array_like of int, shape (N,)
        Class labels of the probe inputs.
    n_bins : int, default 30
        Number of equal-width intervals per unit (>= 2). The source used 30 *edges* over
        [-1, 1], i.e. 29 intervals: pass ``n_bins=29`` to reproduce it. ckptlab counts intervals
        and defaults to 30.
    lo, hi : float or array_like of shape (d,), default -1.0 and 1.0
        Binning range, global or per unit. [-1, 1] suits tanh layers only; for unbounded
        activations pass a range taken over all checkpoints of the run, so that the bins mean
        the same thing at every step (or use :func:`mi_adaptive`). Values outside the range
        go into the end bins.

    Returns
    -------
    (float, float) or (numpy.ndarray, numpy.ndarray)
        ``(I(X;T), I(T;Y))`` in bits; arrays of shape ``t.shape[:-2]`` for a batch. NaN for a
        checkpoint whose ``t`` holds NaN or Inf.

    Raises
    ------
    ValidationError
        On a bad ``t``, ``y``, ``n_bins``, ``lo`` or ``hi``.

    References
    ----------
    Shwartz-Ziv and Tishby (2017), arXiv:1703.00810.
    """
    n_bins = check_int("n_bins", n_bins, min=2)
    arr = _as_layer("t", t)
    lo_a, hi_a = _check_range(lo, hi, arr.shape[-1])
    yid, class_counts = _as_labels(y, arr.shape[-2])
    flat, batch_shape, finite = _flatten_batch(arr)
    codes = _bin_codes(flat, n_bins, lo_a, hi_a)
    i_xt, i_ty = _plugin_mi(codes, yid, class_counts)
    return _finish(i_xt, i_ty, batch_shape, finite)


def mi_adaptive(t, y, *, n_bins: int = 30):
    """I(X;T) and I(T;Y) by adaptive equal-mass binning (Chelombiev et al. 2019).

    Per checkpoint, all activation values of the layer are pooled and cut into ``n_bins`` bins
    that each hold the same number of *distinct* values (see :func:`adaptive_edges`); then the
    plug-in estimator of :func:`mi_binning` on the rows of bin codes.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed; edges are per item).
    y : array_like of int, shape (N,)
        Class labels.
    n_bins : int, default 30
        Number of bins, >= 2.

    Returns
    -------
    (float, float) or (numpy.ndarray, numpy.ndarray)
        ``(I(X;T), I(T;Y))`` in bits, NaN for a checkpoint with NaN or Inf.

    Raises
    ------
    ValidationError
        On a bad ``t``, ``y`` or ``n_bins``.

    References
    ----------
    Chelombiev, Houghton and O'Donnell (2019), arXiv:1902.09037.
    """
    n_bins = check_int("n_bins", n_bins, min=2)
    arr = _as_layer("t", t)
    yid, class_counts = _as_labels(y, arr.shape[-2])
    flat, batch_shape, finite = _flatten_batch(arr)
    codes = _adaptive_codes(flat, n_bins)
    i_xt, i_ty = _plugin_mi(codes, yid, class_counts)
    return _finish(i_xt, i_ty, batch_shape, finite)


# --------------------------------------------------------------------------------------------
# kernel estimators (torch, float64)
# --------------------------------------------------------------------------------------------


def _to_torch(flat: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float64))
    # distances are translation invariant; centring shrinks ||t||^2 and so the cancellation
    # error of the ||a||^2 + ||b||^2 - 2ab expansion
    return x - x.mean(dim=-2, keepdim=True)


def _sq_dists(
    a: torch.Tensor, b: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor, out=None
) -> torch.Tensor:
    """Squared distances (B, rows_a, rows_b) of (B, rows, d) inputs, clamped at 0 (written
    into ``out`` when given)."""
    # one allocation: the norms' sum, then the -2ab product added in place
    d = torch.add(sq_a[:, :, None], sq_b[:, None, :], out=out)
    return d.baddbmm_(a, b.transpose(-1, -2), alpha=-2.0).clamp_min_(0.0)


class _Classes(NamedTuple):
    """Rows' classes for the kernel sums: ``columns`` is ``(N, 1 + C)``, a column of ones
    and then the one-hot classes; ``ids`` the class of each row, ``(N,)`` int64."""

    columns: torch.Tensor
    ids: torch.Tensor


def _classes(yid: np.ndarray, n_classes: int) -> _Classes:
    ids = torch.from_numpy(np.asarray(yid, dtype=np.int64))
    columns = torch.zeros((ids.shape[0], 1 + n_classes), dtype=torch.float64)
    columns[:, 0] = 1.0
    columns[torch.arange(ids.shape[0]), 1 + ids] = 1.0
    return _Classes(columns, ids)


def _kde_row_sums(x: torch.Tensor, classes: _Classes, variances) -> list:
    """Per variance v: (log sum_j K_ij, log sum_{j in class(i)} K_ij) for every row i.

    K_ij = exp(-||x_i - x_j||^2 / (2 v)). With the self-distance set to exactly 0, every
    exponent is <= 0 and the diagonal term is 1: the sums lie in [1, N] and need no max-shift
    (the reason logsumexp exists), so the distances are computed once for all variances and
    the sums and the within-class sums are one matmul with a ones column and the one-hot labels
    instead of a pass per class.

    K is symmetric: square tiles on and above the diagonal only, each adding its row sums to
    its rows and its column sums to its columns (half the distance products and exponentials).
    The tile's exponents for the smallest variance come out of one ``baddbmm`` (the norms and
    the -2ab product pre-scaled); a variance r times larger has r times smaller exponents, so
    its kernel is one scaled ``exp`` of them. Floored exponents stay below -700 / r, which
    for r <= 8 is a kernel under 1e-38 next to the self term 1: below float64's resolution
    (the bounds use r = 4).
    """
    b, m, _ = x.shape
    sq = (x * x).sum(dim=-1)
    v0 = min(variances)
    if max(variances) > 8.0 * v0:
        raise ValueError(f"variances must lie within a factor 8, got {variances}")
    scale = -0.5 / v0
    sums = [(torch.zeros((b, m), dtype=torch.float64), torch.zeros((b, m), dtype=torch.float64))
            for _ in variances]
    # the smallest variance last: its kernel is exponentiated in place
    order = sorted(range(len(variances)), key=lambda j: variances[j] == v0)
    for i0, i1, j0, j1 in _upper_tiles(m, b, _BLOCK_ELEMENTS):
        e = (sq[:, i0:i1, None] + sq[:, None, j0:j1]).mul_(scale)
        e.baddbmm_(x[:, i0:i1], x[:, j0:j1].transpose(-1, -2), alpha=-2.0 * scale)
        e.clamp_(EXP_FLOOR, 0.0)  # distances >= 0, rounding aside
        if i0 == j0:
            d = torch.arange(i1 - i0)
            e[:, d, d] = 0.0  # exact self-distance, whatever the rounding
        for j in order:
            k = e.exp_() if variances[j] == v0 else e.mul(v0 / variances[j]).exp_()
            _add_tile_sums(*sums[j], k, classes, i0, i1, j0, j1)
    return [(full.log_(), within.log_()) for full, within in sums]


def _upper_tiles(n: int, b: int, elements: int):
    """``(i0, i1, j0, j1)`` of the square tiles on and above the diagonal of an (n, n)
    matrix, each about ``elements`` entries over a batch of ``b``."""
    tile = max(1, math.isqrt(max(1, elements // b)))
    for i0 in range(0, n, tile):
        for j0 in range(i0, n, tile):
            yield i0, min(n, i0 + tile), j0, min(n, j0 + tile)


def _add_tile_sums(full, within, k, classes: _Classes, i0, i1, j0, j1) -> None:
    """Add tile ``K[:, i0:i1, j0:j1]`` of a symmetric kernel to the row sums (``full``) and
    within-class row sums (``within``) of its rows and, off the diagonal, of its columns.

    One matmul per side gives both: against the ones column, the sums; against the one-hot
    columns, the sums per class, of which each row keeps its own class's (1.5x faster than
    the sums, a matmul and a masked sum apiece).
    """
    b = k.shape[0]
    per_class = torch.matmul(k, classes.columns[j0:j1])  # (b, rows, 1 + C)
    full[:, i0:i1] += per_class[..., 0]
    own = (1 + classes.ids[i0:i1]).expand(b, -1)
    within[:, i0:i1] += per_class.gather(-1, own[..., None])[..., 0]
    if j0 != i0:
        # (1 + C) x columns: (columns_i^T K), not (K^T columns_i), whose matmul copied K
        per_class = torch.matmul(classes.columns[i0:i1].T, k)  # (b, 1 + C, cols)
        full[:, j0:j1] += per_class[:, 0]
        own = (1 + classes.ids[j0:j1]).expand(b, -1)
        within[:, j0:j1] += per_class.gather(-2, own[:, None, :])[:, 0]


def mi_kde_bounds(t, y, *, sigma2: float = 0.1):
    """Both Kolchinsky-Tracey bounds at once (one distance computation): see :func:`mi_kde`.

    Returns
    -------
    tuple
        ``(I_XT_upper, I_TY_upper, I_XT_lower, I_TY_lower)`` in bits.
    """
    sigma2 = check_float("sigma2", sigma2, min=0.0, min_inclusive=False)
    return _kde(t, y, sigma2, ("upper", "lower"))


def _kde(t, y, sigma2: float, bounds) -> tuple:
    arr = _as_layer("t", t)
    n = arr.shape[-2]
    yid, class_counts = _as_labels(y, n)
    flat, batch_shape, finite = _flatten_batch(arr)
    x = _to_torch(flat)
    classes = _classes(yid, len(class_counts))
    log_nc = torch.from_numpy(np.log(class_counts.astype(np.float64)))[classes.ids]
    variances = [sigma2 if b == "upper" else 4.0 * sigma2 for b in bounds]
    out = []
    for full, within in _kde_row_sums(x, classes, variances):
        i_xt = math.log(n) - full.mean(dim=-1)
        # sum_l p_l (1/N_l) sum_{i in l} [log N_l - log sum_{j in l} K_ij] is a mean over i
        h_cond = (log_nc - within).mean(dim=-1)
        i_ty = i_xt - h_cond
        out.extend(_finish((i_xt / _LN2).numpy(), (i_ty / _LN2).numpy(), batch_shape, finite))
    return tuple(out)


def mi_kde(t, y, *, sigma2: float = 0.1, bound: str = "upper"):
    """Kernel-density bounds on I(X;T) and I(T;Y) for T plus Gaussian noise (Kolchinsky-Tracey).

    T is treated as ``T + eps`` with ``eps ~ N(0, sigma2 I)``, a mixture of N Gaussians. With
    ``K_ij = exp(-||t_i - t_j||^2 / (2 s2))``::

        I(X;T) = -(1/N) sum_i log( (1/N) sum_j K_ij )
        I(T;Y) = I(X;T) - sum_l p_l [ -(1/N_l) sum_{i in l} log( (1/N_l) sum_{j in l} K_ij ) ]

    where ``s2 = sigma2`` for the upper (KL) bound and ``s2 = 4 sigma2`` for the lower
    (Bhattacharyya) bound; the Gaussian normalising constants cancel. Computed in float64
    over row blocks of the distance matrix (see :func:`_kde_row_sums`: no max-shift is needed
    since the self term is exactly 1), then converted from nats to bits.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed).
    y : array_like of int, shape (N,)
        Class labels.
    sigma2 : float, default 0.1
        Noise variance, > 0 (Saxe et al. 2018 used 0.1 on MNIST; other notebooks 1e-3, 1e-2).
        It sets the resolution of the estimate and belongs in the result's attrs.
    bound : {"upper", "lower"}, default "upper"

    Returns
    -------
    (float, float) or (numpy.ndarray, numpy.ndarray)
        ``(I(X;T), I(T;Y))`` in bits, NaN for a checkpoint with NaN or Inf. ``I(X;T)`` lies in
        ``[0, log2 N]`` and ``I(T;Y) <= I(X;T)``.

    Raises
    ------
    ValidationError
        On a bad ``t``, ``y``, ``sigma2`` or ``bound``.

    Notes
    -----
    Cost O(N^2 d) per checkpoint (plus O(N_l^2 d) per class for the conditional term); memory
    is bounded by processing rows in blocks of at most 2**19 distance entries (4 MiB).

    References
    ----------
    Kolchinsky and Tracey (2017), Entropy 19(7), 361; Saxe et al. (2018), ICLR.
    """
    sigma2 = check_float("sigma2", sigma2, min=0.0, min_inclusive=False)
    bound = check_choice("bound", bound, ("upper", "lower"))
    return _kde(t, y, sigma2, (bound,))


def _gram(x: torch.Tensor, s: float) -> torch.Tensor:
    """Gaussian Gram exp(-||a - b||^2 / (2 s^2)) with an exact unit diagonal."""
    sq = (x * x).sum(dim=-1)
    k = _sq_dists(x, x, sq, sq).mul_(-0.5 / (s * s)).clamp_min_(EXP_FLOOR).exp_()
    k.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return k


def _eigvalsh(a: torch.Tensor) -> torch.Tensor:
    # numpy's LAPACK syevd measured about twice as fast as torch.linalg.eigvalsh on CPU here
    return torch.from_numpy(np.linalg.eigvalsh(a.numpy()))


def _renyi_from_eigs(lam: torch.Tensor, alpha: float, n: int) -> torch.Tensor:
    """(1/(1-alpha)) log2 sum_i lam_i^alpha over the last axis of trace-1 eigenvalues."""
    # Eigenvalues below rounding level (N eps lam_max) are numerical zeros of a rank-deficient
    # Gram; for alpha < 1 their powers would otherwise add spurious entropy.
    tol = lam.amax(dim=-1, keepdim=True) * (n * torch.finfo(torch.float64).eps)
    log_lam = torch.where(lam > tol, lam, torch.zeros_like(lam)).log()
    # log-sum-exp of alpha log(lam): no underflow of lam^alpha for large alpha
    return torch.logsumexp(alpha * log_lam, dim=-1) / ((1.0 - alpha) * _LN2)


def renyi_entropy(gram, *, alpha: float = 1.01) -> float | np.ndarray:
    """Matrix-based Renyi alpha-entropy of a Gram matrix, in bits (Giraldo et al.).

    ``A_ij = K_ij / (N sqrt(K_ii K_jj))`` (trace 1), then
    ``S_alpha(A) = (1 / (1 - alpha)) log2 sum_i lambda_i(A)^alpha``. Eigenvalues below
    ``N * eps * lambda_max`` are treated as exact zeros.

    Parameters
    ----------
    gram : array_like of shape (N, N) or (..., N, N)
        Symmetric positive semi-definite matrix with a positive diagonal (an infinitely
        divisible kernel's Gram, e.g. Gaussian).
    alpha : float, default 1.01
        Order, > 0 and != 1.

    Returns
    -------
    float or numpy.ndarray of shape ``gram.shape[:-2]``

    Raises
    ------
    ValidationError
        If ``alpha`` is out of range or ``gram`` is not a finite square (batch of) matrix with
        a positive diagonal.

    References
    ----------
    Giraldo, Rao and Principe (2015), IEEE Trans. Inf. Theory 61(1), arXiv:1211.2459.
    """
    alpha = _check_alpha(alpha)
    k = _as_real_array("gram", gram)
    if k.ndim < 2 or k.shape[-1] != k.shape[-2] or k.shape[-1] < 1:
        raise ValidationError(
            f"gram must be a square matrix (N, N) or a batch (..., N, N), got shape {k.shape}"
        )
    kt = torch.from_numpy(np.ascontiguousarray(k, dtype=np.float64))
    diag = kt.diagonal(dim1=-2, dim2=-1)
    if not torch.isfinite(kt).all() or not (diag > 0).all():
        raise ValidationError(
            "gram must be finite with a positive diagonal, got a NaN, Inf or diagonal entry <= 0"
        )
    n = k.shape[-1]
    r = diag.sqrt()
    a = kt / (n * r[..., :, None] * r[..., None, :])
    out = _renyi_from_eigs(_eigvalsh(a), alpha, n).numpy()
    return float(out) if out.ndim == 0 else out


def mi_renyi(x, t, y, *, alpha: float = 1.01, gamma: float = 1.0, sigma: float | None = None):
    """I(X;T) and I(T;Y) from matrix-based Renyi alpha-entropies (Giraldo et al.; Yu et al.).

    Each variable gets a Gram matrix normalised to trace 1, ``A = K / N``; entropies are
    ``S_alpha(A) = (1/(1-alpha)) log2 sum lambda_i(A)^alpha`` and joint entropies use the
    trace-normalised Hadamard product, so::

        I(X;T) = S(A_X) + S(A_T) - S(A_X o A_T / tr(A_X o A_T))
        I(T;Y) = S(A_T) + S(A_Y) - S(A_T o A_Y / tr(A_T o A_Y))

    X and T use Gaussian kernels ``exp(-||a - b||^2 / (2 s^2))``. Y uses the indicator kernel
    ``K_Y = 1[y_i == y_j]``: labels are categorical, so a distance-based width means nothing;
    this kernel is the s -> 0 limit of a Gaussian on one-hot labels, and it makes ``S(A_Y)``
    exactly the Renyi entropy of the class frequencies (``A_Y`` is block diagonal with
    eigenvalues ``N_l / N``). ``A_T o A_Y`` is then block diagonal per class, so its spectrum is
    taken class by class (sum of N_l^3 instead of N^3).

    Parameters
    ----------
    x : array_like of shape (N, d_x)
        The probe inputs (shared by a batch of ``t``).
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed).
    y : array_like of int, shape (N,)
        Class labels.
    alpha : float, default 1.01
        Renyi order, > 0 and != 1. alpha -> 1 is the Shannon (von Neumann) limit, which the
        formula cannot evaluate at 1 itself; 1.01 stays close to it.
    gamma : float, default 1.0
        Scale of the kernel-width rule ``s = gamma * N ** (-1 / (4 + d))``, applied per variable
        with its own dimension d (Silverman-type rule of Yu and Principe). The rule does not
        include the data's spread: ``gamma`` is in the data's units.
    sigma : float or None, default None
        If given (> 0), the kernel width ``s`` used for both X and T instead of the rule.

    Returns
    -------
    (float, float) or (numpy.ndarray, numpy.ndarray)
        ``(I(X;T), I(T;Y))`` in bits; NaN for a checkpoint whose ``t`` holds NaN or Inf, and
        everywhere when ``x`` does.

    Raises
    ------
    ValidationError
        On a bad ``x``, ``t``, ``y``, ``alpha``, ``gamma`` or ``sigma``.

    Notes
    -----
    Cost O(N^3) per checkpoint for the eigenvalues (three N x N Gram matrices in memory). Works
    in high dimension where binning saturates.

    References
    ----------
    Giraldo, Rao and Principe (2015), arXiv:1211.2459; Yu and Principe (2019), Neural
    Networks 117.
    """
    alpha = _check_alpha(alpha)
    gamma = check_float("gamma", gamma, min=0.0, min_inclusive=False)
    if sigma is not None:
        sigma = check_float("sigma", sigma, min=0.0, min_inclusive=False)
    arr = _as_layer("t", t)
    n = arr.shape[-2]
    xa = _as_real_array("x", x)
    if xa.ndim != 2 or xa.shape[0] != n or xa.shape[1] < 1:
        raise ValidationError(
            f"x must be a 2-D array (N, d_x) with the same N = {n} rows as t, got shape {xa.shape}"
        )
    yid, class_counts = _as_labels(y, n)
    flat, batch_shape, finite = _flatten_batch(arr)
    if not np.isfinite(xa).all():
        finite = np.zeros_like(finite)
        xa = np.zeros(xa.shape)

    s_x = sigma if sigma is not None else gamma * n ** (-1.0 / (4 + xa.shape[1]))
    s_t = sigma if sigma is not None else gamma * n ** (-1.0 / (4 + arr.shape[-1]))
    k_x = _gram(_to_torch(xa[None]), s_x)  # (1, N, N): broadcasts over the batch
    k_t = _gram(_to_torch(flat), s_t)
    ent_x = _renyi_from_eigs(_eigvalsh(k_x / n), alpha, n)
    ent_t = _renyi_from_eigs(_eigvalsh(k_t / n), alpha, n)
    # Gram diagonals are 1, so every trace-normalised matrix (Hadamard products too) is K / N
    ent_xt = _renyi_from_eigs(_eigvalsh(k_x * k_t / n), alpha, n)

    p = class_counts.astype(np.float64) / n
    ent_y = math.log2(float(np.sum(p**alpha))) / (1.0 - alpha)
    blocks = [torch.from_numpy(np.flatnonzero(yid == c)) for c in range(class_counts.shape[0])]
    lam_ty = torch.cat(
        [_eigvalsh(k_t[:, idx[:, None], idx[None, :]] / n) for idx in blocks], dim=-1
    )
    ent_ty = _renyi_from_eigs(lam_ty, alpha, n)

    i_xt = ent_x + ent_t - ent_xt
    i_ty = ent_t + ent_y - ent_ty
    return _finish(i_xt.numpy(), i_ty.numpy(), batch_shape, finite)
