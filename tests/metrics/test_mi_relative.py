"""Relative-resolution MI kernels against independent oracles.

Oracles: sklearn NearestNeighbors and scipy pdist for the layer scales; a brute-force double
loop with scipy.special.logsumexp for the KDE bounds; scipy cKDTree neighbour distances with
scipy's digamma/gamma for the Kozachenko-Leonenko entropy; closed-form Gaussian and uniform
entropies; sklearn PCA(whiten=True); sklearn mutual_info_score on equal-mass codes built here
with scipy.stats.rankdata; scipy eigenvalues of Gram matrices built with scipy.stats.zscore and
cdist; the Gaussian-channel closed form 0.5 log2(1 + var / noise^2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist, pdist
from sklearn.decomposition import PCA
from sklearn.metrics import mutual_info_score
from sklearn.neighbors import NearestNeighbors

from ckptlab.errors import ValidationError
from ckptlab.metrics import mi_relative as rel
from ckptlab.metrics.mi import mi_renyi
from ckptlab.metrics.mi_relative import (
    KDERelative,
    entropy_knn,
    layer_scale,
    mi_kde_relative,
    mi_projected,
    mi_renyi_normalised,
    pairwise_sq_dists,
    whiten_pca,
)

LN2 = math.log(2.0)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# ------------------------------------------------------------------------------------------
# independent oracles
# ------------------------------------------------------------------------------------------


def knn_scale_sklearn(t, k):
    dist, _ = NearestNeighbors(n_neighbors=k).fit(t).kneighbors()
    return float(dist[:, -1].mean())


def kde_logsumexp(t, y, var):
    """Kolchinsky-Tracey estimate at kernel variance var: explicit loop over rows (bits)."""
    t = np.asarray(t, dtype=float)
    y = np.asarray(y)
    n = len(t)

    def h(idx):
        total = 0.0
        for i in idx:
            d2 = np.array([np.sum((t[i] - t[j]) ** 2) for j in idx])
            total += -(scipy.special.logsumexp(-d2 / (2.0 * var)) - math.log(len(idx)))
        return total / len(idx)

    i_xt = h(range(n))
    cond = sum(np.mean(y == c) * h(np.flatnonzero(y == c)) for c in np.unique(y))
    return i_xt / LN2, (i_xt - cond) / LN2


def kl_entropy_ckdtree(z, k):
    """Kozachenko-Leonenko entropy in bits from cKDTree distances (positive distances only)."""
    z = np.asarray(z, dtype=float)
    n, d = z.shape
    dist, _ = cKDTree(z).query(z, k=n)  # all neighbours, sorted; column 0 is the point itself
    eps = np.array([row[row > 0][k - 1] for row in dist])
    log_vd = d / 2 * math.log(math.pi) - scipy.special.gammaln(d / 2 + 1)
    h = scipy.special.digamma(n) - scipy.special.digamma(k) + log_vd + d * np.mean(np.log(eps))
    return h / LN2


def gauss_entropy_bits(cov):
    cov = np.atleast_2d(cov)
    d = cov.shape[0]
    return 0.5 * math.log2((2 * math.pi * math.e) ** d * np.linalg.det(cov))


def equal_mass_codes(z, n_bins):
    """floor(rank * B / M) per column, rank among the column's M distinct values."""
    out = np.empty(z.shape, dtype=int)
    for u in range(z.shape[1]):
        r = scipy.stats.rankdata(z[:, u], method="dense").astype(int) - 1
        out[:, u] = r * n_bins // (r.max() + 1)
    return out


def row_ids(codes):
    seen: dict[tuple, int] = {}
    return np.array([seen.setdefault(tuple(r), len(seen)) for r in codes.tolist()])


def renyi_eig(k, alpha):
    lam = np.clip(scipy.linalg.eigvalsh(k / np.trace(k)), 0.0, None)
    lam = lam[lam > 1e-12]
    return math.log2(float(np.sum(lam**alpha))) / (1.0 - alpha)


def gauss_gram(a, s):
    return np.exp(-cdist(a, a, "sqeuclidean") / (2.0 * s * s))


def layer(rng, n=60, d=5):
    x = rng.normal(size=(n, 3))
    return np.tanh(x @ rng.normal(size=(3, d)) + 0.3 * rng.normal(size=(n, d))) * 4.0


# ------------------------------------------------------------------------------------------
# invariance under T -> 7 T + 3
# ------------------------------------------------------------------------------------------


def test_every_relative_estimator_is_invariant_to_scale_and_shift(rng):
    n = 80
    x = rng.normal(size=(n, 3))
    t = np.maximum(x @ rng.normal(size=(3, 6)), 0) + 0.05 * rng.normal(size=(n, 6))
    y = rng.integers(0, 3, n)
    t2 = 7.0 * t + 3.0
    close = dict(rtol=1e-10, atol=1e-12)

    for rule in ("knn", "rms", "median"):
        np.testing.assert_allclose(layer_scale(t2, rule=rule), 7 * layer_scale(t, rule=rule), **close)
    for scale in ("knn", "rms", "median"):
        a, b = mi_kde_relative(t, y, scale=scale), mi_kde_relative(t2, y, scale=scale)
        for f in ("xt_upper", "ty_upper", "xt_lower", "ty_lower"):
            np.testing.assert_allclose(getattr(b, f), getattr(a, f), **close)
        np.testing.assert_allclose(b.sigma, 7 * a.sigma, **close)
    a, b = mi_renyi_normalised(x, t, y), mi_renyi_normalised(x, t2, y)
    np.testing.assert_allclose([b.xt, b.ty], [a.xt, a.ty], **close)
    np.testing.assert_allclose(whiten_pca(t2, 3), whiten_pca(t, 3), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(entropy_knn(whiten_pca(t2, 3)), entropy_knn(whiten_pca(t, 3)), **close)
    for method in ("knn", "binning"):
        np.testing.assert_allclose(
            mi_projected(t2, y, k_dims=3, method=method), mi_projected(t, y, k_dims=3, method=method), **close
        )


def test_projection_invariant_to_negative_scale_and_rotation(rng):
    t = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6))
    y = rng.integers(0, 3, 80)
    rot = scipy.stats.ortho_group.rvs(6, random_state=4)
    for t2 in (-3.0 * t + 1.0, t @ rot):
        np.testing.assert_allclose(whiten_pca(t2, 3), whiten_pca(t, 3), atol=1e-10)
        np.testing.assert_allclose(mi_projected(t2, y), mi_projected(t, y), rtol=1e-10)


# ------------------------------------------------------------------------------------------
# layer scale and distances
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 10])
def test_knn_scale_matches_sklearn_with_duplicates(rng, k):
    t = layer(rng, 50, 4)
    t[7] = t[3]  # a duplicate is a neighbour at distance 0
    t[20] = t[3]
    assert layer_scale(t, rule="knn", k=k) == pytest.approx(knn_scale_sklearn(t, k), rel=1e-12)
    assert layer_scale(sq_dists=pairwise_sq_dists(t), k=k) == pytest.approx(knn_scale_sklearn(t, k), rel=1e-12)


def test_rms_and_median_scales_match_pdist(rng):
    for n in (31, 32):  # odd and even pair counts
        t = layer(rng, n, 3)
        d = pdist(t)
        for kw in ({"t": t}, {"sq_dists": pairwise_sq_dists(t)}):
            assert layer_scale(**kw, rule="rms") == pytest.approx(math.sqrt(np.mean(d**2)), rel=1e-12)
            assert layer_scale(**kw, rule="median") == pytest.approx(np.median(d), rel=1e-12)


def test_pairwise_sq_dists_exact_zeros_for_duplicates(rng):
    t = rng.normal(size=(12, 5)) * 1e3 + 1e4  # large norms: the expansion would round
    t[5] = t[2]
    d = pairwise_sq_dists(t)
    np.testing.assert_allclose(d, cdist(t, t, "sqeuclidean"), rtol=1e-9, atol=1e-6)
    assert d[2, 5] == 0.0 and d[5, 2] == 0.0 and (np.diag(d) == 0).all()


def test_constant_layer_scale_zero(rng):
    t = np.full((10, 3), 2.5)
    for rule in ("knn", "rms", "median"):
        assert layer_scale(t, rule=rule, k=3) == 0.0


# ------------------------------------------------------------------------------------------
# KDE bounds at relative resolutions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["knn", "rms", "median"])
def test_kde_relative_matches_brute_force_logsumexp(rng, scale):
    t = layer(rng, 24, 3)
    y = rng.integers(0, 3, 24)
    d = pdist(t)
    s = {"knn": knn_scale_sklearn(t, 5), "rms": math.sqrt(np.mean(d**2)), "median": np.median(d)}[scale]
    res = (0.2, 1.0, 2.5)
    got = mi_kde_relative(t, y, resolutions=res, scale=scale, k=5)
    assert isinstance(got, KDERelative)
    assert got.scale == pytest.approx(s, rel=1e-12)
    for j, c in enumerate(res):
        var = (c * s) ** 2
        assert (got.xt_upper[j], got.ty_upper[j]) == pytest.approx(kde_logsumexp(t, y, var), abs=1e-10)
        assert (got.xt_lower[j], got.ty_lower[j]) == pytest.approx(kde_logsumexp(t, y, 4 * var), abs=1e-10)
    assert got.ceiling_xt == pytest.approx(math.log2(24))
    assert got.ceiling_ty == pytest.approx(scipy.stats.entropy(np.bincount(y), base=2))


def test_kde_relative_blocks_batches_and_precomputed_distances(rng, monkeypatch):
    t = np.stack([layer(rng, 15, 3) for _ in range(3)])
    y = rng.integers(0, 2, 15)
    want = mi_kde_relative(t, y, k=3)
    monkeypatch.setattr(rel, "_BLOCK_ELEMENTS", 40)  # row blocks of one row
    monkeypatch.setattr(rel, "_MATRIX_ELEMENTS", 300)  # one batch item at a time
    monkeypatch.setattr(rel, "_TILE_ELEMENTS", 9)  # kernel tiles of 3 x 3, on and above the diagonal
    got = mi_kde_relative(t, y, k=3)
    d = pairwise_sq_dists(t)
    d_copy = d.copy()
    pre = mi_kde_relative(None, y, k=3, sq_dists=d)
    np.testing.assert_array_equal(d, d_copy)  # the caller's matrix is not modified
    d_diag = d + np.eye(15) * 5.0  # the diagonal is ignored, and not written to
    np.testing.assert_allclose(mi_kde_relative(None, y, k=3, sq_dists=d_diag).xt_upper, want.xt_upper,
                               rtol=1e-12)
    assert (np.diagonal(d_diag, axis1=-2, axis2=-1) == 5.0).all()
    for f in ("xt_upper", "ty_upper", "xt_lower", "ty_lower", "scale", "sigma"):
        np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-12)
        np.testing.assert_allclose(getattr(pre, f), getattr(want, f), rtol=1e-12)
    assert want.xt_upper.shape == (3, 4) and want.scale.shape == (3,)
    for b in range(3):
        one = mi_kde_relative(t[b], y, k=3)
        np.testing.assert_allclose(want.xt_lower[b], one.xt_lower, rtol=1e-12)
        np.testing.assert_allclose(want.ty_upper[b], one.ty_upper, rtol=1e-12)


def test_kde_relative_limits_and_gaussian_channel(rng):
    n = 400
    x = rng.normal(size=(n, 1))
    t = x + 0.01 * rng.normal(size=(n, 1))  # T = X + small noise, X Gaussian
    y = rng.integers(0, 2, n)
    res = np.geomspace(1e-8, 1e6, 29)
    r = mi_kde_relative(t, y, resolutions=res)
    assert r.xt_upper[0] == pytest.approx(math.log2(n), abs=1e-6)
    assert r.xt_upper[-1] == pytest.approx(0.0, abs=1e-6)
    for f in ("xt_upper", "xt_lower"):
        assert (np.diff(getattr(r, f)) <= 1e-12).all()  # non-increasing in resolution
    assert (r.xt_lower <= r.xt_upper + 1e-12).all() and (r.ty_lower <= r.ty_upper + 1e-12).all()
    assert (r.ty_upper <= r.ceiling_ty + 1e-12).all()
    # Gaussian closed form: noise sigma on T ~ N(0, var) gives 0.5 log2(1 + var / sigma^2);
    # the mixture of N Gaussians is close to it when sigma >> sample spacing, and the two
    # Kolchinsky-Tracey bounds bracket the mixture's MI (tolerance 0.05 bits for N = 400)
    sigma = 0.5
    s_rms = math.sqrt(np.mean(pdist(t) ** 2))
    g = mi_kde_relative(t, y, resolutions=[sigma / s_rms], scale="rms")
    closed = 0.5 * math.log2(1 + np.var(t) / sigma**2)
    assert g.xt_lower[0] - 0.05 <= closed <= g.xt_upper[0] + 0.05


def test_kde_relative_degenerate_and_zero_knn_scale():
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    r = mi_kde_relative(np.full((8, 4), 3.0), y, k=2)
    assert r.scale == 0.0
    for f in ("xt_upper", "ty_upper", "xt_lower", "ty_lower"):
        np.testing.assert_array_equal(getattr(r, f), 0.0)
    # every row has >= 2 copies: knn scale 0 -> noise-free limit = plug-in entropy of rows
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    which = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    yy = np.array([0, 1, 0, 1, 1, 1, 0, 0, 1, 0])
    r = mi_kde_relative(pts[which], yy, k=2)
    assert r.scale == 0.0
    np.testing.assert_allclose(r.xt_upper, mutual_info_score(which, np.arange(10)) / LN2, atol=1e-12)
    np.testing.assert_allclose(r.ty_lower, mutual_info_score(which, yy) / LN2, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Kozachenko-Leonenko entropy
# ------------------------------------------------------------------------------------------


# Tolerances: about 4 standard deviations of the estimate over seeds at N = 2000, k = 3
# (measured: sd 0.03-0.04 bits, bias below 0.04 bits for these well-conditioned covariances;
# the estimator is not affine equivariant and its bias grows with the condition number).
@pytest.mark.parametrize("d, tol", [(1, 0.12), (2, 0.12), (4, 0.18)])
def test_entropy_knn_gaussian(rng, d, tol):
    q = scipy.stats.ortho_group.rvs(d, random_state=7) if d > 1 else np.ones((1, 1))
    cov = q @ np.diag(np.linspace(0.5, 3.0, d) ** 2) @ q.T
    z = rng.multivariate_normal(np.zeros(d), cov, size=2000)
    assert entropy_knn(z, k=3) == pytest.approx(gauss_entropy_bits(cov), abs=tol)


@pytest.mark.parametrize("d, tol", [(1, 0.1), (2, 0.15)])  # boundary bias: +0.04 bits in d = 2
def test_entropy_knn_uniform_cube_is_zero(rng, d, tol):
    assert entropy_knn(rng.uniform(size=(2000, d)), k=3) == pytest.approx(0.0, abs=tol)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_entropy_knn_matches_ckdtree_formula(rng, k):
    z = rng.normal(size=(150, 3))
    assert entropy_knn(z, k=k) == pytest.approx(kl_entropy_ckdtree(z, k), rel=1e-10)


def test_entropy_knn_duplicates_skipped_and_atom_is_minus_inf(rng):
    z = rng.normal(size=(60, 2))
    z[10] = z[4]
    z[11] = z[4]
    assert entropy_knn(z, k=2) == pytest.approx(kl_entropy_ckdtree(z, 2), rel=1e-10)
    assert entropy_knn(np.ones((20, 2)), k=2) == -math.inf
    few = np.zeros((20, 2))
    few[0] = 1.0  # row 0 has 19 others at positive distance, the other rows only one
    assert entropy_knn(few, k=2) == -math.inf


# ------------------------------------------------------------------------------------------
# whitened PCA
# ------------------------------------------------------------------------------------------


def test_whiten_pca_matches_sklearn_up_to_sign(rng):
    t = layer(rng, 70, 6)
    got = whiten_pca(t, 4)
    want = PCA(n_components=4, whiten=True, svd_solver="full").fit_transform(t)
    signs = np.sign(np.sum(got * want, axis=0))
    np.testing.assert_allclose(got, want * signs, atol=1e-9)
    np.testing.assert_allclose(np.cov(got, rowvar=False), np.eye(4), atol=1e-10)


def test_whiten_pca_rank_deficient_gives_zero_columns(rng):
    base = rng.normal(size=(40, 2))
    t = base @ rng.normal(size=(2, 5)) + 1.0  # rank 2 in 5 dimensions
    z = whiten_pca(t, 4)
    np.testing.assert_allclose(np.var(z[:, :2], axis=0, ddof=1), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(z[:, 2:], 0.0)
    np.testing.assert_array_equal(whiten_pca(np.ones((5, 8)), 8), 0.0)  # k > N: padded
    assert whiten_pca(rng.normal(size=(5, 8)), 8)[:, 4:].max() == 0.0  # rank <= N - 1 = 4


# ------------------------------------------------------------------------------------------
# projected MI
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [3, 5])
def test_mi_projected_binning_matches_sklearn(rng, n_bins):
    n = 240  # divisible by n_bins: the equal-mass partition does not depend on signs
    t = layer(rng, n, 6)
    y = rng.integers(0, 4, n)
    z = PCA(n_components=3, whiten=True, svd_solver="full").fit_transform(t)
    ids = row_ids(equal_mass_codes(z, n_bins))
    want = (mutual_info_score(ids, np.arange(n)) / LN2, mutual_info_score(ids, y) / LN2)
    got = mi_projected(t, y, k_dims=3, method="binning", n_bins=n_bins)
    assert tuple(got) == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("d, noise", [(2, 0.5), (2, 1.0), (3, 0.7)])
def test_mi_projected_knn_gaussian_channel(rng, d, noise):
    # whitened Gaussian Z: I(Z; Z + E) = d/2 log2(1 + 1/noise^2). Tolerance 0.2 bits, about
    # 4 standard deviations over seeds at N = 1500 (measured sd 0.03-0.05 bits, bias -0.01 to
    # -0.05 bits: KL bias plus the Monte Carlo error of the single noise draw)
    t = rng.normal(size=(1500, d)) @ (rng.normal(size=(d, d)) + 2 * np.eye(d))
    y = rng.integers(0, 2, 1500)  # independent of T: I(T;Y) = 0
    got = mi_projected(t, y, k_dims=d, method="knn", noise=noise, seed=3)
    assert got.xt == pytest.approx(d / 2 * math.log2(1 + 1 / noise**2), abs=0.2)
    assert got.ty == pytest.approx(0.0, abs=0.15)


def test_mi_projected_knn_seed_and_generator(rng):
    t = layer(rng, 80, 5)
    y = rng.integers(0, 2, 80)
    a = mi_projected(t, y, seed=5)
    assert mi_projected(t, y, seed=np.random.default_rng(5)) == a
    assert mi_projected(t, y, seed=6) != a


# ------------------------------------------------------------------------------------------
# Renyi on normalised units
# ------------------------------------------------------------------------------------------


def test_renyi_normalised_invariant_to_per_unit_affine_maps(rng):
    x = rng.normal(size=(50, 3))
    t = layer(rng, 50, 4)
    y = rng.integers(0, 3, 50)
    a = mi_renyi_normalised(x, t, y)
    b = mi_renyi_normalised(x * [2.0, -0.1, 30.0] + 5, t * [1e-3, -4.0, 7.0, 0.5] - 2, y)
    np.testing.assert_allclose([b.xt, b.ty], [a.xt, a.ty], rtol=1e-10)


def test_renyi_normalised_identity_with_mi_renyi_and_scipy_oracle(rng):
    n, alpha, s0 = 40, 1.01, 1.3
    x = rng.normal(size=(n, 3)) * [1, 5, 0.2]
    t = layer(rng, n, 4)
    t = np.concatenate([t, np.full((n, 1), 9.0)], axis=1)  # one constant unit: dropped
    y = rng.integers(0, 2, n)
    got = mi_renyi_normalised(x, t, y, alpha=alpha, s0=s0)

    zx, zt = scipy.stats.zscore(x), scipy.stats.zscore(t[:, :4])
    sx = s0 * math.sqrt(3) * n ** (-1 / 7)
    st = s0 * math.sqrt(4) * n ** (-1 / 8)
    assert (got.sigma_x, got.sigma_t) == pytest.approx((sx, st))
    ident = mi_renyi(zx / sx, zt / st, y, alpha=alpha, sigma=1.0)
    assert (got.xt, got.ty) == pytest.approx(ident, rel=1e-12)

    kx, kt = gauss_gram(zx, sx), gauss_gram(zt, st)
    ky = (y[:, None] == y[None, :]).astype(float)
    want_xt = renyi_eig(kx, alpha) + renyi_eig(kt, alpha) - renyi_eig(kx * kt, alpha)
    want_ty = renyi_eig(kt, alpha) + renyi_eig(ky, alpha) - renyi_eig(kt * ky, alpha)
    assert (got.xt, got.ty) == pytest.approx((want_xt, want_ty), abs=1e-8)


def test_renyi_normalised_constant_layer_is_zero(rng):
    x = rng.normal(size=(20, 2))
    r = mi_renyi_normalised(x, np.full((20, 3), -1.0), rng.integers(0, 2, 20))
    assert (r.xt, r.ty) == pytest.approx((0.0, 0.0), abs=1e-10)


# ------------------------------------------------------------------------------------------
# batches and non-finite items
# ------------------------------------------------------------------------------------------


def test_batches_equal_per_item_loop_and_nan_items(rng):
    m, n = 3, 40
    x = rng.normal(size=(n, 3))
    t = np.stack([layer(rng, n, 5) for _ in range(m)]).reshape(1, m, n, 5)
    t[0, 1, 3, 2] = np.nan
    y = rng.integers(0, 2, n)
    calls = {
        "scale": lambda a: layer_scale(a, k=4),
        "kde": lambda a: mi_kde_relative(a, y, k=4).xt_upper,
        "kde_ty": lambda a: mi_kde_relative(a, y, k=4).ty_lower,
        "renyi": lambda a: mi_renyi_normalised(x, a, y).ty,
        "white": lambda a: whiten_pca(a, 2),
        "h": lambda a: entropy_knn(a, k=3),
        "proj_knn": lambda a: mi_projected(a, y, k_dims=2).xt,
        "proj_bin": lambda a: mi_projected(a, y, k_dims=2, method="binning").ty,
    }
    for name, f in calls.items():
        batched = np.asarray(f(t))
        assert batched.shape[:2] == (1, m), name
        for b in range(m):
            one = np.asarray(f(t[0, b]))
            if b == 1:
                assert np.isnan(batched[0, b]).all() and np.isnan(one).all(), name
            else:
                np.testing.assert_allclose(batched[0, b], one, rtol=1e-10, atol=1e-12, err_msg=name)
    assert np.isnan(pairwise_sq_dists(t)[0, 1]).all()
    assert np.isnan(mi_kde_relative(t, y).scale[0, 1])


def test_nonfinite_x_gives_nan_renyi_normalised(rng):
    x = rng.normal(size=(10, 2))
    x[0, 0] = np.inf
    r = mi_renyi_normalised(x, rng.normal(size=(10, 3)), np.arange(10) % 2)
    assert math.isnan(r.xt) and math.isnan(r.ty)


# ------------------------------------------------------------------------------------------
# validation errors
# ------------------------------------------------------------------------------------------

T6 = np.arange(18.0).reshape(6, 3) ** 1.5
Y6 = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: layer_scale(T6, k=6), r"k must be an integer in \[1, N - 1\] = \[1, 5\] .*N = 6 rows\), got 6"),
        (lambda: layer_scale(T6, k=0), r"k must be an integer >= 1, got 0"),
        (lambda: layer_scale(T6, rule="mean"), r"rule must be one of 'knn', 'rms', 'median'; got 'mean'"),
        (lambda: layer_scale(), r"pass exactly one of t .* or sq_dists .*got neither"),
        (lambda: layer_scale(T6, sq_dists=np.zeros((6, 6))), r"pass exactly one of t .*got both"),
        (lambda: layer_scale(sq_dists=np.zeros((6, 5))), r"sq_dists must be a square matrix .*got shape \(6, 5\)"),
        (lambda: layer_scale(sq_dists=-np.ones((3, 3))), r"sq_dists must hold squared distances >= 0"),
        (lambda: mi_kde_relative(T6, Y6, resolutions=()), r"resolutions must be a non-empty 1-D sequence .*got \(\)"),
        (lambda: mi_kde_relative(T6, Y6, resolutions=[1.0, 0.0]), r"resolutions must be .*> 0, got \[1\.0, 0\.0\]"),
        (lambda: mi_kde_relative(T6, Y6, resolutions=[-1]), r"resolutions must be .*got \[-1\]"),
        (lambda: mi_kde_relative(T6, Y6, resolutions=0.5), r"resolutions must be a non-empty 1-D"),
        (lambda: mi_kde_relative(T6, Y6, scale="iqr"), r"scale must be one of 'knn', 'rms', 'median'; got 'iqr'"),
        (lambda: mi_kde_relative(T6, Y6, k=10), r"k must be an integer in \[1, N - 1\] = \[1, 5\]"),
        (lambda: mi_kde_relative(T6, Y6[:5]), r"y must be a 1-D array of 6 integer class labels .*shape \(5,\)"),
        (lambda: mi_kde_relative(np.zeros(6), Y6), r"t must be an array of shape \(N, d\)"),
        (lambda: mi_renyi_normalised(T6, T6, Y6, s0=0), r"s0 must be a finite number > 0, got 0"),
        (lambda: mi_renyi_normalised(T6, T6, Y6, alpha=1.0), r"alpha must be a finite number > 0 and != 1"),
        (lambda: mi_renyi_normalised(T6[:5], T6, Y6), r"x must be a 2-D array \(N, d_x\) with the same N = 6"),
        (lambda: mi_renyi_normalised(T6, T6, Y6[:4]), r"y must be a 1-D array of 6 integer class labels"),
        (lambda: whiten_pca(T6, 4), r"k must be an integer in \[1, d\] = \[1, 3\] .*got 4"),
        (lambda: whiten_pca(T6, 0), r"k must be an integer in \[1, d\]"),
        (lambda: entropy_knn(T6, k=6), r"k must be an integer in \[1, N - 1\] = \[1, 5\]"),
        (lambda: entropy_knn(np.zeros((1, 3))), r"z must be an array of shape \(N, d\).*got shape \(1, 3\)"),
        (lambda: mi_projected(T6, Y6, k_dims=4), r"k_dims must be an integer in \[1, d\] = \[1, 3\] .*got 4"),
        (lambda: mi_projected(T6, Y6, method="kde"), r"method must be one of 'knn', 'binning'; got 'kde'"),
        (lambda: mi_projected(T6, Y6, noise=0.0), r"noise must be a finite number > 0, got 0\.0"),
        (lambda: mi_projected(T6, Y6, n_bins=1, method="binning"), r"n_bins must be an integer >= 2, got 1"),
        (lambda: mi_projected(T6, Y6, seed=-1), r"seed must be an integer >= 0 or a numpy\.random\.Generator, got -1"),
        (lambda: mi_projected(T6, Y6, k_dims=2, k=3), r"k must be an integer in \[1, N - 1\] = \[1, 2\] .*N = 3 rows of the smallest class"),
        (lambda: mi_projected(T6, Y6.astype(float)), r"y must be a 1-D array of 6 integer class labels .*float64"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValidationError, match=match):
        call()


def test_validation_comes_before_nan_handling():
    with pytest.raises(ValidationError, match="resolutions must be"):
        mi_kde_relative(np.full((5, 2), np.nan), Y6[:5], resolutions=[])


def test_kde_relative_refuses_distances_that_are_not_symmetric(rng):
    t = layer(rng, 12, 3)
    y = rng.integers(0, 2, 12)
    d = pairwise_sq_dists(t)
    mi_kde_relative(None, y, k=3, sq_dists=d)  # rounding-level asymmetry is fine
    d[0, 5] += 1.0
    with pytest.raises(ValidationError, match=r"sq_dists must be symmetric .* by up to 1\.0"):
        mi_kde_relative(None, y, k=3, sq_dists=d)
