"""Algorithmic tasks: modular arithmetic and composition in S_n."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ckptlab._checks import check_choice, check_int
from ckptlab.errors import ValidationError

from ._base import TaskData, _check_split, _split

_OPS = ("add", "sub", "mul", "div")
_DIVISION = ("inverse", "zero", "fermat")


def modular_arithmetic(
    *,
    p: int = 97,
    op: str = "add",
    train_fraction: float = 0.3,
    seed: int = 0,
    division: str = "inverse",
) -> TaskData:
    """Binary operation modulo ``p``: the grokking task of Power et al.

    Each example is one equation ``a op b = c (mod p)``; the input is the token pair (a, b)
    (ids in [0, p), vocab_size p, no operator or "=" token) and the label is c. ``add``, ``sub``
    and ``mul`` use all p*p pairs. ``div`` builds its table by the rule ``division`` names:

    - ``"inverse"``: only divisors b invertible mod p (gcd(b, p) = 1), c = a * b^-1 mod p.
      For prime p that is Power et al.'s x / y: p * (p - 1) equations (97 * 96 = 9312); for
      composite p it is p * phi(p) (96 * 32 = 3072).
    - ``"zero"``: every divisor b in [1, p), c = a * b^-1 where b is invertible and c = 0
      where it is not (p * (p - 1) equations; the same table as ``"inverse"`` for prime p).
    - ``"fermat"``: every divisor b in [1, p), c = a * b^(p-2) mod p, which is what code that
      divides through Fermat's little theorem computes. For prime p it is the inverse; for
      composite p it is *not* division (96: b^94 is b^-1 for b = 1 only) and takes only 10
      distinct values, so the table is much easier than division.

    Parameters
    ----------
    p : int, default 97
        Modulus, >= 2. Also the vocabulary size and the number of classes.
    op : {"add", "sub", "mul", "div"}, default "add"
        The operation.
    train_fraction : float, default 0.3
        Fraction of the equations used for training, strictly inside (0, 1) and leaving at
        least one training and one test equation.
    seed : int, default 0
        Seed of the train/test split.
    division : {"inverse", "zero", "fermat"}, default "inverse"
        How ``op="div"`` builds its table (see above); only ``"inverse"`` with another op.

    Returns
    -------
    TaskData
        ``input_kind="tokens"``, x of shape (N, 2), y in [0, p). ``params`` records
        ``division`` for ``op="div"`` only.

    Raises
    ------
    ValidationError
        On a bad argument.

    References
    ----------
    .. [1] A. Power, Y. Burda, H. Edwards, I. Babuschkin, V. Misra, "Grokking: generalization
       beyond overfitting on small algorithmic datasets", arXiv:2201.02177, 2022.
    .. [2] C. de Mello Koch, A. Ghosh, "A two-phase perspective on deep learning dynamics",
       arXiv:2504.12700, 2025 (division mod 96, 40% training).
    """
    p = check_int("p", p, min=2)
    op = check_choice("op", op, _OPS)
    seed = check_int("seed", seed, min=0)
    division = check_choice("division", division, _DIVISION)
    if op != "div" and division != "inverse":
        raise ValidationError(
            f"division applies to op='div' only; got division={division!r} with op={op!r}"
        )
    a = np.arange(p, dtype=np.int64)
    invertible = np.gcd(a, p) == 1
    if op != "div":
        b = a
    elif division == "inverse":
        b = a[invertible]
    else:
        b = a[1:]  # every non-zero divisor: division by zero is never an equation
    tf, n_train = _check_split(train_fraction, p * len(b))

    aa, bb = (g.ravel() for g in np.meshgrid(a, b, indexing="ij"))
    if op == "add":
        y = (aa + bb) % p
    elif op == "sub":
        y = (aa - bb) % p
    elif op == "mul":
        y = (aa * bb) % p
    else:
        # one pow() per divisor (at most p of them), then a table look-up per equation
        factor = np.zeros(p, dtype=np.int64)  # zero where b has no inverse ("zero" rule)
        if division == "fermat":
            factor[b] = [pow(int(v), p - 2, p) for v in b]
        else:
            units = a[invertible]
            factor[units] = [pow(int(v), -1, p) for v in units]
        y = (aa * factor[bb]) % p
    x = np.stack([aa, bb], axis=1)
    parts = _split(x, y, n_train, seed)
    params = {"p": p, "op": op, "train_fraction": tf, "seed": seed}
    if op == "div":
        params["division"] = division
    return TaskData(
        "modular", *parts, n_classes=p, input_kind="tokens", vocab_size=p, params=params,
    )


def permutation_composition(*, n: int = 5, train_fraction: float = 0.5, seed: int = 0) -> TaskData:
    """Composition in the symmetric group S_n.

    The n! permutations of ``range(n)`` are numbered in lexicographic order (the order of
    ``itertools.permutations(range(n))``; index 0 is the identity). Example (i, j) has label
    the index of ``perm_i o perm_j`` with the convention ``(a o b)[k] = a[b[k]]``: apply
    ``perm_j`` first, then ``perm_i``. The table has n! * n! equations (S5: 120 x 120).

    Parameters
    ----------
    n : int, default 5
        Degree, in [2, 7] (7 already gives 5040 x 5040 equations).
    train_fraction : float, default 0.5
        Fraction of the equations used for training, strictly inside (0, 1) and leaving at
        least one training and one test equation.
    seed : int, default 0
        Seed of the train/test split.

    Returns
    -------
    TaskData
        ``input_kind="tokens"``, x of shape (N, 2) with ids in [0, n!), vocab_size and
        n_classes n!.

    Raises
    ------
    ValidationError
        On a bad argument.

    References
    ----------
    .. [1] A. Power et al., arXiv:2201.02177, 2022.
    .. [2] C. de Mello Koch, A. Ghosh, arXiv:2504.12700, 2025 (S5, 50% training).
    """
    n = check_int("n", n, min=2, max=7)
    seed = check_int("seed", seed, min=0)
    m = math.factorial(n)
    tf, n_train = _check_split(train_fraction, m * m)

    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)  # (m, n)
    # Base-n codes of the rows increase in lexicographic order; a dense look-up table
    # (n**n <= 823543 entries) turns a composed permutation back into its index.
    weights = n ** np.arange(n - 1, -1, -1, dtype=np.int64)
    lookup = np.zeros(n**n, dtype=np.int64)
    lookup[perms @ weights] = np.arange(m)
    y = np.empty((m, m), dtype=np.int64)
    block = max(1, (1 << 23) // (m * n))  # bound the (block, m, n) intermediate to ~64 MB
    for start in range(0, m, block):
        composed = perms[start : start + block][:, perms]  # [r, j, k] = perm_r[perm_j[k]]
        y[start : start + block] = lookup[composed @ weights]
    ii, jj = (g.ravel() for g in np.meshgrid(np.arange(m), np.arange(m), indexing="ij"))
    parts = _split(np.stack([ii, jj], axis=1), y.ravel(), n_train, seed)
    return TaskData(
        "permutation", *parts, n_classes=m, input_kind="tokens", vocab_size=m,
        params={"n": n, "train_fraction": tf, "seed": seed},
    )
