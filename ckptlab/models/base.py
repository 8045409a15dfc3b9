"""The contract every probe model honours, and the spec checks the models share.

A probe model is a small ``nn.Module`` that the analysis layer rebuilds from a plain JSON spec
``{"name": ..., "kwargs": {...}}`` and then opens up: :meth:`ProbeModel.embed` gives the first
continuous representation of the input, :meth:`ProbeModel.trunk` runs from there to the logits
and captures every hidden layer (for mutual information) and every pre-activation whose sign
pattern defines a linear region (for local complexity), and :meth:`ProbeModel.lmn_split` cuts
the network where the linear mapping number is measured.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Mapping
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_float, check_int
from ..errors import ModelSpecError, ValidationError

__all__ = ["ACTIVATIONS", "ACTIVATION_MODULES", "ModelOutput", "ProbeModel"]

#: Activation names a spec may use, and the functions they stand for. GELU is the exact (erf)
#: form, as in Nanda et al.'s grokking model, not the tanh approximation.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "silu": F.silu,
}

#: The same activations as modules: the models call them as submodules, so the analysis layer
#: captures their inputs and outputs with forward hooks, as it does for anyone's model.
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}

#: Activations whose output is confined to a fixed interval (the binning MI estimators use it).
_BOUNDED: dict[str, tuple[float, float]] = {"tanh": (-1.0, 1.0)}


class ModelOutput(NamedTuple):
    """What :meth:`ProbeModel.trunk` returns.

    Attributes
    ----------
    logits : Tensor
        ``(N, n_classes)`` outputs.
    hidden : dict[str, Tensor]
        Ordered ``name -> (N, d)`` hidden representations (post-activation), keyed by
        :attr:`ProbeModel.layer_names`. Empty when ``capture=False``.
    preacts : dict[str, Tensor]
        Ordered ``name -> (N, d')`` pre-activations of the neurons whose sign pattern defines
        the linear regions, keyed by :attr:`ProbeModel.preact_names`. Empty when
        ``capture=False``.
    """

    logits: Tensor
    hidden: dict[str, Tensor]
    preacts: dict[str, Tensor]


class ProbeModel(nn.Module, abc.ABC):
    """Abstract base of every model ckptlab rebuilds from a spec.

    Attributes
    ----------
    spec_name : str
        The registry name (class attribute), e.g. ``"mlp"``.
    input_kind : str
        ``"tokens"`` (int64 ``(N, n_tokens)`` ids) or ``"continuous"`` (float ``(N, in_dim)``).
    embed_width : int
        ``D``, the width of :meth:`embed`'s output and of :meth:`trunk`'s input.
    layer_names : tuple of str
        Names of ``ModelOutput.hidden``, from input to output.
    preact_names : tuple of str
        Names of ``ModelOutput.preacts``, from input to output.
    last_position_only : bool
        While True, the modules of :meth:`last_position_modules` compute the last sequence
        position only (the one the logits are read from); :meth:`forward`'s logits are the
        same. The analysis sets it for passes that read nothing else there. Default False.
    """

    spec_name: ClassVar[str]
    input_kind: str
    embed_width: int
    layer_names: tuple[str, ...]
    preact_names: tuple[str, ...]

    def __init__(self, kwargs: dict, bounds: dict[str, tuple[float, float] | None]):
        super().__init__()
        self._kwargs = kwargs
        self._bounds = bounds
        self.last_position_only = False

    def last_position_modules(self) -> tuple[str, ...]:
        """Names of the modules (and, by prefix ``name.``, their children) whose outputs hold
        the last position only while :attr:`last_position_only` is set; () for a model
        without sequence positions."""
        return ()

    # ---- spec -------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def validate_kwargs(cls, kwargs: Mapping) -> dict:
        """Return a normalised copy of ``kwargs`` with defaults filled in.

        Raises
        ------
        ModelSpecError
            On an unknown or missing kwarg, a wrong type or an impossible value.
        """

    @property
    def spec(self) -> dict:
        """The normalised JSON-able spec; ``build_model(m.spec)`` rebuilds this architecture."""
        return {"name": self.spec_name, "kwargs": copy.deepcopy(self._kwargs)}

    @property
    def layer_bounds(self) -> dict[str, tuple[float, float] | None]:
        """``layer name -> (lo, hi)`` for layers confined to an interval (tanh), else None."""
        return dict(self._bounds)

    # ---- the three cuts -----------------------------------------------------------------------

    @abc.abstractmethod
    def embed(self, x) -> Tensor:
        """Map raw inputs to the first continuous representation, ``(N, embed_width)``."""

    @abc.abstractmethod
    def trunk(self, e: Tensor, *, capture: bool = True) -> ModelOutput:
        """Run from :meth:`embed`'s output to the logits, capturing hidden layers."""

    @abc.abstractmethod
    def analysis_taps(self) -> dict:
        """Where the analysis layer reads this model, as module names (JSON-able).

        Returns
        -------
        dict
            ``{"layers": [...], "preacts": [...], "embedding": str or None, "lmn_from":
            str or dict or None}``; each layer entry is ``{"module": name, "label": label,
            "side": "output" or "input", "position": int or None}``. The labels are the names
            of :attr:`layer_names` / :attr:`preact_names`, so results read the same as the
            model's own :meth:`trunk`.
        """

    @abc.abstractmethod
    def lmn_split(self) -> tuple[Callable[[object], Tensor], Callable[[Tensor], Tensor]]:
        """Return ``(to_h, head)`` with ``head(to_h(x)) == forward(x)``."""

    def forward(self, x) -> Tensor:
        """Logits for raw inputs ``x``: ``trunk(embed(x), capture=False).logits``."""
        return self.trunk(self.embed(x), capture=False).logits

    # ---- helpers for subclasses ---------------------------------------------------------------

    def _param(self) -> Tensor:
        # Any parameter tells the dtype and device the model lives in.
        return next(self.parameters())

    def _check_embedded(self, e, *, name: str = "e", width: int | None = None) -> Tensor:
        """Validate a float ``(N, width)`` tensor (default: the trunk's input) and cast it."""
        width = self.embed_width if width is None else width
        if not isinstance(e, Tensor):
            raise ValidationError(f"{name} must be a torch.Tensor, got {type(e).__name__}")
        if not torch.is_floating_point(e):
            raise ValidationError(f"{name} must be a floating-point tensor, got dtype {e.dtype}")
        if e.ndim != 2 or e.shape[1] != width:
            raise ValidationError(
                f"{name} must have shape (N, {width}), got {tuple(e.shape)}"
            )
        return e.to(dtype=self._param().dtype)

    def _check_tokens(self, x, *, n_tokens: int, vocab_size: int) -> Tensor:
        """Validate ids ``(N, n_tokens)`` in ``[0, vocab_size)``; move them to the model."""
        x = torch.as_tensor(x, device=self._param().device)
        if x.dtype == torch.bool or torch.is_floating_point(x) or torch.is_complex(x):
            raise ValidationError(f"x must hold integer token ids, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != n_tokens:
            raise ValidationError(
                f"x must have shape (N, {n_tokens}) (n_tokens token ids per row), "
                f"got {tuple(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
            raise ValidationError(
                f"x token ids must be in [0, {vocab_size - 1}] (vocab_size={vocab_size}), "
                f"got values in [{int(x.min())}, {int(x.max())}]"
            )
        return x.long()


# ---- spec checks: every failure is a ModelSpecError prefixed with the model name ---------------


def _reraise(model: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValidationError as err:
        raise ModelSpecError(f"{model}: {err}") from None


def spec_int(model: str, name: str, value, *, min: int | None = None) -> int:
    return _reraise(model, check_int, name, value, min=min)


def spec_float(model: str, name: str, value, **bounds) -> float:
    return _reraise(model, check_float, name, value, **bounds)


def spec_choice(model: str, name: str, value, choices) -> str:
    return _reraise(model, check_choice, name, value, choices)


def spec_bool(model: str, name: str, value) -> bool:
    # 0/1 are not accepted: JSON has true/false, and an int here is more likely a slip.
    if isinstance(value, bool):
        return value
    raise ModelSpecError(f"{model}: {name} must be a bool (true/false), got {value!r}")


def spec_kwargs(
    model: str, kwargs, *, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict:
    """Check the kwarg names; return a plain dict without the None (JSON null) values."""
    if not isinstance(kwargs, Mapping):
        raise ModelSpecError(
            f"{model}: kwargs must be a mapping of argument names to values, "
            f"got {type(kwargs).__name__}"
        )
    allowed = (*required, *optional)
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ModelSpecError(
            f"{model}: unknown kwarg(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(map(repr, allowed))}"
        )
    # A kwarg set to None counts as not given, so a spec may spell out its defaults as null.
    given = {k: v for k, v in kwargs.items() if v is not None}
    missing = [k for k in required if k not in given]
    if missing:
        raise ModelSpecError(
            f"{model}: missing required kwarg(s) {', '.join(map(repr, missing))}"
        )
    return given


def scale_parameters(module: nn.Module, alpha: float) -> None:
    """Multiply every parameter by ``alpha`` in place (Omnigrok's initialisation scale)."""
    if alpha != 1.0:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(alpha)


def init_embedding_(weight: Tensor, d_model: int) -> None:
    """N(0, 1/d_model) entries: residual vectors of norm ~1 (Nanda et al.'s W_E and W_pos)."""
    with torch.no_grad():
        weight.normal_(0.0, 1.0 / math.sqrt(d_model))


def bounds_for(activation: str) -> tuple[float, float] | None:
    return _BOUNDED.get(activation)
