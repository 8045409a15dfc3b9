"""The tasks (datasets) that ckptlab's training loops learn.

Every task is generated in memory or read from a local file; nothing is downloaded. Every
random choice goes through a ``seed`` argument (``numpy.random.default_rng(seed)``). A builder
returns a :class:`TaskData` whose ``params`` are exactly the keyword arguments that made it, so
``make_task(task.name, **task.params)`` rebuilds the same task (label noise included).

Split rule shared by the generated tasks: a seeded random permutation of all examples; the
first ``round(train_fraction * N)`` (Python's ``round``: halves go to the even integer) are the
training set, the rest the test set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ckptlab._checks import check_choice
from ckptlab.errors import ValidationError

from ._base import TaskData, add_label_noise
from .algorithmic import modular_arithmetic, permutation_composition
from .ib import ib_12bit
from .images import digits, read_idx
from .npz import from_npz

__all__ = [
    "TaskData",
    "modular_arithmetic",
    "permutation_composition",
    "digits",
    "read_idx",
    "ib_12bit",
    "from_npz",
    "add_label_noise",
    "TASKS",
    "make_task",
]

# registry name -> builder; make_task checks keyword arguments against the builder's signature
TASKS: dict[str, Callable[..., TaskData]] = {
    "modular": modular_arithmetic,
    "permutation": permutation_composition,
    "digits": digits,
    "ib12": ib_12bit,
    "npz": from_npz,
}


def make_task(name: str, /, *, label_noise: dict | None = None, **kwargs) -> TaskData:
    """Build a registered task by name.

    Parameters
    ----------
    name : str
        A key of :data:`TASKS`: "modular", "permutation", "digits", "ib12", "npz".
    label_noise : dict or None, default None
        ``{"fraction": f, "seed": s}`` (seed optional) to pass the task through
        :func:`add_label_noise`; this is what a noisy task records in its params, so
        ``make_task(task.name, **task.params)`` rebuilds any task.
    **kwargs
        Keyword arguments of the builder (see its docstring).

    Returns
    -------
    TaskData

    Raises
    ------
    ValidationError
        On an unknown name, an unknown or missing argument, or a bad ``label_noise``; and
        whatever the builder raises.
    """
    name = check_choice("name", name, TASKS)
    builder = TASKS[name]
    sig = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(sig))
    if unknown:
        raise ValidationError(
            f"task {name!r} has no argument {', '.join(map(repr, unknown))}; "
            f"it accepts {', '.join(map(repr, sig))}"
        )
    missing = [
        k for k, v in sig.items() if v.default is inspect.Parameter.empty and k not in kwargs
    ]
    if missing:
        raise ValidationError(f"task {name!r} needs argument {', '.join(map(repr, missing))}")
    if label_noise is not None and (
        not isinstance(label_noise, dict) or "fraction" not in label_noise
        or not set(label_noise) <= {"fraction", "seed"}
    ):
        raise ValidationError(
            "label_noise must be None or a dict with key 'fraction' and optional 'seed', "
            f"got {label_noise!r}"
        )
    task = builder(**kwargs)
    return task if label_noise is None else add_label_noise(task, **label_noise)
