"""Argument checks shared by the library: one place for the wording of errors.

Each check raises :class:`~ckptlab.errors.ValidationError` with a message that names the
argument, the rule and the value, e.g. ``n_bins must be an integer >= 2, got 1``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from .errors import ValidationError


def check_int(name: str, value, *, min: int | None = None, max: int | None = None) -> int:
    """Return ``value`` as int if it is an integer within [min, max], else raise."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (min is None or value >= min) and (max is None or value <= max):
        return int(value)
    raise ValidationError(f"{name} must be an integer{_range_text(min, max)}, got {value!r}")


def check_float(
    name: str,
    value,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float within the given bounds, else raise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        if ok and min is not None:
            ok = v >= min if min_inclusive else v > min
        if ok and max is not None:
            ok = v <= max if max_inclusive else v < max
        if ok:
            return v
    lo = "" if min is None else (">= " if min_inclusive else "> ") + f"{min:g}"
    hi = "" if max is None else ("<= " if max_inclusive else "< ") + f"{max:g}"
    rule = " and ".join(x for x in (lo, hi) if x)
    raise ValidationError(
        f"{name} must be a finite number{' ' + rule if rule else ''}, got {value!r}"
    )


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    raise ValidationError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _range_text(min, max) -> str:
    if min is not None and max is not None:
        return f" in [{min}, {max}]"
    if min is not None:
        return f" >= {min}"
    if max is not None:
        return f" <= {max}"
    return ""
