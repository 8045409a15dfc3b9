"""Every kernel that reads a hidden representation gives the same numbers, bit for bit, for a
float32 layer and for its float64 copy: the analysis hands them the representations in the
dtype the model computed (see ``Block.hidden``), and widening float32 to float64 is exact."""

from __future__ import annotations

import numpy as np
import pytest

from ckptlab.metrics import mi as mi_k
from ckptlab.metrics import mi_relative as rel
from ckptlab.metrics.weights import representation_effective_rank

RNG = np.random.default_rng(3)
T32 = np.maximum(RNG.standard_normal((3, 60, 7)), 0).astype(np.float32)  # ties at 0, as ReLU
T32[2, 5, 1] = np.nan  # one diverged checkpoint
Y = RNG.integers(0, 3, 60)
X = RNG.standard_normal((60, 4))

KERNELS = {
    "binning": lambda t: mi_k.mi_binning(t, Y, n_bins=10, lo=0.0, hi=3.0),
    "adaptive": lambda t: mi_k.mi_adaptive(t, Y, n_bins=10),
    "kde_bounds": lambda t: mi_k.mi_kde_bounds(t, Y, sigma2=0.1),
    "kde": lambda t: mi_k.mi_kde(t, Y, sigma2=0.1, bound="lower"),
    "renyi": lambda t: mi_k.mi_renyi(X, t, Y),
    "kde_relative": lambda t: rel.mi_kde_relative(t, Y),
    "renyi_normalised": lambda t: rel.mi_renyi_normalised(X, t, Y),
    "projected_binning": lambda t: rel.mi_projected(t, Y, k_dims=3, method="binning"),
    "projected_knn": lambda t: rel.mi_projected(t, Y, k_dims=3, method="knn"),
    "effective_rank": lambda t: [representation_effective_rank(t[i]) for i in range(2)],
}


def _flat(result) -> np.ndarray:
    """Every number of a result (floats, arrays, tuples of them, NamedTuples) in one array."""
    if isinstance(result, (tuple, list)):
        return np.concatenate([_flat(r) for r in result])
    return np.asarray(result, dtype=np.float64).ravel()


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_float32_layer_gives_its_float64_copys_numbers(name):
    got, want = _flat(KERNELS[name](T32)), _flat(KERNELS[name](T32.astype(np.float64)))
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).sum() >= 2
