"""Multilayer perceptron on continuous inputs or on embedded tokens."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .base import (
    ACTIVATION_MODULES,
    ACTIVATIONS,
    ModelOutput,
    ProbeModel,
    bounds_for,
    scale_parameters,
    spec_bool,
    spec_choice,
    spec_float,
    spec_int,
    spec_kwargs,
)
from ..errors import ModelSpecError, ValidationError

__all__ = ["MLP"]


class MLP(ProbeModel):
    """Fully connected network ``in -> widths[0] -> ... -> widths[-1] -> n_classes``.

    Two input kinds: continuous rows of ``in_dim`` floats, or ``n_tokens`` token ids, each
    embedded by one shared table of ``vocab_size x embed_dim`` and concatenated (the Liu,
    Zhong and Tegmark 2023 setting: two tokens, embedding 32, SiLU). Give exactly one of
    ``in_dim`` and ``vocab_size``.

    Parameters
    ----------
    widths : list of int
        Hidden widths, non-empty, each >= 1. Hidden layer ``i`` is named ``"hidden{i}"``; the
        logits are not a hidden layer.
    n_classes : int
        Number of outputs, >= 1. One output is allowed for regression-like targets (MSE).
    activation : {"relu", "gelu", "tanh", "silu"}, default "relu"
        Hidden-layer nonlinearity (GELU is the exact erf form).
    alpha : float, default 1.0
        Every parameter, embedding included, is multiplied by ``alpha`` after PyTorch's
        default initialisation (Omnigrok's initialisation scale; its MNIST recipe uses 8).
    bias : bool, default True
        Whether the linear layers (hidden and read-out) carry a bias.
    in_dim : int, optional
        Input width for continuous inputs.
    vocab_size : int, optional
        Number of token ids for token inputs.
    n_tokens : int, default 2
        Tokens per row (token inputs only).
    embed_dim : int
        Embedding width per token (required for token inputs). The embedding keeps PyTorch's
        default N(0, 1) initialisation.

    Notes
    -----
    ``embed`` is the identity (cast to the model's dtype) for continuous inputs and the
    concatenated token embeddings ``(N, n_tokens * embed_dim)`` for token inputs. ``preacts``
    holds each hidden layer's pre-activation under the hidden layer's name.

    References
    ----------
    Liu, Michaud, Tegmark, "Omnigrok: grokking beyond algorithmic data", arXiv 2210.01117.
    Liu, Zhong, Tegmark, "Grokking as compression", arXiv 2310.05918.
    """

    spec_name = "mlp"
    _REQUIRED = ("widths", "n_classes")
    _OPTIONAL = ("activation", "alpha", "bias", "in_dim", "vocab_size", "n_tokens", "embed_dim")

    def __init__(
        self,
        *,
        widths: list[int],
        n_classes: int,
        activation: str = "relu",
        alpha: float = 1.0,
        bias: bool = True,
        in_dim: int | None = None,
        vocab_size: int | None = None,
        n_tokens: int | None = None,
        embed_dim: int | None = None,
    ):
        kw = self.validate_kwargs(
            dict(
                widths=widths, n_classes=n_classes, activation=activation, alpha=alpha,
                bias=bias, in_dim=in_dim, vocab_size=vocab_size, n_tokens=n_tokens,
                embed_dim=embed_dim,
            )
        )
        names = tuple(f"hidden{i}" for i in range(len(kw["widths"])))
        super().__init__(kw, {n: bounds_for(kw["activation"]) for n in names})
        self.layer_names = names
        self.preact_names = names

        if "vocab_size" in kw:
            self.input_kind = "tokens"
            self.embedding = nn.Embedding(kw["vocab_size"], kw["embed_dim"])
            self.embed_width = kw["n_tokens"] * kw["embed_dim"]
        else:
            self.input_kind = "continuous"
            self.embedding = None
            self.embed_width = kw["in_dim"]
        dims = [self.embed_width, *kw["widths"]]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=kw["bias"]) for a, b in zip(dims[:-1], dims[1:])
        )
        # one activation module per layer (no parameters: the state dict is unchanged)
        self.acts = nn.ModuleList(ACTIVATION_MODULES[kw["activation"]]() for _ in kw["widths"])
        self.readout = nn.Linear(dims[-1], kw["n_classes"], bias=kw["bias"])
        scale_parameters(self, kw["alpha"])

    @classmethod
    def validate_kwargs(cls, kwargs: Mapping) -> dict:
        m = cls.spec_name
        given = spec_kwargs(m, kwargs, required=cls._REQUIRED, optional=cls._OPTIONAL)
        widths = given["widths"]
        if (
            not isinstance(widths, (list, tuple))
            or not widths
            or not all(_is_pos_int(w) for w in widths)
        ):
            raise ModelSpecError(
                f"{m}: widths must be a non-empty list of positive integers, got {widths!r}"
            )
        kw = {
            "widths": [int(w) for w in widths],
            "n_classes": spec_int(m, "n_classes", given["n_classes"], min=1),
            "activation": spec_choice(
                m, "activation", given.get("activation", "relu"), ACTIVATIONS
            ),
            "alpha": spec_float(m, "alpha", given.get("alpha", 1.0), min=0.0, min_inclusive=False),
            "bias": spec_bool(m, "bias", given.get("bias", True)),
        }
        token_keys = [k for k in ("n_tokens", "embed_dim") if k in given]
        if "in_dim" in given and "vocab_size" in given:
            raise ModelSpecError(
                f"{m}: give either in_dim (continuous inputs) or vocab_size (token inputs), "
                f"not both; got in_dim={given['in_dim']!r}, vocab_size={given['vocab_size']!r}"
            )
        if "in_dim" in given:
            if token_keys:
                raise ModelSpecError(
                    f"{m}: {' and '.join(token_keys)} apply only to token inputs (vocab_size), "
                    f"got them with in_dim={given['in_dim']!r}"
                )
            kw["in_dim"] = spec_int(m, "in_dim", given["in_dim"], min=1)
        elif "vocab_size" in given:
            if "embed_dim" not in given:
                raise ModelSpecError(
                    f"{m}: missing required kwarg 'embed_dim' (token inputs need it)"
                )
            kw["vocab_size"] = spec_int(m, "vocab_size", given["vocab_size"], min=1)
            kw["n_tokens"] = spec_int(m, "n_tokens", given.get("n_tokens", 2), min=1)
            kw["embed_dim"] = spec_int(m, "embed_dim", given["embed_dim"], min=1)
        else:
            raise ModelSpecError(
                f"{m}: missing input size: give in_dim (continuous inputs) or vocab_size "
                f"(token inputs)"
            )
        return kw

    def embed(self, x) -> Tensor:
        """First continuous representation ``(N, embed_width)``.

        Continuous inputs: ``x`` cast to the model's dtype and device. Token inputs: the
        embeddings of the ``n_tokens`` ids, concatenated in input order.

        Raises
        ------
        ValidationError
            If ``x`` has the wrong shape or, for tokens, a non-integer dtype or ids outside
            ``[0, vocab_size)``.
        """
        if self.embedding is None:
            x = torch.as_tensor(x, device=self._param().device)
            if x.dtype == torch.bool or torch.is_complex(x):
                raise ValidationError(f"x must hold real numbers, got dtype {x.dtype}")
            return self._check_embedded(x.to(dtype=self._param().dtype), name="x")
        kw = self._kwargs
        ids = self._check_tokens(x, n_tokens=kw["n_tokens"], vocab_size=kw["vocab_size"])
        # rows from the embedding's output, not the ids: the analysis may substitute it
        e = self.embedding(ids)
        return e.reshape(e.shape[0], self.embed_width)

    def trunk(self, e: Tensor, *, capture: bool = True) -> ModelOutput:
        """Hidden layers and logits from :meth:`embed`'s output ``e`` of shape ``(N, D)``.

        Parameters
        ----------
        e : Tensor
            ``(N, embed_width)`` floats; cast to the model's dtype.
        capture : bool, default True
            Whether to return the hidden layers and pre-activations (else empty dicts).

        Returns
        -------
        ModelOutput
        """
        return self._run(self._check_embedded(e), 0, capture)

    def _run(self, h: Tensor, start: int, capture: bool) -> ModelOutput:
        hidden: dict[str, Tensor] = {}
        preacts: dict[str, Tensor] = {}
        for name, layer, act in zip(self.layer_names[start:], self.layers[start:],
                                    self.acts[start:]):
            z = layer(h)
            h = act(z)
            if capture:
                preacts[name] = z
                hidden[name] = h
        return ModelOutput(self.readout(h), hidden, preacts)

    def analysis_taps(self) -> dict:
        """Hidden layer ``i`` is the output of ``acts.i``, its pre-activation that module's input;
        the LMN cuts at the token embedding, or at the first hidden layer for continuous
        inputs (see :meth:`lmn_split`)."""
        layers = [{"module": f"acts.{i}", "label": n} for i, n in enumerate(self.layer_names)]
        preacts = [{**t, "side": "input"} for t in layers]
        tokens = self.input_kind == "tokens"
        return {"layers": layers, "preacts": preacts,
                "embedding": "embedding" if tokens else None,
                "lmn_from": "embedding" if tokens else layers[0]}

    def lmn_split(self) -> tuple[Callable[[object], Tensor], Callable[[Tensor], Tensor]]:
        """Cut for the linear mapping number: ``head(to_h(x)) == forward(x)``.

        Continuous inputs: ``h`` is the first hidden layer (post-activation), ``(N,
        widths[0])``. Token inputs: ``h`` is the concatenated embedding, ``(N, n_tokens *
        embed_dim)``, because Liu, Zhong and Tegmark (2023) treat the embedding as the first
        layer.

        Returns
        -------
        to_h : callable
            Raw inputs ``x`` -> ``h``.
        head : callable
            ``h`` -> logits ``(N, n_classes)``.
        """
        if self.input_kind == "tokens":
            return self.embed, lambda h: self.trunk(h, capture=False).logits

        def to_h(x) -> Tensor:
            return self.acts[0](self.layers[0](self.embed(x)))

        def head(h: Tensor) -> Tensor:
            h = self._check_embedded(h, name="h", width=self._kwargs["widths"][0])
            return self._run(h, 1, False).logits

        return to_h, head


def _is_pos_int(w) -> bool:
    return isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1
