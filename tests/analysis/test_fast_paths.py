"""Shortcuts the analysis takes for speed give the numbers of the plain definition.

* LMN through the affine layer after the cut: a straight path maps through ``W h + b`` onto a
  straight path, so the linear mapping matrix cut after an ``nn.Linear`` is the one cut before
  it; taken only where that layer is the only reader of the cut's output.
* Narrow dummies: the modules before a substituted representation run on one row; kept only
  where the model's code after the cut does not reuse the raw input's batch size.
"""

import zlib

import numpy as np
import pytest
import torch
from torch import nn

from ckptlab.analysis import analyze
from ckptlab.analysis.capture import CapturedModel, Tap, narrow_dummy_ok, resolve_layer_map
from ckptlab.metrics.lmn import linear_mapping_number
from ckptlab.store import Recorder, Run


class Plain(nn.Module):
    """fc0 -> ReLU -> fc1 -> ReLU -> head: the cut (act0's output) feeds fc1 and nothing else."""

    def __init__(self):
        super().__init__()
        self.fc0, self.act0 = nn.Linear(6, 16), nn.ReLU()
        self.fc1, self.act1 = nn.Linear(16, 12), nn.ReLU()
        self.head = nn.Linear(12, 3)

    def rest(self, h):
        return self.head(self.act1(self.fc1(h)))

    def forward(self, x):
        return self.rest(self.act0(self.fc0(x)))


class Skip(Plain):
    """The cut feeds fc1 and also the skip around it: fc1 is not the only reader."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def rest(self, h):
        return self.head(self.act1(self.fc1(h)) + h)


class InPlace(Plain):
    """An in-place nonlinearity between the cut and fc1: the same tensor, no longer affine."""

    def rest(self, h):
        return self.head(self.act1(self.fc1(h.clamp_(max=0.5))))

    def forward(self, x):
        return self.rest(self.act0(self.fc0(x)))


class BatchFromInput(Plain):
    """Takes the batch size from the raw input and reuses it after the cut."""

    def forward(self, x):
        b = x.shape[0]
        h = self.act0(self.fc0(x))
        return self.head(self.act1(self.fc1(h)).reshape(b, -1))


def _record(path, cls, n_ckpt=4, seed=0):
    torch.manual_seed(seed)
    net = cls()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    y = rng.integers(0, 3, 80)
    data = {"x_train": x[:60], "y_train": y[:60], "x_test": x[60:], "y_test": y[60:]}
    with Recorder(path, model=net, data=data) as rec:
        for i in range(n_ckpt):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.3 * torch.randn_like(p))
            rec.save(i, net.state_dict())
    return path


def _lmn_by_hand(path, cls, n):
    """The definition: paths between first-hidden-layer rows, pushed through the rest."""
    run = Run(path)
    x = torch.as_tensor(run.data()["x_train"])
    idx = np.sort(np.random.default_rng([0, zlib.crc32(b"lmn")]).permutation(len(x))[:n])
    out = []
    for i in range(run.n):
        net = cls()
        net.load_state_dict(run.state_dict(i))
        with torch.no_grad():
            out.append(linear_mapping_number(net.act0(net.fc0(x[idx])), net.rest))
    return np.array(out)


def _model(cls, path):
    run = Run(path)
    module = cls()
    x = run.data()["x_train"][:8]
    lm = resolve_layer_map(module, x)
    cm = CapturedModel(module, lm, x[:1])
    cm.load(run.state_dict(run.n - 1))
    return cm, x


@pytest.mark.parametrize("cls", [Plain, Skip, InPlace, BatchFromInput])
def test_lmn_equals_the_definition_at_the_cut(tmp_path, cls):
    path = _record(tmp_path / "r.zarr", cls)
    ds = analyze(path, model=cls, metrics=("lmn",), lmn_samples=25, store=False,
                 scheduler="synchronous")
    np.testing.assert_allclose(ds.lmn.values, _lmn_by_hand(path, cls, 25), rtol=2e-5)


def test_the_affine_layer_is_taken_only_as_the_cuts_only_reader(tmp_path):
    from ckptlab.analysis.families.lmn import LinearMappingNumber

    cm, x = _model(InPlace, _record(tmp_path / "inplace.zarr", InPlace))
    assert cm.affine_successor(cm.map.lmn_from, x) is None  # changed in place on the way
    for cls, taken in ((Plain, True), (Skip, False)):
        cm, x = _model(cls, _record(tmp_path / f"{cls.__name__}.zarr", cls))
        nxt = cm.affine_successor(cm.map.lmn_from, x)
        assert nxt is not None and nxt.module == "fc1"  # a candidate in both
        setup = type("S", (), {"model": cm, "last_model": None, "layer_map": cm.map})
        got = LinearMappingNumber._affine_cut(setup, cm.map.lmn_from, x)
        assert (got == nxt) if taken else got is None


def test_the_identity_the_shortcut_rests_on_holds_in_float64():
    torch.manual_seed(3)
    net = Plain().double()
    h = torch.relu(net.fc0(torch.randn(30, 6, dtype=torch.float64)))
    with torch.no_grad():
        at_cut = linear_mapping_number(h, net.rest)
        after = linear_mapping_number(net.fc1(h), lambda z: net.head(net.act1(z)))
    np.testing.assert_allclose(after, at_cut, rtol=1e-12)
    assert 1.5 < at_cut < 30  # a nonlinear map: not a trivial 1


def test_narrow_dummies_only_where_the_model_allows_them(tmp_path):
    for cls, ok in ((Plain, True), (Skip, True), (BatchFromInput, False)):
        cm, x = _model(cls, _record(tmp_path / f"{cls.__name__}.zarr", cls))
        assert narrow_dummy_ok([cm], cm.as_input(x)) is ok
        assert cm.narrow is ok
        to_h, head = cm.lmn_split(Tap(module="act0", label="act0"))
        with torch.no_grad():
            real = cm.forward(cm.as_input(x))[0]
            np.testing.assert_allclose(head(to_h(x)).numpy(), real.numpy(), rtol=1e-6,
                                       atol=1e-6)


def test_lc_of_points_shared_by_the_batch_equals_per_checkpoint_points():
    """Expanded (stride-0) points: vertices built once, the batched fn sees them shared."""
    from ckptlab.metrics.local_complexity import cross_polytope_directions, local_complexity

    torch.manual_seed(0)
    w1, w2 = torch.randn(5, 16, 6), torch.randn(5, 9, 16)
    seen = []

    def fn(v):  # (B, M, 6) -> pre-activations of every "checkpoint"
        seen.append(v.stride(0) == 0)
        z1 = torch.einsum("bmd,bkd->bmk", v, w1)
        z2 = torch.einsum("bmd,bkd->bmk", torch.relu(z1), w2)
        return [z1, z2, z2[..., :3]]

    pts = torch.rand(1, 40, 6)
    dirs = cross_polytope_directions(6, n_directions=6, seed=0)
    kw = dict(directions=dirs, radius=0.3, lower=0.0, upper=1.0)
    shared = local_complexity(pts.expand(5, -1, -1), fn, **kw)
    assert all(seen)
    seen.clear()
    own = local_complexity(pts.repeat(5, 1, 1), fn, **kw)
    assert not any(seen)
    torch.testing.assert_close(shared, own)
    assert int(shared.sum()) > 0
