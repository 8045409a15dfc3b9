"""TaskData, the shared train/test split and label noise."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from ckptlab._checks import check_float, check_int
from ckptlab.errors import DataError, ValidationError

_INPUT_KINDS = ("tokens", "continuous")


@dataclass(frozen=True, eq=False, repr=False)
class TaskData:
    """A classification task split into training and test sets.

    Attributes
    ----------
    name : str
        Registry name of the builder that made it (a key of :data:`TASKS`).
    x_train, x_test : numpy.ndarray
        Inputs. ``"tokens"``: int64 ids of shape (N, n_tokens); ``"continuous"``: float32 (N, d).
    y_train, y_test : numpy.ndarray
        int64 class labels in ``[0, n_classes)``, shape (N,).
    n_classes : int
        Number of classes (the width of the output layer).
    input_kind : str
        ``"tokens"`` or ``"continuous"``.
    vocab_size : int or None
        Number of token ids for ``"tokens"`` inputs (ids lie in ``[0, vocab_size)``); None
        otherwise.
    params : dict
        JSON-able keyword arguments of the builder; ``make_task(name, **params)`` rebuilds the task.

    Raises
    ------
    DataError
        If the arrays disagree with each other or with ``input_kind`` (checked at construction).

    Notes
    -----
    Equality is identity (arrays have no single truth value) and the repr shows shapes only.
    The dataclass is frozen but its arrays are ordinary writable arrays, so that
    ``torch.from_numpy`` takes them without a warning; do not modify them in place.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    input_kind: str
    vocab_size: int | None
    params: dict

    def __post_init__(self):
        if self.input_kind not in _INPUT_KINDS:
            raise DataError(
                f"input_kind must be one of 'tokens', 'continuous'; got {self.input_kind!r}"
            )
        if not isinstance(self.n_classes, int) or self.n_classes < 1:
            raise DataError(f"n_classes must be an integer >= 1, got {self.n_classes!r}")
        want = np.int64 if self.input_kind == "tokens" else np.float32
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != want:
                raise DataError(
                    f"x_{split} must be a 2-D {np.dtype(want)} array for {self.input_kind!r} "
                    f"inputs, got {type(x).__name__} {getattr(x, 'dtype', '')} "
                    f"{getattr(x, 'shape', '')}"
                )
            if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype != np.int64:
                raise DataError(
                    f"y_{split} must be a 1-D int64 array, got {type(y).__name__} "
                    f"{getattr(y, 'dtype', '')} {getattr(y, 'shape', '')}"
                )
            if len(x) != len(y):
                raise DataError(f"x_{split} has {len(x)} rows but y_{split} has {len(y)}")
            if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
                raise DataError(
                    f"y_{split} must lie in [0, {self.n_classes}), got range "
                    f"[{y.min()}, {y.max()}]"
                )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise DataError(
                f"x_train and x_test must have the same width, got {self.x_train.shape[1]} "
                f"and {self.x_test.shape[1]}"
            )
        if self.input_kind == "tokens":
            if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
                raise DataError(
                    f"vocab_size must be an integer >= 1 for tokens, got {self.vocab_size!r}"
                )
            for x in (self.x_train, self.x_test):
                if x.size and (x.min() < 0 or x.max() >= self.vocab_size):
                    raise DataError(f"token ids must lie in [0, {self.vocab_size}) (vocab_size)")
        elif self.vocab_size is not None:
            raise DataError(
                f"vocab_size must be None for continuous inputs, got {self.vocab_size!r}"
            )
        try:
            json.dumps(self.params)
        except (TypeError, ValueError) as exc:
            raise DataError(f"params must be JSON-able: {exc}") from None

    def __repr__(self) -> str:
        def arr(a):
            return f"{tuple(a.shape)} {a.dtype}"

        return (
            f"TaskData(name={self.name!r}, x_train={arr(self.x_train)}, x_test={arr(self.x_test)}, "
            f"n_classes={self.n_classes}, input_kind={self.input_kind!r}, "
            f"vocab_size={self.vocab_size}, params={self.params})"
        )


def _check_split(train_fraction, n_total: int) -> tuple[float, int]:
    """Validate ``train_fraction`` for ``n_total`` examples; return it and the training count."""
    tf = check_float(
        "train_fraction", train_fraction, min=0, max=1, min_inclusive=False, max_inclusive=False
    )
    n_train = round(tf * n_total)
    if not 1 <= n_train <= n_total - 1:
        raise ValidationError(
            f"train_fraction must leave at least one training and one test example; "
            f"train_fraction={tf!r} gives {n_train} training examples of {n_total}"
        )
    return tf, n_train


def _split(x: np.ndarray, y: np.ndarray, n_train: int, seed: int):
    order = np.random.default_rng(seed).permutation(len(x))
    tr, te = order[:n_train], order[n_train:]
    return x[tr], y[tr], x[te], y[te]


def add_label_noise(task: TaskData, *, fraction: float, seed: int = 0) -> TaskData:
    """Reassign a fraction of the training labels to a different, random class.

    Exactly ``round(fraction * n_train)`` training examples, drawn without replacement, get a
    label drawn uniformly from the ``n_classes - 1`` classes other than their own. The test
    labels and all inputs are untouched (the inputs are shared with ``task``, not copied).

    Nakkiran et al. flip each label independently with probability ``fraction``; ckptlab
    changes an exact count instead, so the noise level is a fixed number, not a random one.

    Parameters
    ----------
    task : TaskData
        A task without label noise.
    fraction : float
        Fraction of the training labels to change, in [0, 1).
    seed : int, default 0
        Seed of which labels change and of their new values.

    Returns
    -------
    TaskData
        A new task; its params gain ``"label_noise": {"fraction": ..., "seed": ...}``.

    Raises
    ------
    ValidationError
        On a bad argument, a task that already has label noise, or a task with one class.

    References
    ----------
    .. [1] P. Nakkiran, G. Kaplun, Y. Bansal, T. Yang, B. Barak, I. Sutskever, "Deep double
       descent: where bigger models and more data hurt", arXiv:1912.02292, 2019.
    """
    if not isinstance(task, TaskData):
        raise ValidationError(f"task must be a TaskData, got {type(task).__name__}")
    fraction = check_float("fraction", fraction, min=0, max=1, max_inclusive=False)
    seed = check_int("seed", seed, min=0)
    if "label_noise" in task.params:
        raise ValidationError(
            f"task already has label noise {task.params['label_noise']}; add it once, "
            "to the clean task"
        )
    k = round(fraction * len(task.y_train))
    if k and task.n_classes < 2:
        raise ValidationError(f"label noise needs n_classes >= 2, got {task.n_classes}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(task.y_train), size=k, replace=False)
    y = task.y_train.copy()
    # a shift in [1, n_classes) modulo n_classes is uniform over the other classes
    y[idx] = (y[idx] + rng.integers(1, task.n_classes, size=k)) % task.n_classes
    params = {**task.params, "label_noise": {"fraction": fraction, "seed": seed}}
    return dataclasses.replace(task, y_train=y, params=params)
