"""Interventions that aim to shorten the second phase of training, and what each one logs.

Three independent additions to the loop of :mod:`trainers.loop`, each off by default (see the
``grokfast_*``, ``norm_constraint`` and ``nib_*`` fields of :class:`~trainers.config.TrainConfig`):

* :class:`GrokfastEMA`: the Grokfast-EMA gradient filter (Lee et al. 2024), applied between
  ``backward()`` and the optimizer step. Its moving average is part of the resume state.
* :func:`total_norm` and :func:`constrain_norm_`: Omnigrok's fixed parameter norm (Liu et al.
  2022), applied after every step.
* :class:`NIBPenalty`: the nonlinear information bottleneck's compression term (Kolchinsky,
  Tracey and Wolpert 2019), ``beta x`` :func:`kde_xt_upper` of one hidden layer on the batch,
  added to the loss.

They are plain torch (no numpy, no I/O) so that they run on the training device inside the
autograd graph; the numpy-facing estimators of :mod:`ckptlab.metrics` are their test oracles.

**Why the penalty's noise scale is held constant in the gradient.** The noise is
``sigma = c * s(T)`` with ``s`` the mean distance to the 10th nearest other row of the batch
(the spread :func:`ckptlab.metrics.mi_relative.layer_scale` uses, so the penalty's *value* is
the analysis's ``kde_rel`` upper bound at resolution ``c`` on that batch). If ``s`` took part in
the gradient, the bound would be exactly scale-free (``I(aT) = I(T)``) and the gradient would
reward moving the spread statistic instead of the points: pushing each row's 10th neighbour
away, or a few rows far out, inflates ``s`` (and so ``sigma``) against the distances that
matter, which lowers the bound without merging any inputs. With ``s`` detached, the gradient is
that of the Kolchinsky-Tracey bound at a fixed noise level, as in the NIB paper: it pulls
nearby representations together. Its one scale-dependent part (shrinking the whole layer also
lowers the bound at fixed ``sigma``) cannot lower the *measured* value, since the next step's
``sigma`` shrinks with the layer; it acts like a small activation-norm penalty, which weight
decay already applies.

References
----------
Lee, J., Kang, B. G., Kim, K. and Lee, K. M. (2024). Grokfast: accelerated grokking by
amplifying slow gradients. arXiv:2405.20233.

Liu, Z., Michaud, E. J. and Tegmark, M. (2022). Omnigrok: grokking beyond algorithmic data.
arXiv:2210.01117 (ICLR 2023).

Kolchinsky, A., Tracey, B. D. and Wolpert, D. H. (2019). Nonlinear information bottleneck.
Entropy 21(12), 1181, arXiv:1705.02436.

Kolchinsky, A. and Tracey, B. D. (2017). Estimating mixture entropy with pairwise distances.
Entropy 19(7), 361.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ckptlab._checks import check_float, check_int
from ckptlab.errors import ValidationError

__all__ = [
    "GrokfastEMA",
    "total_norm",
    "constrain_norm_",
    "kde_xt_upper",
    "batch_spread",
    "NIBPenalty",
    "resolve_nib_layer",
    "SPREAD_K",
]

_LN2 = math.log(2.0)

#: Neighbour rank of the penalty's spread: the analysis's ``kde_rel`` default (``scale_k``).
SPREAD_K = 10


# --------------------------------------------------------------------------------------------
# Grokfast-EMA
# --------------------------------------------------------------------------------------------


class GrokfastEMA:
    """The Grokfast-EMA gradient filter: step with ``g + lambda * ema(g)``.

    After each ``backward()``, for every parameter with a gradient::

        g_ema <- g                                  (the first call)
        g_ema <- alpha * g_ema + (1 - alpha) * g    (every later call)
        g     <- g + lambda * g_ema                 (in place, before the optimizer step)

    Starting from the first gradient rather than from zero avoids an average biased towards 0
    over its first ``1 / (1 - alpha)`` steps (the reference code starts the same way).

    Parameters
    ----------
    model : torch.nn.Module
        Its named parameters are filtered.
    alpha : float
        EMA momentum, in [0, 1).
    lamb : float
        Amplification of the average, >= 0.

    Attributes
    ----------
    last_norm : Tensor or None
        Total L2 norm of the filtered gradient of the latest call (a 0-d tensor on the
        device, so logging it costs no synchronisation until it is read).
    last_raw_norm : Tensor or None
        The same for the gradient before filtering.

    References
    ----------
    Lee et al. (2024), arXiv:2405.20233, Algorithm 2 (``gradfilter_ema``).
    """

    def __init__(self, model: nn.Module, *, alpha: float, lamb: float):
        self.alpha = check_float("grokfast_alpha", alpha, min=0.0, max=1.0, max_inclusive=False)
        self.lamb = check_float("grokfast_lambda", lamb, min=0.0)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.ema: dict[str, Tensor] = {}  # by parameter name, from its first gradient on
        self.last_norm: Tensor | None = None
        self.last_raw_norm: Tensor | None = None

    @torch.no_grad()
    def filter_(self) -> None:
        """Update the average from the current ``.grad`` and amplify it into ``.grad``."""
        grads = [(n, p.grad) for n, p in self.params if p.grad is not None]
        self.last_raw_norm = _norm(g for _, g in grads)
        for n, g in grads:
            if n in self.ema:
                self.ema[n].mul_(self.alpha).add_(g, alpha=1.0 - self.alpha)
            else:
                self.ema[n] = g.detach().clone()
            g.add_(self.ema[n], alpha=self.lamb)
        self.last_norm = _norm(g for _, g in grads)

    def state_dict(self) -> dict:
        """The moving averages by parameter name (empty before the first gradient)."""
        return dict(self.ema)

    def load_state_dict(self, state: Mapping | None) -> None:
        """Restore :meth:`state_dict`'s value (None: empty), on the parameters' devices."""
        own = dict(self.params)
        state = dict(state or {})
        if not set(state) <= set(own):
            raise ValidationError(
                f"grokfast state must hold averages of the model's parameters {sorted(own)}, "
                f"got {sorted(state)}")
        self.ema = {n: torch.as_tensor(v).to(own[n].device) for n, v in state.items()}

    def metrics(self) -> dict:
        """``grokfast_grad_norm`` (filtered) and ``grad_norm`` (raw) of the latest update."""
        if self.last_norm is None:
            return {}
        return {"grokfast_grad_norm": self.last_norm.item(),
                "grad_norm": self.last_raw_norm.item()}


def _norm(tensors: Iterable[Tensor]) -> Tensor:
    """Total L2 norm of several tensors, accumulated in float64."""
    total = None
    for t in tensors:
        sq = t.detach().to(torch.float64).square().sum()
        total = sq if total is None else total + sq
    if total is None:
        return torch.tensor(0.0, dtype=torch.float64)
    return total.sqrt()


# --------------------------------------------------------------------------------------------
# norm constraint
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def total_norm(params: Iterable[Tensor]) -> Tensor:
    """``sqrt(sum_p ||p||^2)`` over ``params``, accumulated in float64 (a 0-d tensor).

    Parameters
    ----------
    params : iterable of Tensor
        E.g. ``model.parameters()``.

    Returns
    -------
    Tensor
        0-d float64 tensor on the parameters' device.
    """
    return _norm(params)


@torch.no_grad()
def constrain_norm_(params: Iterable[Tensor], target: float) -> Tensor:
    """Rescale ``params`` in place so their total L2 norm is ``target`` (Omnigrok).

    Every parameter is multiplied by the same factor ``target / total_norm(params)``, so the
    direction in parameter space is kept and only the radius is fixed.

    Parameters
    ----------
    params : iterable of Tensor
        The parameters (all of them: the constraint is on the total norm).
    target : float
        The norm to keep, > 0.

    Returns
    -------
    Tensor
        The norm before rescaling (0-d float64).

    Raises
    ------
    ValidationError
        ``target`` is not a finite number > 0, or every parameter is zero (no direction to
        rescale).
    """
    target = check_float("target", target, min=0.0, min_inclusive=False)
    params = list(params)
    before = _norm(params)
    if not bool(before > 0):
        raise ValidationError("norm_constraint cannot rescale parameters whose norm is 0")
    factor = target / before
    for p in params:
        p.mul_(factor.to(p.dtype))
    return before


# --------------------------------------------------------------------------------------------
# the nonlinear information bottleneck's compression term
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _sq_dists(t: Tensor) -> Tensor:
    """(N, N) squared distances of the rows of ``t`` (no gradient), diagonal exactly 0."""
    x = t - t.mean(dim=0, keepdim=True)  # translation-free; smaller cancellation error
    sq = (x * x).sum(dim=1)
    d = torch.addmm(sq[:, None] + sq[None, :], x, x.T, alpha=-2.0).clamp_min_(0.0)
    return d.fill_diagonal_(0.0)


def kde_xt_upper(t: Tensor, sigma, *, sq_dists: Tensor | None = None) -> Tensor:
    """Differentiable Kolchinsky-Tracey upper bound on I(X;T) of ``T + N(0, sigma^2 I)``, in bits.

    ``I(X;T) <= -(1/N) sum_i log( (1/N) sum_j exp(-||t_i - t_j||^2 / (2 sigma^2)) )``: the
    upper (KL) bound of :func:`ckptlab.metrics.mi.mi_kde` at ``sigma2 = sigma**2``, in the
    dtype and on the device of ``t``, with its gradient with respect to ``t`` (``sigma`` is held
    constant: no gradient flows to it). It lies in ``[0, log2 N]``.

    The gradient is written out rather than left to autograd (one N x N matrix product instead
    of the backward passes of every elementwise step, about 3x faster on CPU): with
    ``w_ij = K_ij / sum_k K_ik`` and ``G = w + w^T``,
    ``dI/dt_i = sum_j G_ij (t_i - t_j) / (N sigma^2 ln 2)``.

    Parameters
    ----------
    t : Tensor of shape (N, d)
        One layer's representation of N inputs, N >= 2 (any floating dtype).
    sigma : float or Tensor
        Noise standard deviation, > 0.
    sq_dists : Tensor of shape (N, N), optional
        The squared distances of ``t`` with a zero diagonal, if already computed (their
        values are used; the gradient is always taken through ``t``).

    Returns
    -------
    Tensor
        0-d, in bits.

    Raises
    ------
    ValidationError
        ``t`` is not a 2-D floating tensor with N >= 2 rows.

    References
    ----------
    Kolchinsky and Tracey (2017), Entropy 19(7), 361; Kolchinsky, Tracey and Wolpert (2019),
    Entropy 21(12), 1181.
    """
    _check_layer(t)
    sigma = torch.as_tensor(sigma, dtype=t.dtype, device=t.device)
    if sq_dists is None:
        sq_dists = _sq_dists(t)
    return _KDEUpper.apply(t, sigma, sq_dists.detach())


class _KDEUpper(torch.autograd.Function):
    """:func:`kde_xt_upper`'s value and its gradients with respect to ``t`` and ``sigma``."""

    @staticmethod
    def forward(ctx, t, sigma, d):
        n = t.shape[0]
        logk = d * (-0.5 / (sigma * sigma))
        # Kernel values below e^-80 (< 2e-35 against the self term 1 in every row's sum) are
        # set to exactly 0: left in, they are subnormal floats, which make exp ~10x slower.
        logk = torch.where(logk > -80.0, logk, -math.inf)
        lse = torch.logsumexp(logk, dim=1)
        ctx.save_for_backward(t, sigma, logk, lse)
        return (math.log(n) - lse.mean()) / _LN2

    @staticmethod
    def backward(ctx, grad):
        t, sigma, logk, lse = ctx.saved_tensors
        n = t.shape[0]
        w = (logk - lse[:, None]).exp_()  # row-normalised kernel, w_ij
        dt = dsigma = None
        if ctx.needs_input_grad[0]:
            g = w + w.T
            x = t - t.mean(dim=0, keepdim=True)
            dt = (g.sum(dim=1, keepdim=True) * x - g @ x) * (grad / (n * sigma * sigma * _LN2))
        if ctx.needs_input_grad[1]:  # dI/dsigma = -(1/N ln 2) sum_ij w_ij D_ij / sigma^3
            wd = torch.where(w > 0, w * logk, 0.0).sum()  # w_ij * (-D_ij / (2 sigma^2))
            dsigma = grad * 2.0 * wd / (n * sigma * _LN2)
        return dt, dsigma, None


@torch.no_grad()
def batch_spread(t: Tensor, *, k: int = SPREAD_K, sq_dists: Tensor | None = None) -> Tensor:
    """Mean over rows of the distance to the k-th nearest other row (detached, 0-d).

    The ``"knn"`` rule of :func:`ckptlab.metrics.mi_relative.layer_scale` (a duplicate row is a
    neighbour at distance 0), with ``k`` lowered to ``N - 1`` for batches of at most ``k``
    rows.

    Parameters
    ----------
    t : Tensor of shape (N, d)
        N >= 2.
    k : int, default 10
        Neighbour rank, >= 1.
    sq_dists : Tensor of shape (N, N), optional
        Squared distances of ``t`` with a zero diagonal, if already computed.

    Returns
    -------
    Tensor
        0-d, in the units of ``t``.
    """
    _check_layer(t)
    k = min(check_int("k", k, min=1), t.shape[0] - 1)
    d = (_sq_dists(t) if sq_dists is None else sq_dists).detach()
    # the self distance 0 is the smallest entry of its row: the (k+1)-th is the k-th other
    kth = torch.topk(d, k + 1, dim=1, largest=False).values[:, k]  # topk: 3x kthvalue's speed
    return kth.clamp_min(0.0).sqrt().mean()


def _check_layer(t) -> None:
    if not isinstance(t, Tensor) or t.ndim != 2 or not t.is_floating_point() or t.shape[0] < 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValidationError(f"t must be a floating tensor of shape (N, d) with N >= 2, got "
                              f"{shape}")


def resolve_nib_layer(model: nn.Module, name: str | None) -> tuple[str, int | None]:
    """The module the penalty reads and the sequence position it takes (None: all of it).

    ``name`` None is the model's first hidden layer (its first analysis tap). A module that is
    one of the model's analysis taps is read as the analysis reads it (the transformer's layers
    at the last position, the ``"="`` token); any other module's output is flattened per row.

    Raises
    ------
    ValidationError
        ``name`` is not a module of ``model``.
    """
    taps = model.analysis_taps()["layers"] if hasattr(model, "analysis_taps") else []
    modules = dict(model.named_modules())
    if name is None:
        if not taps:
            raise ValidationError("nib_layer must be given for a model without analysis taps "
                                  "(a module name from model.named_modules())")
        name = taps[0]["module"]
    if name not in modules or name == "":
        hidden = ", ".join(repr(t["module"]) for t in taps) or "none declared"
        raise ValidationError(
            f"nib_layer must be the name of a module of the model ({type(model).__name__}; its "
            f"hidden layers: {hidden}), got {name!r}")
    position = next((t.get("position") for t in taps if t["module"] == name
                     and t.get("side", "output") == "output"), None)
    return name, position


class NIBPenalty:
    """``beta x`` the Kolchinsky-Tracey upper bound on I(X;T) of one layer, on the batch.

    Use :meth:`capture` around the training forward pass (a forward hook on the module, removed
    afterwards, so evaluation passes are not captured), then :meth:`penalty` for the term to add
    to the loss. The noise is ``sigma = resolution * batch_spread(T)``, the spread detached (see
    the module docstring for why).

    Parameters
    ----------
    model : torch.nn.Module
    layer : str or None
        Module name (:func:`resolve_nib_layer`).
    beta : float
        Weight of the term, >= 0 (in loss units per bit).
    resolution : float
        ``c`` in ``sigma = c * spread``, > 0.

    Attributes
    ----------
    last_bits, last_sigma : Tensor or None
        The bound (bits) and sigma of the latest :meth:`penalty`, detached.
    """

    def __init__(self, model: nn.Module, layer: str | None, *, beta: float, resolution: float):
        self.name, self.position = resolve_nib_layer(model, layer)
        self.module = dict(model.named_modules())[self.name]
        self.beta = check_float("nib_beta", beta, min=0.0)
        self.resolution = check_float("nib_resolution", resolution, min=0.0,
                                      min_inclusive=False)
        self._out: list[Tensor] = []
        self.last_bits: Tensor | None = None
        self.last_sigma: Tensor | None = None

    def capture(self):
        """Context manager: record the module's output during one forward pass."""
        return _Capture(self)

    def penalty(self) -> Tensor:
        """``beta * I_upper(X;T)`` of the captured layer (in the loss's graph)."""
        if len(self._out) != 1:
            raise ValidationError(
                f"nib_layer {self.name!r} must run exactly once per forward pass, ran "
                f"{len(self._out)} times")
        t = self._out.pop()
        if not isinstance(t, Tensor) or t.ndim < 2:
            raise ValidationError(f"nib_layer {self.name!r} must output a tensor (N, ...), got "
                                  f"{type(t).__name__}")
        t = t[:, self.position] if self.position is not None and t.ndim >= 3 else t
        t = t.reshape(t.shape[0], -1)
        d = _sq_dists(t)
        sigma = self.resolution * batch_spread(t, sq_dists=d)
        if not bool(sigma > 0):  # every row has >= 10 copies: nothing to compress, no term
            bits = t.sum() * 0.0
        else:
            bits = kde_xt_upper(t, sigma, sq_dists=d)
        self.last_bits, self.last_sigma = bits.detach(), sigma
        return self.beta * bits

    def metrics(self) -> dict:
        """``nib_penalty`` (the bound, bits) and ``nib_sigma`` of the latest update."""
        if self.last_bits is None:
            return {}
        return {"nib_penalty": self.last_bits.item(), "nib_sigma": self.last_sigma.item()}


class _Capture:
    def __init__(self, nib: NIBPenalty):
        self.nib = nib
        self.handle = None

    def __enter__(self):
        self.nib._out.clear()
        self.handle = self.nib.module.register_forward_hook(
            lambda mod, args, out: self.nib._out.append(out))
        return self.nib

    def __exit__(self, *exc):
        self.handle.remove()
        return False
