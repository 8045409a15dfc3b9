"""Local complexity: how many neurons' zero sets cut a small neighbourhood of each point.

Pure torch kernels. The caller (the analysis layer) builds ``preact_fn`` from a model and calls
:func:`local_complexity` once per checkpoint, with the same directions every time.

References
----------
Humayun, A. I., Balestriero, R. and Baraniuk, R. (2024). Deep networks always grok and here is
why. arXiv:2402.15555.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .._checks import check_float, check_int
from ..errors import ValidationError
from ._tensors import CHUNK_ELEMENTS, as_tensor

__all__ = ["cross_polytope_directions", "local_complexity"]


def cross_polytope_directions(
    dim: int,
    *,
    n_directions: int = 25,
    seed: int | np.random.Generator | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n_directions`` orthonormal directions in ``R^dim`` for a cross-polytope.

    A Gaussian ``(dim, n_directions)`` matrix is orthonormalised by a QR decomposition (in
    float64) and each column's sign is fixed by the sign of ``R``'s diagonal, which makes the
    result a Haar-distributed orthonormal frame that depends on the seed only.

    Parameters
    ----------
    dim : int
        Dimension of the input (or embedding) space, >= 1.
    n_directions : int, default 25
        Number P of directions (the polytope has 2P vertices); 1 <= P <= ``dim``. The source
        used P = 25.
    seed : int, numpy.random.Generator or torch.Generator, default 0
        Source of randomness. An int seeds a private ``torch.Generator``; a generator is used
        (and advanced) as given. The global RNGs of torch and numpy are never touched: the
        source reset the global torch seed and thereby changed the training data order.
    dtype : torch.dtype, default torch.float32
        Floating dtype of the returned tensor.

    Returns
    -------
    torch.Tensor
        ``(n_directions, dim)`` tensor with orthonormal rows.

    Raises
    ------
    ValidationError
        If ``dim`` < 1, ``n_directions`` is not in [1, dim], ``seed`` is of the wrong type or
        a negative int, or ``dtype`` is not a floating torch dtype.

    References
    ----------
    Humayun, Balestriero and Baraniuk (2024), arXiv:2402.15555.
    """
    dim = check_int("dim", dim, min=1)
    n_directions = check_int("n_directions", n_directions, min=1, max=dim)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValidationError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if isinstance(seed, torch.Generator):
        gauss = torch.randn(dim, n_directions, generator=seed, dtype=torch.float64)
    elif isinstance(seed, np.random.Generator):
        gauss = torch.from_numpy(seed.standard_normal((dim, n_directions)))
    elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = check_int("seed", seed, min=0)
        gen = torch.Generator().manual_seed(seed)
        gauss = torch.randn(dim, n_directions, generator=gen, dtype=torch.float64)
    else:
        raise ValidationError(
            f"seed must be a non-negative int, a numpy.random.Generator or a torch.Generator, "
            f"got {seed!r}"
        )
    q, r = torch.linalg.qr(gauss)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1.0
    return (q * sign).T.contiguous().to(dtype)


def _as_bound(name: str, value, dim: int, like: torch.Tensor) -> torch.Tensor | None:
    """Validate a clipping bound (None, a scalar or a (D,) array) and return it as a tensor."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        check_float(name, value)
        return torch.full((dim,), float(value), dtype=like.dtype, device=like.device)
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValidationError(
            f"{name} must be None, a number or a ({dim},) array, got {value!r}"
        ) from exc
    if t.ndim == 0:
        t = t.expand(dim)
    if t.shape != (dim,) or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise ValidationError(
            f"{name} must be None, a number or a real array of shape ({dim},), "
            f"got shape {tuple(t.shape)} and dtype {t.dtype}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValidationError(f"{name} must be finite, got {value!r}")
    return t.to(dtype=like.dtype, device=like.device)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def local_complexity(
    points: torch.Tensor,
    preact_fn: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    *,
    directions: torch.Tensor,
    radius: float,
    lower=None,
    upper=None,
    chunk_rows: int | None = None,
    include_output: bool = False,
) -> torch.Tensor:
    """Count, per point and layer, the neurons whose zero set cuts a cross-polytope.

    Around every point ``x`` the 2P vertices ``x + radius * v_p`` and ``x - radius * v_p`` are
    formed from the P given directions, optionally clipped into ``[lower, upper]``, and pushed
    through the network in one batch per chunk. A neuron of a layer counts when its
    pre-activation is strictly positive at some vertex and strictly negative at another.

    Parameters
    ----------
    points : torch.Tensor
        ``(N, D)`` points in the continuous input space (for token inputs: the embedding space,
        the first continuous representation), or ``(B, N, D)``: a batch of B point sets for
        B models at once (checkpoints evaluated together); ``preact_fn`` then receives
        ``(B, M, D)`` and returns tensors of ``(B, M, ...)``. The vertices are built in this
        tensor's dtype and on its device.
    preact_fn : callable
        ``preact_fn(v)`` with ``v`` a ``(M, D)`` tensor returns a list or tuple of tensors, one
        per layer, each with ``M`` rows: the pre-activations of every hidden layer, in order,
        **followed by the network's output (the logits) as the last entry**. Trailing
        dimensions beyond the first are flattened, so a ``(M, seq, d)`` pre-activation counts
        ``seq * d`` neurons. Unless ``include_output``, the last entry is not read: an empty
        ``(M, 0)`` tensor will do, so the forward pass can stop at the last pre-activation.
    directions : torch.Tensor
        ``(P, D)`` directions, normally from :func:`cross_polytope_directions`; draw them once
        and reuse them at every checkpoint so counts are comparable across training.
    radius : float
        Radius r > 0 of the cross-polytope. The source used r = 0.005 by default and
        r in {0.05, 0.1, 0.5, 1, 5} in MNIST sweeps.
    lower, upper : float or array of shape (D,), optional
        Bounds of the data domain; vertices are clipped into them (the source did not clip,
        so its vertices could leave the domain). ``None`` leaves that side unclipped.
    chunk_rows : int, optional
        Upper bound on the number of vertex rows forwarded at once, over the whole batch:
        ``ceil(chunk_rows / (2P B))`` points per chunk (at least one), which bounds memory.
        Default: as many rows as keep one chunk's vertices and pre-activations near
        :data:`CHUNK_ELEMENTS` values (sized from the first chunk's widths), so the
        elementwise passes over them run in cache rather than from memory.
    include_output : bool, default False
        Whether the last entry of ``preact_fn``'s result (the logits) is counted as a layer.
        The source counted it; ckptlab does not by default, because the output has no
        activation whose kink could partition the input space.

    Returns
    -------
    torch.Tensor
        ``(N, L)`` counts (``(B, N, L)`` for a batch), with ``L`` the number of entries
        ``preact_fn`` returns, less one
        unless ``include_output``. The total over layers is ``counts.sum(1)``. The dtype is
        int64 when every pre-activation is finite. If any pre-activation is NaN or infinite
        (a diverged checkpoint, or a non-finite point), the result is float64 instead, with
        NaN in every (point, layer) entry where a vertex's pre-activation is not finite and
        the exact counts elsewhere; test with ``counts.is_floating_point()``.

    Raises
    ------
    ValidationError
        On a bad argument (points not 2-D or empty, directions not ``(P, D)``, radius not > 0,
        chunk_rows < 1, bounds of the wrong shape or with ``lower > upper``), or when
        ``preact_fn`` returns something other than a non-empty list or tuple of tensors with
        ``M`` rows each, a different number of layers from one chunk to the next, or only
        the output while ``include_output`` is False.

    Notes
    -----
    Exact zeros: a neuron counts only if some vertex is strictly > 0 and some vertex strictly
    < 0. A pre-activation that is exactly 0 at some vertices and positive (or negative) at all
    others does not count. The source compared signs and so counted an exact zero as a change.
    Exact zeros are common: a deeper unit whose ReLU inputs are all 0 at some vertices has a
    pre-activation of exactly its bias there (0 for a zero bias), and clipping puts vertices
    exactly onto the domain's boundary.

    The test looks at the vertices only: a zero set that passes through the polytope without
    separating two of its vertices is not counted (as in the source). With P = D and the
    identity as ``directions`` the polytope reaches distance r along every axis; a rotated
    frame reaches at least r / sqrt(D) along each axis.

    References
    ----------
    Humayun, Balestriero and Baraniuk (2024), arXiv:2402.15555.
    """
    points = as_tensor(points, lambda: f"points must be a 2-D tensor (N, D), got {points!r}")
    if points.ndim < 2 or points.shape[-2] < 1 or points.shape[-1] < 1:
        raise ValidationError(
            f"points must be a 2-D tensor (N, D) with N >= 1 and D >= 1 (or a batch "
            f"(..., N, D)), got shape {tuple(points.shape)}"
        )
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    batch_shape = tuple(points.shape[:-2])
    batched = bool(batch_shape)
    n_points, dim = points.shape[-2:]
    shared = batched and all(st == 0 for st in points.stride()[:-2])
    points = points.reshape((-1, n_points, dim))  # (B, N, D); B = 1 unbatched
    n_batch = points.shape[0]
    directions = as_tensor(
        directions, lambda: f"directions must be a 2-D tensor (P, D), got {directions!r}"
    )
    if directions.ndim != 2 or directions.shape[1] != dim or directions.shape[0] < 1:
        raise ValidationError(
            f"directions must be a 2-D tensor (P, D) with P >= 1 and D = {dim} (the points' "
            f"dimension), got shape {tuple(directions.shape)}"
        )
    radius = check_float("radius", radius, min=0.0, min_inclusive=False)
    auto = chunk_rows is None
    if not auto:
        chunk_rows = check_int("chunk_rows", chunk_rows, min=1)
    if not isinstance(include_output, bool):
        raise ValidationError(f"include_output must be a bool, got {include_output!r}")
    if not callable(preact_fn):
        raise ValidationError(f"preact_fn must be callable, got {preact_fn!r}")
    lo = _as_bound("lower", lower, dim, points)
    hi = _as_bound("upper", upper, dim, points)
    if lo is not None and hi is not None and bool((lo > hi).any()):
        raise ValidationError(
            f"lower must be <= upper everywhere, got lower={lower!r}, upper={upper!r}"
        )

    dirs = directions.to(dtype=points.dtype, device=points.device)
    # Both signs at once: rows 0..P-1 are +v_p, rows P..2P-1 are -v_p.
    offsets = radius * torch.cat([dirs, -dirs], dim=0)  # (2P, D)
    n_vert = offsets.shape[0]
    # chunk_rows bounds the rows of one call over the whole batch
    # auto: one point first, to learn the widths the chunk size is made from
    per_chunk = 1 if auto else max(1, math.ceil(chunk_rows / (n_vert * n_batch)))

    chunks: list[torch.Tensor] = []
    bad_chunks: list[torch.Tensor] = []
    n_layers: int | None = None
    dev = points.device
    with torch.no_grad():
        start = 0
        while start < n_points:
            x = points[:, start : start + per_chunk]
            start += per_chunk
            n = x.shape[1]
            # points shared by the batch (an expanded view): the vertices once, expanded the
            # same way, so a batched preact_fn can see that its input is shared
            xs = x[:1] if shared else x
            verts = (xs[:, :, None, :] + offsets).reshape(xs.shape[0], n * n_vert, dim)
            if lo is not None or hi is not None:
                verts = torch.clamp(verts, min=lo, max=hi)
            if shared:
                verts = verts.expand(n_batch, -1, -1)
            out = preact_fn(verts if batched else verts[0])
            layers = _check_layers(out, n * n_vert, include_output,
                                   n_batch if batched else None)
            if n_layers is None:
                n_layers = len(layers)
            elif len(layers) != n_layers:
                raise ValidationError(
                    f"preact_fn must return the same number of layers for every batch, got "
                    f"{n_layers} and then {len(layers)}"
                )
            counts = torch.empty(n_batch, n, n_layers, dtype=torch.int64, device=dev)
            bad = torch.zeros(n_batch, n, n_layers, dtype=torch.bool, device=dev)
            for k, z in enumerate(layers):
                z = z.reshape(n_batch, n, n_vert, -1)
                zmax, zmin = z.amax(dim=2), z.amin(dim=2)
                straddles = (zmax > 0) & (zmin < 0)
                counts[:, :, k] = straddles.sum(dim=2).to(device=dev)
                # amax/amin propagate NaN and keep +-inf: finiteness from the reduced tensors
                # (50x smaller than z) instead of isfinite over every vertex
                bad[:, :, k] = (~(torch.isfinite(zmax) & torch.isfinite(zmin))).any(dim=2) \
                    .to(device=dev)
            chunks.append(counts)
            bad_chunks.append(bad)
            if auto and len(chunks) == 1:  # now the widths are known
                width = dim + sum(z.numel() // (n_batch * n * n_vert) for z in layers)
                per_chunk = max(1, math.ceil(CHUNK_ELEMENTS // width / (n_vert * n_batch)))
    counts = torch.cat(chunks, dim=1)
    bad = torch.cat(bad_chunks, dim=1)
    if bool(bad.any()):
        # A non-finite pre-activation makes the count meaningless (NaN compares False and
        # would silently lower it): report NaN rather than a wrong number.
        counts = counts.to(torch.float64)
        counts[bad] = float("nan")
    return counts.reshape(batch_shape + counts.shape[1:]) if batched else counts[0]


def _check_layers(out, n_rows: int, include_output: bool,
                  n_batch: int | None = None) -> list[torch.Tensor]:
    """Validate ``preact_fn``'s result and drop the output entry unless it is counted."""
    if not isinstance(out, (list, tuple)) or len(out) == 0:
        raise ValidationError(
            f"preact_fn must return a non-empty list or tuple of tensors, got {type(out).__name__}"
        )
    lead = () if n_batch is None else (n_batch,)
    for k, z in enumerate(out):
        if (not isinstance(z, torch.Tensor) or z.ndim < 1 + len(lead)
                or tuple(z.shape[:len(lead) + 1]) != lead + (n_rows,)):
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValidationError(
                f"preact_fn must return tensors with {n_rows} rows (one per vertex); "
                f"entry {k} is {shape}"
            )
    layers = list(out) if include_output else list(out[:-1])
    if not layers:
        raise ValidationError(
            "preact_fn returned a single entry, which is the output (logits); with "
            "include_output=False there is no hidden layer to count"
        )
    return layers
