"""Mutual-information kernels against independent oracles.

Oracles: scikit-learn's mutual_info_score on row ids built here with a dict of tuples; np.digitize
on explicit edges; a brute-force double loop in Python floats for the KDE bounds; scipy
eigenvalues and the trace identity sum lambda^2 = ||A||_F^2 for the matrix-based entropies;
closed forms for block-structured Gram matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from scipy.spatial.distance import cdist
from sklearn.metrics import mutual_info_score

from ckptlab.errors import ValidationError
from ckptlab.metrics import mi as mi_mod
from ckptlab.metrics.mi import (
    adaptive_edges,
    bin_codes,
    entropy_bits,
    mi_adaptive,
    mi_binning,
    mi_kde,
    mi_kde_bounds,
    mi_renyi,
    renyi_entropy,
    row_labels,
)

LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------
# independent oracles
# ------------------------------------------------------------------------------------------


def dict_row_ids(codes) -> np.ndarray:
    seen: dict[tuple, int] = {}
    return np.array([seen.setdefault(tuple(row), len(seen)) for row in np.asarray(codes).tolist()])


def sk_mi_bits(codes, y) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits of a code matrix, X the sample index."""
    ids = dict_row_ids(codes)
    n = len(ids)
    return mutual_info_score(ids, np.arange(n)) / LN2, mutual_info_score(ids, y) / LN2


def digitize_codes(t, n_bins, lo, hi) -> np.ndarray:
    """Equal-width bins per column from explicit edges; beyond-range values in the end bins."""
    t = np.asarray(t, dtype=float)
    lo = np.broadcast_to(lo, t.shape[1:])
    hi = np.broadcast_to(hi, t.shape[1:])
    out = np.empty(t.shape, dtype=int)
    for k in range(t.shape[1]):
        inner = np.linspace(lo[k], hi[k], n_bins + 1)[1:-1]
        out[:, k] = np.digitize(t[:, k], inner)
    return out


def rank_codes(t, n_bins) -> np.ndarray:
    """Adaptive codes from the ranks of the pooled distinct values: floor(rank * B / M)."""
    vals = sorted(set(np.asarray(t).ravel().tolist()))
    rank = {v: r for r, v in enumerate(vals)}
    m = len(vals)
    return np.array([[rank[v] * n_bins // m for v in row] for row in np.asarray(t).tolist()])


def kde_brute(t, y, var) -> tuple[float, float]:
    """Kolchinsky-Tracey estimate with kernel variance var, by explicit double loops (bits)."""
    rows = np.asarray(t, dtype=float).tolist()
    labels = list(np.asarray(y).tolist())
    n = len(rows)

    def h(idx):
        total = 0.0
        for i in idx:
            s = 0.0
            for j in idx:
                d2 = sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))
                s += math.exp(-d2 / (2.0 * var))
            total += -math.log(s / len(idx))
        return total / len(idx)

    i_xt = h(range(n))
    cond = 0.0
    for c in set(labels):
        idx = [i for i in range(n) if labels[i] == c]
        cond += len(idx) / n * h(idx)
    return i_xt / LN2, (i_xt - cond) / LN2


def gauss_gram(a, s) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return np.exp(-cdist(a, a, "sqeuclidean") / (2.0 * s * s))


def label_gram(y) -> np.ndarray:
    y = np.asarray(y)
    return (y[:, None] == y[None, :]).astype(float)


def renyi2_frobenius(k) -> float:
    """S_2 of the trace-normalised Gram without eigenvalues: sum lambda^2 = ||A||_F^2."""
    a = k / np.trace(k)
    return -math.log2(float(np.sum(a * a)))


def shannon_eig(k) -> float:
    lam = np.clip(scipy.linalg.eigvalsh(k / np.trace(k)), 0.0, None)
    return float(scipy.stats.entropy(lam, base=2))


def renyi_eig(k, alpha) -> float:
    lam = np.clip(scipy.linalg.eigvalsh(k / np.trace(k)), 0.0, None)
    lam = lam[lam > 1e-12]
    return math.log2(float(np.sum(lam**alpha))) / (1.0 - alpha)


def renyi_of_probs(p, alpha) -> float:
    p = np.asarray(p, dtype=float)
    return math.log2(float(np.sum(p**alpha))) / (1.0 - alpha)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ------------------------------------------------------------------------------------------
# fixed binning
# ------------------------------------------------------------------------------------------


def test_mi_binning_matches_sklearn_on_dict_row_ids(rng):
    t = np.tanh(rng.normal(size=(300, 3)))
    y = rng.integers(0, 4, 300)
    codes = digitize_codes(t, 5, -1.0, 1.0)
    want_xt, want_ty = sk_mi_bits(codes, y)
    got_xt, got_ty = mi_binning(t, y, n_bins=5)
    assert 1.0 < want_xt < math.log2(300)  # bins merge samples: a non-trivial case
    assert got_xt == pytest.approx(want_xt, abs=1e-10)
    assert got_ty == pytest.approx(want_ty, abs=1e-10)
    assert isinstance(got_xt, float) and isinstance(got_ty, float)


def test_mi_binning_more_than_256_bins_matches_sklearn(rng):
    # codes that do not fit a byte take the packed-integer row ids instead of byte strings
    t = np.tanh(rng.normal(size=(400, 3)))
    y = rng.integers(0, 4, 400)
    codes = digitize_codes(t, 300, -1.0, 1.0)
    assert codes.max() >= 256
    assert mi_binning(t, y, n_bins=300) == pytest.approx(sk_mi_bits(codes, y), abs=1e-10)


def test_mi_binning_float32_and_list_labels(rng):
    t = np.tanh(rng.normal(size=(200, 4))).astype(np.float32)
    y = rng.integers(0, 3, 200)
    codes = digitize_codes(t.astype(np.float64), 30, -1.0, 1.0)
    want = sk_mi_bits(codes, y)
    assert mi_binning(t, list(y)) == pytest.approx(want, abs=1e-10)


def test_bin_codes_out_of_range_values_go_to_end_bins_never_wrap():
    t = np.array([[-5.0], [-1.0], [-0.2], [0.2], [0.999], [1.0], [7.0]])
    codes = bin_codes(t, n_bins=4, lo=-1.0, hi=1.0)
    np.testing.assert_array_equal(codes[:, 0], [0, 0, 1, 2, 3, 3, 3])
    # the source's wrap-around would have put -5 in the top bin with 0.999, 1.0 and 7.0
    y = np.array([0, 0, 1, 1, 0, 1, 0])
    want = sk_mi_bits(codes, y)
    assert want[0] == pytest.approx(scipy.stats.entropy([2, 1, 1, 3], base=2))
    assert mi_binning(t, y, n_bins=4) == pytest.approx(want, abs=1e-12)


def test_bin_codes_reproduce_source_edges_with_29_intervals(rng):
    # source: np.linspace(-1, 1, 30) are 30 edges = 29 intervals; digitize - 1 is the bin
    t = rng.uniform(-0.999, 0.999, size=(500, 2))
    source = np.digitize(t, np.linspace(-1, 1, 30)) - 1
    np.testing.assert_array_equal(bin_codes(t, n_bins=29, lo=-1, hi=1), source)


def test_mi_binning_per_unit_range(rng):
    t = np.column_stack([rng.uniform(-0.2, 1.2, 250), rng.normal(0, 6, 250), rng.normal(0, 1, 250)])
    lo = np.array([0.0, -10.0, -2.0])
    hi = np.array([1.0, 10.0, 2.0])
    y = rng.integers(0, 2, 250)
    codes = digitize_codes(t, 4, lo, hi)
    np.testing.assert_array_equal(bin_codes(t, n_bins=4, lo=lo, hi=hi), codes)
    assert mi_binning(t, y, n_bins=4, lo=lo, hi=hi) == pytest.approx(sk_mi_bits(codes, y), abs=1e-10)


@pytest.mark.parametrize("chunk", [1, 3, 7, 2**16])  # values per chunk: 1 row, rows, all
def test_bin_codes_in_chunks_equal_the_whole_array_oracle(rng, monkeypatch, chunk):
    monkeypatch.setattr(mi_mod, "_BIN_CHUNK", chunk)
    t = rng.normal(0, 4, size=(3, 50, 3)).astype(np.float32)
    lo, hi = np.array([0.0, -10.0, -2.0]), np.array([1.0, 10.0, 2.0])
    for n_bins in (4, 300):  # uint8 codes and int64 codes
        got = bin_codes(t, n_bins=n_bins, lo=lo, hi=hi)
        want = np.stack([digitize_codes(x.astype(np.float64), n_bins, lo, hi) for x in t])
        np.testing.assert_array_equal(got, want)


def test_mi_binning_batch_each_item_matches_oracle_and_nan_item(rng):
    t = np.tanh(rng.normal(size=(4, 120, 3)) * np.array([0.3, 1.0, 3.0, 1.0])[:, None, None])
    t[3, 5, 1] = np.nan
    y = rng.integers(0, 3, 120)
    got_xt, got_ty = mi_binning(t, y, n_bins=6)
    assert got_xt.shape == (4,) and got_ty.shape == (4,)
    for b in range(3):
        want = sk_mi_bits(digitize_codes(t[b], 6, -1.0, 1.0), y)
        assert (got_xt[b], got_ty[b]) == pytest.approx(want, abs=1e-10)
    assert np.isnan(got_xt[3]) and np.isnan(got_ty[3])


def test_mi_binning_two_batch_axes(rng):
    t = np.tanh(rng.normal(size=(2, 3, 50, 2)))
    y = rng.integers(0, 2, 50)
    got_xt, got_ty = mi_binning(t, y, n_bins=3)
    assert got_xt.shape == (2, 3)
    want = sk_mi_bits(digitize_codes(t[1, 2], 3, -1.0, 1.0), y)
    assert (got_xt[1, 2], got_ty[1, 2]) == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_t_gives_nan_not_error(rng, bad):
    t = rng.normal(size=(20, 3))
    t[4, 2] = bad
    y = rng.integers(0, 2, 20)
    for result in (
        mi_binning(t, y),
        mi_adaptive(t, y),
        mi_kde(t, y),
        mi_kde(t, y, bound="lower"),
        mi_renyi(rng.normal(size=(20, 2)), t, y),
    ):
        assert all(math.isnan(v) for v in result)


def test_nonfinite_x_gives_nan_renyi(rng):
    x = rng.normal(size=(15, 2))
    x[0, 0] = np.nan
    t = rng.normal(size=(2, 15, 3))
    i_xt, i_ty = mi_renyi(x, t, rng.integers(0, 2, 15))
    assert np.isnan(i_xt).all() and np.isnan(i_ty).all()


# ------------------------------------------------------------------------------------------
# row hashing and entropy
# ------------------------------------------------------------------------------------------


def assert_same_partition(labels, oracle):
    labels = np.asarray(labels)
    assert labels.shape == oracle.shape
    u = np.unique(labels)
    np.testing.assert_array_equal(u, np.arange(len(u)))  # dense ids
    pairs = set(zip(labels.tolist(), oracle.tolist()))
    assert len(pairs) == len(u) == len(set(oracle.tolist()))


@pytest.mark.parametrize(
    "shape, low, high",
    [
        ((500, 3), 0, 3),  # packs into one int64
        ((300, 40), 0, 2),  # 2**40 still packs
        ((300, 80), 0, 30),  # too wide to pack: byte-string rows
        ((200, 3), -(2**62), 2**62),  # ranges beyond 32 bits: raw int64 rows
    ],
)
def test_row_labels_partition_matches_dict(rng, shape, low, high):
    base = rng.integers(low, high, size=(shape[0] // 4, shape[1]), dtype=np.int64)
    codes = base[rng.integers(0, base.shape[0], shape[0])]  # many repeated rows
    assert_same_partition(row_labels(codes), dict_row_ids(codes))


def test_row_labels_wide_binary_rows_do_not_collide():
    # 70 binary columns: a mixed-radix int64 key would wrap at 2**64 and merge these rows
    codes = np.zeros((5, 70), dtype=np.int64)
    codes[1, 69] = 1
    codes[2, 0] = 1
    codes[3, [0, 69]] = 1
    codes[4, 1:69] = 1  # every column varies, so the key would need 70 bits
    assert_same_partition(row_labels(codes), np.arange(5))


def test_row_labels_negative_codes():
    codes = np.array([[-3, 5], [-3, 5], [2, -7], [2, 5], [-3, 5]])
    assert_same_partition(row_labels(codes), dict_row_ids(codes))


def test_entropy_bits_matches_scipy(rng):
    labels = rng.integers(0, 7, 400)
    want = scipy.stats.entropy(np.bincount(labels), base=2)
    assert entropy_bits(labels) == pytest.approx(want, abs=1e-12)
    assert entropy_bits(np.array(["a", "b", "a", "c"])) == pytest.approx(1.5)
    assert entropy_bits(np.zeros(5)) == 0.0


# ------------------------------------------------------------------------------------------
# adaptive binning
# ------------------------------------------------------------------------------------------


def tied_values(rng, m, shape):
    """An array of the given shape using each of m distinct values (with repeats)."""
    vals = rng.normal(size=m) * 3
    size = int(np.prod(shape))
    pool = np.concatenate([vals, rng.choice(vals, size - m)])
    return rng.permutation(pool).reshape(shape)


@pytest.mark.parametrize("m, n_bins", [(60, 6), (61, 6), (97, 30)])
def test_adaptive_edges_equal_counts_of_distinct_values(rng, m, n_bins):
    t = tied_values(rng, m, (40, 5))
    edges = adaptive_edges(t, n_bins=n_bins)
    assert edges.shape == (n_bins + 1,)
    distinct = np.array(sorted(set(t.ravel().tolist())))
    counts = []
    for k in range(n_bins):
        inside = (distinct >= edges[k]) & (distinct < edges[k + 1])
        if k == n_bins - 1:
            inside |= distinct == edges[-1]
        counts.append(int(inside.sum()))
    assert sum(counts) == m
    assert max(counts) - min(counts) <= 1
    if m % n_bins == 0:
        assert set(counts) == {m // n_bins}
    # bins located from the edges agree with the independent rank rule
    np.testing.assert_array_equal(np.digitize(t, edges[1:-1]), rank_codes(t, n_bins))


def test_mi_adaptive_matches_sklearn_on_rank_codes(rng):
    t = tied_values(rng, 150, (200, 3))
    y = rng.integers(0, 3, 200)
    want = sk_mi_bits(rank_codes(t, 8), y)
    assert 1.0 < want[0] < math.log2(200)
    assert mi_adaptive(t, y, n_bins=8) == pytest.approx(want, abs=1e-10)


def test_mi_adaptive_fewer_distinct_values_than_bins(rng):
    t = rng.choice([-1.0, 0.0, 2.5], size=(60, 2))
    y = rng.integers(0, 2, 60)
    # every distinct value keeps a bin of its own: the raw rows are the symbols
    assert mi_adaptive(t, y, n_bins=30) == pytest.approx(sk_mi_bits(t, y), abs=1e-10)
    edges = adaptive_edges(t, n_bins=5)
    assert edges[0] == -1.0 and edges[-1] == 2.5 and np.all(np.diff(edges) >= 0)


def test_mi_adaptive_batch_edges_per_item(rng):
    t = np.stack([tied_values(rng, 80, (50, 2)), 100 * tied_values(rng, 30, (50, 2))])
    y = rng.integers(0, 2, 50)
    got_xt, got_ty = mi_adaptive(t, y, n_bins=5)
    for b in range(2):
        want = sk_mi_bits(rank_codes(t[b], 5), y)
        assert (got_xt[b], got_ty[b]) == pytest.approx(want, abs=1e-10)
    assert adaptive_edges(t, n_bins=5).shape == (2, 6)


# ------------------------------------------------------------------------------------------
# kernel density bounds
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound, factor", [("upper", 1.0), ("lower", 4.0)])
def test_mi_kde_matches_brute_force_double_loop(rng, bound, factor):
    t = rng.normal(size=(9, 2))
    y = np.array([0, 1, 0, 2, 1, 0, 2, 2, 0])
    want = kde_brute(t, y, factor * 0.5)
    assert mi_kde(t, y, sigma2=0.5, bound=bound) == pytest.approx(want, abs=1e-10)


def test_mi_kde_row_blocks_match_brute_force(rng, monkeypatch):
    monkeypatch.setattr(mi_mod, "_BLOCK_ELEMENTS", 20)  # forces blocks of 1-2 rows
    t = rng.normal(size=(2, 11, 3))
    y = rng.integers(0, 3, 11)
    got_xt, got_ty = mi_kde(t, y, sigma2=0.3)
    for b in range(2):
        assert (got_xt[b], got_ty[b]) == pytest.approx(kde_brute(t[b], y, 0.3), abs=1e-10)


@pytest.mark.parametrize("spread", [1.0, 20.0])
def test_mi_kde_bounds_in_tiles_match_brute_force(rng, monkeypatch, spread):
    # both bounds from one set of tiles (square, on and above the diagonal; the last partial):
    # the lower bound's kernel is the upper one's exponents scaled by 1/4, floored ones too
    monkeypatch.setattr(mi_mod, "_BLOCK_ELEMENTS", 27)  # 3 checkpoints: tiles of 3 x 3
    t = rng.normal(size=(3, 17, 4)) * spread
    y = rng.integers(0, 4, 17)
    got = mi_kde_bounds(t, y, sigma2=0.4)
    for b in range(3):
        up, lo = kde_brute(t[b], y, 0.4), kde_brute(t[b], y, 1.6)
        assert (got[0][b], got[1][b]) == pytest.approx(up, abs=1e-10)
        assert (got[2][b], got[3][b]) == pytest.approx(lo, abs=1e-10)


def test_mi_kde_widely_spread_points_match_brute_force(rng):
    # exponents from about -1 down to about -1e4: the kernels below exp(-700) are floored
    t = rng.normal(size=(40, 2)) * 20.0
    y = rng.integers(0, 3, 40)
    for bound, factor in (("upper", 1.0), ("lower", 4.0)):
        want = kde_brute(t, y, factor * 0.5)
        assert mi_kde(t, y, sigma2=0.5, bound=bound) == pytest.approx(want, abs=1e-10)


def test_mi_kde_orderings(rng):
    t = rng.normal(size=(60, 4))
    y = rng.integers(0, 3, 60)
    for sigma2 in (0.01, 0.1, 1.0, 10.0):
        up_xt, up_ty = mi_kde(t, y, sigma2=sigma2, bound="upper")
        lo_xt, lo_ty = mi_kde(t, y, sigma2=sigma2, bound="lower")
        assert lo_xt <= up_xt + 1e-12
        assert up_ty <= up_xt + 1e-12 and lo_ty <= lo_xt + 1e-12
        assert 0.0 <= up_xt <= math.log2(60) + 1e-12


def test_mi_kde_limits(rng):
    t = rng.normal(size=(40, 3))
    y = rng.integers(0, 4, 40)
    # infinite noise washes everything out
    assert mi_kde(t, y, sigma2=1e12) == pytest.approx((0.0, 0.0), abs=1e-9)
    # vanishing noise on distinct points: I(X;T) = log2 N and I(T;Y) = H(Y)
    h_y = scipy.stats.entropy(np.bincount(y), base=2)
    for bound in ("upper", "lower"):
        assert mi_kde(t, y, sigma2=1e-8, bound=bound) == pytest.approx((math.log2(40), h_y), abs=1e-9)


# ------------------------------------------------------------------------------------------
# matrix-based Renyi entropy
# ------------------------------------------------------------------------------------------


def test_renyi_alpha_to_one_is_shannon_of_eigenvalues(rng):
    x = rng.normal(size=(30, 3))
    t = np.tanh(x @ rng.normal(size=(3, 4)))
    y = rng.integers(0, 3, 30)
    s = 0.9
    kx, kt, ky = gauss_gram(x, s), gauss_gram(t, s), label_gram(y)
    want_xt = shannon_eig(kx) + shannon_eig(kt) - shannon_eig(kx * kt)
    want_ty = shannon_eig(kt) + shannon_eig(ky) - shannon_eig(kt * ky)
    got = mi_renyi(x, t, y, alpha=1 + 1e-7, sigma=s)
    assert got == pytest.approx((want_xt, want_ty), abs=1e-5)
    assert renyi_entropy(kt, alpha=1 + 1e-7) == pytest.approx(shannon_eig(kt), abs=1e-5)


def test_renyi_order_two_matches_frobenius_identity_with_silverman_widths(rng):
    n = 25
    x = rng.normal(size=(n, 2))
    t = rng.normal(size=(n, 6))
    y = rng.integers(0, 2, n)
    gamma = 1.7
    kx = gauss_gram(x, gamma * n ** (-1 / (4 + 2)))
    kt = gauss_gram(t, gamma * n ** (-1 / (4 + 6)))
    ky = label_gram(y)
    want_xt = renyi2_frobenius(kx) + renyi2_frobenius(kt) - renyi2_frobenius(kx * kt)
    want_ty = renyi2_frobenius(kt) + renyi2_frobenius(ky) - renyi2_frobenius(kt * ky)
    assert mi_renyi(x, t, y, alpha=2.0, gamma=gamma) == pytest.approx((want_xt, want_ty), abs=1e-9)


def test_renyi_general_alpha_matches_scipy_eigenvalues(rng):
    t = rng.normal(size=(20, 3))
    k = gauss_gram(t, 1.3)
    for alpha in (0.5, 1.01, 3.0):
        assert renyi_entropy(k, alpha=alpha) == pytest.approx(renyi_eig(k, alpha), abs=1e-8)
    # the normalisation A_ij = K_ij / (N sqrt(K_ii K_jj)) removes a diagonal rescaling
    dscale = np.diag(rng.uniform(0.5, 2.0, 20))
    assert renyi_entropy(dscale @ k @ dscale, alpha=2.0) == pytest.approx(renyi2_frobenius(k), abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.01, 2.0])
def test_renyi_closed_forms_identity_and_clusters(alpha):
    n = 8
    assert renyi_entropy(np.eye(n), alpha=alpha) == pytest.approx(math.log2(n), abs=1e-9)
    two = np.kron(np.eye(2), np.ones((4, 4)))
    assert renyi_entropy(two, alpha=alpha) == pytest.approx(1.0, abs=1e-9)
    uneven = scipy.linalg.block_diag(np.ones((3, 3)), np.ones((5, 5)))
    want = renyi_of_probs([3 / 8, 5 / 8], alpha)
    assert renyi_entropy(uneven, alpha=alpha) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.01, 2.0])
def test_mi_renyi_far_apart_points_and_identical_clusters(alpha):
    n = 8
    x = 1000.0 * np.arange(n, dtype=float)[:, None]  # Gram = identity
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # T = X, all points far apart: every Gram is the identity
    got = mi_renyi(x, x, y, alpha=alpha, sigma=1.0)
    assert got == pytest.approx((math.log2(n), 1.0), abs=1e-9)
    # T = two identical clusters, one per class: 1 bit about X and 1 bit about Y
    t = np.repeat([[0.0, 0.0], [500.0, 0.0]], 4, axis=0)
    assert mi_renyi(x, t, y, alpha=alpha, sigma=1.0) == pytest.approx((1.0, 1.0), abs=1e-9)
    # uneven classes: I(T;Y) = S(A_Y) = Renyi entropy of the class frequencies
    y2 = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    got = mi_renyi(x, x, y2, alpha=alpha, sigma=1.0)
    assert got[1] == pytest.approx(renyi_of_probs([3 / 8, 5 / 8], alpha), abs=1e-9)


def test_mi_renyi_of_t_equal_x_is_not_s_of_ax_in_general(rng):
    # A_X o A_X is the Gram at width s / sqrt(2), so I(X;X) = 2 S(A_X) - S(A_X at s/sqrt 2);
    # this equals S(A_X) only when the Gram holds only zeros and ones.
    x = rng.normal(size=(24, 2))
    y = rng.integers(0, 2, 24)
    s, alpha = 0.8, 1.01
    s_x = renyi_eig(gauss_gram(x, s), alpha)
    s_half = renyi_eig(gauss_gram(x, s / math.sqrt(2)), alpha)
    got_xt, _ = mi_renyi(x, x, y, alpha=alpha, sigma=s)
    assert got_xt == pytest.approx(2 * s_x - s_half, abs=1e-8)
    assert abs(got_xt - s_x) > 0.05
    # 0/1 Gram (identical points in far-apart clusters): I(X;X) = S(A_X)
    xc = np.repeat(1000.0 * np.arange(3)[:, None], [2, 3, 5], axis=0)
    yc = np.arange(10) % 2
    s_xc = renyi_of_probs([0.2, 0.3, 0.5], alpha)
    assert mi_renyi(xc, xc, yc, alpha=alpha, sigma=1.0)[0] == pytest.approx(s_xc, abs=1e-9)


def test_mi_renyi_batch_matches_oracle_per_item(rng):
    x = rng.normal(size=(16, 3))
    t = rng.normal(size=(3, 16, 2))
    t[1] *= 0.2
    y = rng.integers(0, 3, 16)
    got_xt, got_ty = mi_renyi(x, t, y, alpha=2.0, sigma=0.7)
    kx, ky = gauss_gram(x, 0.7), label_gram(y)
    for b in range(3):
        kt = gauss_gram(t[b], 0.7)
        want_xt = renyi2_frobenius(kx) + renyi2_frobenius(kt) - renyi2_frobenius(kx * kt)
        want_ty = renyi2_frobenius(kt) + renyi2_frobenius(ky) - renyi2_frobenius(kt * ky)
        assert (got_xt[b], got_ty[b]) == pytest.approx((want_xt, want_ty), abs=1e-9)


# ------------------------------------------------------------------------------------------
# validation errors
# ------------------------------------------------------------------------------------------

T5 = np.zeros((5, 3))
Y5 = np.array([0, 1, 0, 1, 0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mi_binning(T5, Y5, n_bins=1), r"n_bins must be an integer >= 2, got 1"),
        (lambda: mi_binning(T5, Y5, n_bins=2.5), r"n_bins must be an integer >= 2, got 2\.5"),
        (lambda: mi_adaptive(T5, Y5, n_bins=0), r"n_bins must be an integer >= 2, got 0"),
        (lambda: adaptive_edges(T5, n_bins=True), r"n_bins must be an integer >= 2, got True"),
        (lambda: bin_codes(T5, n_bins=1, lo=0, hi=1), r"n_bins must be an integer >= 2, got 1"),
        (lambda: mi_binning(T5, Y5, lo=1.0, hi=-1.0), r"lo must be less than hi, got lo=1\.0 and hi=-1\.0"),
        (lambda: mi_binning(T5, Y5, lo=0.5, hi=0.5), r"lo must be less than hi, got lo=0\.5 and hi=0\.5"),
        (
            lambda: mi_binning(T5, Y5, lo=[0, 1, 0], hi=[1, 1, 1]),
            r"lo must be less than hi for every unit, got lo=1\.0 and hi=1\.0 at unit 1",
        ),
        (lambda: mi_binning(T5, Y5, lo=[0, 0], hi=1), r"lo must be a finite number or an array of shape \(3,\)"),
        (lambda: mi_binning(T5, Y5, lo=-1, hi=np.nan), r"hi must be a finite number or an array of shape \(3,\)"),
        (lambda: mi_binning(T5, Y5, lo="a", hi=1), r"lo must be a finite number .* got 'a'"),
        (lambda: mi_kde(T5, Y5, sigma2=0), r"sigma2 must be a finite number > 0, got 0"),
        (lambda: mi_kde(T5, Y5, sigma2=-1e-3), r"sigma2 must be a finite number > 0, got -0\.001"),
        (lambda: mi_kde(T5, Y5, bound="middle"), r"bound must be one of 'upper', 'lower'; got 'middle'"),
        (lambda: mi_renyi(T5, T5, Y5, alpha=1), r"alpha must be a finite number > 0 and != 1 .*got 1"),
        (lambda: mi_renyi(T5, T5, Y5, alpha=0.0), r"alpha must be a finite number > 0 and != 1 .*got 0\.0"),
        (lambda: mi_renyi(T5, T5, Y5, alpha=np.inf), r"alpha must be a finite number > 0 and != 1 .*got inf"),
        (lambda: renyi_entropy(np.eye(3), alpha=1.0), r"alpha must be a finite number > 0 and != 1"),
        (lambda: mi_renyi(T5, T5, Y5, gamma=0), r"gamma must be a finite number > 0, got 0"),
        (lambda: mi_renyi(T5, T5, Y5, sigma=-2.0), r"sigma must be a finite number > 0, got -2\.0"),
        (
            lambda: mi_renyi(np.zeros((4, 2)), T5, Y5),
            r"x must be a 2-D array \(N, d_x\) with the same N = 5 rows as t, got shape \(4, 2\)",
        ),
        (lambda: mi_renyi(np.zeros(5), T5, Y5), r"x must be a 2-D array \(N, d_x\) .* got shape \(5,\)"),
        (lambda: mi_binning(np.zeros(5), Y5), r"t must be an array of shape \(N, d\).* got shape \(5,\)"),
        (lambda: mi_kde(np.zeros((1, 3)), Y5[:1]), r"t must be .*N >= 2 rows and d >= 1 columns, got shape \(1, 3\)"),
        (lambda: mi_adaptive(np.zeros((5, 0)), Y5), r"t must be .*got shape \(5, 0\)"),
        (lambda: mi_binning(np.full((5, 3), "a"), Y5), r"t must be a real numeric array, got dtype <U1"),
        (lambda: mi_binning(T5, Y5.astype(float)), r"y must be a 1-D array of 5 integer class labels .*dtype float64"),
        (lambda: mi_kde(T5, Y5[:4]), r"y must be a 1-D array of 5 integer class labels .*shape \(4,\)"),
        (lambda: mi_renyi(T5, T5, Y5[None]), r"y must be a 1-D array of 5 integer class labels .*shape \(1, 5\)"),
        (
            lambda: bin_codes(np.array([[0.0, np.nan]]), n_bins=3, lo=0, hi=1),
            r"t must contain only finite values to be binned, got NaN or Inf",
        ),
        (
            lambda: adaptive_edges(np.array([[0.0, np.inf], [1.0, 2.0]])),
            r"t must contain only finite values to place bin edges, got NaN or Inf",
        ),
        (lambda: row_labels(np.zeros((3, 2))), r"codes must be a 2-D integer array \(N, d\), got shape \(3, 2\) and dtype float64"),
        (lambda: row_labels(np.zeros(3, dtype=int)), r"codes must be a 2-D integer array \(N, d\), got shape \(3,\)"),
        (lambda: entropy_bits([]), r"labels must be a non-empty 1-D array, got shape \(0,\)"),
        (lambda: entropy_bits(np.zeros((2, 2))), r"labels must be a non-empty 1-D array, got shape \(2, 2\)"),
        (lambda: renyi_entropy(np.ones((2, 3))), r"gram must be a square matrix .* got shape \(2, 3\)"),
        (lambda: renyi_entropy(np.zeros((2, 2))), r"gram must be finite with a positive diagonal"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValidationError, match=match):
        call()


def test_validation_comes_before_nan_handling():
    # a bad option is an error even when t would only give NaN
    with pytest.raises(ValidationError, match="sigma2 must be"):
        mi_kde(np.full((5, 2), np.nan), Y5, sigma2=0.0)
