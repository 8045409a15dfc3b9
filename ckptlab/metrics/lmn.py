"""Linear mapping number: how many linear pieces a network's map from hidden layer to logits has.

Pure torch / numpy kernels. For a fixed sample subset ``h`` (the first hidden layer's
representation) and the rest of the network ``f`` (hidden layer -> logits), the linear mapping
matrix ``L`` says how linear ``f`` is along the segment between every pair of samples; the
linear mapping number is the exponential of the entropy of ``L``'s normalised spectrum.

References
----------
Liu, Z., Zhong, Z. and Tegmark, M. (2023). Grokking as compression: a nonlinear complexity
perspective. arXiv:2310.05918.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_choice, check_float, check_int
from ..errors import ValidationError
from ._tensors import CHUNK_ELEMENTS, as_tensor

__all__ = ["linear_mapping_matrix", "lmn_from_matrix", "linear_mapping_number"]

_CONSTANT_RULES = ("one", "zero", "nan")
# Default relative tolerance for "constant along the path", in units of the machine epsilon of
# f's output dtype: variation at the level of rounding noise is no signal.
_RTOL_EPS = 100.0


def linear_mapping_matrix(
    h: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_interp: int = 21,
    constant_rule: str = "one",
    chunk_rows: int | None = None,
    rtol: float | None = None,
) -> np.ndarray:
    """Linear mapping matrix ``L`` of ``f`` over the samples ``h``.

    For every pair ``i < j`` the ``n_interp`` points ``h_i + lam (h_j - h_i)``,
    ``lam = 0, 1/(n_interp-1), ..., 1``, are pushed through ``f`` (many pairs per call; the
    ends ``lam = 0, 1`` are the samples themselves, whose outputs are computed once).
    For each output ``k``, ``r2_k`` is the squared Pearson correlation between ``lam`` and
    ``f_k`` along the path, and ``L_ij = mean_k r2_k``. ``L_ii = 1`` and ``L`` is symmetric.

    Parameters
    ----------
    h : torch.Tensor
        ``(N, d1)`` representations of a sample subset, N >= 2 (the first hidden layer in the
        source). Keep the subset fixed across checkpoints; ``LMN <= N``. The path points are
        built in ``h``'s dtype and on its device, so that is the dtype ``f`` receives. A batch
        ``(B, N, d1)`` evaluates B models at once (checkpoints together): ``f`` then receives
        ``(B, M, d1)`` and returns ``(B, M, d2)``, and the result is ``(B, N, N)``.
    f : callable
        ``f(x)`` with ``x`` of shape ``(M, d1)`` returns the outputs ``(M, d2)`` (logits in
        the source); a 1-D ``(M,)`` result is taken as ``d2 = 1`` and trailing dimensions are
        flattened. It is called under ``torch.no_grad()``, each time on points made for that
        call (a copy of ``h`` for the ends), so it may overwrite its input.
    n_interp : int, default 21
        Number of points on each path, >= 3 (the source: 21, ``lam`` in steps of 0.05).
    constant_rule : {"one", "zero", "nan"}, default "one"
        What ``r2_k`` is for an output that is constant along the path (zero variance, so the
        correlation is 0/0). ``"one"``: a constant is linear in ``lam``, so r2 = 1 (the
        natural choice; the source left this undefined). ``"zero"``: r2 = 0. ``"nan"``: r2 is
        undefined and the output is left out of that pair's mean over ``k``; ``L_ij`` is NaN
        only if every output is constant along the path.
    chunk_rows : int, optional
        Upper bound on the rows per call of ``f`` over the whole batch: ``chunk_rows //
        (n_interp B)`` pairs (at least one) per call, which bounds memory. Default: about
        :data:`CHUNK_ELEMENTS` path values (``rows x d1``) per call, so that ``f``'s
        elementwise passes run in cache (2.5x faster than 262144 rows on the digits MLP).
    rtol : float, optional
        Relative tolerance for "constant": output ``k`` is constant along a path when
        ``max(f_k) - min(f_k) <= rtol * max|f_k|`` over the path's points (so an output that is
        exactly 0 everywhere is constant). Default: ``100 * eps`` of ``f``'s output dtype
        (about 1.2e-5 for float32, 2.2e-14 for float64), i.e. variation at the level of
        rounding noise is treated as none. Raise it when ``f`` computes near-zero outputs by
        cancelling large terms.

    Returns
    -------
    numpy.ndarray
        ``(N, N)`` float64 symmetric matrix with unit diagonal. The correlations are computed
        in float64. An entry whose path produces a NaN or infinite output is NaN (a diverged
        checkpoint gives NaN, never an exception).

    Raises
    ------
    ValidationError
        If ``h`` is not a 2-D tensor with N >= 2 rows and d1 >= 1 columns, ``n_interp`` < 3,
        ``constant_rule`` is not one of the choices, ``chunk_rows`` < 1, ``rtol`` is negative,
        or ``f`` returns a tensor without one row per input row or with a different number of
        outputs from one call to the next.

    References
    ----------
    Liu, Zhong and Tegmark (2023), arXiv:2310.05918, which defines L and the LMN (no public
    code exists; this definition is the reference).
    """
    h = _check_h(h)
    batched = h.ndim == 3
    if not batched:
        h = h[None]
    n_interp = check_int("n_interp", n_interp, min=3)
    constant_rule = check_choice("constant_rule", constant_rule, _CONSTANT_RULES)
    if chunk_rows is None:
        chunk_rows = max(n_interp, CHUNK_ELEMENTS // h.shape[-1])
    chunk_rows = check_int("chunk_rows", chunk_rows, min=1)
    if rtol is not None:
        rtol = check_float("rtol", rtol, min=0.0)
    if not callable(f):
        raise ValidationError(f"f must be callable, got {f!r}")

    b, n = h.shape[0], h.shape[1]
    lam = torch.linspace(0.0, 1.0, n_interp, dtype=torch.float64)
    lam_h = lam.to(dtype=h.dtype, device=h.device)
    lam_c = lam - lam.mean()
    s_xx = float((lam_c**2).sum())
    ii, jj = torch.triu_indices(n, n, offset=1, device=h.device)
    inner = n_interp - 2  # the ends of every path are samples: f of them is computed once
    # chunk_rows bounds the rows of one call over the whole batch
    per_chunk = max(1, chunk_rows // (inner * b))

    def call(x: torch.Tensor, rows: int) -> torch.Tensor:
        y = f(x if batched else x[0])
        lead = (b, rows) if batched else (rows,)
        if (not isinstance(y, torch.Tensor) or y.ndim < len(lead)
                or tuple(y.shape[:len(lead)]) != lead):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValidationError(
                f"f must return a tensor with {rows} rows (one per input row"
                f"{', per batch item' if batched else ''}), got {shape}"
            )
        y = y.reshape(b, rows, -1)
        if y.shape[-1] < 1:
            raise ValidationError("f must return at least one output per row, got 0")
        if ends is not None and y.shape[-1] != ends.shape[-1]:
            raise ValidationError(
                f"f must return the same number of outputs for every batch, got "
                f"{ends.shape[-1]} and then {y.shape[-1]}"
            )
        return y

    values: list[np.ndarray] = []
    ends = None
    with torch.no_grad():
        # (b, n, d2): lam = 0 and lam = 1 of every path; on a copy, as an f that works in
        # place would otherwise change the samples the paths are built from
        ends = call(h.clone(), n)
        d2 = ends.shape[-1]
        tol = rtol if rtol is not None else _RTOL_EPS * _eps(ends.dtype)
        ends = ends.to(torch.float64)
        lam_in = lam_h[1:-1, None]
        for start in range(0, ii.numel(), per_chunk):
            i_c, j_c = ii[start : start + per_chunk], jj[start : start + per_chunk]
            hi, hj = h[:, i_c], h[:, j_c]
            p = hi.shape[1]
            # one fused pass writes the path (it is the largest tensor here)
            path = torch.addcmul(hi[:, :, None, :], lam_in, (hj - hi)[:, :, None, :])
            y_in = call(path.reshape(b, p * inner, -1), p * inner)
            y = torch.cat([ends[:, i_c, None], y_in.reshape(b, p, inner, d2).to(torch.float64),
                           ends[:, j_c, None]], dim=2)
            values.append(_pair_values(y.reshape(b * p, n_interp, d2), lam_c, s_xx, tol,
                                       constant_rule).reshape(b, p).cpu().numpy())

    out = np.broadcast_to(np.eye(n, dtype=np.float64), (b, n, n)).copy()
    v = np.concatenate(values, axis=1)
    iu = (ii.cpu().numpy(), jj.cpu().numpy())
    out[:, iu[0], iu[1]] = v
    out[:, iu[1], iu[0]] = v
    return out if batched else out[0]


def _pair_values(
    y: torch.Tensor, lam_c: torch.Tensor, s_xx: float, tol: float, constant_rule: str
) -> torch.Tensor:
    """``L_ij`` for a batch of paths ``y`` of shape (pairs, n_interp, d2), in float64."""
    lam_c = lam_c.to(y.device)
    yc = y - y.mean(dim=1, keepdim=True)
    s_xy = torch.einsum("t,ptk->pk", lam_c, yc)
    s_yy = (yc**2).sum(dim=1)
    top, bottom = y.amax(dim=1), y.amin(dim=1)
    spread = top - bottom
    # amax/amin propagate NaN and keep +-inf: a path is finite exactly where its max and min
    # are (3x faster than isfinite over every point); max|y| is the larger of |max|, |min|
    finite = torch.isfinite(top) & torch.isfinite(bottom)  # (pairs, d2)
    scale = torch.maximum(top.abs(), bottom.abs())
    constant = spread <= tol * scale
    r2 = s_xy**2 / (s_xx * s_yy)
    # Cauchy-Schwarz bounds r2 by 1; rounding can push it a hair above.
    r2 = r2.clamp(max=1.0)
    if constant_rule == "one":
        r2 = torch.where(constant, 1.0, r2)
    elif constant_rule == "zero":
        r2 = torch.where(constant, 0.0, r2)
    else:
        r2 = torch.where(constant, float("nan"), r2)
    r2 = torch.where(finite, r2, float("nan"))
    if constant_rule == "nan":
        # Leave constant outputs out of the mean, but let a non-finite output poison the pair.
        keep = ~constant | ~finite
        total = torch.where(keep, r2, 0.0).sum(dim=1)
        return total / keep.sum(dim=1)  # 0/0 -> NaN when every output is constant
    return r2.mean(dim=1)


def _eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (float32's for integer outputs)."""
    return float(torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps)


def _check_h(h) -> torch.Tensor:
    h = as_tensor(h, lambda: f"h must be a 2-D tensor (N, d1), got {h!r}")
    if h.ndim not in (2, 3) or h.shape[-2] < 2 or h.shape[-1] < 1:
        raise ValidationError(
            f"h must be a 2-D tensor (N, d1) with N >= 2 samples and d1 >= 1 (or a batch "
            f"(B, N, d1)), got shape {tuple(h.shape)}"
        )
    if not h.is_floating_point():
        h = h.to(torch.get_default_dtype())
    return h


def lmn_from_matrix(L: np.ndarray) -> float:
    """Linear mapping number ``2**S`` of a linear mapping matrix.

    With ``lambda_i`` the eigenvalues of the symmetric ``L`` (``numpy.linalg.eigvalsh``, which
    reads the lower triangle), ``p_i = |lambda_i| / sum_j |lambda_j|``,
    ``S = -sum_i p_i log2 p_i`` (with ``0 log 0 = 0``) and ``LMN = 2**S``. An all-ones
    matrix gives 1, a block-diagonal matrix of ``c`` equal all-ones blocks gives ``c``; always
    ``1 <= LMN <= N``.

    Parameters
    ----------
    L : array_like
        ``(N, N)`` symmetric matrix, N >= 1, or a batch ``(B, N, N)``.

    Returns
    -------
    float or numpy.ndarray
        The LMN (an array of B for a batch); NaN if ``L`` holds a NaN or an infinity.

    Raises
    ------
    ValidationError
        If ``L`` is not a square 2-D real array or all its eigenvalues are zero.

    References
    ----------
    Liu, Zhong and Tegmark (2023), arXiv:2310.05918.
    """
    try:
        L = np.asarray(L, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"L must be a real square 2-D array, got {L!r}") from exc
    if L.ndim == 3 and L.shape[1] == L.shape[2] and L.shape[1] >= 1:
        return np.array([lmn_from_matrix(m) for m in L])
    if L.ndim != 2 or L.shape[0] != L.shape[1] or L.shape[0] < 1:
        raise ValidationError(
            f"L must be a square 2-D array (N, N) with N >= 1, got shape {L.shape}"
        )
    if not np.isfinite(L).all():
        return float("nan")
    ev = np.abs(np.linalg.eigvalsh(L))
    total = ev.sum()
    if total == 0.0:
        raise ValidationError(
            "L must have at least one nonzero eigenvalue, got an all-zero spectrum"
        )
    p = ev / total
    nz = p[p > 0]
    return float(2.0 ** (-(nz * np.log2(nz)).sum()))


def linear_mapping_number(
    h: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_interp: int = 21,
    constant_rule: str = "one",
    chunk_rows: int | None = None,
    rtol: float | None = None,
) -> float:
    """Linear mapping number of ``f`` over the samples ``h``.

    ``lmn_from_matrix(linear_mapping_matrix(h, f, ...))``; see :func:`linear_mapping_matrix`
    for the parameters and :func:`lmn_from_matrix` for the definition.

    Returns
    -------
    float or numpy.ndarray
        The LMN, in ``[1, N]``; NaN when ``f`` produces a NaN or infinity on some path. For a
        batch ``h`` of shape ``(B, N, d1)``, an array of B values.

    Raises
    ------
    ValidationError
        As :func:`linear_mapping_matrix`.

    References
    ----------
    Liu, Zhong and Tegmark (2023), arXiv:2310.05918.
    """
    L = linear_mapping_matrix(
        h, f, n_interp=n_interp, constant_rule=constant_rule, chunk_rows=chunk_rows, rtol=rtol
    )
    return lmn_from_matrix(L)
