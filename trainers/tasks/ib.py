"""The information-bottleneck toy task of Shwartz-Ziv and Tishby (12 binary inputs)."""

from __future__ import annotations

import numpy as np

from ckptlab._checks import check_int

from ._base import TaskData, _check_split, _split


def ib_12bit(*, train_fraction: float = 0.8, seed: int = 0) -> TaskData:
    """The 12-bit toy task of Shwartz-Ziv and Tishby, with a ring-symmetric rule.

    Inputs are all 4096 binary patterns of 12 bits (float32 0/1); pattern number i has bit
    ``x_j = (i >> (11 - j)) & 1``. The 12 bits sit on a ring, and the label depends only on
    the cyclic autocorrelation ``a(d) = sum_j x_j x_{(j + d) mod 12}``:

        y = 1  if  a(1) + a(2) + a(3) >= a(4) + a(5) + a(6)  else 0,

    i.e. "the ones sit closer together than far apart". Every a(d) is invariant under the 12
    cyclic rotations (and reflections) of the ring, so the label is too. By the
    Wiener-Khinchin theorem a(d) = (1/12) sum_k |X_k|^2 cos(2 pi k d / 12), with X the DFT of
    the pattern, so the rule is a threshold at 0 on a weighted power spectrum; it is computed
    in integers, so rotated patterns get bit-identical scores. p(y=1) = 2084/4096 ~ 0.509.
    The rule is not linearly separable (the popcount alone, or a logistic regression,
    predicts it at about 52%), yet the source's 12-10-7-5-4-3-2 tanh network fits it (a quick
    scikit-learn check: ~99% train and ~97% test accuracy).

    ckptlab's rule differs from the source, whose 12 inputs were points on a 2-sphere labelled
    by a function invariant under O(3) rotations; a ring with cyclic rotations keeps the idea
    of a symmetric rule while the rule fits in one line.

    Parameters
    ----------
    train_fraction : float, default 0.8
        Fraction of the 4096 patterns used for training, strictly inside (0, 1) and leaving at
        least one training and one test pattern.
    seed : int, default 0
        Seed of the train/test split.

    Returns
    -------
    TaskData
        ``input_kind="continuous"``, x of shape (N, 12), 2 classes.

    Raises
    ------
    ValidationError
        On a bad argument.

    References
    ----------
    .. [1] R. Shwartz-Ziv, N. Tishby, "Opening the black box of deep neural networks via
       information", arXiv:1703.00810, 2017.
    """
    seed = check_int("seed", seed, min=0)
    tf, n_train = _check_split(train_fraction, 4096)
    bits = (np.arange(4096)[:, None] >> np.arange(11, -1, -1)) & 1  # (4096, 12) int
    a = [(bits * np.roll(bits, -d, axis=1)).sum(axis=1) for d in range(1, 7)]
    y = ((a[0] + a[1] + a[2]) >= (a[3] + a[4] + a[5])).astype(np.int64)
    parts = _split(bits.astype(np.float32), y, n_train, seed)
    return TaskData(
        "ib12", *parts, n_classes=2, input_kind="continuous", vocab_size=None,
        params={"train_fraction": tf, "seed": seed},
    )
