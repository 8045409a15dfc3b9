"""The measure families :func:`ckptlab.analyze` knows, in the order results are assembled.

Adding a family: write its module here (a :class:`~.base.Family` subclass) and add it below.
"""

from __future__ import annotations

from .base import Family, NotApplicable, Option, Output, Setup
from .lc import LocalComplexity
from .lmn import LinearMappingNumber
from .mi import MIKDE, ActivationRange, MIAdaptive, MIBinning, MIRenyi, add_saturation
from .mi_scaled import MIKDERelative, MIProjectedBinning, MIProjectedKNN, MIRenyiNormalised
from .rank import RepresentationRank
from .weights import WeightStats

__all__ = ["FAMILIES", "INTERNAL", "DATASET_HOOKS", "Family", "NotApplicable", "Option", "Output", "Setup"]

#: name -> family class, for the families a user selects with ``metrics`` / ``estimators``.
FAMILIES: dict[str, type[Family]] = {
    cls.name: cls
    for cls in (MIBinning, MIAdaptive, MIKDE, MIRenyi, MIKDERelative, MIRenyiNormalised,
                MIProjectedBinning, MIProjectedKNN, LocalComplexity, LinearMappingNumber,
                WeightStats, RepresentationRank)
}
#: Families the orchestrator runs for another family's pre-pass (never selected by users).
INTERNAL: dict[str, type[Family]] = {ActivationRange.name: ActivationRange}
#: Functions run on the assembled Dataset (derived variables that need several families).
DATASET_HOOKS = (add_saturation,)
