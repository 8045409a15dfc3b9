"""Weight and representation statistics against numpy.linalg and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckptlab.errors import ValidationError
from ckptlab.metrics.weights import matrix_stats, representation_effective_rank, total_l2_norm


def reference_stats(m):
    """Independent reference for one matrix via numpy.linalg.svd and numpy.linalg.norm."""
    s = np.linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False)
    fro = np.linalg.norm(m, "fro")
    p = s / s.sum()
    p = p[p > 0]
    return {
        "frobenius_norm": fro,
        "spectral_norm": np.linalg.norm(m, 2),
        "stable_rank": fro**2 / s[0] ** 2,
        "effective_rank": np.exp(-(p * np.log(p)).sum()),
    }


def test_batched_matches_numpy():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)
    out = matrix_stats(w)
    assert set(out) == {"frobenius_norm", "spectral_norm", "stable_rank", "effective_rank"}
    for key, val in out.items():
        assert val.shape == (3, 4) and val.dtype == np.float64
        ref = np.array(
            [[reference_stats(w[i, j].astype(np.float64))[key] for j in range(4)] for i in range(3)]
        )
        np.testing.assert_allclose(val, ref, rtol=1e-10)


@pytest.mark.parametrize("shape", [(20, 60), (60, 20)])
def test_wide_and_tall_ill_conditioned_match_numpy(shape):
    # wide matrices go to LAPACK transposed: the spectrum, down to 1e-10 of the top, is kept
    rng = np.random.default_rng(1)
    k = min(shape)
    s = np.logspace(0, -10, k)
    w = np.stack([np.linalg.qr(rng.normal(size=(shape[0], k)))[0] * s
                  @ np.linalg.qr(rng.normal(size=(shape[1], k)))[0].T for _ in range(3)])
    out = matrix_stats(w)
    for key, val in out.items():
        ref = np.array([reference_stats(m)[key] for m in w])
        np.testing.assert_allclose(val, ref, rtol=1e-10)
    np.testing.assert_allclose(out["effective_rank"], np.exp(-(s / s.sum() * np.log(s / s.sum()))
                                                              .sum()), rtol=1e-9)


def test_torch_input_and_conv_reshape():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 8, 3, 2, 2, generator=g)  # (S, out, in, kh, kw)
    out = matrix_stats(w, batch_ndim=1)
    for s in range(2):
        ref = reference_stats(w[s].reshape(8, 12).double().numpy())
        for key in out:
            assert out[key][s] == pytest.approx(ref[key], rel=1e-10)
    # batch_ndim=1 on a plain (S, m, n) stack is the default convention.
    w2 = torch.randn(4, 5, 3, generator=g)
    for key, val in matrix_stats(w2, batch_ndim=1).items():
        np.testing.assert_array_equal(val, matrix_stats(w2)[key])


def test_closed_forms():
    rank1 = np.outer([1.0, 2.0, 3.0], [4.0, -1.0, 0.5, 2.0])
    out = matrix_stats(rank1)
    assert out["stable_rank"] == pytest.approx(1.0, rel=1e-12)
    assert out["effective_rank"] == pytest.approx(1.0, rel=1e-9)
    assert out["spectral_norm"] == pytest.approx(np.sqrt(14.0) * np.sqrt(21.25), rel=1e-12)
    for n in (1, 4, 7):
        eye = matrix_stats(np.eye(n))
        assert eye["effective_rank"] == pytest.approx(n, rel=1e-12)
        assert eye["stable_rank"] == pytest.approx(n, rel=1e-12)
        assert eye["frobenius_norm"] == pytest.approx(np.sqrt(n), rel=1e-12)
        assert eye["spectral_norm"] == pytest.approx(1.0, rel=1e-12)
    # Singular values (3, 1): effective rank exp(H(3/4, 1/4)), stable rank 10 / 9.
    d = matrix_stats(np.diag([3.0, -1.0]))
    p = np.array([0.75, 0.25])
    assert d["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert d["stable_rank"] == pytest.approx(10.0 / 9.0, rel=1e-12)


def test_zero_and_nonfinite_matrices():
    w = np.stack([np.zeros((3, 2)), np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2))])
    w[2, 0, 0] = np.nan
    w[3, 1, 1] = -np.inf
    out = matrix_stats(w)
    assert out["frobenius_norm"][0] == 0.0 and out["spectral_norm"][0] == 0.0
    assert np.isnan(out["stable_rank"][0]) and np.isnan(out["effective_rank"][0])
    ones = reference_stats(np.ones((3, 2)))
    for key in out:
        assert out[key][1] == pytest.approx(ones[key], rel=1e-12)
        assert np.isnan(out[key][2]) and np.isnan(out[key][3])


@pytest.mark.parametrize(
    ("w", "kwargs", "match"),
    [
        (np.ones(5), {}, r"w must have at least 2 axes \(\.\.\., m, n\), got shape \(5,\); 1-D"),
        (np.ones((4, 5)), {"batch_ndim": 1}, r"w must have at least batch_ndim \+ 2 = 3 axes.*got shape \(4, 5\)"),
        (np.ones((0, 3)), {}, r"m >= 1 and n >= 1, got shape \(0, 3\)"),
        (np.ones((2, 2)), {"batch_ndim": -1}, "batch_ndim must be an integer >= 0, got -1"),
        (np.ones((2, 2), dtype=complex), {}, "w must be a real array, got dtype"),
        ("abc", {}, "w must be a real array"),
    ],
)
def test_matrix_stats_bad_input(w, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        matrix_stats(w, **kwargs)


def test_total_l2_norm_matches_numpy():
    rng = np.random.default_rng(2)
    arrays = [
        rng.normal(size=(5, 3, 4)).astype(np.float32),
        rng.normal(size=(5, 7)),
        rng.normal(size=(5,)),
    ]
    ref = np.sqrt(sum(np.sum(a.astype(np.float64).reshape(5, -1) ** 2, axis=1) for a in arrays))
    np.testing.assert_allclose(total_l2_norm(arrays), ref, rtol=1e-12)
    as_torch = {f"p{k}": torch.from_numpy(a) for k, a in enumerate(arrays)}
    np.testing.assert_allclose(total_l2_norm(as_torch), ref, rtol=1e-12)
    np.testing.assert_allclose(total_l2_norm(a for a in arrays), ref, rtol=1e-12)
    # One array: the plain norm of each checkpoint.
    single = total_l2_norm([arrays[1]])
    np.testing.assert_allclose(single, np.linalg.norm(arrays[1], axis=1), rtol=1e-12)


def test_total_l2_norm_nonfinite():
    a = np.ones((3, 4))
    a[1, 2] = np.nan
    b = np.ones((3, 2))
    b[2, 0] = np.inf
    out = total_l2_norm([a, b])
    assert out[0] == pytest.approx(np.sqrt(6.0)) and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ([], "tensors must hold at least one array, got none"),
        ([np.ones((3, 2)), np.ones((4, 2))], "tensors\\[0\\] has 3 and tensors\\[1\\] has 4"),
        ([np.float64(2.0)], r"tensors\[0\] must have a leading checkpoint axis"),
        (np.ones((3, 2)), "tensors must be a list, tuple or mapping of arrays, got ndarray"),
        (5, "tensors must be a list, tuple or mapping of arrays, got int"),
    ],
)
def test_total_l2_norm_bad_input(tensors, match):
    with pytest.raises(ValidationError, match=match):
        total_l2_norm(tensors)


def equal_spread(k, d, offset, seed):
    """Points +-e_i (i < k) in a random orthonormal frame of R^d, shifted by an offset."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    coords = np.vstack([np.eye(k), -np.eye(k)]) * 2.5
    return coords @ q.T + offset


@pytest.mark.parametrize(("k", "d"), [(1, 4), (3, 3), (3, 10), (6, 20)])
def test_representation_rank_of_k_dim_subspace(k, d):
    t = equal_spread(k, d, offset=np.full(d, 4.0), seed=k + d)
    assert representation_effective_rank(t) == pytest.approx(k, rel=1e-9)
    t32 = torch.tensor(t, dtype=torch.float32)
    assert representation_effective_rank(t32) == pytest.approx(k, rel=1e-4)


def test_representation_rank_against_numpy():
    rng = np.random.default_rng(5)
    t = rng.normal(size=(50, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1, 0.0]) + 10.0
    s = np.linalg.svd(t - t.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 1e-12]
    expected = np.exp(-(p * np.log(p)).sum())
    assert representation_effective_rank(t) == pytest.approx(expected, rel=1e-9)


def test_representation_rank_degenerate():
    # All rows equal (a dead or constant layer): nothing is used, the rank is undefined.
    assert np.isnan(representation_effective_rank(np.full((10, 3), 0.1)))
    # Here centring leaves rounding residue (singular values ~1e-16), which must not count.
    const = np.full((7, 4), 0.7)
    assert np.linalg.svd(const - const.mean(axis=0), compute_uv=False).max() > 0
    assert np.isnan(representation_effective_rank(const))
    t = np.random.default_rng(0).normal(size=(5, 3))
    t[2, 2] = np.nan
    assert np.isnan(representation_effective_rank(t))


@pytest.mark.parametrize(
    ("t", "match"),
    [
        (np.ones((1, 3)), r"t must be a 2-D array \(N, d\) with N >= 2 samples and d >= 1 units, got shape \(1, 3\)"),
        (np.ones(4), r"got shape \(4,\)"),
        (np.ones((2, 3, 4)), r"got shape \(2, 3, 4\)"),
    ],
)
def test_representation_rank_bad_input(t, match):
    with pytest.raises(ValidationError, match=match):
        representation_effective_rank(t)
