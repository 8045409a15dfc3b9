"""Small probe models rebuilt from a JSON-able spec: an MLP and a grokking transformer.

``build_model({"name": "mlp", "kwargs": {...}}, seed=0)`` resolves the name through the fixed
:data:`MODEL_REGISTRY`; every model is a :class:`ProbeModel` exposing ``embed``, ``trunk``
(hidden layers and pre-activations) and ``lmn_split`` for the analysis layer.
"""

from __future__ import annotations

from .base import ACTIVATIONS, ModelOutput, ProbeModel
from .mlp import MLP
from .registry import MODEL_REGISTRY, build_model, validate_spec
from .transformer import Transformer

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "MODEL_REGISTRY",
    "ModelOutput",
    "ProbeModel",
    "Transformer",
    "build_model",
    "validate_spec",
]
