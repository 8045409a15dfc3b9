"""Decoder-only transformer of the grokking papers (Power et al. 2022; Nanda et al. 2023)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .base import (
    ACTIVATION_MODULES,
    ACTIVATIONS,
    ModelOutput,
    ProbeModel,
    bounds_for,
    init_embedding_,
    spec_bool,
    spec_choice,
    spec_int,
    spec_kwargs,
)
from ..errors import ModelSpecError

__all__ = ["Transformer", "CausalSelfAttention", "Block"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, written out (q, k, v, o projections without bias).

    Explicit rather than ``nn.MultiheadAttention`` so it reads top to bottom and runs in any
    floating dtype, float64 included.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, last_only: bool = False) -> Tensor:
        """``(N, S, d_model) -> (N, S, d_model)``; position s attends to positions <= s.

        ``last_only``: the output at the last position only, ``(N, 1, d_model)`` (its query
        attends to every position, so no mask is needed).
        """
        n, s, d = x.shape

        def heads(t: Tensor, rows: int) -> Tensor:  # (N, rows, d_model) -> (N, H, rows, d_head)
            return t.view(n, rows, self.n_heads, self.d_head).transpose(1, 2)

        k, v = heads(self.k(x), s), heads(self.v(x), s)
        if last_only:
            # one query row: products and sums (under vmap, a 1-row matmul copied its operands)
            q = self.q(x[:, -1]).view(n, self.n_heads, 1, self.d_head)
            scores = (q * k).sum(-1) / math.sqrt(self.d_head)  # (N, H, S)
            out = (scores.softmax(dim=-1).unsqueeze(-1) * v).sum(-2)  # (N, H, d_head)
            return self.o(out.reshape(n, 1, d))
        q = heads(self.q(x), s)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        # The diagonal is never masked, so no row is all -inf and softmax stays finite.
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, s, d)
        return self.o(out)


class Block(nn.Module):
    """Residual block: ``x + attn(ln1(x))``, then ``x + W_out act(W_in ln2(x) + b_in) + b_out``."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, layer_norm: bool,
                 activation: str = "gelu"):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.act = ACTIVATION_MODULES[activation]()  # a module, so hooks see it
        self.mlp_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor, capture: bool = False, last_only: bool = False):
        """The new residual stream; with ``capture`` also the MLP pre-activation and activation.

        ``last_only``: at the last position only, ``(N, 1, d_model)``: a position's stream
        depends on the earlier ones through attention alone, and the MLP is per position.
        """
        x = (x[:, -1:] if last_only else x) + self.attn(self.ln1(x), last_only=last_only)
        z = self.mlp_in(self.ln2(x))
        a = self.act(z)
        x = x + self.mlp_out(a)
        return (x, z, a) if capture else x


class Transformer(ProbeModel):
    """Decoder-only transformer reading ``"a b ="`` and predicting the answer at ``"="``.

    The input is ``n_tokens`` ids in ``[0, vocab_size)``; the model appends its own ``"="``
    token (id ``vocab_size``, so the embedding table has ``vocab_size + 1`` rows), adds learned
    position embeddings, runs ``n_layers`` causal blocks and reads the logits out of the last
    position (the ``"="``). Defaults are the model of de Mello Koch and Ghosh (2025), itself
    the grokking model of Nanda et al.: 2 layers, 4 heads, d_model 128, d_mlp 512, GELU, no
    LayerNorm.

    Parameters
    ----------
    vocab_size : int
        Number of input token ids (e.g. the modulus, or 120 for S5), >= 1.
    n_tokens : int, default 2
        Input tokens per row, before the appended ``"="``.
    n_classes : int, default vocab_size
        Number of outputs, >= 1.
    n_layers : int, default 2
    n_heads : int, default 4
        Must divide ``d_model``.
    d_model : int, default 128
    d_mlp : int, default 512
    activation : {"gelu", "relu", "tanh", "silu"}, default "gelu"
        MLP nonlinearity (GELU is the exact erf form).
    layer_norm : bool, default False
        Pre-LN blocks plus a final LayerNorm before the read-out when True. Nanda et al.'s
        model has none.

    Notes
    -----
    Initialisation (the paper does not state one): token and position embeddings N(0,
    1/d_model), as in Nanda et al.; linear layers keep PyTorch's default. Attention
    projections and the read-out have no bias, the MLP layers have one (Nanda et al.).

    Captured layers, for block ``i``: hidden ``"block{i}.mlp"`` is the MLP activation at the
    last position ``(N, d_mlp)`` and ``"block{i}.resid"`` the residual stream at the last
    position after the block ``(N, d_model)``; preacts ``"block{i}.mlp"`` are the MLP
    pre-activations at all ``S = n_tokens + 1`` positions, flattened position-major to
    ``(N, S * d_mlp)``. Softmax attention (and LayerNorm) are not piecewise linear, so those
    sign patterns delimit regions on which only the MLPs are linear.

    References
    ----------
    Power et al., "Grokking: generalization beyond overfitting", arXiv 2201.02177.
    Nanda et al., "Progress measures for grokking via mechanistic interpretability",
    arXiv 2301.05217.
    de Mello Koch and Ghosh, "A two-phase perspective on deep learning dynamics",
    arXiv 2504.12700.
    """

    spec_name = "transformer"
    _REQUIRED = ("vocab_size",)
    _OPTIONAL = (
        "n_tokens", "n_classes", "n_layers", "n_heads", "d_model", "d_mlp", "activation",
        "layer_norm",
    )

    def __init__(
        self,
        *,
        vocab_size: int,
        n_tokens: int = 2,
        n_classes: int | None = None,
        n_layers: int = 2,
        n_heads: int = 4,
        d_model: int = 128,
        d_mlp: int = 512,
        activation: str = "gelu",
        layer_norm: bool = False,
    ):
        kw = self.validate_kwargs(
            dict(
                vocab_size=vocab_size, n_tokens=n_tokens, n_classes=n_classes,
                n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp,
                activation=activation, layer_norm=layer_norm,
            )
        )
        hidden_names, preact_names, bounds = [], [], {}
        for i in range(kw["n_layers"]):
            hidden_names += [f"block{i}.mlp", f"block{i}.resid"]
            preact_names.append(f"block{i}.mlp")
            bounds[f"block{i}.mlp"] = bounds_for(kw["activation"])
            bounds[f"block{i}.resid"] = None
        super().__init__(kw, bounds)
        self.input_kind = "tokens"
        self.layer_names = tuple(hidden_names)
        self.preact_names = tuple(preact_names)
        self.seq_len = kw["n_tokens"] + 1
        self.embed_width = self.seq_len * kw["d_model"]

        d = kw["d_model"]
        self.token_embed = nn.Embedding(kw["vocab_size"] + 1, d)
        self.pos_embed = nn.Parameter(torch.empty(self.seq_len, d))
        init_embedding_(self.token_embed.weight, d)
        init_embedding_(self.pos_embed, d)
        self.blocks = nn.ModuleList(
            Block(d, kw["n_heads"], kw["d_mlp"], kw["layer_norm"], kw["activation"])
            for _ in range(kw["n_layers"])
        )
        self.ln_final = nn.LayerNorm(d) if kw["layer_norm"] else nn.Identity()
        self.unembed = nn.Linear(d, kw["n_classes"], bias=False)

    @classmethod
    def validate_kwargs(cls, kwargs: Mapping) -> dict:
        m = cls.spec_name
        given = spec_kwargs(m, kwargs, required=cls._REQUIRED, optional=cls._OPTIONAL)
        vocab_size = spec_int(m, "vocab_size", given["vocab_size"], min=1)
        kw = {
            "vocab_size": vocab_size,
            "n_tokens": spec_int(m, "n_tokens", given.get("n_tokens", 2), min=1),
            "n_classes": spec_int(m, "n_classes", given.get("n_classes", vocab_size), min=1),
            "n_layers": spec_int(m, "n_layers", given.get("n_layers", 2), min=1),
            "n_heads": spec_int(m, "n_heads", given.get("n_heads", 4), min=1),
            "d_model": spec_int(m, "d_model", given.get("d_model", 128), min=1),
            "d_mlp": spec_int(m, "d_mlp", given.get("d_mlp", 512), min=1),
            "activation": spec_choice(
                m, "activation", given.get("activation", "gelu"), ACTIVATIONS
            ),
            "layer_norm": spec_bool(m, "layer_norm", given.get("layer_norm", False)),
        }
        if kw["d_model"] % kw["n_heads"]:
            raise ModelSpecError(
                f"{m}: d_model must be divisible by n_heads, "
                f"got d_model={kw['d_model']}, n_heads={kw['n_heads']}"
            )
        return kw

    def embed(self, x) -> Tensor:
        """Token plus position embeddings of ``"x_1 ... x_n ="``, flattened to ``(N, S*d_model)``.

        Raises
        ------
        ValidationError
            If ``x`` is not ``(N, n_tokens)`` integer ids in ``[0, vocab_size)``.
        """
        kw = self._kwargs
        ids = self._check_tokens(x, n_tokens=kw["n_tokens"], vocab_size=kw["vocab_size"])
        eq = torch.full((ids.shape[0], 1), kw["vocab_size"], dtype=ids.dtype, device=ids.device)
        e = self.token_embed(torch.cat([ids, eq], dim=1)) + self.pos_embed
        # rows from the embedding's output, not the ids: the analysis may substitute it
        return e.reshape(e.shape[0], self.embed_width)

    def trunk(self, e: Tensor, *, capture: bool = True) -> ModelOutput:
        """Blocks and read-out from :meth:`embed`'s output ``e`` of shape ``(N, S*d_model)``.

        Parameters
        ----------
        e : Tensor
            ``(N, S * d_model)`` floats; cast to the model's dtype.
        capture : bool, default True
            Whether to return the hidden layers and pre-activations (else empty dicts).

        Returns
        -------
        ModelOutput
        """
        e = self._check_embedded(e)
        n = e.shape[0]
        resid = e.reshape(n, self.seq_len, self._kwargs["d_model"])
        hidden: dict[str, Tensor] = {}
        preacts: dict[str, Tensor] = {}
        final = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if not capture:
                resid = block(resid, last_only=self.last_position_only and i == final)
                continue
            resid, z, a = block(resid, capture=True)
            hidden[f"block{i}.mlp"] = a[:, -1]
            hidden[f"block{i}.resid"] = resid[:, -1]
            preacts[f"block{i}.mlp"] = z.reshape(n, -1)
        logits = self.unembed(self.ln_final(resid[:, -1]))
        return ModelOutput(logits, hidden, preacts)

    def last_position_modules(self) -> tuple[str, ...]:
        """The final block: only its last position reaches the logits (28% of the FLOPs of a
        forward pass of the default model are the other positions there)."""
        return (f"blocks.{len(self.blocks) - 1}",)

    def analysis_taps(self) -> dict:
        """Block ``i``: ``blocks.i.act`` (MLP activation) and ``blocks.i`` (residual stream) at
        the last position; pre-activations the input of ``blocks.i.act`` at every position.

        The embedding is read at ``token_embed``, before the (constant) position embeddings
        are added: a translation, which moves neither a neighbourhood nor an interpolation
        path, so local complexity and the LMN are the same as in :meth:`embed`'s space.
        """
        layers, preacts = [], []
        for i in range(self._kwargs["n_layers"]):
            layers += [{"module": f"blocks.{i}.act", "label": f"block{i}.mlp", "position": -1},
                       {"module": f"blocks.{i}", "label": f"block{i}.resid", "position": -1}]
            preacts.append({"module": f"blocks.{i}.act", "label": f"block{i}.mlp",
                            "side": "input"})
        return {"layers": layers, "preacts": preacts, "embedding": "token_embed",
                "lmn_from": "token_embed"}

    def lmn_split(self) -> tuple[Callable[[object], Tensor], Callable[[Tensor], Tensor]]:
        """Cut for the linear mapping number: ``h = embed(x)``, ``head = trunk(h).logits``.

        The embedding is the transformer's first layer in the sense of Liu, Zhong and Tegmark
        (2023): ``h`` is ``(N, S * d_model)``, the whole embedded sequence.
        """
        return self.embed, lambda h: self.trunk(h, capture=False).logits
