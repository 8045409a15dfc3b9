"""Faster forwards of standard modules: the same values bit for bit as torch's own kernels."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from ckptlab.analysis import analyze
from ckptlab.analysis.fast_modules import use_fast_forwards
from ckptlab.store import Recorder


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _fast(mod):
    fast = copy.deepcopy(mod)
    assert use_fast_forwards(fast) == 1
    return fast


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2), dict(kernel_size=3), dict(kernel_size=(2, 3)),
    dict(kernel_size=2, stride=2), dict(kernel_size=(3, 2), stride=(3, 2)),
    dict(kernel_size=2, ceil_mode=True),  # whole windows only: the fast form
])
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (5, 3, 7, 9), (3, 6, 6), (2, 1, 12, 10)])
def test_tiling_max_pool_equals_torch(kwargs, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[0, 0, 0] = float("nan")  # NaN propagates in both
    x.view(-1)[7] = float("-inf")
    mod = nn.MaxPool2d(**kwargs)
    _same(_fast(mod)(x), mod(x))
    if x.ndim == 4:  # another memory layout
        xc = x.contiguous(memory_format=torch.channels_last)
        _same(_fast(mod)(xc), mod(xc))


def test_integer_and_float64_inputs():
    mod = nn.MaxPool2d(2)
    x = torch.randint(-50, 50, (3, 2, 6, 6))
    _same(_fast(mod)(x.double()), mod(x.double()))
    _same(_fast(mod)(x.float()), mod(x.float()))


def test_other_pools_keep_their_own_forward():
    class MyPool(nn.MaxPool2d):  # a subclass may do anything in forward
        pass

    for mod in (nn.MaxPool2d(2, stride=1), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, dilation=2),
                nn.MaxPool2d(2, return_indices=True), MyPool(2), nn.AvgPool2d(2),
                nn.MaxPool1d(2)):
        assert use_fast_forwards(mod) == 0, mod
        assert "forward" not in vars(mod)


def test_uncovered_inputs_go_to_torch_with_its_result_or_error():
    mod = nn.MaxPool2d(2, ceil_mode=True)  # a partial window at the edge: torch's own kernel
    x = torch.randn(2, 3, 7, 7)
    _same(_fast(mod)(x), mod(x))
    assert _fast(mod)(x).shape == (2, 3, 4, 4)
    small = torch.randn(1, 1, 1, 5)  # smaller than a window: torch's own error
    with pytest.raises(RuntimeError) as own:
        nn.MaxPool2d(2)(small)
    with pytest.raises(RuntimeError) as fast:
        _fast(nn.MaxPool2d(2))(small)
    assert str(fast.value) == str(own.value)


def test_hooks_vmap_deepcopy_and_a_model_inside():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(64, 3))
    fast = copy.deepcopy(net)
    assert use_fast_forwards(fast) == 1
    assert use_fast_forwards(fast) == 0  # once only
    seen = []
    fast[2].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(6, 1, 8, 8)
    _same(fast(x), net(x))
    _same(seen[0], nn.functional.max_pool2d(net[1](net[0](x)), 2))
    # a block of checkpoints at once, as the analysis runs it
    params = {k: torch.stack([v, v + 0.1, v - 0.2]) for k, v in net.state_dict().items()}
    out = vmap(lambda p: functional_call(fast, p, (x,)))(params)
    want = torch.stack([functional_call(net, {k: v[i] for k, v in params.items()}, (x,))
                        for i in range(3)])
    torch.testing.assert_close(out, want)
    again = copy.deepcopy(fast)  # the copy's forward is bound to the copy
    assert again[2].forward.__self__ is again[2]
    _same(again(x), net(x))


class _CNN(nn.Module):
    def __init__(self, pool=nn.MaxPool2d):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = pool(2)
        self.fc = nn.Linear(64, 16)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.relu2(self.fc(self.pool(self.relu1(self.conv(x))).flatten(1))))


class _OwnPool(nn.MaxPool2d):  # not replaced: torch's kernel
    pass


def test_analysis_equals_the_one_with_torchs_own_pooling(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:300, None] / 16.0).astype(np.float32)
    y = d.target[:300].astype(np.int64)
    data = {"x_train": x[:200], "y_train": y[:200], "x_test": x[200:], "y_test": y[200:]}
    net = _CNN()
    path = tmp_path / "cnn.zarr"
    with Recorder(path, model=net, data=data) as rec:
        for i in range(3):
            rec.save(i, {k: v + 0.05 * i * torch.randn_like(v)
                         for k, v in net.state_dict().items()})
    kw = dict(metrics=("mi", "lc", "lmn"), estimators=("binning", "kde"), store=False,
              probe_size=200, kde_samples=100, lc_points=8, lmn_samples=8)
    fast = analyze(path, model=_CNN, **kw)

    def own():
        return _CNN(_OwnPool)

    slow = analyze(path, model=own, **kw)
    for name in fast.data_vars:
        np.testing.assert_array_equal(fast[name].values, slow[name].values, err_msg=name)
