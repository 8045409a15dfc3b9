"""Linear mapping number against closed forms and a brute-force numpy.corrcoef reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckptlab.errors import ValidationError
from ckptlab.metrics.lmn import linear_mapping_matrix, linear_mapping_number, lmn_from_matrix


def brute_force_L(h, f, n_interp=21):
    """Independent reference: one pair and one output at a time with numpy.corrcoef."""
    h = np.asarray(h, dtype=np.float64)
    lam = np.linspace(0.0, 1.0, n_interp)
    n = len(h)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            path = np.stack([h[i] + t * (h[j] - h[i]) for t in lam])
            y = f(torch.tensor(path)).numpy()
            r2 = [np.corrcoef(lam, y[:, k])[0, 1] ** 2 for k in range(y.shape[1])]
            out[i, j] = out[j, i] = np.mean(r2)
    return out


def tanh_mlp(d_in, d_hidden, d_out, seed):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(d_hidden, d_in, generator=g, dtype=torch.float64)
    w2 = torch.randn(d_out, d_hidden, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(x @ w1.T) @ w2.T


def test_affine_map_gives_all_ones_and_lmn_one():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(12, 5, generator=g, dtype=torch.float64)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    f = lambda x: x @ a.T + b  # noqa: E731
    L = linear_mapping_matrix(h, f)
    np.testing.assert_allclose(L, np.ones((12, 12)), atol=1e-12, rtol=0)
    assert abs(linear_mapping_number(h, f) - 1.0) < 1e-9


@pytest.mark.parametrize("c", [1, 2, 3, 5])
def test_equal_all_ones_blocks_give_c(c):
    L = np.kron(np.eye(c), np.ones((4, 4)))
    assert lmn_from_matrix(L) == pytest.approx(c, abs=1e-9)


def test_lmn_closed_form_unequal_blocks_and_identity():
    # Blocks of sizes 1, 2, 3: eigenvalues 1, 2, 3 (and zeros): p = (1, 2, 3) / 6.
    L = np.zeros((6, 6))
    L[0, 0] = 1.0
    L[1:3, 1:3] = 1.0
    L[3:, 3:] = 1.0
    p = np.array([1, 2, 3]) / 6
    assert lmn_from_matrix(L) == pytest.approx(2 ** (-(p * np.log2(p)).sum()), rel=1e-12)
    assert lmn_from_matrix(np.eye(9)) == pytest.approx(9.0, rel=1e-12)


def test_lmn_uses_absolute_eigenvalues():
    # [[1, 2], [2, 1]] has eigenvalues 3 and -1: p = (3/4, 1/4).
    p = np.array([0.75, 0.25])
    assert lmn_from_matrix([[1.0, 2.0], [2.0, 1.0]]) == pytest.approx(2 ** (-(p * np.log2(p)).sum()))


def test_matches_brute_force_nonlinear():
    f = tanh_mlp(3, 8, 4, seed=1)
    h = torch.randn(9, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    L = linear_mapping_matrix(h, f)
    ref = brute_force_L(h, f)
    np.testing.assert_allclose(L, ref, atol=1e-12)
    assert np.allclose(L, L.T)
    off = L[~np.eye(9, dtype=bool)]
    assert off.min() < 0.95  # the reference would be void if every path were linear
    # Other n_interp values follow the same definition.
    L5 = linear_mapping_matrix(h, f, n_interp=5)
    np.testing.assert_allclose(L5, brute_force_L(h, f, 5), atol=1e-12)


def test_linear_within_groups_not_across():
    # f = |x| coordinate-wise: linear on each orthant. Group A lies in the positive orthant,
    # group B in the negative one; paths within a group stay in one orthant, paths across
    # cross the kink at 0.
    rng = np.random.default_rng(3)
    a = rng.uniform(1.0, 2.0, size=(4, 2))
    b = -rng.uniform(1.0, 2.0, size=(3, 2))
    h = torch.tensor(np.vstack([a, b]))
    L = linear_mapping_matrix(h, torch.abs)
    np.testing.assert_allclose(L[:4, :4], 1.0, atol=1e-12)
    np.testing.assert_allclose(L[4:, 4:], 1.0, atol=1e-12)
    cross = L[:4, 4:]
    assert (cross < 0.99).all()
    np.testing.assert_allclose(cross, brute_force_L(h, torch.abs)[:4, 4:], atol=1e-12)
    # Closed-form check of one entry: output |x_k| along a straight path from a to b.
    lam = np.linspace(0, 1, 21)
    ys = [np.abs(a[0, k] + lam * (b[0, k] - a[0, k])) for k in range(2)]
    r2 = [np.corrcoef(lam, y)[0, 1] ** 2 for y in ys]
    assert L[0, 4] == pytest.approx(np.mean(r2), abs=1e-12)
    assert lmn_from_matrix(L) > 1.0 + 1e-3  # more than one linear piece


def constant_f(x):
    # Output 0 is linear along every path, output 1 is constant (3.0), output 2 is 0 * x.
    return torch.stack([x[:, 0], torch.full_like(x[:, 0], 3.0), 0.0 * x[:, 1]], dim=1)


def test_constant_output_rules():
    h = torch.tensor([[0.0, 1.0], [1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    off = ~np.eye(3, dtype=bool)
    L1 = linear_mapping_matrix(h, constant_f)
    np.testing.assert_allclose(L1[off], 1.0, atol=1e-12)
    L0 = linear_mapping_matrix(h, constant_f, constant_rule="zero")
    np.testing.assert_allclose(L0[off], 1.0 / 3.0, atol=1e-12)
    Ln = linear_mapping_matrix(h, constant_f, constant_rule="nan")
    np.testing.assert_allclose(Ln[off], 1.0, atol=1e-12)  # mean over the one varying output
    assert np.all(np.diag(L0) == 1.0)
    # Every output constant: "nan" leaves nothing to average.
    Lall = linear_mapping_matrix(h, lambda x: constant_f(x)[:, 1:], constant_rule="nan")
    assert np.isnan(Lall[off]).all() and np.all(np.diag(Lall) == 1.0)
    assert np.isnan(lmn_from_matrix(Lall))


def test_constant_tolerance_is_relative():
    h = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    # Rounding-level wiggle on a large constant is "constant"; tiny but real variation on a
    # tiny scale is not.
    wiggle = lambda x: 1e3 + 1e-14 * torch.sin(40 * x)  # noqa: E731
    assert linear_mapping_matrix(h, wiggle, constant_rule="zero")[0, 1] == 0.0
    tiny = lambda x: 1e-20 * torch.sin(3 * x)  # noqa: E731
    lam = np.linspace(0, 1, 21)
    expected = np.corrcoef(lam, np.sin(3 * lam))[0, 1] ** 2
    got = linear_mapping_matrix(h, tiny, constant_rule="zero")[0, 1]
    assert got == pytest.approx(expected, abs=1e-12)
    # An explicit rtol widens "constant".
    assert linear_mapping_matrix(h, tiny, constant_rule="zero", rtol=10.0)[0, 1] == 0.0


def test_float32_constant_output():
    # float32 rounding noise along a mathematically constant output is treated as constant.
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 4, generator=g)
    w = torch.randn(4, 4, generator=g)
    # Output 1 is sum(x W) - x (W 1) + 7: zero up to float32 rounding, plus 1.
    f = lambda x: torch.stack([(x @ w).sum(1), (x @ w).sum(1) - x @ w.sum(1) + 1.0], 1)  # noqa: E731
    path = h[0] + torch.linspace(0, 1, 21)[:, None] * (h[1] - h[0])
    assert f(path)[:, 1].unique().numel() > 1  # the noise is really there
    L = linear_mapping_matrix(h, f, constant_rule="zero")
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_allclose(L[off], 0.5, atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 21, 50, 10**6])
def test_chunking_and_batched_calls(chunk_rows):
    f = tanh_mlp(2, 5, 3, seed=4)
    h = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = []

    def spy(x):
        calls.append(x.shape[0])
        return f(x)

    L = linear_mapping_matrix(h, spy, chunk_rows=chunk_rows)
    np.testing.assert_allclose(L, linear_mapping_matrix(h, f), atol=1e-14)
    # the samples (every path's ends) once, then the 19 inner points of each pair in chunks
    n_pairs = 8 * 7 // 2
    per_call = max(1, chunk_rows // 19)
    assert calls[0] == 8
    assert len(calls) == 1 + -(-n_pairs // per_call)
    assert max(calls[1:]) == min(per_call, n_pairs) * 19


def test_nan_gives_nan_not_exception():
    f = tanh_mlp(2, 5, 3, seed=4)
    h = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    h[1, 0] = float("nan")
    for rule in ("one", "zero", "nan"):
        L = linear_mapping_matrix(h, f, constant_rule=rule)
        assert np.isnan(L[1, [0, 2, 3]]).all() and np.isnan(L[[0, 2, 3], 1]).all()
        assert np.isfinite(L[np.ix_([0, 2, 3], [0, 2, 3])]).all()
        assert np.isnan(linear_mapping_number(h, f, constant_rule=rule))
    inf_f = lambda x: f(x) * float("inf")  # noqa: E731
    h[1, 0] = 0.5
    assert np.isnan(linear_mapping_number(h, inf_f))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inside_a_path_makes_only_that_pair_nan(bad):
    # One output turns non-finite where x[0] lies in (0.45, 0.55): only inside the paths that
    # cross that band (every sample lies outside it); the other pairs match the oracle
    g = torch.Generator().manual_seed(7)
    h = torch.rand(8, 2, generator=g, dtype=torch.float64)
    h[:, 0] = torch.where(h[:, 0] < 0.5, h[:, 0] * 0.8, 0.6 + h[:, 0] * 0.4)
    base = tanh_mlp(2, 6, 3, seed=9)

    def f(x):
        y = base(x).clone()
        y[(x[:, 0] > 0.45) & (x[:, 0] < 0.55), 1] = bad
        return y

    lam = np.linspace(0.0, 1.0, 21)
    x0 = h[:, 0].numpy()
    crosses = np.array([[i != j and bool(np.any((np.abs(x0[i] + lam * (x0[j] - x0[i]) - 0.5)
                                                  < 0.05))) for j in range(8)] for i in range(8)])
    assert crosses.any() and (~crosses & ~np.eye(8, dtype=bool)).any()
    L = linear_mapping_matrix(h, f)
    assert np.array_equal(np.isnan(L), crosses)
    ok = ~crosses
    np.testing.assert_allclose(L[ok], brute_force_L(h, base)[ok], atol=1e-12)


def test_lmn_bounds_on_random_net():
    f = tanh_mlp(3, 16, 5, seed=8)
    h = torch.randn(20, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3
    lmn = linear_mapping_number(h, f)
    assert 1.0 <= lmn <= 20.0


ROWS = r"f must return a tensor with \d+ rows \(one per input row\)"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"h": torch.zeros(1, 3)}, r"h must be a 2-D tensor \(N, d1\) with N >= 2.*got shape \(1, 3\)"),
        ({"h": torch.zeros(5)}, r"h must be a 2-D tensor.*got shape \(5,\)"),
        ({"n_interp": 2}, "n_interp must be an integer >= 3, got 2"),
        ({"constant_rule": "ignore"}, "constant_rule must be one of 'one', 'zero', 'nan'; got 'ignore'"),
        ({"chunk_rows": 0}, "chunk_rows must be an integer >= 1, got 0"),
        ({"rtol": -1.0}, "rtol must be a finite number >= 0, got -1.0"),
        ({"f": lambda x: x[:3]}, ROWS),
        ({"f": lambda x: x.sum().reshape(())}, ROWS),
        ({"f": 3}, "f must be callable"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"h": torch.zeros(2, 3), "f": lambda x: x}
    args.update(kwargs)
    with pytest.raises(ValidationError, match=match):
        linear_mapping_matrix(args.pop("h"), args.pop("f"), **args)


@pytest.mark.parametrize(
    ("L", "match"),
    [
        (np.ones((2, 3)), r"L must be a square 2-D array \(N, N\) with N >= 1, got shape \(2, 3\)"),
        (np.ones(4), r"got shape \(4,\)"),
        (np.zeros((3, 3)), "L must have at least one nonzero eigenvalue"),
    ],
)
def test_lmn_from_matrix_bad_input(L, match):
    with pytest.raises(ValidationError, match=match):
        lmn_from_matrix(L)


def test_batched_equals_the_loop_over_models():
    torch.manual_seed(0)
    ws = [torch.randn(5, 3, dtype=torch.float64) for _ in range(4)]
    h = torch.randn(4, 9, 5, dtype=torch.float64)

    def f_one(w):
        return lambda x: torch.tanh(x @ w) ** 2

    def f_batched(x):  # (B, M, 5) -> (B, M, 3)
        return torch.tanh(torch.einsum("bmd,bdk->bmk", x, torch.stack(ws))) ** 2

    L = linear_mapping_matrix(h, f_batched, chunk_rows=50)
    assert L.shape == (4, 9, 9)
    for b in range(4):
        np.testing.assert_allclose(L[b], linear_mapping_matrix(h[b], f_one(ws[b])), rtol=1e-12)
    np.testing.assert_allclose(
        linear_mapping_number(h, f_batched),
        [linear_mapping_number(h[b], f_one(ws[b])) for b in range(4)], rtol=1e-12)
    with pytest.raises(ValidationError, match="per batch item"):
        linear_mapping_matrix(h, lambda x: x[0])


def test_an_f_that_works_in_place_does_not_change_the_samples():
    f = tanh_mlp(3, 8, 4, seed=1)
    h = torch.randn(9, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h0 = h.clone()

    def in_place(x):
        return f(x.clamp_(max=0.3))

    L = linear_mapping_matrix(h, in_place)
    torch.testing.assert_close(h, h0)
    np.testing.assert_allclose(L, brute_force_L(h0, lambda x: f(x.clamp(max=0.3))), atol=1e-12)
