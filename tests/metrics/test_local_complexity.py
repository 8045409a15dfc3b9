"""Local complexity against hand-built networks and a brute-force per-vertex reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ckptlab.errors import ValidationError
from ckptlab.metrics.local_complexity import cross_polytope_directions, local_complexity


def one_layer(weight, bias):
    """preact_fn of a single ReLU layer z = W x + b followed by a dummy output (its ReLU)."""
    w = torch.as_tensor(weight, dtype=torch.float64)
    b = torch.as_tensor(bias, dtype=torch.float64)

    def fn(v):
        z = v @ w.T + b
        return [z, torch.relu(z).sum(1, keepdim=True)]

    return fn


def mlp(widths, seed):
    """Random ReLU MLP; preact_fn returns every hidden pre-activation and then the logits."""
    g = torch.Generator().manual_seed(seed)
    params = [
        (
            torch.randn(o, i, generator=g, dtype=torch.float64),
            torch.randn(o, generator=g, dtype=torch.float64),
        )
        for i, o in itertools.pairwise(widths)
    ]

    def fn(v):
        out = []
        for k, (w, b) in enumerate(params):
            z = v @ w.T + b
            out.append(z)
            v = torch.relu(z) if k < len(params) - 1 else z
        return out

    return fn, params


def brute_force(points, fn, directions, radius, lower=None, upper=None, include_output=False):
    """Independent reference: one vertex at a time, Python sets of signs per neuron."""
    pts = np.asarray(points, dtype=np.float64)
    dirs = np.asarray(directions, dtype=np.float64)
    result = []
    for x in pts:
        per_vertex = []
        for sign in (1.0, -1.0):
            for v in dirs:
                vert = x + sign * radius * v
                if lower is not None:
                    vert = np.maximum(vert, lower)
                if upper is not None:
                    vert = np.minimum(vert, upper)
                layers = fn(torch.tensor(vert[None], dtype=torch.float64))
                per_vertex.append([z[0].numpy() for z in layers])
        n_layers = len(per_vertex[0]) - (0 if include_output else 1)
        row = []
        for k in range(n_layers):
            count = 0
            for u in range(per_vertex[0][k].size):
                vals = [pv[k][u] for pv in per_vertex]
                if any(val > 0 for val in vals) and any(val < 0 for val in vals):
                    count += 1
            row.append(count)
        result.append(row)
    return np.array(result, dtype=np.int64)


# ----------------------------------------------------------------------------- directions


def test_directions_orthonormal_and_shape():
    d = cross_polytope_directions(40, n_directions=25, seed=3, dtype=torch.float64)
    assert d.shape == (25, 40) and d.dtype == torch.float64
    np.testing.assert_allclose((d @ d.T).numpy(), np.eye(25), atol=1e-12)
    assert cross_polytope_directions(40, n_directions=25, seed=3).dtype == torch.float32


def test_directions_reproducible_and_leave_global_rng_alone():
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    a = cross_polytope_directions(10, n_directions=4, seed=7)
    b = cross_polytope_directions(10, n_directions=4, seed=7)
    c = cross_polytope_directions(10, n_directions=4, seed=8)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and after[2:] == np_state[2:]
    assert np.array_equal(after[1], np_state[1])
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # Changing the global seed does not change the directions.
    torch.manual_seed(12345)
    assert torch.equal(cross_polytope_directions(10, n_directions=4, seed=7), a)
    torch.set_rng_state(torch_state)


def test_directions_from_generators():
    a = cross_polytope_directions(6, n_directions=6, seed=np.random.default_rng(1))
    b = cross_polytope_directions(6, n_directions=6, seed=np.random.default_rng(1))
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    c = cross_polytope_directions(6, n_directions=3, seed=g1)
    assert torch.equal(c, cross_polytope_directions(6, n_directions=3, seed=g2))
    np.testing.assert_allclose((a @ a.T).numpy(), np.eye(6), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim must be an integer >= 1, got 0"),
        ({"dim": 3, "n_directions": 4}, r"n_directions must be an integer in \[1, 3\], got 4"),
        ({"dim": 3, "n_directions": 0}, r"n_directions must be an integer in \[1, 3\], got 0"),
        ({"dim": 3, "n_directions": 2, "seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"dim": 3, "n_directions": 2, "seed": 1.5}, "seed must be a non-negative int"),
        ({"dim": 3, "n_directions": 2, "dtype": torch.int64}, "dtype must be a floating torch dtype"),
    ],
)
def test_directions_bad_input(kwargs, match):
    kwargs = dict(kwargs)
    dim = kwargs.pop("dim")
    with pytest.raises(ValidationError, match=match):
        cross_polytope_directions(dim, **kwargs)


# ------------------------------------------------------------------------ hand-built nets


def test_one_layer_known_hyperplanes():
    # Hyperplane 1: x1 = 1.0; hyperplane 2: x2 = -2.0. The point is 0.3 from the first and 5
    # from the second, so with radius 1 along the axes only neuron 1 is cut.
    fn = one_layer([[1.0, 0.0], [0.0, 1.0]], [-1.0, 2.0])
    x = torch.tensor([[1.3, 3.0]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    assert local_complexity(x, fn, directions=eye, radius=1.0).tolist() == [[1]]
    # Radius 0.29 < 0.3: nothing is cut; radius 6: both are.
    assert local_complexity(x, fn, directions=eye, radius=0.29).tolist() == [[0]]
    assert local_complexity(x, fn, directions=eye, radius=6.0).tolist() == [[2]]
    # Any rotated frame reaches at least r / sqrt(2) = 0.707 > 0.3 along each axis.
    rot = cross_polytope_directions(2, n_directions=2, seed=11, dtype=torch.float64)
    assert local_complexity(x, fn, directions=rot, radius=1.0).tolist() == [[1]]


def test_two_layers_known_answer():
    # Layer 1: identity ReLU; layer 2 neurons: a = h1 + h2 - 1 (cut near the point),
    # b = h1 - 10 (far away). At x = (0.5, 0.45), r = 0.1, vertices give a in {+-0.05, -0.15}.
    w1, b1 = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    w2 = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    b2 = torch.tensor([-1.0, -10.0], dtype=torch.float64)

    def fn(v):
        z1 = v @ w1.T + b1
        z2 = torch.relu(z1) @ w2.T + b2
        return [z1, z2, torch.relu(z2)]

    x = torch.tensor([[0.5, 0.45], [0.05, 3.0]], dtype=torch.float64)
    out = local_complexity(x, fn, directions=torch.eye(2, dtype=torch.float64), radius=0.1)
    # Second point: 0.05 from x1 = 0 (neuron 1 of layer 1 cut); layer 2: a = h1 + 2 > 0
    # everywhere, b < 0 everywhere.
    assert out.dtype == torch.int64
    assert out.tolist() == [[0, 1], [1, 0]]


def test_matches_brute_force_random_mlp():
    fn, _ = mlp([5, 8, 6, 3], seed=0)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(30, 5, generator=g, dtype=torch.float64)
    dirs = cross_polytope_directions(5, n_directions=4, seed=2, dtype=torch.float64)
    for radius in (0.05, 0.5, 2.0):
        got = local_complexity(pts, fn, directions=dirs, radius=radius)
        ref = brute_force(pts, fn, dirs, radius)
        np.testing.assert_array_equal(got.numpy(), ref)
        assert got.shape == (30, 2)
        assert got.sum() > 0  # the test would be void if nothing were ever cut
    got = local_complexity(pts, fn, directions=dirs, radius=0.5, include_output=True)
    np.testing.assert_array_equal(got.numpy(), brute_force(pts, fn, dirs, 0.5, include_output=True))
    assert got.shape == (30, 3)


def test_empty_output_placeholder_when_the_output_is_not_counted():
    # a caller that stops its forward pass at the last pre-activation passes (M, 0)
    fn, _ = mlp([5, 8, 6, 3], seed=0)

    def no_logits(v):
        return [*fn(v)[:-1], v.new_empty((v.shape[0], 0))]

    g = torch.Generator().manual_seed(1)
    pts = torch.randn(30, 5, generator=g, dtype=torch.float64)
    dirs = cross_polytope_directions(5, n_directions=4, seed=2, dtype=torch.float64)
    np.testing.assert_array_equal(
        local_complexity(pts, no_logits, directions=dirs, radius=0.5).numpy(),
        brute_force(pts, fn, dirs, 0.5))


def test_exact_zero_is_not_a_sign_change():
    # Neuron 1: z = x2, point (0, r): vertices give x2 in {r, r, 2r, 0}: never < 0, so it does
    # not count although its sign "changes" to zero. Neuron 2: identically 0 (dead).
    # Neuron 3: z = x2 - r/2 is strictly cut.
    r = 0.25
    fn = one_layer([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]], [0.0, 0.0, -r / 2])
    x = torch.tensor([[0.0, r]], dtype=torch.float64)
    out = local_complexity(x, fn, directions=torch.eye(2, dtype=torch.float64), radius=r)
    assert out.tolist() == [[1]]


def test_clipping_into_domain():
    # Hyperplane x1 = -0.01; the point is at x1 = 0.05 with radius 0.1, so the vertex at
    # x1 = -0.05 crosses it; clipped into [0, 1] that vertex lies at x1 = 0 and does not.
    fn = one_layer([[1.0, 0.0], [0.0, 1.0]], [0.01, -0.98])
    x = torch.tensor([[0.05, 0.95]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    assert local_complexity(x, fn, directions=eye, radius=0.1).tolist() == [[2]]
    assert local_complexity(x, fn, directions=eye, radius=0.1, lower=0.0).tolist() == [[1]]
    # Neuron 2 (x2 = 0.98) is cut by the vertex at x2 = 1.05; clipping at 0.975 removes it.
    assert local_complexity(x, fn, directions=eye, radius=0.1, upper=0.975).tolist() == [[1]]
    both = local_complexity(
        x, fn, directions=eye, radius=0.1, lower=[0.0, 0.0], upper=np.array([1.0, 0.975])
    )
    assert both.tolist() == [[0]]


def test_clipping_matches_brute_force():
    fn, _ = mlp([3, 7, 2], seed=4)
    g = torch.Generator().manual_seed(5)
    pts = torch.rand(20, 3, generator=g, dtype=torch.float64)
    dirs = cross_polytope_directions(3, n_directions=3, seed=0, dtype=torch.float64)
    lo, hi = np.array([0.0, 0.1, 0.0]), np.array([1.0, 0.9, 0.5])
    got = local_complexity(pts, fn, directions=dirs, radius=0.3, lower=lo, upper=hi)
    np.testing.assert_array_equal(got.numpy(), brute_force(pts, fn, dirs, 0.3, lo, hi))


@pytest.mark.parametrize("chunk_rows", [1, 7, 16, 10**6])
def test_chunking_gives_same_counts(chunk_rows):
    fn, _ = mlp([4, 16, 16, 2], seed=6)
    g = torch.Generator().manual_seed(7)
    pts = torch.randn(23, 4, generator=g)
    dirs = cross_polytope_directions(4, n_directions=4, seed=1)
    fn32 = lambda v: fn(v.double())  # noqa: E731
    whole = local_complexity(pts, fn32, directions=dirs, radius=0.4, chunk_rows=10**6)
    got = local_complexity(pts, fn32, directions=dirs, radius=0.4, chunk_rows=chunk_rows)
    assert torch.equal(got, whole)


def test_chunk_sizes_seen_by_preact_fn():
    fn, _ = mlp([3, 4, 2], seed=0)
    sizes = []

    def spy(v):
        sizes.append(v.shape[0])
        return fn(v.double())

    dirs = cross_polytope_directions(3, n_directions=2, seed=0)  # 4 vertices per point
    local_complexity(torch.zeros(10, 3), spy, directions=dirs, radius=0.1, chunk_rows=10)
    assert sizes == [12, 12, 12, 4]  # ceil(10 / 4) = 3 points per chunk


def test_nan_gives_nan_not_wrong_counts():
    fn, params = mlp([3, 5, 2], seed=1)
    dirs = cross_polytope_directions(3, n_directions=3, seed=0, dtype=torch.float64)
    pts = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    clean = local_complexity(pts, fn, directions=dirs, radius=1.0)
    pts[2, 1] = float("nan")
    out = local_complexity(pts, fn, directions=dirs, radius=1.0)
    assert out.dtype == torch.float64
    assert torch.isnan(out[2]).all()
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(out[keep], clean[keep].double())
    # A diverged checkpoint: every count is NaN, no exception.
    params[0][0][0, 0] = float("inf")
    out = local_complexity(pts, fn, directions=dirs, radius=1.0)
    assert torch.isnan(out).all()


def bad_call(**overrides):
    fn, _ = mlp([2, 3, 1], seed=0)
    kwargs = dict(
        points=torch.zeros(4, 2),
        preact_fn=lambda v: fn(v.double()),
        directions=torch.eye(2),
        radius=0.1,
    )
    kwargs.update(overrides)
    points, preact_fn = kwargs.pop("points"), kwargs.pop("preact_fn")
    return local_complexity(points, preact_fn, **kwargs)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"radius": 0.0}, "radius must be a finite number > 0, got 0.0"),
        ({"radius": float("nan")}, "radius must be a finite number > 0"),
        ({"points": torch.zeros(4)}, r"points must be a 2-D tensor \(N, D\).*got shape \(4,\)"),
        ({"points": torch.zeros(0, 2)}, r"points must be .*N >= 1.*got shape \(0, 2\)"),
        ({"directions": torch.eye(3)}, r"directions must be .*D = 2.*got shape \(3, 3\)"),
        ({"chunk_rows": 0}, "chunk_rows must be an integer >= 1, got 0"),
        ({"lower": 1.0, "upper": 0.0}, "lower must be <= upper"),
        ({"lower": [0.0, 0.0, 0.0]}, r"lower must be .*shape \(2,\).*got shape \(3,\)"),
        ({"upper": float("inf")}, "upper must be a finite number"),
        ({"include_output": 1}, "include_output must be a bool, got 1"),
        ({"preact_fn": lambda v: v}, "preact_fn must return a non-empty list or tuple"),
        ({"preact_fn": lambda v: [v[:1], v]},
         r"preact_fn must return tensors with \d+ rows \(one per vertex\)"),
        ({"preact_fn": lambda v: [v]}, "include_output=False there is no hidden layer"),
    ],
)
def test_bad_input(overrides, match):
    with pytest.raises(ValidationError, match=match):
        bad_call(**overrides)


def test_batched_points_equal_the_loop_over_models():
    torch.manual_seed(1)
    ws = torch.randn(3, 4, 6, dtype=torch.float64)
    bs = torch.randn(3, 6, dtype=torch.float64) * 0.1
    pts = torch.randn(3, 20, 4, dtype=torch.float64)
    dirs = cross_polytope_directions(4, n_directions=3, seed=0, dtype=torch.float64)

    def fn_batched(v):  # (B, M, 4) -> [(B, M, 6), logits]
        z = torch.einsum("bmd,bdk->bmk", v, ws) + bs[:, None]
        return [z, z.sum(-1, keepdim=True)]

    got = local_complexity(pts, fn_batched, directions=dirs, radius=0.5, chunk_rows=37)
    assert got.shape == (3, 20, 1)
    for b in range(3):
        want = local_complexity(pts[b], lambda v, b=b: [v @ ws[b] + bs[b], v[:, :1]],
                                directions=dirs, radius=0.5)
        assert torch.equal(got[b], want)
