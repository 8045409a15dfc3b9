"""Rebuild a model from its JSON spec through a fixed registry, never by importing a name.

An archive stores ``{"name": "mlp", "kwargs": {...}}``; the name is looked up in
:data:`MODEL_REGISTRY` only, so reading an archive cannot import or run code it names.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType

import torch

from .._checks import check_int
from ..errors import ModelSpecError
from .base import ProbeModel
from .mlp import MLP
from .transformer import Transformer

_SEEDED_BUILD = threading.Lock()

__all__ = ["MODEL_REGISTRY", "build_model", "validate_spec"]

#: Registry name -> model class. Read-only: the set of buildable architectures is fixed.
MODEL_REGISTRY: Mapping[str, type[ProbeModel]] = MappingProxyType(
    {"mlp": MLP, "transformer": Transformer}
)

_SPEC_KEYS = ("name", "kwargs")


def validate_spec(spec: Mapping) -> dict:
    """Check a model spec and return a normalised copy with every default filled in.

    Parameters
    ----------
    spec : Mapping
        ``{"name": <registry name>, "kwargs": {...}}``. A kwarg set to None (JSON null)
        counts as not given. The input is not modified.

    Returns
    -------
    dict
        ``{"name": str, "kwargs": dict}`` of plain JSON types; validating it again returns it
        unchanged.

    Raises
    ------
    ModelSpecError
        If the spec is not such a mapping, names an unknown architecture, or carries an
        unknown or missing kwarg, a wrong type or an impossible value.
    """
    if not isinstance(spec, Mapping):
        raise ModelSpecError(
            f"spec must be a mapping with keys 'name' and 'kwargs', got {type(spec).__name__}"
        )
    extra = [k for k in spec if k not in _SPEC_KEYS]
    if extra:
        raise ModelSpecError(
            f"spec has unknown key(s) {', '.join(map(repr, extra))}; allowed: 'name', 'kwargs'"
        )
    if "name" not in spec:
        raise ModelSpecError("spec is missing the key 'name'")
    name = spec["name"]
    if not isinstance(name, str) or name not in MODEL_REGISTRY:
        raise ModelSpecError(
            f"unknown model name {name!r}; known: {', '.join(map(repr, MODEL_REGISTRY))}"
        )
    kwargs = spec.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    return {"name": name, "kwargs": MODEL_REGISTRY[name].validate_kwargs(kwargs)}


def build_model(spec: Mapping, *, seed: int | None = None) -> ProbeModel:
    """Build the model a spec describes, on the CPU, in the default dtype.

    Parameters
    ----------
    spec : Mapping
        ``{"name": ..., "kwargs": {...}}``, see :func:`validate_spec`.
    seed : int, optional
        Seed of the initialisation, >= 0. When given the parameters are reproducible and the
        global torch RNG state is left as it was (the build runs in ``torch.random.fork_rng``
        on a reseeded CPU generator). When None the global RNG draws them.

    Returns
    -------
    ProbeModel
        A fresh model; ``build_model(model.spec)`` builds the same architecture.

    Raises
    ------
    ModelSpecError
        If the spec is invalid (see :func:`validate_spec`).
    ValidationError
        If ``seed`` is not an integer in [0, 2**64 - 1].
    """
    norm = validate_spec(spec)
    if seed is not None:
        seed = check_int("seed", seed, min=0, max=2**64 - 1)
    cls = MODEL_REGISTRY[norm["name"]]
    # Built on the CPU whatever the default device, so the CPU generator is the only one drawn
    # from; reseeding it alone (not torch.manual_seed) leaves every CUDA generator untouched.
    with torch.device("cpu"):
        if seed is None:
            return cls(**norm["kwargs"])
        # The global generator is the process's: two threads building at once (a study's seeds
        # on a threaded scheduler) would draw from each other's seed without the lock.
        with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return cls(**norm["kwargs"])
