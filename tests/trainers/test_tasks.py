"""Tests of trainers.tasks against hand-computed truth and brute-force references."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import struct

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

from ckptlab.errors import DataError, ValidationError
from trainers.tasks import (
    TASKS,
    TaskData,
    add_label_noise,
    digits,
    from_npz,
    ib_12bit,
    make_task,
    modular_arithmetic,
    permutation_composition,
    read_idx,
)


def all_rows(task):
    return np.concatenate([task.x_train, task.x_test]), np.concatenate([task.y_train, task.y_test])


def row_set(x):
    return {tuple(r) for r in x.tolist()}


def assert_same_task(a, b):
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert (a.name, a.n_classes, a.input_kind, a.vocab_size, a.params) == (
        b.name, b.n_classes, b.input_kind, b.vocab_size, b.params,
    )


# ------------------------------------------------------------------------------------------
# modular arithmetic


def test_division_mod_96_uses_only_invertible_divisors():
    task = modular_arithmetic(p=96, op="div", train_fraction=0.4, seed=1)
    x, y = all_rows(task)
    units = [b for b in range(96) if math.gcd(b, 96) == 1]
    assert len(units) == 32
    assert len(x) == 96 * 32
    assert row_set(x) == {(a, b) for a in range(96) for b in units}
    a, b = x[:, 0], x[:, 1]
    np.testing.assert_array_equal((y * b) % 96, a % 96)
    assert y.min() >= 0 and y.max() < 96
    assert len(task.y_train) == round(0.4 * 3072) == 1229  # 1228.8
    assert task.input_kind == "tokens" and task.vocab_size == 96 and task.n_classes == 96
    assert task.x_train.dtype == np.int64 and task.y_train.dtype == np.int64


def test_division_mod_prime_7():
    x, y = all_rows(modular_arithmetic(p=7, op="div", train_fraction=0.5))
    assert len(x) == 7 * 6
    assert 0 not in set(x[:, 1].tolist())
    np.testing.assert_array_equal((y * x[:, 1]) % 7, x[:, 0])


def test_power_et_al_division_mod_97():
    # Power et al.'s x / y mod 97: every non-zero divisor, 97 * 96 = 9312 equations
    task = modular_arithmetic(p=97, op="div", train_fraction=0.4, seed=2)
    x, y = all_rows(task)
    assert len(x) == 9312 and row_set(x) == {(a, b) for a in range(97) for b in range(1, 97)}
    np.testing.assert_array_equal((y * x[:, 1]) % 97, x[:, 0])  # c * b = a: each answer right
    assert len(task.y_train) == round(0.4 * 9312) == 3725
    assert task.params["division"] == "inverse"


def test_division_zero_convention_mod_96():
    x, y = all_rows(modular_arithmetic(p=96, op="div", train_fraction=0.4, division="zero"))
    assert len(x) == 96 * 95 and row_set(x) == {(a, b) for a in range(96) for b in range(1, 96)}
    unit = np.gcd(x[:, 1], 96) == 1
    assert unit.sum() == 96 * 32
    np.testing.assert_array_equal((y[unit] * x[unit, 1]) % 96, x[unit, 0])  # true quotients
    assert (y[~unit] == 0).all()  # no inverse: the convention's 0


def test_division_fermat_convention_mod_96():
    x, y = all_rows(modular_arithmetic(p=96, op="div", train_fraction=0.4, division="fermat"))
    assert len(x) == 96 * 95
    assert y.tolist() == [a * pow(b, 94, 96) % 96 for a, b in x.tolist()]
    # not division: b^94 is the inverse of b = 1 only, and takes 10 values
    assert sorted({pow(b, 94, 96) for b in range(1, 96)}) == [0, 1, 9, 25, 33, 49, 57, 64, 73, 81]
    assert (y * x[:, 1] % 96 == x[:, 0]).mean() < 0.2


@pytest.mark.parametrize("division", ["zero", "fermat"])
def test_division_conventions_agree_for_prime_p(division):
    # for prime p every non-zero divisor is invertible and b^(p-2) = b^-1: one table
    plain = modular_arithmetic(p=13, op="div", seed=4)
    other = modular_arithmetic(p=13, op="div", seed=4, division=division)
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(plain, f), getattr(other, f))
    assert "division" not in modular_arithmetic(p=13, op="add").params


@pytest.mark.parametrize("p", [11, 12])
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_add_sub_mul_match_brute_force(p, op):
    truth = {}
    for a in range(p):
        for b in range(p):
            truth[(a, b)] = {"add": a + b, "sub": a - b, "mul": a * b}[op] % p
    task = modular_arithmetic(p=p, op=op, train_fraction=0.3, seed=3)
    x, y = all_rows(task)
    assert len(x) == p * p and row_set(x) == set(truth)
    assert [truth[(a, b)] for a, b in x.tolist()] == y.tolist()


def test_split_disjoint_complete_reproducible():
    t1 = modular_arithmetic(p=7, op="add", train_fraction=0.3, seed=5)
    assert len(t1.x_train) == 15 and len(t1.x_test) == 34  # round(14.7) = 15
    tr, te = row_set(t1.x_train), row_set(t1.x_test)
    assert not tr & te
    assert tr | te == {(a, b) for a in range(7) for b in range(7)}
    assert_same_task(t1, modular_arithmetic(p=7, op="add", train_fraction=0.3, seed=5))
    t2 = modular_arithmetic(p=7, op="add", train_fraction=0.3, seed=6)
    assert row_set(t2.x_train) != tr


def test_split_rounds_half_to_even():
    # 25 equations * 0.5 = 12.5 -> Python's round gives 12
    assert len(modular_arithmetic(p=5, train_fraction=0.5).x_train) == 12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1}, r"p must be an integer >= 2, got 1"),
        ({"p": 7.0}, r"p must be an integer >= 2, got 7.0"),
        ({"op": "pow"}, r"op must be one of .*'div'.*got 'pow'"),
        ({"train_fraction": 0.0}, r"train_fraction must be a finite number > 0 and < 1, got 0.0"),
        ({"train_fraction": 1}, r"train_fraction must be .* < 1, got 1"),
        ({"train_fraction": float("nan")}, r"train_fraction must be a finite number"),
        ({"p": 2, "train_fraction": 0.1}, r"at least one training .* gives 0 training .* of 4"),
        ({"p": 2, "train_fraction": 0.9}, r"at least one training and one test .* gives 4 "),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"op": "div", "division": "floor"},
         r"division must be one of 'inverse', 'zero', 'fermat'; got 'floor'"),
        ({"op": "add", "division": "zero"},
         r"division applies to op='div' only; got division='zero' with op='add'"),
    ],
)
def test_modular_bad_input(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        modular_arithmetic(**kwargs)


# ------------------------------------------------------------------------------------------
# permutation composition

# S3 in lexicographic order: 0 = 012 (identity), 1 = 021, 2 = 102, 3 = 120, 4 = 201, 5 = 210.
# Entry [i][j] = index of perm_i o perm_j with (a o b)[k] = a[b[k]], worked out by hand, e.g.
# 021 o 120 = (a[1], a[2], a[0]) = (2, 1, 0) = 210 -> [1][3] = 5, while [3][1] = 102 = 2.
S3_TABLE = [
    [0, 1, 2, 3, 4, 5],
    [1, 0, 4, 5, 2, 3],
    [2, 3, 0, 1, 5, 4],
    [3, 2, 5, 4, 0, 1],
    [4, 5, 1, 0, 3, 2],
    [5, 4, 3, 2, 1, 0],
]


def table_of(task, m):
    x, y = all_rows(task)
    table = np.full((m, m), -1)
    table[x[:, 0], x[:, 1]] = y
    return table


def test_s3_matches_hand_table():
    task = permutation_composition(n=3, train_fraction=0.5, seed=0)
    assert len(task.x_train) + len(task.x_test) == 36
    np.testing.assert_array_equal(table_of(task, 6), S3_TABLE)
    assert task.vocab_size == 6 and task.n_classes == 6 and task.input_kind == "tokens"


def test_s5_group_properties_and_brute_force():
    task = permutation_composition(n=5, train_fraction=0.5, seed=2)
    assert len(task.x_train) == len(task.x_test) == 7200
    t = table_of(task, 120)
    assert t.min() >= 0 and t.max() < 120  # every equation present, every label a valid index
    np.testing.assert_array_equal(t[0], np.arange(120))  # identity is index 0
    np.testing.assert_array_equal(t[:, 0], np.arange(120))
    for row in (t, t.T):  # Latin square: every element has exactly one inverse on each side
        np.testing.assert_array_equal(np.sort(row, axis=1), np.tile(np.arange(120), (120, 1)))
    inv = np.argmax(t == 0, axis=1)
    np.testing.assert_array_equal(t[inv, np.arange(120)], 0)
    i, j, k = np.random.default_rng(0).integers(0, 120, size=(3, 2000))
    np.testing.assert_array_equal(t[t[i, j], k], t[i, t[j, k]])  # associativity
    perms = list(itertools.permutations(range(5)))
    index = {p: n for n, p in enumerate(perms)}
    brute = [[index[tuple(a[b[q]] for q in range(5))] for b in perms] for a in perms]
    np.testing.assert_array_equal(t, brute)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 1}, r"n must be an integer in \[2, 7\], got 1"),
        ({"n": 8}, r"n must be an integer in \[2, 7\], got 8"),
        ({"n": 2, "train_fraction": 0.1}, r"gives 0 training examples of 4"),
        ({"train_fraction": -0.5}, r"train_fraction must be a finite number > 0"),
    ],
)
def test_permutation_bad_input(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        permutation_composition(**kwargs)


# ------------------------------------------------------------------------------------------
# digits (bundled) and IDX / MNIST


@pytest.fixture(scope="module")
def sk_digits():
    return load_digits()


def test_bundled_digits(sk_digits):
    task = digits(n_train=300, seed=4)
    assert task.x_train.shape == (300, 64) and task.x_test.shape == (1497, 64)
    assert task.x_train.dtype == np.float32 and task.y_train.dtype == np.int64
    x, y = all_rows(task)
    assert x.min() == 0.0 and x.max() == 1.0
    assert task.n_classes == 10 and task.input_kind == "continuous" and task.vocab_size is None
    # the two splits together are exactly the bundled images scaled by 1/16, with their labels
    ref = np.column_stack([sk_digits.data / 16.0, sk_digits.target])
    got = np.column_stack([x.astype(np.float64), y])
    np.testing.assert_allclose(got[np.lexsort(got.T)], ref[np.lexsort(ref.T)], rtol=1e-6)
    assert_same_task(task, digits(n_train=300, seed=4))
    assert not np.array_equal(task.y_train, digits(n_train=300, seed=5).y_train)


@pytest.mark.parametrize(
    ("n_train", "match"),
    [
        (0, r"n_train must be an integer >= 1, got 0"),
        (1797, r"n_train must be < 1797 .*got 1797"),
        (10.0, r"n_train must be an integer >= 1, got 10.0"),
    ],
)
def test_bundled_digits_bad_n_train(n_train, match):
    with pytest.raises(ValidationError, match=match):
        digits(n_train=n_train)


IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(arr):
    """IDX encoding written here from the format description, independent of the reader."""
    code = IDX_CODES[arr.dtype.str[1:]]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5),
        np.array([7, 0, 9, 3], dtype=np.uint8),
        np.array([-128, -1, 0, 127], dtype=np.int8),
        np.array([[-30000, 2], [3, 30000]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1, 5], dtype=np.int32),
        np.array([[1.5, -2.25e30], [np.pi, 0.0]], dtype=np.float32),
        np.array([1e-300, -np.e, 4.0], dtype=np.float64),
    ],
    ids=["u8-images", "u8-labels", "i8", "i16", "i32", "f32", "f64"],
)
def test_idx_round_trip(tmp_path, arr, compress):
    raw = idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path)
    assert got.dtype == arr.dtype and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, arr)


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00" + GOOD[2:], r"bad magic number 0x01000802: its first two bytes"),
        (GOOD[:2] + b"\x0a" + GOOD[3:], r"unknown type code 0x0A"),
        (GOOD[:-1], r"truncated: its header declares shape \(3, 4\) of uint8 \(12 data bytes\) "
                    r"but it holds 11"),
        (GOOD + b"\x00", r"longer than declared.* holds 13 data bytes"),
        (GOOD[:9], r"truncated: its header declares 2 dimensions \(12 header bytes\) but the "
                   r"file has 9"),
        (b"\x00\x00", r"too short for the 4-byte magic number \(2 bytes\)"),
        (b"\x00\x00\x08\x00", r"declares 0 dimensions"),
        (b"\x1f\x8bnot really gzip", r"broken gzip stream"),
        (gzip.compress(GOOD[:-3]), r"truncated.*holds 9 data bytes"),
    ],
    ids=["magic", "type", "short-data", "long-data", "short-header", "tiny", "ndim0", "gzip",
         "gz-truncated"],
)
def test_idx_malformed(tmp_path, data, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"IDX file .*nope.idx does not exist"):
        read_idx(tmp_path / "nope.idx")


def write_mnist(d, n_train=20, n_test=7, gz=("train-labels-idx1-ubyte",), labels_max=9):
    rng = np.random.default_rng(0)
    imgs = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)  # tag each image with its index
        y = rng.integers(0, labels_max + 1, size=n).astype(np.uint8)
        imgs[split] = (x, y)
        for stem, arr in ((f"{split}-images-idx3-ubyte", x), (f"{split}-labels-idx1-ubyte", y)):
            raw = idx_bytes(arr)
            if stem in gz:
                (d / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (d / stem).write_bytes(raw)
    return imgs


def test_mnist_from_dir(tmp_path):
    imgs = write_mnist(tmp_path, gz=("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"))
    task = digits(n_train=5, seed=1, data_dir=tmp_path)
    (xtr, ytr), (xte, yte) = imgs["train"], imgs["t10k"]
    assert task.x_train.shape == (5, 784) and task.x_test.shape == (7, 784)
    assert task.x_train.dtype == np.float32 and task.n_classes == 10
    picked = np.rint(task.x_train[:, 0] * 255).astype(int)
    assert len(set(picked.tolist())) == 5
    np.testing.assert_allclose(task.x_train, xtr[picked].reshape(5, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(task.y_train, ytr[picked])
    np.testing.assert_allclose(task.x_test, xte.reshape(7, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(task.y_test, yte)
    assert task.params == {"n_train": 5, "seed": 1, "data_dir": str(tmp_path.resolve())}
    assert_same_task(task, make_task(task.name, **task.params))
    assert digits(n_train=20, data_dir=tmp_path).x_train.shape == (20, 784)
    with pytest.raises(ValidationError, match=r"n_train must be <= 20 .*got 21"):
        digits(n_train=21, data_dir=tmp_path)


def test_mnist_dir_errors(tmp_path):
    with pytest.raises(DataError, match=r"data_dir .*missing is not a directory"):
        digits(data_dir=tmp_path / "missing")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"has no file t10k-labels-idx1-ubyte \(or .*\.gz\)"):
        digits(n_train=3, data_dir=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataError, match=r"test files .* disagree: 7 images but 6 labels"):
        digits(n_train=3, data_dir=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(7, 10, np.uint8)))
    with pytest.raises(DataError, match=r"has label 10; labels must be in \[0, 9\]"):
        digits(n_train=3, data_dir=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.int32)))
    with pytest.raises(DataError, match=r"must hold 1-D uint8 labels, got int32"):
        digits(n_train=3, data_dir=tmp_path)


# ------------------------------------------------------------------------------------------
# 12-bit information-bottleneck task


def test_ib12_patterns_labels_and_rotation_invariance():
    task = ib_12bit(train_fraction=0.8, seed=3)
    assert len(task.x_train) == 3277 and len(task.x_test) == 819  # round(3276.8)
    x, y = all_rows(task)
    assert x.dtype == np.float32 and set(np.unique(x).tolist()) == {0.0, 1.0}
    codes = x.astype(np.int64) @ (1 << np.arange(12))
    assert len(np.unique(codes)) == 4096
    label_of = np.empty(4096, dtype=np.int64)
    label_of[codes] = y
    for r in range(1, 12):
        rolled = np.roll(x, r, axis=1).astype(np.int64) @ (1 << np.arange(12))
        np.testing.assert_array_equal(label_of[rolled], y)
    assert 0.45 <= y.mean() <= 0.55
    assert y.sum() == 2084  # the value the docstring reports
    # the documented rule, evaluated pattern by pattern
    for bits, label in zip(x.astype(int).tolist(), y.tolist()):
        a = [sum(bits[j] * bits[(j + d) % 12] for j in range(12)) for d in range(7)]
        assert label == int(a[1] + a[2] + a[3] >= a[4] + a[5] + a[6])
    assert task.n_classes == 2 and task.input_kind == "continuous"


def test_ib12_bad_input():
    with pytest.raises(ValidationError, match=r"train_fraction must be .* < 1, got 1.0"):
        ib_12bit(train_fraction=1.0)
    with pytest.raises(ValidationError, match=r"gives 0 training examples of 4096"):
        ib_12bit(train_fraction=1e-4)


# ------------------------------------------------------------------------------------------
# npz


def test_npz_continuous_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3, 2))
    y = np.arange(10) % 4
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, extra=np.zeros(3))
    task = from_npz(path, train_fraction=0.8, seed=2)
    assert task.input_kind == "continuous" and task.vocab_size is None and task.n_classes == 4
    assert task.x_train.shape == (8, 6) and task.x_test.shape == (2, 6)
    got = np.column_stack(all_rows(task))
    ref = np.column_stack([x.reshape(10, 6).astype(np.float32), y])
    np.testing.assert_array_equal(got[np.lexsort(got.T)], ref[np.lexsort(ref.T)])
    assert task.params == {
        "path": str(path.resolve()), "train_fraction": 0.8, "seed": 2,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert_same_task(task, make_task("npz", **task.params))


def test_npz_tokens_with_test_set(tmp_path):
    path = tmp_path / "t.npz"
    x, y = np.array([[0, 3], [2, 1], [4, 4]], np.int32), np.array([0, 5, 1], np.uint8)
    xt, yt = np.array([[6, 0]], np.int16), np.array([7], np.int64)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    task = from_npz(path)
    assert task.input_kind == "tokens" and task.vocab_size == 7 and task.n_classes == 8
    np.testing.assert_array_equal(task.x_train, x)  # all of x, file order
    np.testing.assert_array_equal(task.y_train, y)
    np.testing.assert_array_equal(task.x_test, xt)
    np.testing.assert_array_equal(task.y_test, yt)
    assert task.x_train.dtype == np.int64 and task.y_train.dtype == np.int64


def test_npz_sha256_detects_change(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 2)), y=np.array([0, 1, 0, 1]))
    params = from_npz(path).params
    np.savez(path, x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"has SHA-256 [0-9a-f]{64}, expected .*the file changed"):
        make_task("npz", **params)


def _bad_npz_cases():
    ok_x, ok_y = np.ones((4, 3)), np.array([0, 1, 2, 1])
    return [
        ("no-x", {"y": ok_y}, r"has no key 'x'"),
        ("no-y", {"x": ok_x}, r"has no key 'y'"),
        ("length", {"x": ok_x, "y": ok_y[:3]}, r"'x' has 4 examples but 'y' has 3 labels"),
        ("y-float", {"x": ok_x, "y": ok_y * 1.0},
         r"'y' must be a 1-D array of integer labels, got float64"),
        ("y-2d", {"x": ok_x, "y": ok_y[:, None]}, r"'y' must be a 1-D array of integer labels"),
        ("y-neg", {"x": ok_x, "y": ok_y - 1}, r"'y' labels must be >= 0, got -1"),
        ("x-str", {"x": np.array(list("abcd")), "y": ok_y}, r"'x' must be numeric .*got <U1"),
        ("x-bool", {"x": ok_x > 0, "y": ok_y}, r"'x' must be numeric .*got bool"),
        ("x-empty", {"x": np.ones((0, 3)), "y": ok_y[:0]}, r"'x' must hold at least one example"),
        ("x-nan", {"x": np.where(ok_x > 0, np.nan, 0), "y": ok_y},
         r"'x' must be finite, but holds NaN or Inf"),
        ("x-inf", {"x": np.full((4, 3), -np.inf), "y": ok_y}, r"'x' must be finite"),
        ("x-f32-overflow", {"x": np.full((4, 3), 1e300), "y": ok_y}, r"'x' must be finite"),
        ("x-object", {"x": np.array([None, 1, 2, 3], dtype=object), "y": ok_y},
         r"key 'x' cannot be loaded without pickle"),
        ("xt-only", {"x": ok_x, "y": ok_y, "x_test": ok_x}, r"has 'x_test' but no 'y_test'"),
        ("yt-only", {"x": ok_x, "y": ok_y, "y_test": ok_y}, r"has 'y_test' but no 'x_test'"),
        ("xt-shape", {"x": ok_x, "y": ok_y, "x_test": np.ones((2, 4)), "y_test": ok_y[:2]},
         r"'x_test' examples have shape \(4,\) but 'x' examples have \(3,\)"),
        ("xt-kind", {"x": ok_x, "y": ok_y, "x_test": np.ones((2, 3), int), "y_test": ok_y[:2]},
         r"'x_test' is int64 but 'x' is float64"),
        ("yt-neg", {"x": ok_x, "y": ok_y, "x_test": ok_x, "y_test": -ok_y},
         r"'y_test' labels must be >= 0"),
        ("xt-nan", {"x": ok_x, "y": ok_y, "x_test": ok_x * np.nan, "y_test": ok_y},
         r"'x_test' must be finite"),
        ("token-neg", {"x": np.array([[0, 1], [-2, 1], [1, 1], [0, 0]]), "y": ok_y},
         r"'x' holds token ids, which must be >= 0, got -2"),
    ]


@pytest.mark.parametrize(("arrays", "match"), [c[1:] for c in _bad_npz_cases()],
                         ids=[c[0] for c in _bad_npz_cases()])
def test_npz_data_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # object arrays are pickled on save; loading must refuse them
    with pytest.raises(DataError, match=match) as info:
        from_npz(path)
    assert str(path.resolve()) in str(info.value)


def test_npz_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"npz file .*missing.npz does not exist"):
        from_npz(tmp_path / "missing.npz")
    txt = tmp_path / "notes.npz"
    txt.write_text("hello, not a zip")
    with pytest.raises(DataError, match=r"notes.npz is not a readable .npz archive"):
        from_npz(txt)
    npy = tmp_path / "single.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(DataError, match=r"single.npy holds a single .npy array, not an .npz"):
        from_npz(npy)


def test_npz_argument_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((10, 2)), y=np.zeros(10, int))
    with pytest.raises(ValidationError, match=r"gives 0 training examples of 10"):
        from_npz(path, train_fraction=0.01)
    with pytest.raises(ValidationError, match=r"gives 10 training examples of 10"):
        from_npz(path, train_fraction=0.99)
    with pytest.raises(ValidationError, match=r"sha256 must be None or 64 lowercase hex .*'abc'"):
        from_npz(path, sha256="abc")


# ------------------------------------------------------------------------------------------
# label noise


def test_label_noise_counts_and_reproducibility():
    task = modular_arithmetic(p=23, op="mul", train_fraction=0.5, seed=0)
    n = len(task.y_train)
    noisy = add_label_noise(task, fraction=0.3, seed=7)
    changed = noisy.y_train != task.y_train
    assert changed.sum() == round(0.3 * n)  # every chosen label moved to another class
    assert noisy.y_train.min() >= 0 and noisy.y_train.max() < 23
    assert noisy.y_test is task.y_test and noisy.x_train is task.x_train
    clean = modular_arithmetic(p=23, op="mul", train_fraction=0.5, seed=0)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)
    assert noisy.params == {**task.params, "label_noise": {"fraction": 0.3, "seed": 7}}
    assert "label_noise" not in task.params
    again = add_label_noise(task, fraction=0.3, seed=7)
    np.testing.assert_array_equal(again.y_train, noisy.y_train)
    other = add_label_noise(task, fraction=0.3, seed=8).y_train
    assert not np.array_equal(other, noisy.y_train)
    np.testing.assert_array_equal(add_label_noise(task, fraction=0.0).y_train, task.y_train)
    assert_same_task(noisy, make_task(noisy.name, **noisy.params))


def test_label_noise_uniform_over_other_classes():
    n = 30000
    x = np.zeros((n, 1), np.float32)
    task = TaskData("custom", x, np.zeros(n, np.int64), x[:2], np.zeros(2, np.int64),
                    n_classes=4, input_kind="continuous", vocab_size=None, params={})
    noisy = add_label_noise(task, fraction=0.5, seed=0)
    counts = np.bincount(noisy.y_train, minlength=4)
    assert counts[0] == n - 15000
    assert stats.chisquare(counts[1:]).pvalue > 1e-3


def test_label_noise_bad_input():
    task = ib_12bit()
    for fraction, match in [(1.0, r"fraction must be a finite number >= 0 and < 1, got 1.0"),
                            (-0.1, r"fraction must be .*got -0.1"), ("0.1", r"got '0.1'")]:
        with pytest.raises(ValidationError, match=match):
            add_label_noise(task, fraction=fraction)
    with pytest.raises(ValidationError, match=r"already has label noise"):
        add_label_noise(add_label_noise(task, fraction=0.1), fraction=0.1)
    with pytest.raises(ValidationError, match=r"task must be a TaskData, got dict"):
        add_label_noise({}, fraction=0.1)
    one = TaskData("c", np.zeros((3, 1), np.float32), np.zeros(3, np.int64),
                   np.zeros((1, 1), np.float32), np.zeros(1, np.int64), n_classes=1,
                   input_kind="continuous", vocab_size=None, params={})
    with pytest.raises(ValidationError, match=r"label noise needs n_classes >= 2, got 1"):
        add_label_noise(one, fraction=0.5)


# ------------------------------------------------------------------------------------------
# registry and TaskData checks


def test_registry_round_trip():
    assert set(TASKS) == {"modular", "permutation", "digits", "ib12", "npz"}
    for name, kwargs in [("modular", {"p": 13, "op": "div"}),
                         ("modular", {"p": 12, "op": "div", "division": "fermat"}),
                         ("permutation", {"n": 4}),
                         ("ib12", {"seed": 9}), ("digits", {"n_train": 50})]:
        task = make_task(name, **kwargs)
        assert task.name == name
        assert_same_task(task, make_task(name, **task.params))
    noisy = make_task("modular", p=13, label_noise={"fraction": 0.2, "seed": 1})
    assert_same_task(noisy, add_label_noise(modular_arithmetic(p=13), fraction=0.2, seed=1))


def test_make_task_errors():
    with pytest.raises(ValidationError, match=r"name must be one of .*'ib12'.*got 'mnist'"):
        make_task("mnist")
    with pytest.raises(ValidationError, match=r"'modular' has no argument 'q'; it accepts 'p'"):
        make_task("modular", q=3)
    with pytest.raises(ValidationError, match=r"task 'npz' needs argument 'path'"):
        make_task("npz")
    with pytest.raises(ValidationError, match=r"label_noise must be None or a dict .*got 0.1"):
        make_task("ib12", label_noise=0.1)
    with pytest.raises(ValidationError, match=r"label_noise must .*\{'fraction': 0.1, 'sed': 1\}"):
        make_task("ib12", label_noise={"fraction": 0.1, "sed": 1})


def test_taskdata_rejects_inconsistent_arrays():
    x, y = np.zeros((3, 2), np.int64), np.zeros(3, np.int64)
    base = dict(name="c", x_train=x, y_train=y, x_test=x, y_test=y, n_classes=2,
                input_kind="tokens", vocab_size=2, params={})
    TaskData(**base)
    for change, match in [
        ({"y_test": y[:2]}, r"x_test has 3 rows but y_test has 2"),
        ({"input_kind": "image"}, r"input_kind must be one of 'tokens', 'continuous'; got 'image'"),
        ({"x_train": x.astype(np.float32)}, r"x_train must be a 2-D int64 array for 'tokens'"),
        ({"y_train": y + 2}, r"y_train must lie in \[0, 2\), got range \[2, 2\]"),
        ({"vocab_size": None}, r"vocab_size must be an integer >= 1 for tokens, got None"),
        ({"x_test": x + 5}, r"token ids must lie in \[0, 2\)"),
        ({"params": {"a": object()}}, r"params must be JSON-able"),
    ]:
        with pytest.raises(DataError, match=match):
            TaskData(**{**base, **change})
