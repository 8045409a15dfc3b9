"""Analysis options: validated once, before any Dask graph is built, and split per family.

Each metric *family* (one cached unit of results) has its own parameter dict; the cache key of a
family is a hash of exactly those parameters, so changing one never reuses old results.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass

from .._checks import check_choice, check_float, check_int
from ..errors import ValidationError

__all__ = ["AnalysisOptions", "METRICS", "ESTIMATORS", "SUBSET_CAPS", "family_key"]

#: Metric names a user may ask for.
METRICS = ("mi", "lc", "lmn", "weights", "rank")
#: The sources' MI estimators ("kde" yields the upper and the lower bound); the families
#: registry adds the scale-aware ones (ckptlab.analysis.families).
ESTIMATORS = ("binning", "adaptive", "kde", "renyi")
SPLITS = ("train", "test", "random")
#: Default sizes of the fixed subsets: "all, up to this many" when the user gives none.
SUBSET_CAPS = {"probe_size": 4096, "kde_samples": 1024, "renyi_samples": 512,
               "lc_points": 256, "lmn_samples": 100, "n_directions": 25}


def _tuple(name, value, item_check):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = (value,)
    out = tuple(value)
    if not out:
        raise ValidationError(f"{name} must not be empty")
    for v in out:
        item_check(v)
    if len(set(out)) != len(out):
        raise ValidationError(f"{name} must not repeat entries, got {list(out)}")
    return out


@dataclass(frozen=True)
class AnalysisOptions:
    """All user options of :func:`ckptlab.analyze` (see its docstring for their meaning)."""

    metrics: tuple = METRICS
    estimators: tuple = ESTIMATORS
    n_bins: int = 30
    binning_range: object = "trajectory"
    sigma2: float = 0.1
    alpha: float = 1.01
    gamma: float = 1.0
    probe: str = "all"
    probe_size: int = SUBSET_CAPS["probe_size"]
    kde_samples: int = SUBSET_CAPS["kde_samples"]
    renyi_samples: int = SUBSET_CAPS["renyi_samples"]
    radii: tuple = (0.005, 0.05, 0.5)
    n_directions: int = SUBSET_CAPS["n_directions"]
    lc_points: int = SUBSET_CAPS["lc_points"]
    lc_splits: tuple = SPLITS
    include_output: bool = False
    clip: bool = True
    lmn_samples: int = SUBSET_CAPS["lmn_samples"]
    constant_rule: str = "one"
    lc_activations: str = "piecewise_linear"
    position: int | None = None
    seed: int = 0

    def validated(self, known_estimators=ESTIMATORS) -> AnalysisOptions:
        metrics = _tuple("metrics", self.metrics, lambda m: check_choice("metrics", m, METRICS))
        estimators = _tuple(
            "estimators", self.estimators,
            lambda e: check_choice("estimators", e, known_estimators)
        )
        check_int("n_bins", self.n_bins, min=2)
        br = self.binning_range
        if isinstance(br, str):
            check_choice("binning_range", br, ("trajectory",))
        elif not (
            isinstance(br, (tuple, list))
            and len(br) == 2
            and all(isinstance(v, numbers.Real) for v in br)
            and br[0] < br[1]
        ):
            raise ValidationError(
                f"binning_range must be 'trajectory' or a pair (lo, hi) with lo < hi, got {br!r}"
            )
        else:
            br = (float(br[0]), float(br[1]))
        check_float("sigma2", self.sigma2, min=0.0, min_inclusive=False)
        check_float("alpha", self.alpha, min=0.0, min_inclusive=False)
        if self.alpha == 1:
            raise ValidationError("alpha must be != 1 (use e.g. 1.01 for the Shannon limit), got 1")
        check_float("gamma", self.gamma, min=0.0, min_inclusive=False)
        check_choice("probe", self.probe, ("all", "train", "test"))
        check_int("probe_size", self.probe_size, min=2)
        check_int("kde_samples", self.kde_samples, min=2)
        check_int("renyi_samples", self.renyi_samples, min=2)
        radii = _tuple(
            "radii",
            self.radii,
            lambda r: check_float("radii", r, min=0.0, min_inclusive=False),
        )
        check_int("n_directions", self.n_directions, min=1)
        check_int("lc_points", self.lc_points, min=1)
        splits = _tuple("lc_splits", self.lc_splits, lambda s: check_choice("lc_splits", s, SPLITS))
        if not isinstance(self.include_output, bool):
            raise ValidationError(f"include_output must be a bool, got {self.include_output!r}")
        if not isinstance(self.clip, bool):
            raise ValidationError(f"clip must be a bool, got {self.clip!r}")
        check_int("lmn_samples", self.lmn_samples, min=2)
        check_choice("constant_rule", self.constant_rule, ("one", "zero", "nan"))
        check_choice("lc_activations", self.lc_activations, ("piecewise_linear", "any"))
        if self.position is not None:
            check_int("position", self.position)
        check_int("seed", self.seed, min=0)
        return AnalysisOptions(
            **{
                **self.__dict__,
                "metrics": metrics,
                "estimators": estimators,
                "binning_range": br,
                "radii": tuple(float(r) for r in radii),
                "lc_splits": splits,
            }
        )


def family_key(family: str, params: dict) -> str:
    """Cache key: family name plus a short hash of its canonical parameter JSON."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return f"{family}-{hashlib.sha256(blob).hexdigest()[:10]}"
