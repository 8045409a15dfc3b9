"""What a measure family is: one class that owns its options, fixed inputs, kernels and outputs.

A family is the unit the orchestrator caches and schedules. It is built once per analysis from
a :class:`Setup` (the run's data, the probe set, the resolved layers, the validated options),
prepares what stays fixed across checkpoints (subsets, directions, ranges), states its cache
parameters, and computes its variables for one :class:`~ckptlab.analysis.compute.Block` of
checkpoints at a time. The orchestrator never names a family: adding one is a new module here
and one line in :data:`ckptlab.analysis.families.FAMILIES`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..._checks import check_int
from ...errors import ValidationError

__all__ = ["Family", "Output", "Option", "NotApplicable", "Setup", "flat_attrs"]


@dataclass(frozen=True)
class Output:
    """One output variable of a family.

    Attributes
    ----------
    dims : tuple of str
        Dims after ``step``.
    long_name, units : str
        What the Dataset variable says of itself.
    var : str, optional
        Name of the Dataset variable (default: the output's own name).
    label : str, optional
        When given, the output is one entry of ``var`` stacked along ``stack_dim`` under this
        label (MI estimators share ``mi_xt`` along ``estimator``).
    stack_dim : str, default "estimator"
    """

    dims: tuple
    long_name: str
    units: str
    var: str | None = None
    label: str | None = None
    stack_dim: str = "estimator"


@dataclass(frozen=True)
class Option:
    """An option a family adds to :func:`ckptlab.analyze` (beyond the shared ones)."""

    default: object
    check: object  # callable(name, value) -> normalised value; raises ValidationError
    doc: str = ""


class NotApplicable(Exception):
    """Raised by a family's constructor when its measure is not defined for this model/run."""


def flat_attrs(prefix: str, params: dict) -> dict:
    """Nested parameters -> flat attrs (lists as JSON text)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flat_attrs(f"{prefix}{k}_", v))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


class Setup:
    """Everything a family may use to prepare itself (built once, in the calling process).

    Attributes
    ----------
    opts : AnalysisOptions
        The validated shared options.
    extra : dict
        Validated family options (:attr:`Family.options`).
    explicit : dict
        Subset sizes the user gave explicitly (None where not).
    data : dict of ndarray
        The archive's data (x_train, y_train, x_test, y_test).
    layer_map : LayerMap or None
        The model's taps (None when no family needs the model).
    probe : dict
        ``x``, ``y``: the probe set for MI and rank; ``params``: its description.
    model : CapturedModel or None
        The model with the first checkpoint loaded (for checks a family makes up front).
    last_model : CapturedModel or None
        The same with the last checkpoint.
    matrix_names : list of str
        Floating parameters of >= 2 dims (the weight matrices).
    float_names : list of str
        Every floating parameter.
    """

    def __init__(self, *, opts, extra, explicit, data, layer_map, probe, model, last_model,
                 matrix_names, float_names, run_header):
        self.opts, self.extra, self.explicit = opts, extra, explicit
        self.data, self.layer_map, self.probe = data, layer_map, probe
        self.model, self.last_model = model, last_model
        self.matrix_names = matrix_names
        self.float_names = float_names
        self.run_header = run_header

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator of its own per fixed choice: one subset never shifts when another
        changes size (their cache keys would not notice)."""
        return np.random.default_rng([self.opts.seed, zlib.crc32(purpose.encode())])

    def pick(self, purpose: str, n: int, k: int) -> np.ndarray:
        """k of n indices, sorted, from the generator of ``purpose``."""
        return np.sort(self.rng(purpose).permutation(n)[:k])

    def size(self, name: str, cap: int, available: int, what: str, *, minimum: int = 2) -> int:
        """An explicit subset size (checked against what is available) or min(cap, available)."""
        value = self.explicit.get(name)
        if value is None:
            return min(cap, available)
        v = check_int(name, value, min=minimum)
        if v > available:
            raise ValidationError(f"{name} must be <= the number of {what} ({available}), got {v}")
        return v


class Family:
    """Base class of a measure family (see the module docstring).

    Class attributes
    ----------------
    name : str
        Registry and cache name (``"mi-kde"``).
    metric : str
        The ``metrics=`` entry that selects it (``"mi"``).
    estimator : str, optional
        For ``metric == "mi"``: the ``estimators=`` entry that selects it.
    needs : frozenset of str
        ``"model"`` (a module to run), ``"data"`` (the archive's x/y), ``"hidden"`` (the probe
        set's hidden representations, computed once per block for every family that needs
        them).
    outputs : dict of str to Output
    options : dict of str to Option
        Options of this family only (the shared ones live in ``AnalysisOptions``).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    estimator: ClassVar[str | None] = None
    needs: ClassVar[frozenset] = frozenset()
    outputs: ClassVar[dict]
    options: ClassVar[dict] = {}
    note: ClassVar[str] = ""  # one line on what the numbers are, stored in the attrs

    params: dict  # the family's parameters (JSON): the cache key, and its outputs' attrs
    coords: dict  # labels of the dims this family introduces
    #: Entries of ``params`` computed from the others (not choices): left out of the cache key
    #: where their last bits depend on the machine (a BLAS eigensolver's thread count), which
    #: would otherwise make every process's key its own and recompute a stored analysis.
    derived: ClassVar[tuple] = ()

    def __init__(self, setup: Setup):
        raise NotImplementedError

    @classmethod
    def constants(cls, params: dict) -> dict:
        """Values without a step dim: ``{(var, label): (value, long_name, units, stack_dim)}``,
        stacked along ``stack_dim`` under ``label`` (MI: each estimator's ceilings)."""
        return {}

    def key_params(self) -> dict:
        """What the cache key hashes: ``params`` without the :attr:`derived` entries."""
        return {k: v for k, v in self.params.items() if k not in self.derived}

    def prepare(self, runner) -> None:
        """A pre-pass over the checkpoints, when the family needs one (fixed binning range)."""

    def compute(self, block) -> dict:
        """``{output name: (m, ...) float64 array}`` for one block of checkpoints."""
        raise NotImplementedError

    @classmethod
    def attrs_of(cls, params: dict) -> dict:
        """Attrs of the family's Dataset variables: its parameters, flattened (the layers'
        modules are stated once, in the Dataset's ``layer_modules`` attr)."""
        own = {k: v for k, v in params.items() if k != "layers"}
        if cls.note:
            own["note"] = cls.note
        if cls.estimator is not None:
            own.pop("probe", None)
            return flat_attrs(f"{cls.estimator}_", own)
        return flat_attrs("", own)

    def nan_rows(self, out: dict, finite: np.ndarray) -> dict:
        """NaN in every row of a diverged checkpoint, whatever the kernels made of it."""
        for arr in out.values():
            arr[~finite] = np.nan
        return out
