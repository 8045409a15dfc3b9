"""Mutual information at a resolution relative to the layer's own spread (metrics spec, 1e).

On a wide layer every fixed-resolution estimator of :mod:`ckptlab.metrics.mi` returns its
ceiling log2 N: in high dimension distinct inputs stay far apart at any fixed scale (a kernel
variance of 0.1 is nothing against activation norms of 5-19, and 30 bins per unit give every
input its own cell). The estimators here tie their resolution to the layer, so that a global
rescaling ``T -> a T + b`` (weight decay, a shifted bias) changes nothing, and they return the
resolution they used so the caller can store it with the result:

* :func:`mi_kde_relative`: the Kolchinsky-Tracey bounds of :func:`~ckptlab.metrics.mi.mi_kde`
  with noise ``sigma = c * layer_scale(t)`` for several ``c`` at once, from one distance matrix.
* :func:`mi_renyi_normalised`: matrix-based Renyi MI on z-scored units with the scale-free
  width rule of Tapia and Estevez (2020).
* :func:`mi_projected`: whitened PCA to a few dimensions (Butakov et al. 2024), then equal-mass
  binning or a Kozachenko-Leonenko estimate of the MI of a noisy channel.

Building blocks: :func:`pairwise_sq_dists`, :func:`layer_scale`, :func:`whiten_pca`,
:func:`entropy_knn`.

Conventions are those of :mod:`ckptlab.metrics.mi`: a layer is ``t`` of shape ``(N, d)``, or a
batch of checkpoints ``(..., N, d)`` sharing the probe set (hence ``y``); results are in bits,
computed in float64 with torch; a NaN or Inf anywhere in one batch item makes that item's results
NaN and never raises; bad arguments raise :class:`~ckptlab.errors.ValidationError`.

**Duplicate rows.** Squared distances are computed by the expansion
``||a||^2 + ||b||^2 - 2 a.b`` (one matrix product) on centred data, clamped at 0; the self
distance and the distance between two *identical* rows are then set to exactly 0 (identical
rows are found by hashing, so the expansion's rounding never turns a duplicate into a tiny
positive distance). Consequences are stated per function: a duplicate is a neighbour at
distance 0 for :func:`layer_scale`, and is skipped as a neighbour by :func:`entropy_knn`.

References
----------
Kolchinsky, A. and Tracey, B. D. (2017). Estimating mixture entropy with pairwise distances.
Entropy 19(7), 361.

Saxe, A. M. et al. (2018). On the information bottleneck theory of deep learning. ICLR 2018.

Wickstrom, K., Lokse, S., Kampffmeyer, M., Yu, S., Principe, J. and Jenssen, R. (2019).
Information plane analysis of deep neural networks via matrix-based Renyi's entropy and tensor
kernels. arXiv preprint; journal version: Analysis of deep convolutional neural networks using
tensor kernels and matrix-based entropy, Entropy 25(6), 899 (2023) (the k-nearest-neighbour
kernel-width rule).

Giraldo, L. G. S., Rao, M. and Principe, J. C. (2015). Measures of entropy from data using
infinitely divisible kernels. IEEE Trans. Inf. Theory 61(1), 535-548, arXiv:1211.2459
(circulated 2014).

Tapia, N. I. and Estevez, P. A. (2020). On the information plane of autoencoders. IJCNN 2020,
arXiv:2005.07783 (z-scored units and the width rule ``s0 sqrt(d) N^(-1/(4+d))``).

Kozachenko, L. F. and Leonenko, N. N. (1987). Sample estimate of the entropy of a random
vector. Problems of Information Transmission 23(2), 95-101.

Kraskov, A., Stogbauer, H. and Grassberger, P. (2004). Estimating mutual information.
Physical Review E 69, 066138.

Butakov, I., Tolmachev, A., Malanchuk, S., Neopryatnaya, A., Frolov, A. and Andreev, K.
(2024). Information bottleneck analysis of deep neural networks via lossy compression.
ICLR 2024, arXiv:2305.08013.

Goldfeld, Z. et al. (2019). Estimating information flow in deep neural networks. ICML 2019
(noise added to a deterministic layer to make I(X;T) finite, as Butakov et al. do).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import torch

from .._checks import check_choice, check_float, check_int
from ..errors import ValidationError
from .mi import (
    EXP_FLOOR,
    _adaptive_codes,
    _add_tile_sums,
    _as_labels,
    _as_layer,
    _as_real_array,
    _check_alpha,
    _classes,
    _entropy_from_counts,
    _finish,
    _flatten_batch,
    _plugin_mi,
    _sq_dists,
    _to_torch,
    _upper_tiles,
    mi_renyi,
)

__all__ = [
    "KDERelative",
    "RenyiNormalised",
    "ProjectedMI",
    "pairwise_sq_dists",
    "layer_scale",
    "mi_kde_relative",
    "mi_renyi_normalised",
    "whiten_pca",
    "entropy_knn",
    "mi_projected",
]

_LN2 = math.log(2.0)
_SCALE_RULES = ("knn", "rms", "median")
# Largest number of entries of one (batch, rows, N) float64 block of distances or kernel values
# (128 MiB), as in mi.py: bounds the temporaries of the row-block loops.
_BLOCK_ELEMENTS = 1 << 24
# Entries of one (batch, rows, cols) tile of kernel values: 4 MiB of float64, in cache (as
# mi.py's KDE tiles; 128 MiB row blocks ran the exponentials from memory).
_TILE_ELEMENTS = 1 << 19
# Largest number of entries of the full (batch, N, N) distance matrices held at once by
# mi_kde_relative (256 MiB); at least one item is always held, whatever N.
_MATRIX_ELEMENTS = 1 << 25


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


class KDERelative(NamedTuple):
    """Result of :func:`mi_kde_relative`; MI fields in bits with a trailing resolution axis.

    Attributes
    ----------
    xt_upper, ty_upper, xt_lower, ty_lower : numpy.ndarray of shape (..., R)
        Upper (kernel variance ``sigma^2``) and lower (``4 sigma^2``) Kolchinsky-Tracey
        estimates of I(X;T) and I(T;Y), one column per resolution.
    scale : float or numpy.ndarray of shape (...)
        The layer's spread ``s`` (:func:`layer_scale`), in the units of ``t``.
    sigma : numpy.ndarray of shape (..., R)
        The noise standard deviations used, ``resolutions * scale``, in the units of ``t``.
    resolutions : tuple of float
        The relative resolutions ``c``, as given.
    ceiling_xt : float
        log2 N, the value of I(X;T) for distinct rows and vanishing noise.
    ceiling_ty : float
        H(Y) in bits, the largest possible I(T;Y).
    """

    xt_upper: np.ndarray
    ty_upper: np.ndarray
    xt_lower: np.ndarray
    ty_lower: np.ndarray
    scale: float | np.ndarray
    sigma: np.ndarray
    resolutions: tuple
    ceiling_xt: float
    ceiling_ty: float


class RenyiNormalised(NamedTuple):
    """Result of :func:`mi_renyi_normalised` (bits; widths in z-score units).

    Attributes
    ----------
    xt, ty : float or numpy.ndarray of shape (...)
        I(X;T) and I(T;Y).
    sigma_x : float
        Kernel width used for the z-scored X.
    sigma_t : float or numpy.ndarray of shape (...)
        Kernel width used for the z-scored T of each batch item (it depends on the number of
        non-constant units); NaN for a non-finite item.
    """

    xt: float | np.ndarray
    ty: float | np.ndarray
    sigma_x: float
    sigma_t: float | np.ndarray


class ProjectedMI(NamedTuple):
    """Result of :func:`mi_projected`: ``(xt, ty)`` in bits; unpacks like a pair."""

    xt: float | np.ndarray
    ty: float | np.ndarray


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _check_neighbours(name: str, k, n: int, rows: str = "rows") -> int:
    """k as an int in [1, n - 1]: a point has n - 1 others."""
    ok = isinstance(k, numbers.Integral) and not isinstance(k, bool)
    if ok and 1 <= k <= n - 1:
        return int(k)
    raise ValidationError(
        f"{name} must be an integer in [1, N - 1] = [1, {n - 1}] (fewer than the N = {n} "
        f"{rows}), got {k!r}"
    )


def _check_resolutions(resolutions) -> np.ndarray:
    msg = "resolutions must be a non-empty 1-D sequence of finite numbers > 0"
    try:
        arr = np.asarray(resolutions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{msg}, got {resolutions!r}") from exc
    if arr.ndim != 1 or arr.shape[0] == 0 or not np.isfinite(arr).all() or not (arr > 0).all():
        raise ValidationError(f"{msg}, got {resolutions!r}")
    return arr


def _check_seed(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise ValidationError(
        f"seed must be an integer >= 0 or a numpy.random.Generator, got {seed!r}"
    )


def _layer_or_dists(t, sq_dists):
    """Exactly one of a layer (..., N, d) or a distance matrix (..., N, N), flattened.

    Returns ``(kind, flat, batch_shape, finite, n)`` with ``kind`` "t" or "d".
    """
    if (t is None) == (sq_dists is None):
        raise ValidationError(
            "pass exactly one of t (the layer) or sq_dists (its pairwise squared distances), "
            f"got {'both' if t is not None else 'neither'}"
        )
    if t is not None:
        arr = _as_layer("t", t)
        flat, batch_shape, finite = _flatten_batch(arr)
        return "t", flat, batch_shape, finite, arr.shape[-2]
    d = _as_real_array("sq_dists", sq_dists)
    if d.ndim < 2 or d.shape[-1] != d.shape[-2] or d.shape[-1] < 2 or d.size == 0:
        raise ValidationError(
            "sq_dists must be a square matrix (N, N) or a batch (..., N, N) with N >= 2, "
            f"got shape {d.shape}"
        )
    flat, batch_shape, finite = _flatten_batch(d)
    if (flat < 0).any():
        raise ValidationError(
            f"sq_dists must hold squared distances >= 0, got a minimum of {float(flat.min())!r}"
        )
    flat = np.ascontiguousarray(flat, dtype=np.float64)
    # the estimators read one triangle: a matrix that is not symmetric is not of distances
    tol = 1e-9 * float(np.abs(flat).max(initial=0.0))
    asym = float(np.abs(flat - flat.swapaxes(-1, -2)).max(initial=0.0))
    if asym > tol:
        raise ValidationError(
            f"sq_dists must be symmetric (squared distances between rows), got entries that "
            f"differ from their transposes by up to {asym!r}"
        )
    i = np.arange(flat.shape[-1])
    if (flat[:, i, i] != 0).any():  # the diagonal is ignored: self distances are 0
        flat = flat.copy()  # never write into the caller's array
        flat[:, i, i] = 0.0
    return "d", flat, batch_shape, finite, d.shape[-1]


# --------------------------------------------------------------------------------------------
# distances
# --------------------------------------------------------------------------------------------


def _duplicate_ids(flat: np.ndarray) -> torch.Tensor | None:
    """(B, N) ids of identical rows per item (arange where rows are distinct), or None."""
    b, n, d = flat.shape
    ids = np.empty((b, n), dtype=np.int64)
    any_dup = False
    for j in range(b):  # one hash per checkpoint; O(N d + N log N), not the hot path
        rows = np.ascontiguousarray(flat[j], dtype=np.float64) + 0.0  # -0.0 -> 0.0
        key = rows.view(np.dtype((np.void, rows.itemsize * d))).reshape(n)
        uniq, inv = np.unique(key, return_inverse=True)
        if uniq.shape[0] < n:
            any_dup = True
            ids[j] = inv.reshape(n)
        else:
            ids[j] = np.arange(n)
    return torch.from_numpy(ids) if any_dup else None


def _dist_blocks(x: torch.Tensor, ids, out: torch.Tensor | None = None):
    """Row blocks (start, stop, (B, rows, N) squared distances) of a centred float64 batch.

    Self distances and distances between identical rows (same ``ids``) are exactly 0. With
    ``out`` (B, N, N), each block is computed in place in its rows of ``out``.
    """
    b, n, _ = x.shape
    sq = (x * x).sum(dim=-1)
    for start, stop in _row_ranges(b, n):
        dist = _sq_dists(x[:, start:stop], x, sq[:, start:stop], sq,
                         out=None if out is None else out[:, start:stop])
        i = torch.arange(start, stop)
        dist[:, i - start, i] = 0.0
        if ids is not None:
            dist.masked_fill_(ids[:, start:stop, None] == ids[:, None, :], 0.0)
        yield start, stop, dist


def _full_dists(flat: np.ndarray) -> torch.Tensor:
    """(B, N, N) squared distances, each row block computed in place in the result."""
    x = _to_torch(flat)
    b, n, _ = x.shape
    out = torch.empty((b, n, n), dtype=torch.float64)
    for _ in _dist_blocks(x, _duplicate_ids(flat), out=out):
        pass
    return out


def pairwise_sq_dists(t) -> np.ndarray:
    """Squared Euclidean distances between the rows of a layer, for reuse across estimators.

    Compute them once and pass them as ``sq_dists=`` to :func:`layer_scale` and
    :func:`mi_kde_relative` (the k-NN scale and all KDE resolutions then share one matrix).
    Computed in float64 as ``||a||^2 + ||b||^2 - 2 a.b`` on centred data (one matrix product
    per row block), clamped at 0; the diagonal and the entries between identical rows are
    exactly 0. Entries ``(i, j)`` and ``(j, i)`` may differ in the last bits.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed), N >= 2.

    Returns
    -------
    numpy.ndarray of float64, shape (..., N, N)
        NaN everywhere for a batch item whose ``t`` holds NaN or Inf.

    Raises
    ------
    ValidationError
        If ``t`` is not a real array of shape (..., N, d) with N >= 2 and d >= 1.

    Notes
    -----
    Cost O(N^2 d) time and N^2 float64 of memory per batch item (the result itself).
    """
    arr = _as_layer("t", t)
    flat, batch_shape, finite = _flatten_batch(arr)
    out = _full_dists(flat).numpy()
    out[~finite] = np.nan
    n = arr.shape[-2]
    return out.reshape(batch_shape + (n, n))


# --------------------------------------------------------------------------------------------
# layer scale
# --------------------------------------------------------------------------------------------


def _row_ranges(b: int, n: int):
    """Row ranges of (b, rows, n) blocks of at most _BLOCK_ELEMENTS entries."""
    rows = max(1, _BLOCK_ELEMENTS // (b * n))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def _kth_smallest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry along the last axis: the largest of the k smallest (the same
    values as ``torch.kthvalue``, which measured 4x slower on (9, 1024, 1024) float64)."""
    return torch.topk(dist, k, dim=-1, largest=False, sorted=False).values.amax(dim=-1)


def _knn_sum(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Sum over rows of the distance to the k-th nearest other row, from a row block of
    squared distances with exact zero self distances: the self distance 0 is the smallest
    entry of its row, so the (k+1)-th smallest entry is the k-th smallest of the others
    (duplicates count, at distance 0)."""
    return _kth_smallest(dist, k + 1).sqrt_().sum(dim=-1)


def _median_from_full(dist: torch.Tensor) -> torch.Tensor:
    n = dist.shape[-1]
    iu = np.triu_indices(n, 1)
    d = dist.numpy()
    return torch.tensor(
        [float(np.median(np.sqrt(d[j][iu]))) for j in range(d.shape[0])], dtype=torch.float64
    )


def _scale_from_full(dist: torch.Tensor, rule: str, k: int) -> torch.Tensor:
    """Spread of each item from its full (B, N, N) squared-distance matrix (zero diagonal)."""
    b, n, _ = dist.shape
    if rule == "knn":
        total = torch.zeros(b, dtype=torch.float64)
        for start, stop in _row_ranges(b, n):
            total += _knn_sum(dist[:, start:stop], k)
        return total / n
    if rule == "rms":
        return (dist.sum(dim=(-1, -2)) / (n * (n - 1))).sqrt()
    return _median_from_full(dist)


def layer_scale(t=None, *, rule: str = "knn", k: int = 10, sq_dists=None):
    """Spread of a layer's representation over the probe set, per batch item.

    Rules (distances are Euclidean, between the N rows of ``t``):

    * ``"knn"``: the mean over samples of the distance to the k-th nearest *other* sample,
      ``(1/N) sum_i ||t_i - t_(k)(i)||`` (the kernel-width rule of Wickstrom et al. 2019).
      A duplicate of ``t_i`` is a neighbour at distance 0 (it is another sample, as in
      ``sklearn.neighbors.NearestNeighbors().kneighbors()``); ties are harmless since only the
      k-th distance is used. The scale is 0 when every row has k or more exact copies.
    * ``"rms"``: the root mean square of the N(N-1)/2 pairwise distances; from ``t`` it is
      computed in closed form, ``sqrt(2 sum_i ||t_i - mean||^2 / (N - 1))``.
    * ``"median"``: the median of the N(N-1)/2 pairwise distances (``np.median`` convention:
      mean of the two middle values for an even count), as ``np.median(pdist(t))``.

    Every rule is exact (brute force, no approximate neighbour search) and equivariant:
    ``layer_scale(a t + b) = |a| layer_scale(t)``. A layer whose rows are all equal has scale 0.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d), optional
        Representation of one layer (a batch of checkpoints allowed).
    rule : {"knn", "rms", "median"}, default "knn"
    k : int, default 10
        Neighbour rank for ``rule="knn"``, in [1, N - 1] (ignored by the other rules).
    sq_dists : array_like of shape (N, N) or (..., N, N), optional
        Precomputed squared distances (:func:`pairwise_sq_dists`) instead of ``t``; pass
        exactly one of the two. The diagonal is ignored.

    Returns
    -------
    float or numpy.ndarray of shape (...)
        In the units of ``t``; NaN for a batch item holding NaN or Inf.

    Raises
    ------
    ValidationError
        On a bad ``t`` or ``sq_dists`` (or both or neither given), an unknown ``rule``, or
        ``k`` not in [1, N - 1] for ``rule="knn"``.

    Notes
    -----
    Cost from ``t``: O(N^2 d) time for "knn" and "median", O(N d) for "rms"; memory: row
    blocks of at most 2**24 distances for "knn", the N x N matrix of one item at a time for
    "median". From ``sq_dists``: O(N^2) time ("median": O(N^2) expected, by partitioning).

    References
    ----------
    Wickstrom et al. (2019); Entropy 25(6), 899 (2023).
    """
    rule = check_choice("rule", rule, _SCALE_RULES)
    k = check_int("k", k, min=1)
    kind, flat, batch_shape, finite, n = _layer_or_dists(t, sq_dists)
    if rule == "knn":
        k = _check_neighbours("k", k, n)
    b = flat.shape[0]
    if kind == "d":
        out = _scale_from_full(torch.from_numpy(flat), rule, k)
    elif rule == "rms":
        x = _to_torch(flat)
        out = (2.0 * (x * x).sum(dim=(-1, -2)) / (n - 1)).sqrt()
    elif rule == "knn":
        out = torch.zeros(b, dtype=torch.float64)
        for _, _, dist in _dist_blocks(_to_torch(flat), _duplicate_ids(flat)):
            out += _knn_sum(dist, k)
        out /= n
    else:
        out = torch.cat([_median_from_full(_full_dists(flat[j : j + 1])) for j in range(b)])
    out = out.numpy().copy()
    out[~finite] = np.nan
    return float(out[0]) if batch_shape == () else out.reshape(batch_shape)


# --------------------------------------------------------------------------------------------
# KDE bounds at relative resolutions
# --------------------------------------------------------------------------------------------


def _kde_sums_relative(dist, scale, classes, variances):
    """Per relative variance v: (log sum_j K_ij, log sum_{j in class(i)} K_ij) for every row.

    ``K_ij = exp(-D_ij / (2 v s^2))`` with ``s`` the item's scale; an item with ``s = 0`` gets
    the ``s -> 0`` limit ``K_ij = 1[D_ij = 0]``. As in mi.py's ``_kde_row_sums``, the self term
    is exactly 1 so no max-shift is needed, the within-class sums are one matmul, and K is
    summed in cache-sized square tiles on and above the diagonal (each adding its row sums to
    its rows and its column sums to its columns): D's upper triangle is read.
    """
    b, n, _ = dist.shape
    zero = scale == 0
    # the scale-free exponent -D / (2 s^2), divided by v per variance
    half = torch.where(zero, torch.ones_like(scale), 1.0 / (scale * scale))[:, None, None] * -0.5
    any_zero = bool(zero.any())
    sums = [(torch.zeros((b, n), dtype=torch.float64), torch.zeros((b, n), dtype=torch.float64))
            for _ in variances]
    kern = None
    for i0, i1, j0, j1 in _upper_tiles(n, b, _TILE_ELEMENTS):
        e = dist[:, i0:i1, j0:j1] * half
        if any_zero:  # s = 0: K = 1 where D = 0, else 0
            sub = e[zero]
            e[zero] = sub.masked_fill_(sub < 0, -math.inf)
        if kern is None or kern.shape != e.shape:
            kern = torch.empty_like(e)
        for (full, within), v in zip(sums, variances):
            torch.mul(e, 1.0 / v, out=kern).clamp_min_(EXP_FLOOR).exp_()
            _add_tile_sums(full, within, kern, classes, i0, i1, j0, j1)
    return [(full.log_(), within.log_()) for full, within in sums]


def mi_kde_relative(
    t,
    y,
    *,
    resolutions=(0.1, 0.3, 1.0, 3.0),
    scale: str = "knn",
    k: int = 10,
    sq_dists=None,
) -> KDERelative:
    """Kolchinsky-Tracey bounds on I(X;T), I(T;Y) with noise relative to the layer's spread.

    For each relative resolution ``c`` the noise standard deviation is
    ``sigma = c * s(T)``, ``s`` from :func:`layer_scale` with rule ``scale``, and the
    estimates are those of :func:`~ckptlab.metrics.mi.mi_kde` at ``sigma2 = sigma^2``: with
    ``K_ij = exp(-||t_i - t_j||^2 / (2 v))``::

        I(X;T) = -(1/N) sum_i log( (1/N) sum_j K_ij )
        I(T;Y) = I(X;T) - sum_l p_l [ -(1/N_l) sum_{i in l} log( (1/N_l) sum_{j in l} K_ij ) ]

    with ``v = sigma^2`` for the upper (KL) bound and ``v = 4 sigma^2`` for the lower
    (Bhattacharyya) bound, converted to bits. Since ``||t_i - t_j||^2 / sigma^2`` is a ratio of
    two quantities that scale alike, the result is invariant to ``T -> a T + b`` for any
    ``a != 0`` (exactly, up to float rounding) and the resolution is comparable across
    checkpoints whose activations grow or shrink.

    The squared distances are computed once per batch item and shared by the scale and by
    every resolution and bound: each of them only re-exponentiates.

    **Zero scale.** ``s = 0`` means zero noise: the kernel becomes the ``sigma -> 0`` limit
    ``K_ij = 1[t_i = t_j]``, both bounds equal the plug-in entropy of the distinct rows
    (I(T;Y) its plug-in MI with the labels). In particular a degenerate layer (all rows equal)
    gives I(X;T) = I(T;Y) = 0, without NaN. (``s = 0`` with distinct rows only occurs for
    ``scale="knn"`` when every row has k or more exact copies.)

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d), or None
        Representation of one layer (a batch of checkpoints allowed); None when ``sq_dists``
        is given.
    y : array_like of int, shape (N,)
        Class labels.
    resolutions : sequence of float, default (0.1, 0.3, 1.0, 3.0)
        Relative noise levels ``c > 0`` (non-empty). Small ``c`` approaches the ceiling
        log2 N, large ``c`` approaches 0; with ``scale="knn"``, ``c`` near 1 puts the noise at
        the typical neighbour distance, where the estimate is most informative.
    scale : {"knn", "rms", "median"}, default "knn"
        Rule of :func:`layer_scale`.
    k : int, default 10
        Neighbour rank for ``scale="knn"``, in [1, N - 1].
    sq_dists : array_like of shape (N, N) or (..., N, N), optional
        Precomputed squared distances of ``t`` (:func:`pairwise_sq_dists`); pass exactly one
        of ``t`` and ``sq_dists``. The diagonal is taken as 0.

    Returns
    -------
    KDERelative
        A NamedTuple ``(xt_upper, ty_upper, xt_lower, ty_lower, scale, sigma, resolutions,
        ceiling_xt, ceiling_ty)``: the four MI arrays have shape ``(..., R)`` (``(R,)`` for an
        unbatched ``t``), in bits, NaN for a batch item with NaN or Inf; ``scale`` has shape
        ``(...)`` (a float when unbatched) and ``sigma = resolutions * scale`` shape
        ``(..., R)``. ``0 <= I(X;T) <= log2 N``, ``I(T;Y) <= H(Y)``, and each curve is
        non-increasing in ``c``.

    Raises
    ------
    ValidationError
        On a bad ``t``/``sq_dists`` (or both or neither), ``y`` (not N integer labels),
        ``resolutions`` (empty, non-finite or <= 0), unknown ``scale``, or ``k`` not in
        [1, N - 1] with ``scale="knn"``.

    Notes
    -----
    Cost O(N^2 d) for the distances plus O(U N^2 (1 + C)) for the U distinct variances
    (``R`` resolutions, two bounds: ``U <= 2R``) and C classes, per batch item; memory: the
    full N x N float64 matrices of as many batch items as fit in 2**25 entries (at least one),
    plus row blocks of at most 2**24 entries. Against one call of
    :func:`~ckptlab.metrics.mi.mi_kde_bounds` (2 exponentiations) the extra cost is the
    ``2R - 2`` further exponentiations and the k-NN selection.

    References
    ----------
    Kolchinsky and Tracey (2017), Entropy 19(7), 361; Saxe et al. (2018), ICLR; Wickstrom et
    al. (2019), Entropy 25(6), 899 (2023) (the k-NN width rule).
    """
    res = _check_resolutions(resolutions)
    scale_rule = check_choice("scale", scale, _SCALE_RULES)
    k = check_int("k", k, min=1)
    kind, flat, batch_shape, finite, n = _layer_or_dists(t, sq_dists)
    yid, class_counts = _as_labels(y, n)
    if scale_rule == "knn":
        k = _check_neighbours("k", k, n)

    classes = _classes(yid, class_counts.shape[0])
    yt = classes.ids
    log_nc = torch.from_numpy(np.log(class_counts.astype(np.float64)))[yt]
    # relative variances v / s^2: c^2 (upper) and 4 c^2 (lower), each exponentiated once
    rel = np.concatenate([res**2, 4.0 * res**2])
    uniq, where_ = np.unique(rel, return_inverse=True)
    variances = [float(v) for v in uniq]

    b = flat.shape[0]
    n_res = res.shape[0]
    xt = np.empty((b, 2 * n_res))
    ty = np.empty((b, 2 * n_res))
    scales = np.empty(b)
    step = max(1, _MATRIX_ELEMENTS // (n * n))
    for lo in range(0, b, step):
        hi = min(b, lo + step)
        if kind == "d":
            dist = torch.from_numpy(flat[lo:hi])
        else:
            dist = _full_dists(flat[lo:hi])
        s = _scale_from_full(dist, scale_rule, k)
        scales[lo:hi] = s.numpy()
        sums = _kde_sums_relative(dist, s, classes, variances)
        i_xt = torch.stack([math.log(n) - full.mean(dim=-1) for full, _ in sums], dim=-1)
        h_cond = torch.stack([(log_nc - within).mean(dim=-1) for _, within in sums], dim=-1)
        xt[lo:hi] = (i_xt / _LN2).numpy()[:, where_]
        ty[lo:hi] = ((i_xt - h_cond) / _LN2).numpy()[:, where_]

    for arr in (xt, ty):
        arr[~finite] = np.nan
    scales[~finite] = np.nan
    sigma = scales[:, None] * res[None, :]

    def shape(a):
        return a.reshape(batch_shape + a.shape[1:])

    return KDERelative(
        xt_upper=shape(xt[:, :n_res]),
        ty_upper=shape(ty[:, :n_res]),
        xt_lower=shape(xt[:, n_res:]),
        ty_lower=shape(ty[:, n_res:]),
        scale=float(scales[0]) if batch_shape == () else shape(scales),
        sigma=shape(sigma),
        resolutions=tuple(float(c) for c in res),
        ceiling_xt=math.log2(n),
        ceiling_ty=_entropy_from_counts(class_counts, n),
    )


# --------------------------------------------------------------------------------------------
# matrix-based Renyi MI on normalised units
# --------------------------------------------------------------------------------------------


def _zscore(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Units z-scored over the samples (ddof = 0); constant units set to 0. Also the count
    of non-constant units per item."""
    mean = flat.mean(axis=-2, keepdims=True)
    c = flat - mean
    std = np.sqrt((c * c).mean(axis=-2, keepdims=True))
    const = flat.max(axis=-2, keepdims=True) == flat.min(axis=-2, keepdims=True)
    z = np.where(const, 0.0, c / np.where(const, 1.0, std))
    return z, (~const).sum(axis=(-2, -1))


def _tapia_width(s0: float, d_eff: np.ndarray, n: int) -> np.ndarray:
    d = d_eff.astype(np.float64)
    return np.where(d > 0, s0 * np.sqrt(d) * float(n) ** (-1.0 / (4.0 + d)), 1.0)


def mi_renyi_normalised(x, t, y, *, alpha: float = 1.01, s0: float = 1.0) -> RenyiNormalised:
    """Matrix-based Renyi MI with z-scored units and a scale-free kernel width.

    As :func:`~ckptlab.metrics.mi.mi_renyi` (Giraldo et al.: Gaussian Gram matrices normalised
    to trace 1, ``S_alpha = (1/(1-alpha)) log2 sum lambda^alpha``, joint entropies from
    Hadamard products, indicator kernel for the labels), but following Tapia and Estevez
    (2020): every unit of T, and of X, is first z-scored over the probe set (mean 0, standard
    deviation 1 with ``ddof = 0``), and each variable's kernel width is::

        s = s0 * sqrt(d) * N ** (-1 / (4 + d))

    with d its number of non-constant units. ``sqrt(d)`` matches the width to the spread of
    z-scored data (the mean squared distance of two z-scored rows is 2d), so the estimate is
    invariant to any per-unit affine map ``t_u -> a_u t_u + b_u`` (``a_u != 0``) of T or X.

    **Constant units** (all N values exactly equal) carry no information and cannot be
    z-scored: they are dropped, i.e. set to 0 and not counted in d. A batch item whose units
    are all constant has a Gram matrix of ones, hence I(X;T) = I(T;Y) = 0.

    Parameters
    ----------
    x : array_like of shape (N, d_x)
        The probe inputs (shared by a batch of ``t``).
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed).
    y : array_like of int, shape (N,)
        Class labels.
    alpha : float, default 1.01
        Renyi order, > 0 and != 1.
    s0 : float, default 1.0
        Dimensionless factor of the width rule, > 0.

    Returns
    -------
    RenyiNormalised
        NamedTuple ``(xt, ty, sigma_x, sigma_t)``: I(X;T) and I(T;Y) in bits (floats, or
        arrays of shape ``t.shape[:-2]``), NaN for an item holding NaN or Inf (everywhere when
        ``x`` does), and the widths used in z-score units.

    Raises
    ------
    ValidationError
        On a bad ``x``, ``t``, ``y``, ``alpha`` or ``s0``.

    Notes
    -----
    Cost O(N^3) per checkpoint (eigenvalues of N x N matrices, as :func:`mi_renyi`), plus
    O(N d) for the z-scores. Identity: the result equals
    ``mi_renyi(z(x) / sigma_x, z(t) / sigma_t, y, sigma=1)`` with ``z`` the z-score.

    References
    ----------
    Giraldo, Rao and Principe (2015), arXiv:1211.2459; Tapia and Estevez (2020), IJCNN,
    arXiv:2005.07783.
    """
    alpha = _check_alpha(alpha)
    s0 = check_float("s0", s0, min=0.0, min_inclusive=False)
    arr = _as_layer("t", t)
    n = arr.shape[-2]
    xa = _as_real_array("x", x)
    if xa.ndim != 2 or xa.shape[0] != n or xa.shape[1] < 1:
        raise ValidationError(
            f"x must be a 2-D array (N, d_x) with the same N = {n} rows as t, got shape {xa.shape}"
        )
    _as_labels(y, n)
    flat, batch_shape, finite = _flatten_batch(arr)
    x_ok = bool(np.isfinite(xa).all())
    xa = xa.astype(np.float64) if x_ok else np.zeros(xa.shape)

    zt, dt = _zscore(flat.astype(np.float64, copy=False))
    zx, dx = _zscore(xa[None])
    s_t = _tapia_width(s0, dt, n)
    s_x = float(_tapia_width(s0, dx, n)[0])
    i_xt, i_ty = mi_renyi(zx[0] / s_x, zt / s_t[:, None, None], y, alpha=alpha, sigma=1.0)
    if not x_ok:
        finite = np.zeros_like(finite)
    s_t = np.where(finite, s_t, np.nan)
    i_xt, i_ty = _finish(np.atleast_1d(i_xt), np.atleast_1d(i_ty), batch_shape, finite)
    return RenyiNormalised(
        xt=i_xt,
        ty=i_ty,
        sigma_x=s_x if x_ok else math.nan,
        sigma_t=float(s_t[0]) if batch_shape == () else s_t.reshape(batch_shape),
    )


# --------------------------------------------------------------------------------------------
# low-dimensional projection
# --------------------------------------------------------------------------------------------


def _whiten(flat: np.ndarray, k: int) -> torch.Tensor:
    """(B, N, k) whitened top-k principal components; zero columns beyond the rank."""
    x = _to_torch(flat)
    b, n, d = x.shape
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    r = min(k, u.shape[-1])
    u = u[..., :r]
    # deterministic signs (scikit-learn's svd_flip, u-based): largest |u| entry positive
    idx = u.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(torch.gather(u, -2, idx))
    sign[sign == 0] = 1.0
    # directions with (numerically) zero variance are not blown up to unit variance
    tol = s[..., :1] * (max(n, d) * torch.finfo(torch.float64).eps)
    keep = (s[..., :r] > tol) & (s[..., :1] > 0)
    z = u * (sign * keep[..., None, :] * math.sqrt(n - 1))
    if r < k:
        z = torch.cat([z, torch.zeros((b, n, k - r), dtype=torch.float64)], dim=-1)
    return z


def whiten_pca(t, k: int) -> np.ndarray:
    """Project a layer on its top-k principal directions, each scaled to unit variance.

    ``t`` is centred over the samples, ``t_c = U S V^T`` (thin SVD), and the result is
    ``t_c V_k / (S_k / sqrt(N - 1)) = sqrt(N - 1) U_k``: the coordinates on the k directions of
    largest variance, each with sample variance 1 (``ddof = 1``), as
    ``sklearn.decomposition.PCA(n_components=k, whiten=True).fit_transform(t)``. Signs follow
    scikit-learn's ``svd_flip`` rule (the largest-magnitude entry of each column of U is
    positive), so the result is deterministic and invariant to ``t -> a t + b`` (``a != 0``)
    and to any rotation of the units (the sign rule depends on U only).

    **Rank deficiency.** A direction whose singular value is at most
    ``max(N, d) * eps * S_1`` (or beyond the rank ``min(N, d)``) has no variance to whiten:
    its column is returned as zeros, not as rounding noise scaled up to unit variance. A
    constant layer gives all zeros.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed).
    k : int
        Number of components, in [1, d].

    Returns
    -------
    numpy.ndarray of float64, shape (..., N, k)
        NaN for a batch item holding NaN or Inf.

    Raises
    ------
    ValidationError
        On a bad ``t``, or ``k`` not in [1, d].

    Notes
    -----
    Cost O(N d min(N, d)) per item (thin SVD).

    References
    ----------
    Butakov et al. (2024), arXiv:2305.08013 (compression to a low dimension before estimating
    information; they use autoencoders, ckptlab the linear, deterministic PCA).
    """
    arr = _as_layer("t", t)
    d = arr.shape[-1]
    k = _check_k_dims("k", k, d)
    flat, batch_shape, finite = _flatten_batch(arr)
    z = _whiten(flat, k).numpy()
    z[~finite] = np.nan
    return z.reshape(batch_shape + z.shape[1:])


def _check_k_dims(name: str, k, d: int) -> int:
    ok = isinstance(k, numbers.Integral) and not isinstance(k, bool)
    if ok and 1 <= k <= d:
        return int(k)
    raise ValidationError(
        f"{name} must be an integer in [1, d] = [1, {d}] (at most the d = {d} units of t), "
        f"got {k!r}"
    )


def _kl_const(n: int, k: int, d: int) -> float:
    """psi(N) - psi(k) + log V_d in nats, V_d = pi^(d/2) / Gamma(d/2 + 1)."""
    psi = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
    return float(psi[0] - psi[1]) + log_vd


def _kl_log_eps(z: torch.Tensor, k: int, yid=None):
    """Sum over rows of log eps_i (k-th neighbour at positive distance), per item.

    Returns ``(sum_full, ok_full)`` and, with labels ``yid``, also the within-class
    ``(sum_within, ok_within)``; ``ok`` is False for an item where some row has fewer than k
    neighbours at positive distance.
    """
    b = z.shape[0]
    flat = z.numpy()
    ids = _duplicate_ids(flat)
    acc = {"full": torch.zeros(b, dtype=torch.float64)}
    if yid is not None:
        acc["within"] = torch.zeros(b, dtype=torch.float64)
        lab = torch.from_numpy(yid)
    for start, stop, dist in _dist_blocks(z - z.mean(dim=-2, keepdim=True), ids):
        dist.masked_fill_(dist == 0, math.inf)  # self and duplicates are not neighbours
        acc["full"] += 0.5 * _kth_smallest(dist, k).log().sum(dim=-1)
        if yid is not None:
            other = lab[start:stop, None] != lab[None, :]
            dist.masked_fill_(other, math.inf)
            acc["within"] += 0.5 * _kth_smallest(dist, k).log().sum(dim=-1)
    return {key: (v, torch.isfinite(v)) for key, v in acc.items()}


def entropy_knn(z, *, k: int = 3):
    """Kozachenko-Leonenko estimate of the differential entropy of the rows of ``z``, in bits.

    ``H = psi(N) - psi(k) + log V_d + (d/N) sum_i log eps_i`` (nats, then divided by ln 2),
    with ``eps_i`` the Euclidean distance from ``z_i`` to its k-th nearest neighbour and
    ``V_d = pi^(d/2) / Gamma(d/2 + 1)`` the volume of the unit d-ball. It is consistent for
    densities; its bias is small in low dimension (a few hundredths of a bit for Gaussians in
    d <= 4 with N in the thousands) and grows with d and near the boundary of a bounded support.
    The estimate is not scale invariant (``H(a z) = H(z) + d log2 |a|``): apply it to a
    whitened projection (:func:`whiten_pca`) for a scale-free value.

    **Duplicate rows.** A point mass has differential entropy -inf, and duplicates would give
    ``eps_i = 0``. ckptlab counts only neighbours at *positive* distance: copies of ``z_i`` are
    skipped in the neighbour search (every copy still counts in the average; N is unchanged).
    For data without duplicates this changes nothing; with duplicates it returns the finite
    entropy of the spread-out part and biases H upward. If some row has fewer than k rows
    different from it, the item's estimate is -inf (the sample is dominated by an atom; e.g.
    all rows equal).

    Parameters
    ----------
    z : array_like of shape (N, d) or (..., N, d)
        Samples (a batch allowed).
    k : int, default 3
        Neighbour rank, in [1, N - 1].

    Returns
    -------
    float or numpy.ndarray of shape (...)
        In bits; NaN for a batch item holding NaN or Inf; -inf as described above.

    Raises
    ------
    ValidationError
        On a bad ``z`` or ``k`` not in [1, N - 1].

    Notes
    -----
    Cost O(N^2 d) per item (brute-force distances, exact), memory row blocks of at most 2**24
    distances.

    References
    ----------
    Kozachenko and Leonenko (1987), Probl. Inf. Transm. 23(2); Kraskov, Stogbauer and
    Grassberger (2004), Phys. Rev. E 69, 066138 (eq. 20).
    """
    arr = _as_layer("z", z)
    n, d = arr.shape[-2:]
    k = _check_neighbours("k", k, n)
    flat, batch_shape, finite = _flatten_batch(arr)
    sums = _kl_log_eps(torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float64)), k)
    total, ok = sums["full"]
    h = (_kl_const(n, k, d) + d / n * total) / _LN2
    h = torch.where(ok, h, torch.full_like(h, -math.inf)).numpy().copy()
    h[~finite] = np.nan
    return float(h[0]) if batch_shape == () else h.reshape(batch_shape)


def mi_projected(
    t,
    y,
    *,
    k_dims: int = 4,
    method: str = "knn",
    n_bins: int = 4,
    noise: float = 0.5,
    k: int = 3,
    seed=0,
) -> ProjectedMI:
    """I(X;T) and I(T;Y) of a whitened low-dimensional projection of the layer.

    The layer is first reduced to ``Z = whiten_pca(t, k_dims)``: its ``k_dims`` principal
    directions, each with unit variance (Butakov et al. 2024 compress before estimating; ckptlab
    uses linear PCA). ``Z`` is invariant to ``T -> a T + b`` (``a != 0``) and to rotations of the
    units, and a few dimensions can be estimated without the curse of dimensionality. Then:

    * ``method="binning"``: each unit of Z is cut into ``n_bins`` equal-mass bins (each holding
      the same number of that unit's distinct values, the rule of
      :func:`~ckptlab.metrics.mi.mi_adaptive` applied per unit), each row of codes is a
      symbol, and the plug-in estimator gives ``I(X;T) = H(codes)`` and
      ``I(T;Y) = H(codes) + H(Y) - H(codes, Y)``. Bounded by
      ``min(log2 N, k_dims log2 n_bins)``; the plug-in bias is about
      ``(cells - 1) / (2 N ln 2)`` bits downward for ``cells <= n_bins ** k_dims`` occupied
      cells, so keep ``n_bins ** k_dims`` well below N.
    * ``method="knn"``: the noisy channel ``U = Z + E``, ``E ~ N(0, noise^2 I)`` in whitened
      units (``noise`` is relative to the unit variance of each whitened direction). Then
      ``I(X;U) = h(U) - h(E)`` with ``h(E) = (k_dims / 2) log2(2 pi e noise^2)`` in closed form
      and ``h(U)`` by :func:`entropy_knn` on the N samples ``u_i = z_i + e_i``, one noise draw per
      probe input; ``I(U;Y) = h(U) - sum_l p_l h(U | Y = l)`` with each conditional entropy the
      same estimator within class l (neighbours of the same class). One draw of
      ``E`` (an N x k_dims standard normal from ``seed``) is shared by every batch item, so the
      checkpoints of a run are compared under common random numbers and a batch equals the
      per-item loop.

      What it estimates: the samples ``u_i`` are N draws from the continuous distribution of
      ``Z + E`` with Z distributed as the population of whitened projections, so the estimate
      targets ``I(Z; Z + E)`` for that population (the probe set as a sample of it), not the
      entropy of the N-component mixture of the empirical Z. It is therefore not capped at
      log2 N (for small ``noise`` it can exceed it) and it equals
      ``(k_dims / 2) log2(1 + 1 / noise^2)`` for Gaussian Z. Bias: that of the
      Kozachenko-Leonenko estimator in ``k_dims`` dimensions (small for k_dims <= 4 and N in
      the thousands, larger for small ``noise``, where the density of U has sharp features
      at the resolution of the sample spacing) plus Monte Carlo noise of the single draw,
      of order ``sqrt(k_dims / 2) / (sqrt(N) ln 2)`` bits; the differences are not clipped at 0,
      so values near 0 may be slightly negative. For the mixture entropy itself, use
      :func:`mi_kde_relative` on the projection.

    Parameters
    ----------
    t : array_like of shape (N, d) or (..., N, d)
        Representation of one layer (a batch of checkpoints allowed).
    y : array_like of int, shape (N,)
        Class labels.
    k_dims : int, default 4
        Projection dimension, in [1, d].
    method : {"knn", "binning"}, default "knn"
    n_bins : int, default 4
        Bins per projected unit for ``method="binning"``, >= 2 (4 bins in 4 dimensions give
        256 cells).
    noise : float, default 0.5
        Noise standard deviation for ``method="knn"``, > 0, relative to the unit variance of the
        whitened directions (0.1 to 1 are sensible; the Gaussian value per dimension at 0.5 is
        1.16 bits).
    k : int, default 3
        Neighbour rank of the Kozachenko-Leonenko estimator for ``method="knn"``, in
        [1, N_l - 1] for every class size N_l.
    seed : int or numpy.random.Generator, default 0
        Source of the noise draw for ``method="knn"``.

    Returns
    -------
    ProjectedMI
        NamedTuple ``(xt, ty)`` in bits: floats, or arrays of shape ``t.shape[:-2]``; NaN for a
        batch item holding NaN or Inf (and, for ``method="knn"``, in the measure-zero event
        that a noisy row has fewer than k neighbours at positive distance).

    Raises
    ------
    ValidationError
        On a bad ``t`` or ``y``, ``k_dims`` not in [1, d], unknown ``method``, ``n_bins < 2``,
        ``noise <= 0``, a bad ``seed``, or ``k`` not below every class size (``method="knn"``).

    Notes
    -----
    Cost O(N d min(N, d)) for the projection, then O(N log N k_dims) for binning or
    O(N^2 k_dims) for the nearest neighbours.

    References
    ----------
    Butakov et al. (2024), arXiv:2305.08013; Goldfeld et al. (2019), ICML (noisy layers);
    Kozachenko and Leonenko (1987); Kraskov, Stogbauer and Grassberger (2004), Phys. Rev. E
    69, 066138; Chelombiev, Houghton and O'Donnell (2019), arXiv:1902.09037 (equal-mass
    bins).
    """
    method = check_choice("method", method, ("knn", "binning"))
    n_bins = check_int("n_bins", n_bins, min=2)
    noise = check_float("noise", noise, min=0.0, min_inclusive=False)
    k = check_int("k", k, min=1)
    rng = _check_seed(seed)
    arr = _as_layer("t", t)
    n, d = arr.shape[-2:]
    yid, class_counts = _as_labels(y, n)
    k_dims = _check_k_dims("k_dims", k_dims, d)
    if method == "knn":
        k = _check_neighbours(
            "k", k, int(class_counts.min()), "rows of the smallest class, for method='knn'"
        )
    flat, batch_shape, finite = _flatten_batch(arr)
    z = _whiten(flat, k_dims)
    b = z.shape[0]

    if method == "binning":
        per_unit = z.numpy().transpose(0, 2, 1).reshape(b * k_dims, n, 1)
        codes = _adaptive_codes(per_unit, n_bins).reshape(b, k_dims, n).transpose(0, 2, 1)
        i_xt, i_ty = _plugin_mi(np.ascontiguousarray(codes), yid, class_counts)
        return ProjectedMI(*_finish(i_xt, i_ty, batch_shape, finite))

    e = torch.from_numpy(rng.standard_normal((n, k_dims)))
    u = z + noise * e
    sums = _kl_log_eps(u, k, yid)
    (full, ok_full), (within, ok_within) = sums["full"], sums["within"]
    h_u = _kl_const(n, k, k_dims) + k_dims / n * full
    p = class_counts / n
    h_cond = sum(p[c] * _kl_const(int(class_counts[c]), k, k_dims) for c in range(len(p)))
    h_cond = h_cond + k_dims / n * within
    h_e = 0.5 * k_dims * math.log(2.0 * math.pi * math.e * noise * noise)
    i_xt = ((h_u - h_e) / _LN2).numpy()
    i_ty = ((h_u - h_cond) / _LN2).numpy()
    # ties are a measure-zero event once continuous noise is added; guard anyway
    bad = ~(ok_full & ok_within).numpy()
    finite = finite & ~bad if bad.any() else finite
    return ProjectedMI(*_finish(i_xt, i_ty, batch_shape, finite))
